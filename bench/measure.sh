# Sourced by bench scripts: CPU per request by process on a running cluster (started
# with deploy/local/cluster.sh's start_cluster, which sets UP_PID and COORDINATOR_URL).

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

# measure BIN DURATION WORKLOAD [loadtest flags...] -> "qps coordinator_ms shards_ms":
# closed loop at 8 for DURATION after 2 s of warm-up, CPU milliseconds per request.
# A run with errors stops the calling script.
measure() {
  local bin=$1 duration=$2 w=$3 c0 s0 c1 s1 report n
  shift 3
  "$bin/shardrank-loadtest" --target "$COORDINATOR_URL" --workload "$w" --concurrency 8 \
    --duration 2s --warmup 0s --quiet "$@" >/dev/null
  c0=$(cpu_ticks shardrank-coordinator)
  s0=$(cpu_ticks shardrank-shard)
  report=$("$bin/shardrank-loadtest" --target "$COORDINATOR_URL" --workload "$w" \
    --concurrency 8 --duration "$duration" --warmup 0s --quiet "$@")
  c1=$(cpu_ticks shardrank-coordinator)
  s1=$(cpu_ticks shardrank-shard)
  if ! grep -q 'errors none' <<<"$report"; then
    echo "measure: $w $* had errors:" >&2
    echo "$report" >&2
    exit 1
  fi
  n=$(grep -o 'requests [0-9]*' <<<"$report" | awk '{print $2}')
  awk -v n="$n" -v q="$(grep -o 'qps [0-9.]*' <<<"$report" | awk '{print $2}')" \
    -v c=$((c1 - c0)) -v s=$((s1 - s0)) -v t="$tick" \
    'BEGIN {printf "%.1f %.3f %.3f\n", q, c * 1000 / t / n, s * 1000 / t / n}'
}
