#!/usr/bin/env python3
"""Writes a metadata set of N items of about 1 KB each as one JSON file (a map from key to
value), for staging and load measurements: `scripts/large-set.py 100000 /tmp/large.json`.
With --change P, changes P percent of the items (every 1/P-th), for re-staging measurements."""
import argparse
import json
import random

parser = argparse.ArgumentParser()
parser.add_argument("count", type=int)
parser.add_argument("out")
parser.add_argument("--change", type=float, default=0.0, help="percent of items to change")
args = parser.parse_args()

rng = random.Random(7)
words = ["orders", "customers", "payments", "events", "sessions", "invoices", "items", "stock"]
step = int(100 / args.change) if args.change else 0
items = {}
for i in range(args.count):
    domain = words[i % len(words)]
    columns = [
        {"name": f"col_{c}", "type": rng.choice(["string", "int64", "timestamp", "decimal(18,2)"]),
         "nullable": rng.random() < 0.3}
        for c in range(12)
    ]
    value = {
        "name": f"{domain}_{i:06d}",
        "domain": domain,
        "owner": f"team-{i % 37}",
        "columns": columns,
        "tags": [f"tag-{(i * 7) % 19}", f"tag-{(i * 3) % 23}"],
        "retention_days": 30 + i % 365,
        "description": f"{domain} table {i} of the load-test catalog, owned by team-{i % 37}; " * 3,
        "revision": 2 if step and i % step == 0 else 1,
    }
    items[f"tables/{domain}/t{i:06d}"] = value
with open(args.out, "w") as f:
    json.dump(items, f, separators=(",", ":"))
