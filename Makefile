# shardrank: the two commands of the README, and the pieces they are made of.
.PHONY: all build release demo test bench bench-scaling bench-floor bench-compare chaos ingest-bench microbench k8s-validate fmt lint clean

CARGO ?= cargo

all: build

build:
	$(CARGO) build --workspace --bins

release:
	$(CARGO) build --release --workspace --bins

# The main job: a local 4x1 cluster, real Rank requests, a short report, clean stop.
demo: release
	deploy/local/demo.sh target/release

# Every test: unit tests, then the cluster tests against the real binaries. The
# binaries are built first because the cluster tests start them as processes.
test: build
	$(CARGO) test --workspace --no-fail-fast

# Load figures of bench/WORKLOADS.md on a local 4x1 cluster (see BENCHMARKS.md).
bench: release
	bench/run.sh

# Latency against candidates per request and against shards on one machine.
bench-scaling: release
	bench/scaling.sh

# What a request costs with no ranking work (routing, RPCs, transfers, lookups) beside
# the real request: qps and CPU per request by process (see BENCHMARKS.md).
bench-floor: release
	bench/floor.sh

# Whether a change made the cluster faster: interleaved pairs of fresh 4x1 clusters,
# BASE (a commit, or a directory of release binaries) against this tree's build; the
# medians and how many pairs went each way (PAIRS=4). See bench/compare.sh.
bench-compare: release
	bench/compare.sh

# Fault scenarios under load (kill a shard or a replica, stall a replica, 10x overload)
# on the standard corpus, printed per phase; the same scenarios are asserted by
# tests/tests/chaos.rs on the tiny corpus. CHAOS_ARGS=--quick runs the test sizes.
chaos: release
	SHARDRANK_BIN_DIR=target/release $(CARGO) run --release -q -p shardrank-tests --bin chaos -- $(CHAOS_ARGS)

# Real-time ingestion figures (freshness, events applied per shard, ranking p99 while
# ingesting) with the built-in stream and through Kafka (a local noida-db broker:
# pip install noida-db==0.2.3), on the standard corpus; see BENCHMARKS.md.
ingest-bench: release
	SHARDRANK_BIN_DIR=target/release $(CARGO) run --release -q -p shardrank-tests --bin ingest

# Render every Kubernetes overlay and validate it against the pinned schemas (needs
# kubectl and `pip install kubernetes-validate`; .ci/run installs the latter).
k8s-validate:
	deploy/k8s/validate.sh

# Per-candidate costs of the hot path (divan).
microbench:
	$(CARGO) bench -p shardrank-shard

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
