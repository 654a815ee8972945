#!/usr/bin/env bash
# `make bench`: a 4x1 cluster on loopback with the standard corpus; for each workload a
# closed loop at concurrency 8 (throughput), then an open loop at 70% of that throughput
# (latency), plus rank-100k at 20/s and timeline at 50/s (the latency targets); JSON
# lines and a markdown
# table in bench/results/, then the cluster stops.
# Env: BIN (target/release), BENCH_DURATION (15s), BENCH_WARMUP (3s),
#      BENCH_CONCURRENCY (8), BENCH_WORKLOADS (rank-1k,rank-10k,rank-100k,timeline),
#      BASE_PORT (7300)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
# shellcheck source=deploy/local/cluster.sh
. "$root/deploy/local/cluster.sh"

bin=${BIN:-$root/target/release}
duration=${BENCH_DURATION:-15s}
warmup=${BENCH_WARMUP:-3s}
concurrency=${BENCH_CONCURRENCY:-8}
workloads=${BENCH_WORKLOADS:-rank-1k,rank-10k,rank-100k,timeline}
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
out="$root/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-$commit.jsonl"
logs=$(mktemp -d -t shardrank-bench.XXXXXX)
trap stop_cluster EXIT INT TERM

echo "== bench: 4x1 cluster, standard corpus, commit $commit (logs in $logs)"
t0=$(date +%s%N)
start_cluster "$bin" 4 "${BASE_PORT:-7300}" standard "$logs"
echo "== cluster healthy after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
load() {
  "$bin/shardrank-loadtest" --target "$COORDINATOR_URL" --cluster 4x1 --corpus standard \
    --duration "$duration" --warmup "$warmup" --json "$out" "$@"
}
for w in ${workloads//,/ }; do
  load --workload "$w" --concurrency "$concurrency"
  qps=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["qps"])' "$out")
  rate=$(python3 -c 'import sys; print(max(1.0, round(float(sys.argv[1]) * 0.7, 1)))' "$qps")
  load --workload "$w" --rate "$rate"
done
case ",$workloads," in *,rank-100k,*) load --workload rank-100k --rate 20 ;; esac
case ",$workloads," in *,timeline,*) load --workload timeline --rate 50 ;; esac
stop_cluster
python3 "$here/table.py" "$out" > "${out%.jsonl}.md"
echo
cat "${out%.jsonl}.md"
echo
echo "results: $out"
