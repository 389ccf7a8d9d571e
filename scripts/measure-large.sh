#!/usr/bin/env bash
# Measures a large set end to end on this machine, with release binaries: staging time, the
# sidecar's cold load time, re-staging after a 1% change, and the sidecar's memory with the
# set in both slots. Usage: scripts/measure-large.sh [ITEMS]   (default 100000 items of ~1 KB)
set -euo pipefail
cd "$(dirname "$0")/.."
items=${1:-100000}
bin=target/release
[ -x "$bin/sbctl" ] || { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ms() { date +%s%3N; }
wait_http() { for _ in $(seq 1 600); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "timeout waiting for $1" >&2; exit 1; }

echo "generating $items items..."
python3 scripts/large-set.py "$items" "$work/v1.json"
python3 scripts/large-set.py "$items" "$work/v2.json" --change 1
echo "set size: $(du -m "$work/v1.json" | cut -f1) MB of JSON"

cp=$(port); pp=$(port); gp=$(port); hp=$(port); sh=$(port); sg=$(port)
etcd --name m --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$cp" \
  --advertise-client-urls "http://127.0.0.1:$cp" --listen-peer-urls "http://127.0.0.1:$pp" \
  --initial-advertise-peer-urls "http://127.0.0.1:$pp" --initial-cluster "m=http://127.0.0.1:$pp" \
  --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) > "$work/etcd.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$cp/health"
"$bin/switchboard-coordinator" --etcd "http://127.0.0.1:$cp" --listen "127.0.0.1:$gp" --http "127.0.0.1:$hp" --prefix /measure 2> "$work/coordinator.log" &
pids+=($!)
wait_http "http://127.0.0.1:$hp/healthz"
export SWITCHBOARD_COORDINATOR="http://127.0.0.1:$gp"

t0=$(ms); "$bin/sbctl" --json stage big "$work/v1.json" > "$work/stage1.json"; t1=$(ms)
echo "stage v1: $((t1 - t0)) ms  $(cat "$work/stage1.json")"
"$bin/sbctl" flip big > /dev/null

t0=$(ms)
"$bin/switchboard-sidecar" --namespace big --etcd "http://127.0.0.1:$cp" --http "127.0.0.1:$sh" --grpc "127.0.0.1:$sg" --id measure --cache-dir "$work/cache" --prefix /measure 2> "$work/sidecar.log" &
sidecar=$!; pids+=($sidecar)
for _ in $(seq 1 1200); do curl -fs "http://127.0.0.1:$sh/readyz" >/dev/null 2>&1 && break; sleep 0.02; done
t1=$(ms)
echo "sidecar start to ready (cold load of v1): $((t1 - t0)) ms; $(grep -o 'set loaded.*' "$work/sidecar.log" | tail -1)"
echo "sidecar RSS, one set: $(awk '/VmRSS/ {print $2/1024 " MB"}' /proc/$sidecar/status)"

t0=$(ms); "$bin/sbctl" --json stage big "$work/v2.json" > "$work/stage2.json"; t1=$(ms)
echo "stage v2 (1% of items changed): $((t1 - t0)) ms  $(cat "$work/stage2.json")"

epoch=$("$bin/sbctl" --json canary big 50 | python3 -c 'import json,sys; print(json.load(sys.stdin)["routing"]["epoch"])')
t0=$(ms)
for _ in $(seq 1 1200); do
  e=$(curl -fs "http://127.0.0.1:$sh/v1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["namespaces"]["big"]["epoch"])')
  [ "$e" -ge "$epoch" ] && break; sleep 0.02
done
t1=$(ms)
echo "canary 50%: second set loaded in $((t1 - t0)) ms; $(grep -o 'set loaded.*' "$work/sidecar.log" | tail -1)"
echo "sidecar RSS, both slots: $(awk '/VmRSS/ {print $2/1024 " MB"}' /proc/$sidecar/status)"
echo "etcd db size: $(du -m "$work/etcd/member/snap/db" | cut -f1) MB"
