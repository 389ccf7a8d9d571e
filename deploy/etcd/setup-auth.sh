#!/usr/bin/env bash
# Enables etcd authentication with least privilege for Switchboard:
#   - user `coordinator`: read-write on PREFIX/ (and read on the gate keys given with --gate-keys);
#   - user `sidecar-NS` for each namespace NS: read on PREFIX/ns/NS/ and on PREFIX/coordinator/
#     (the election and the replicas' addresses, to find the leader its outcomes stream to), and
#     write on its own health records PREFIX/ns/NS/health/ (the one thing a sidecar writes);
#     nothing else.
#   - user `root`, which etcd needs to enable authentication.
#
# Usage: setup-auth.sh --endpoints URLS [--prefix /switchboard] [--gate-keys PREFIX] NS...
# Passwords come from the environment (never from flags, which `ps` shows):
#   ETCD_ROOT_PASSWORD, SWITCHBOARD_COORDINATOR_PASSWORD, SWITCHBOARD_SIDECAR_PASSWORD
# (one password for every sidecar user; a missing one is generated and printed once).
# Running it again is harmless: existing users and roles are kept, grants are re-applied.
# Start the coordinator with `--etcd-user coordinator` and a sidecar of NS with
# `--etcd-user sidecar-NS`, each with SWITCHBOARD_ETCD_PASSWORD in its environment.
set -euo pipefail

endpoints=""
prefix="/switchboard"
gate_keys=""
namespaces=()
while [ $# -gt 0 ]; do
  case "$1" in
    --endpoints) endpoints="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --gate-keys) gate_keys="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "setup-auth.sh: unknown flag $1" >&2; exit 2 ;;
    *) namespaces+=("$1"); shift ;;
  esac
done
if [ -z "$endpoints" ] || [ "${#namespaces[@]}" -eq 0 ]; then
  echo "usage: setup-auth.sh --endpoints URLS [--prefix P] [--gate-keys PREFIX] NS..." >&2
  exit 2
fi
command -v etcdctl >/dev/null || { echo "setup-auth.sh: etcdctl is missing (Debian: etcd-client)" >&2; exit 1; }
for ns in "${namespaces[@]}"; do
  [[ "$ns" =~ ^[a-z0-9_-][a-z0-9._-]{0,63}$ ]] || { echo "setup-auth.sh: bad namespace $ns" >&2; exit 2; }
done
prefix="${prefix%/}"

generate() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
root_password="${ETCD_ROOT_PASSWORD:-}"
coordinator_password="${SWITCHBOARD_COORDINATOR_PASSWORD:-}"
sidecar_password="${SWITCHBOARD_SIDECAR_PASSWORD:-}"
[ -n "$root_password" ] || { root_password="$(generate)"; echo "root password: $root_password"; }
[ -n "$coordinator_password" ] || { coordinator_password="$(generate)"; echo "coordinator password: $coordinator_password"; }
[ -n "$sidecar_password" ] || { sidecar_password="$(generate)"; echo "sidecar password: $sidecar_password"; }

# Before authentication is on, no user is needed; after, root's (through the environment, so
# that the password is not on a command line). etcdctl 3.4 has no `auth status`: an anonymous
# request fails once authentication is on.
auth_on=true
etcdctl --endpoints "$endpoints" user list >/dev/null 2>&1 && auth_on=false
if $auth_on; then
  ctl() { ETCDCTL_USER="root:$root_password" etcdctl --endpoints "$endpoints" "$@"; }
else
  ctl() { etcdctl --endpoints "$endpoints" "$@"; }
fi
# Creates a user unless it exists; the password goes through stdin, not the command line.
user() {
  if ! ctl user get "$1" >/dev/null 2>&1; then
    printf '%s\n' "$2" | ctl user add "$1" --interactive=false >/dev/null
  fi
}
role() { ctl role get "$1" >/dev/null 2>&1 || ctl role add "$1" >/dev/null; }

user root "$root_password"
ctl user grant-role root root >/dev/null 2>&1 || true

role switchboard-coordinator
ctl role grant-permission switchboard-coordinator readwrite "$prefix/" --prefix=true >/dev/null
if [ -n "$gate_keys" ]; then
  ctl role grant-permission switchboard-coordinator read "$gate_keys" --prefix=true >/dev/null
fi
user coordinator "$coordinator_password"
ctl user grant-role coordinator switchboard-coordinator >/dev/null

for ns in "${namespaces[@]}"; do
  role "switchboard-sidecar-$ns"
  ctl role grant-permission "switchboard-sidecar-$ns" read "$prefix/ns/$ns/" --prefix=true >/dev/null
  ctl role grant-permission "switchboard-sidecar-$ns" readwrite "$prefix/ns/$ns/health/" --prefix=true >/dev/null
  ctl role grant-permission "switchboard-sidecar-$ns" read "$prefix/coordinator/" --prefix=true >/dev/null
  user "sidecar-$ns" "$sidecar_password"
  ctl user grant-role "sidecar-$ns" "switchboard-sidecar-$ns" >/dev/null
done

if ! $auth_on; then
  ctl auth enable >/dev/null
fi
echo "etcd authentication on: coordinator read-write on $prefix/, sidecars read on their namespace"
