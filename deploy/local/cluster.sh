# shellcheck shell=bash
# Start and stop a local cluster on loopback; sourced by demo.sh and bench/run.sh.
#   start_cluster BIN_DIR SHARDS BASE_PORT CORPUS LOG_DIR   -> sets COORDINATOR_URL
#   stop_cluster
# Shards listen on BASE_PORT+1.., the coordinator on BASE_PORT. A process that dies
# during start-up is reported with the tail of its log.

CLUSTER_PIDS=()

stop_cluster() {
  local p
  for p in "${CLUSTER_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${CLUSTER_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  CLUSTER_PIDS=()
}

start_cluster() {
  local bin=$1 shards=$2 base=$3 corpus=$4 logs=$5 i port urls=()
  for b in shardrank-shard shardrank-coordinator shardrank; do
    [ -x "$bin/$b" ] || { echo "cluster: $bin/$b is missing; build with: cargo build --release --bins" >&2; return 2; }
  done
  for ((i = 0; i < shards; i++)); do
    port=$((base + 1 + i))
    "$bin/shardrank-shard" --listen "127.0.0.1:$port" --shard-index "$i" --num-shards "$shards" \
      --corpus "$corpus" 2>"$logs/shard-$i.log" &
    CLUSTER_PIDS+=($!)
    urls+=("http://127.0.0.1:$port")
  done
  "$bin/shardrank-coordinator" --listen "127.0.0.1:$base" --shards "$(IFS=,; echo "${urls[*]}")" \
    --corpus "$corpus" 2>"$logs/coordinator.log" &
  CLUSTER_PIDS+=($!)
  COORDINATOR_URL="http://127.0.0.1:$base"
  if ! "$bin/shardrank" wait --target "$COORDINATOR_URL" --timeout-secs 180; then
    echo "cluster: not healthy; log tails:" >&2
    for f in "$logs"/*.log; do echo "--- $f" >&2; tail -3 "$f" >&2; done
    return 1
  fi
  for p in "${CLUSTER_PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "cluster: process $p died during start-up" >&2; return 1; }
  done
}
