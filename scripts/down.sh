#!/usr/bin/env bash
# Stops the store cluster `make store-up` started. Data stays in DIR; `make store-up` resumes it.
set -euo pipefail
dir=${1:?data directory}
for pidfile in "$dir"/*.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "stopped $(basename "$pidfile" .pid)"
  fi
  rm -f "$pidfile"
done
echo "data kept in $dir (remove it to start from scratch)"
