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
tick=$(getconf CLK_TCK)
# utime + stime, in clock ticks, of this cluster's processes (children of `shardrank
# up`) whose command line matches $1.
cpu_ticks() {
  local t=0 p
  for p in $(pgrep -P "$UP_PID" -f "$1"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
# run WORKLOAD [loadtest flags...] -> "qps coordinator_ms shards_ms" per request
run() {
  local w=$1 c0 s0 c1 s1 report n
  shift
  "$bin/shardrank-loadtest" --target "$COORDINATOR_URL" --workload "$w" --concurrency 8 \
    --duration 2s --warmup 0s --quiet "$@" >/dev/null
  c0=$(cpu_ticks shardrank-coordinator)
  s0=$(cpu_ticks shardrank-shard)
  report=$("$bin/shardrank-loadtest" --target "$COORDINATOR_URL" --workload "$w" \
    --concurrency 8 --duration "$duration" --warmup 0s --quiet "$@")
  c1=$(cpu_ticks shardrank-coordinator)
  s1=$(cpu_ticks shardrank-shard)
  if ! grep -q 'errors none' <<<"$report"; then
    echo "floor: $w $* had errors:" >&2
    echo "$report" >&2
    exit 1
  fi
  n=$(grep -o 'requests [0-9]*' <<<"$report" | awk '{print $2}')
  awk -v n="$n" -v q="$(grep -o 'qps [0-9.]*' <<<"$report" | awk '{print $2}')" \
    -v c=$((c1 - c0)) -v s=$((s1 - s0)) -v t="$tick" \
    'BEGIN {printf "%.1f %.3f %.3f\n", q, c * 1000 / t / n, s * 1000 / t / n}'
}

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
