# shellcheck shell=bash
# Start and stop a local cluster with `shardrank up`; sourced by demo.sh and bench/*.sh.
#   start_cluster BIN_DIR SHARDS BASE_PORT CORPUS LOG_DIR   -> sets COORDINATOR_URL
#   stop_cluster
# The coordinator listens on BASE_PORT, shard i on BASE_PORT+1+i.

UP_PID=

stop_cluster() {
  if [ -n "$UP_PID" ]; then
    kill -TERM "$UP_PID" 2>/dev/null || true
    wait "$UP_PID" 2>/dev/null || true
    UP_PID=
  fi
}

start_cluster() {
  local bin=$1 shards=$2 base=$3 corpus=$4 logs=$5
  [ -x "$bin/shardrank" ] || { echo "cluster: $bin/shardrank is missing; build with: cargo build --release --bins" >&2; return 2; }
  "$bin/shardrank" up --shards "$shards" --base-port "$base" --corpus "$corpus" \
    --log-dir "$logs" --bin-dir "$bin" >"$logs/up.out" 2>&1 &
  UP_PID=$!
  until grep -q '^cluster up' "$logs/up.out" 2>/dev/null; do
    if ! kill -0 "$UP_PID" 2>/dev/null; then
      echo "cluster: shardrank up failed:" >&2
      cat "$logs/up.out" >&2
      UP_PID=
      return 1
    fi
    sleep 0.1
  done
  grep '^cluster up' "$logs/up.out"
  COORDINATOR_URL="http://127.0.0.1:$base"
}
