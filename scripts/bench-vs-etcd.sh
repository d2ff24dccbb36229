#!/usr/bin/env bash
# Side-by-side benchmark: a 3-member etcd 3.4 (Debian etcd-server) and a 3-member Skiff
# on this machine, both fsyncing, driven one after the other by the same `skiff bench`
# workloads; then single-member figures, RSS, and start-up time with 1M keys.
# Writes docs/PERFORMANCE.md. Usage: scripts/bench-vs-etcd.sh [QUICK=1 for a short run]
set -euo pipefail
cd "$(dirname "$0")/.."
# The dev profile is optimized (see Cargo.toml) and shares its rocksdb build with the tests.
cargo build --bin skiff
SKIFF=$PWD/target/debug/skiff
WORK=$(mktemp -d /tmp/skiff-bench-XXXXXX)
RESULTS=$WORK/results.jsonl
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
SCALE=${QUICK:+10}
SCALE=${SCALE:-1}

# start SYSTEM N BASEPORT: members on 127.0.0.1:BASEPORT+2i (client) / +2i+1 (peer)
start() {
  local sys=$1 n=$2 base=$3 cluster="" i
  for ((i = 0; i < n; i++)); do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 2 * i + 1))"; done
  ENDPOINTS=""
  for ((i = 0; i < n; i++)); do
    local c=$((base + 2 * i)) p=$((base + 2 * i + 1)) dir=$WORK/$sys-$n-m$i
    ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$c"
    local flags=(--name m$i --data-dir "$dir" --listen-client-urls http://127.0.0.1:$c
      --advertise-client-urls http://127.0.0.1:$c --listen-peer-urls http://127.0.0.1:$p
      --initial-advertise-peer-urls http://127.0.0.1:$p --initial-cluster "$cluster")
    if [ "$sys" = etcd ]; then
      etcd "${flags[@]}" --initial-cluster-token bench-$base --quota-backend-bytes 8589934592 >"$dir.log" 2>&1 &
    else
      "$SKIFF" store "${flags[@]}" --quota-backend-bytes -1 >"$dir.log" 2>&1 &
    fi
    PIDS+=($!)
    MEMBER_PIDS[$i]=$!
  done
  until "$SKIFF" endpoint health --endpoints "$ENDPOINTS" >/dev/null 2>&1; do sleep 0.2; done
}

stop() { for p in "${MEMBER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; MEMBER_PIDS=(); }

bench() { # LABEL ARGS...
  local label=$1; shift
  echo ">> $label" >&2
  "$SKIFF" bench "$@" --endpoints "$ENDPOINTS" --json-out "$RESULTS" --label "$label" 2>/dev/null
}

rss_kb() { local t=0; for p in "${MEMBER_PIDS[@]}"; do t=$((t + $(ps -o rss= -p "$p"))); done; echo $((t / ${#MEMBER_PIDS[@]})); }

declare -a MEMBER_PIDS
for sys in etcd skiff; do
  start $sys 3 $([ $sys = etcd ] && echo 41000 || echo 42000)
  bench "$sys|3|put, 64 clients" put --clients 64 --conns 8 --total $((60000 / SCALE))
  bench "$sys|3|put, 256 clients" put --clients 256 --conns 16 --total $((100000 / SCALE))
  bench "$sys|3|txn-put, 64 clients" txn-put --clients 64 --conns 8 --total $((60000 / SCALE))
  bench "$sys|3|txn-put, 256 clients" txn-put --clients 256 --conns 16 --total $((100000 / SCALE))
  bench "$sys|3|range linearizable, 64 clients" range --clients 64 --conns 8 --total $((100000 / SCALE))
  bench "$sys|3|range serializable, 64 clients" range --serializable --clients 64 --conns 8 --total $((100000 / SCALE))
  bench "$sys|3|put at 1000/s offered, 64 clients" put --clients 64 --conns 8 --rate 1000 --total $((20000 / SCALE))
  bench "$sys|3|watch, 10000 watchers, 100 puts/s" watch --watchers 10000 --conns 10 --rate 100 --total $((1000 / SCALE))
  bench "$sys|3|lease keep-alive, 1000 leases" lease-keepalive --leases 1000 --clients 64 --conns 8 --total $((60000 / SCALE))
  echo "{\"label\":\"$sys|3|rss\",\"rss_kb\":$(rss_kb)}" >>"$RESULTS"
  stop
  start $sys 1 $([ $sys = etcd ] && echo 43000 || echo 44000)
  bench "$sys|1|put, 64 clients" put --clients 64 --conns 8 --total $((60000 / SCALE))
  bench "$sys|1|range linearizable, 64 clients" range --clients 64 --conns 8 --total $((100000 / SCALE))
  # Start-up with 1M keys: load, restart, time until a linearizable read succeeds.
  bench "$sys|1|fill 1M keys, 64 per txn" fill --batch 64 --clients 16 --conns 4 --key-space $((1000000 / SCALE)) --val-size 64
  dir=$WORK/$sys-1-m0
  cmdline=$(tr '\0' ' ' </proc/${MEMBER_PIDS[0]}/cmdline)
  stop
  t0=$(date +%s.%N)
  $cmdline >>"$dir.log" 2>&1 &
  PIDS+=($!); MEMBER_PIDS[0]=$!
  # skiff endpoint health = a linearizable read; it fails at once while the port is closed
  # (etcdctl would back off for a second inside one attempt and blur the figure).
  until "$SKIFF" endpoint health --endpoints "$ENDPOINTS" --timeout 2 >/dev/null 2>&1; do sleep 0.02; done
  t1=$(date +%s.%N)
  echo "{\"label\":\"$sys|1|startup\",\"seconds\":$(python3 -c "print(round($t1 - $t0, 3))"),\"keys\":$((1000000 / SCALE)),\"rss_kb\":$(rss_kb)}" >>"$RESULTS"
  stop
done

# The control-plane section (written from `skiff bench-cluster` runs) is kept as it is.
KEEP=$(sed -n '/^# Control plane at scale/,$p' docs/PERFORMANCE.md 2>/dev/null || true)
python3 scripts/perf_report.py "$RESULTS" "bash scripts/bench-vs-etcd.sh${QUICK:+ (QUICK=1)}" >docs/PERFORMANCE.md.new
if [ -n "$KEEP" ]; then printf '\n%s\n' "$KEEP" >>docs/PERFORMANCE.md.new; fi
mv docs/PERFORMANCE.md.new docs/PERFORMANCE.md
echo "wrote docs/PERFORMANCE.md" >&2
