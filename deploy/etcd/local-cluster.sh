#!/usr/bin/env bash
# Starts, checks and stops a local 3-member etcd cluster on loopback, for trying Switchboard
# against a real cluster (leader failover, one member down) on one machine.
#
# Usage:
#   local-cluster.sh start  --dir DIR [--client-ports P1,P2,P3] [--peer-ports P1,P2,P3] [-- ETCD_FLAGS...]
#   local-cluster.sh status --dir DIR
#   local-cluster.sh stop   --dir DIR
#
# start   runs the members m1, m2, m3 in the background, each with its data in DIR/mN.data and
#         its log in DIR/mN.log, waits until all three answer `etcdctl endpoint health` (30 s at
#         most), and prints the client endpoints, comma-separated, as the only line on stdout.
#         Default ports: clients 2379,22379,32379; peers 2380,22380,32380. Flags after `--` go to
#         every member (for example --quota-backend-bytes=8589934592).
# status  prints `etcdctl endpoint health` for every member of the last start in DIR; exits 1
#         unless all are healthy.
# stop    stops the members (SIGTERM, then SIGKILL after 10 s) and keeps their data, so that a
#         later start resumes the same cluster. Remove DIR to start from nothing.
#
# Authentication and roles: run setup-auth.sh (beside this script) against the endpoints that
# start printed, e.g. `setup-auth.sh --endpoints "$(local-cluster.sh start --dir d)" catalog`.
# Needs etcd and etcdctl (Debian: etcd-server, etcd-client).
set -euo pipefail

usage() {
  sed -n '4,7p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { echo "local-cluster.sh: $*" >&2; exit 1; }

help() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) help ;; esac
command="$1"; shift
dir=""
client_ports="2379,22379,32379"
peer_ports="2380,22380,32380"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) [ $# -ge 2 ] || usage; dir="$2"; shift 2 ;;
    --client-ports) [ $# -ge 2 ] || usage; client_ports="$2"; shift 2 ;;
    --peer-ports) [ $# -ge 2 ] || usage; peer_ports="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) help ;;
    *) echo "local-cluster.sh: unknown argument $1" >&2; usage ;;
  esac
done
[ -n "$dir" ] || { echo "local-cluster.sh: --dir is required" >&2; usage; }
case "$command" in start|status|stop) ;; *) echo "local-cluster.sh: unknown command $command" >&2; usage ;; esac
command -v etcd >/dev/null || die "etcd is missing (Debian: etcd-server)"
command -v etcdctl >/dev/null || die "etcdctl is missing (Debian: etcd-client)"

IFS=, read -r -a clients <<<"$client_ports"
IFS=, read -r -a peers <<<"$peer_ports"
[ "${#clients[@]}" -eq 3 ] || die "--client-ports needs exactly 3 ports, got '$client_ports'"
[ "${#peers[@]}" -eq 3 ] || die "--peer-ports needs exactly 3 ports, got '$peer_ports'"
for port in "${clients[@]}" "${peers[@]}"; do
  if ! [[ "$port" =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    die "bad port '$port'"
  fi
done

names=(m1 m2 m3)
endpoints=""
initial_cluster=""
for i in 0 1 2; do
  endpoints+="${endpoints:+,}http://127.0.0.1:${clients[$i]}"
  initial_cluster+="${initial_cluster:+,}${names[$i]}=http://127.0.0.1:${peers[$i]}"
done

# The pid of member $1 if it is running: its pid file names a live etcd process.
running_pid() {
  local pid_file="$dir/$1.pid" pid
  [ -f "$pid_file" ] || return 1
  pid="$(cat "$pid_file")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  # A pid is reused after a process exits: only an etcd process counts.
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = etcd ] || return 1
  echo "$pid"
}

healthy() { etcdctl --endpoints "$1" --dial-timeout=1s --command-timeout=2s endpoint health >/dev/null 2>&1; }

# Members are stopped one at a time, each waited for: a leader hands its leadership to a
# running member on SIGTERM, which is quick, while stopping all at once leaves the leader trying
# to reach stopped peers for several seconds. A member that takes over 10 s is killed.
stop_members() {
  local name pid deadline
  for name in "${names[@]}"; do
    if pid="$(running_pid "$name")"; then
      kill -TERM "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
      while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then
        echo "local-cluster.sh: member $name (pid $pid) did not stop in 10 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
    rm -f "$dir/$name.pid"
  done
}

case "$command" in
  start)
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    for name in "${names[@]}"; do
      if pid="$(running_pid "$name")"; then die "member $name already runs in $dir (pid $pid): stop it first"; fi
    done
    for port in "${clients[@]}" "${peers[@]}"; do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port on 127.0.0.1 is in use; choose others with --client-ports/--peer-ports"
      fi
    done
    # Each cluster gets its own token, so that members of an earlier cluster on the same ports
    # can never join this one.
    token="switchboard-local-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    for i in 0 1 2; do
      name="${names[$i]}"
      client="http://127.0.0.1:${clients[$i]}"
      peer="http://127.0.0.1:${peers[$i]}"
      # The members outlive this script: their output goes to a log file and stdin is closed,
      # so that a caller reading our stdout sees its end when we exit.
      nohup etcd --name "$name" --data-dir "$dir/$name.data" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$initial_cluster" --initial-cluster-state new \
        --initial-cluster-token "$token" \
        ${extra[@]+"${extra[@]}"} </dev/null >"$dir/$name.log" 2>&1 &
      echo $! >"$dir/$name.pid"
    done
    # A cluster answers only once a quorum has formed, so every member is asked in turn until
    # each is healthy or the deadline passes; a member that exited stops the wait at once.
    deadline=$((SECONDS + 30))
    for i in 0 1 2; do
      name="${names[$i]}"
      until healthy "http://127.0.0.1:${clients[$i]}"; do
        if ! running_pid "$name" >/dev/null; then
          tail -n 5 "$dir/$name.log" >&2 || true
          stop_members
          die "member $name exited during start; its log is $dir/$name.log"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
          stop_members
          die "member $name was not healthy within 30 s; its log is $dir/$name.log"
        fi
        sleep 0.2
      done
    done
    echo "$endpoints" >"$dir/endpoints"
    echo "3 members healthy; logs and data in $dir; stop with: $0 stop --dir $dir" >&2
    echo "$endpoints"
    ;;
  status)
    # The endpoints of the last start, so that status needs no port flags.
    [ -f "$dir/endpoints" ] || die "no cluster was started in $dir"
    ok=true
    IFS=, read -r -a started <"$dir/endpoints"
    for endpoint in "${started[@]}"; do
      etcdctl --endpoints "$endpoint" --dial-timeout=1s --command-timeout=2s endpoint health || ok=false
    done
    $ok
    ;;
  stop)
    [ -d "$dir" ] || die "$dir does not exist"
    stop_members
    echo "stopped; data kept in $dir" >&2
    ;;
esac
