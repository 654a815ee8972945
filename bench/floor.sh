#!/usr/bin/env bash
# `make bench-floor`: what a request costs with no ranking work in it, beside the real
# request. On a 4x1 cluster (standard corpus) each workload runs twice in closed loop:
# with the corpus' ids (the real request), then with as many ids the corpus does not
# hold (19 digits, as the corpus' snowflakes, so they take the same routing path),
# which the shards look up and drop. The second is the floor: the client's and the
# shards' RPCs, routing, transfers and the id lookups, without scoring. For each it
# prints qps and the CPU time per request of the coordinator and of the shards (from
# /proc), so that a throughput target can be set against what the fan-out alone costs.
# Env: BIN (target/release), FLOOR_DURATION (8s), FLOOR_WORKLOADS
#      (rank-1k,rank-10k,rank-100k), FLOOR_SHARDS (4; against 1, what the calls
#      themselves cost shows), BASE_PORT (7500)
set -euo pipefail
shopt -s inherit_errexit # a failed run inside $(...) stops the script too
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
# shellcheck source=deploy/local/cluster.sh
. "$root/deploy/local/cluster.sh"

bin=${BIN:-$root/target/release}
duration=${FLOOR_DURATION:-8s}
workloads=${FLOOR_WORKLOADS:-rank-1k,rank-10k,rank-100k}
shards=${FLOOR_SHARDS:-4}
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
out="$root/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-$commit-floor-${shards}x1.md"
logs=$(mktemp -d -t shardrank-floor.XXXXXX)
trap 'stop_cluster; rm -f "$logs/unknown-ids.txt" "$out.tmp"' EXIT INT TERM

# A million distinct ids from 10^18 up: snowflakes of that size date from 2018, years
# before any post of the corpus, so no shard holds them.
python3 -c 'import sys
sys.stdout.write("".join(f"{10**18 + 7919 * i}\n" for i in range(1_000_000)))' \
  > "$logs/unknown-ids.txt"

start_cluster "$bin" "$shards" "${BASE_PORT:-7500}" standard "$logs"
# shellcheck source=bench/measure.sh
. "$here/measure.sh"
run() { measure "$bin" "$duration" "$@"; }

{
  echo "Fan-out floor, ${shards}x1, standard corpus, commit $commit, $(date -u +%Y-%m-%d), closed loop at 8, $duration per run"
  echo
  echo "| workload | qps | CPU ms per request (coordinator + shards) | floor qps | floor CPU ms | floor's share of the CPU |"
  echo "| --- | --- | --- | --- | --- | --- |"
  for w in ${workloads//,/ }; do
    real=$(run "$w" --corpus standard)
    floor=$(run "$w" --ids-file "$logs/unknown-ids.txt")
    read -r q c s <<<"$real"
    read -r fq fc fs <<<"$floor"
    awk -v w="$w" -v q="$q" -v c="$c" -v s="$s" -v fq="$fq" -v fc="$fc" -v fs="$fs" \
      'BEGIN {printf "| %s | %s | %.2f (%.2f + %.2f) | %s | %.2f (%.2f + %.2f) | %.0f%% |\n",
              w, q, c + s, c, s, fq, fc + fs, fc, fs, 100 * (fc + fs) / (c + s)}'
  done
} | tee "$out.tmp" # (kept only when every run went through)
mv "$out.tmp" "$out"
echo
echo "results: $out"
