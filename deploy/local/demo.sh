#!/usr/bin/env bash
# Starts a local 4x1 cluster (4 shards, 1 coordinator) on loopback with the standard
# corpus, sends real Rank requests of 1k, 10k and 100k candidates, prints what came back
# and how long it took, and stops everything (also on Ctrl-C or an error).
#
# Usage: deploy/local/demo.sh [BIN_DIR]   (default target/release)
# Env:   SHARDS (4), BASE_PORT (7000: coordinator; shards on the ports after it),
#        CORPUS (standard), REQUESTS (10 per size)
set -euo pipefail

bin=${1:-target/release}
shards=${SHARDS:-4}
base=${BASE_PORT:-7000}
corpus=${CORPUS:-standard}
requests=${REQUESTS:-10}
logs=$(mktemp -d -t shardrank-demo.XXXXXX)
pids=()

stop() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop EXIT INT TERM

for b in shardrank-shard shardrank-coordinator shardrank; do
  [ -x "$bin/$b" ] || { echo "demo: $bin/$b is missing; build with: cargo build --release --bins" >&2; exit 2; }
done

urls=()
for ((i = 0; i < shards; i++)); do
  port=$((base + 1 + i))
  "$bin/shardrank-shard" --listen "127.0.0.1:$port" --shard-index "$i" --num-shards "$shards" \
    --corpus "$corpus" 2>"$logs/shard-$i.log" &
  pids+=($!)
  urls+=("http://127.0.0.1:$port")
done
shard_list=$(IFS=,; echo "${urls[*]}")
"$bin/shardrank-coordinator" --listen "127.0.0.1:$base" --shards "$shard_list" --corpus "$corpus" \
  2>"$logs/coordinator.log" &
pids+=($!)

echo "== shardrank demo: $shards shards + coordinator on 127.0.0.1:$base, corpus $corpus (logs in $logs)"
for n in 1000 10000 100000; do
  echo
  echo "== $requests Rank requests of $n candidates, top_k 100"
  "$bin/shardrank" rank --target "http://127.0.0.1:$base" --corpus "$corpus" \
    --candidates "$n" --requests "$requests" --top-k 100 --show "$([ "$n" = 1000 ] && echo 5 || echo 0)" \
    --wait-secs 120 || { echo "demo: requests failed; last coordinator log lines:"; tail -5 "$logs/coordinator.log"; exit 1; }
done
echo
echo "== stopping the cluster"
