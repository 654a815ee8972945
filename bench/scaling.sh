#!/usr/bin/env bash
# `make bench-scaling`: how latency grows with candidates per request (1k, 10k, 100k)
# and with the number of shards on one machine (1, 2, 4, 8). Open loop at a low rate
# (5/s) so that queueing does not blur the per-request cost; prints p50 and p99.
# Env: BIN (target/release), SCALING_SHARDS ("1 2 4 8"), SCALING_DURATION (6s)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
# shellcheck source=deploy/local/cluster.sh
. "$root/deploy/local/cluster.sh"
bin=${BIN:-$root/target/release}
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
out="$root/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-$commit-scaling.jsonl"
trap stop_cluster EXIT INT TERM
for n in ${SCALING_SHARDS:-1 2 4 8}; do
  logs=$(mktemp -d -t shardrank-scaling.XXXXXX)
  start_cluster "$bin" "$n" "${BASE_PORT:-7400}" standard "$logs"
  "$bin/shardrank-loadtest" --target "$COORDINATOR_URL" --cluster "${n}x1" --workload rank-1k,rank-10k,rank-100k \
    --rate 5 --duration "${SCALING_DURATION:-6s}" --warmup 2s --json "$out" >/dev/null
  stop_cluster
done
python3 "$here/table.py" "$out"
