#!/usr/bin/env bash
# Starts a local 4x1 cluster (4 shards, 1 coordinator) on loopback with the standard
# corpus, sends real Rank requests of 1k, 10k and 100k candidates, prints what came back
# and how long it took, and stops everything (also on Ctrl-C or an error).
#
# Usage: deploy/local/demo.sh [BIN_DIR]   (default target/release)
# Env:   SHARDS (4), BASE_PORT (7000: coordinator; shards on the ports after it),
#        CORPUS (standard), REQUESTS (10 per size)
set -euo pipefail
here=$(dirname "$0")
# shellcheck source=deploy/local/cluster.sh
. "$here/cluster.sh"

bin=${1:-target/release}
shards=${SHARDS:-4}
base=${BASE_PORT:-7000}
corpus=${CORPUS:-standard}
requests=${REQUESTS:-10}
logs=$(mktemp -d -t shardrank-demo.XXXXXX)
trap stop_cluster EXIT INT TERM

echo "== shardrank demo: $shards shards + coordinator on 127.0.0.1:$base, corpus $corpus (logs in $logs)"
t0=$(date +%s%N)
start_cluster "$bin" "$shards" "$base" "$corpus" "$logs"
echo "== cluster healthy $(( ($(date +%s%N) - t0) / 1000000 )) ms after start"
for n in 1000 10000 100000; do
  echo
  echo "== $requests Rank requests of $n candidates, top_k 100"
  "$bin/shardrank" rank --target "$COORDINATOR_URL" --corpus "$corpus" \
    --candidates "$n" --requests "$requests" --top-k 100 --show "$([ "$n" = 1000 ] && echo 5 || echo 0)" \
    || { echo "demo: requests failed; last coordinator log lines:"; tail -5 "$logs/coordinator.log"; exit 1; }
done
echo
echo "== stopping the cluster"
