#!/usr/bin/env bash
# `make bench-compare BASE=<commit or directory of release binaries>`: whether a change
# made the cluster faster, on a machine whose speed drifts by 20% from one hour to the
# next (one `make bench` before and one after cannot tell). Runs PAIRS interleaved
# pairs: in each, the base's binaries and the candidate's (BIN) each get a fresh 4x1
# cluster on the standard corpus and a closed loop at 8 per workload; the order
# alternates between pairs, so that a drift favours neither. Prints every run (qps and
# CPU milliseconds per request of the coordinator and of the shards, from /proc), then
# per workload the medians and in how many pairs the candidate did better.
# A commit is built once in a worktree under target/compare/ (a first build there takes
# as long as a clean release build).
# Env: BASE (required), BIN (target/release), PAIRS (4), COMPARE_DURATION (8s),
#      COMPARE_WORKLOADS (rank-1k,rank-10k,rank-100k), BASE_PORT (7400)
set -euo pipefail
shopt -s inherit_errexit
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
# shellcheck source=deploy/local/cluster.sh
. "$root/deploy/local/cluster.sh"
# shellcheck source=bench/measure.sh
. "$here/measure.sh"

base=${BASE:?"set BASE to a commit or a directory of release binaries (make bench-compare BASE=HEAD~1)"}
bin=${BIN:-$root/target/release}
pairs=${PAIRS:-4}
duration=${COMPARE_DURATION:-8s}
workloads=${COMPARE_WORKLOADS:-rank-1k,rank-10k,rank-100k}
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
case $pairs in '' | *[!0-9]* | 0) echo "bench-compare: PAIRS must be a positive number, not '$pairs'" >&2; exit 2 ;; esac

if [ -d "$base" ]; then
  base_bin=$(cd "$base" && pwd)
  base_name=$base
else
  sha=$(git -C "$root" rev-parse --short --verify "$base^{commit}" 2>/dev/null) ||
    { echo "bench-compare: BASE '$base' is neither a directory nor a commit" >&2; exit 2; }
  tree="$root/target/compare/$sha"
  if [ ! -x "$tree/target/release/shardrank" ]; then
    rm -rf "$tree"
    git -C "$root" worktree prune
    git -C "$root" worktree add --detach "$tree" "$sha" >/dev/null
    echo "== building $sha in $tree"
    (cd "$tree" && cargo build --release --bins -q)
  fi
  base_bin="$tree/target/release"
  base_name=$sha
fi
for b in "$base_bin" "$bin"; do
  [ -x "$b/shardrank-loadtest" ] || { echo "bench-compare: no binaries in $b (cargo build --release --bins)" >&2; exit 2; }
done

logs=$(mktemp -d -t shardrank-compare.XXXXXX)
runs="$logs/runs.tsv"
out="$root/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-$commit-vs-$(basename "$base_name")-compare.md"
trap 'stop_cluster; rm -f "$out.tmp"' EXIT INT TERM

# side NAME BIN PAIR: one fresh cluster, every workload once.
side() {
  local name=$1 b=$2 pair=$3 w r
  start_cluster "$b" 4 "${BASE_PORT:-7400}" standard "$logs" >/dev/null
  for w in ${workloads//,/ }; do
    r=$(measure "$b" "$duration" "$w")
    printf '%s\t%s\t%s\t%s\n' "$pair" "$name" "$w" "${r// /$'\t'}" >>"$runs"
    printf '  pair %s  %-9s %-10s qps %8s  CPU ms per request: coordinator %s, shards %s\n' \
      "$pair" "$name" "$w" $r
  done
  stop_cluster
}

echo "== $pairs interleaved pairs: base $base_name ($base_bin) against $commit ($bin)"
for ((i = 1; i <= pairs; i++)); do
  if ((i % 2)); then
    side base "$base_bin" "$i"
    side candidate "$bin" "$i"
  else
    side candidate "$bin" "$i"
    side base "$base_bin" "$i"
  fi
done

python3 - "$runs" "$base_name" "$commit" "$duration" >"$out.tmp" <<'PY'
import statistics, sys
from collections import defaultdict
path, base, cand, duration = sys.argv[1:]
runs = defaultdict(dict)  # (workload, pair) -> side -> (qps, coord, shards)
order = []
for line in open(path):
    pair, side, w, q, c, s = line.split("\t")
    runs[(w, pair)][side] = (float(q), float(c), float(s))
    if w not in order:
        order.append(w)
print(f"Interleaved pairs, 4x1, standard corpus, closed loop at 8, {duration} per run: "
      f"base {base} against candidate {cand}")
print()
print("| workload | pairs | qps, base -> candidate (medians) | better qps | CPU ms per request, base -> candidate (medians: coordinator + shards) | lower CPU |")
print("| --- | --- | --- | --- | --- | --- |")
for w in order:
    pairs = [v for (wl, _), v in sorted(runs.items()) if wl == w and len(v) == 2]
    med = lambda side, i: statistics.median(p[side][i] for p in pairs)
    cpu = lambda p, side: p[side][1] + p[side][2]
    faster = sum(p["candidate"][0] > p["base"][0] for p in pairs)
    cheaper = sum(cpu(p, "candidate") < cpu(p, "base") for p in pairs)
    mc = lambda side: statistics.median(cpu(p, side) for p in pairs)
    print(f"| {w} | {len(pairs)} | {med('base', 0):.1f} -> {med('candidate', 0):.1f} "
          f"({100 * (med('candidate', 0) / med('base', 0) - 1):+.1f}%) | {faster} of {len(pairs)} "
          f"| {mc('base'):.3f} ({med('base', 1):.3f} + {med('base', 2):.3f}) -> "
          f"{mc('candidate'):.3f} ({med('candidate', 1):.3f} + {med('candidate', 2):.3f}) "
          f"({100 * (mc('candidate') / mc('base') - 1):+.1f}%) | {cheaper} of {len(pairs)} |")
PY
echo
cat "$out.tmp"
mv "$out.tmp" "$out"
echo
echo "results: $out"
