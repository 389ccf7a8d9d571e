#!/usr/bin/env bash
# Starts a local Switchboard: a coordinator with its private etcd (--dev) and one sidecar
# serving the namespace `catalog`. Ctrl-C stops both, sidecar first.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/debug
mkdir -p .switchboard

for port in 2379 2380 7100 7101 7070 7071; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port is in use: stop whatever listens there (an earlier 'make run'?) and try again" >&2
    exit 1
  fi
done

"$bin/switchboard-coordinator" --dev 2> .switchboard/coordinator.log &
coordinator=$!
sidecar=""
stop() {
  [ -n "$sidecar" ] && kill "$sidecar" 2>/dev/null && wait "$sidecar" 2>/dev/null
  kill "$coordinator" 2>/dev/null && wait "$coordinator" 2>/dev/null
  echo "stopped."
}
trap stop EXIT
trap 'exit 0' INT TERM

wait_for() { # url what
  for _ in $(seq 1 200); do
    curl -fs "$1" >/dev/null 2>&1 && return 0
    kill -0 "$coordinator" 2>/dev/null || { echo "the coordinator exited; see .switchboard/coordinator.log" >&2; tail -5 .switchboard/coordinator.log >&2; exit 1; }
    sleep 0.1
  done
  echo "$2 did not come up; see the logs in .switchboard/" >&2
  exit 1
}
wait_for http://127.0.0.1:7101/healthz coordinator

"$bin/switchboard-sidecar" --namespace catalog --id sidecar-1 2> .switchboard/sidecar-1.log &
sidecar=$!
wait_for http://127.0.0.1:7070/healthz sidecar

cat <<MSG
Switchboard is running:
  coordinator  admin gRPC 127.0.0.1:7100, HTTP http://127.0.0.1:7101  (log: .switchboard/coordinator.log)
  etcd         http://127.0.0.1:2379, data in .switchboard/dev-etcd
  sidecar-1    HTTP http://127.0.0.1:7070, gRPC 127.0.0.1:7071, namespace catalog  (log: .switchboard/sidecar-1.log)

In another terminal: export PATH="\$PWD/target/debug:\$PATH" and follow the tour in README.md;
its last step runs the example application (switchboard-example-client) into an automatic flip-back.
Ctrl-C stops everything.
MSG
wait "$coordinator"
