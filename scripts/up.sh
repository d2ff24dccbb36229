#!/usr/bin/env bash
# Starts a local 3-member Skiff store cluster in the background (used by `make store-up`).
# Usage: scripts/up.sh DIR SKIFF_BINARY
set -euo pipefail
dir=${1:?data directory}
bin=${2:?skiff binary}
mkdir -p "$dir"
names=(s1 s2 s3)
client_ports=(2379 22379 32379)
peer_ports=(2380 22380 32380)
cluster=""
for i in 0 1 2; do
  cluster+="${cluster:+,}${names[$i]}=http://127.0.0.1:${peer_ports[$i]}"
done
for i in 0 1 2; do
  name=${names[$i]}
  pidfile="$dir/$name.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "$name already runs (pid $(cat "$pidfile"))"
    continue
  fi
  nohup "$bin" store --name "$name" --data-dir "$dir/$name" \
    --listen-client-urls "http://127.0.0.1:${client_ports[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${client_ports[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
    --initial-cluster "$cluster" --initial-cluster-state new \
    >"$dir/$name.log" 2>&1 &
  echo $! >"$pidfile"
done
endpoints="127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379"
echo -n "waiting for the cluster"
for _ in $(seq 1 100); do
  if "$bin" endpoint health --endpoints "$endpoints" >/dev/null 2>&1; then
    echo " ready."
    "$bin" endpoint status --endpoints "$endpoints"
    cat <<MSG

Skiff store cluster is up (data and logs under $dir).
  export ETCDCTL_API=3 ENDPOINTS=$endpoints
  etcdctl --endpoints=\$ENDPOINTS put hello world
  etcdctl --endpoints=\$ENDPOINTS get hello
Stop it with: make store-down
MSG
    exit 0
  fi
  echo -n "."
  sleep 0.2
done
echo
echo "the cluster did not become healthy; see the logs in $dir/*.log" >&2
exit 1
