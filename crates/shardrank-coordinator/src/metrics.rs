//! Every metric the coordinator exports, defined here and nowhere else (names follow
//! Prometheus conventions: `shardrank_` prefix, base units, `_total` on counters,
//! histograms for latencies). Served on the admin port by `shardrank_proto::admin`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcCode {
    pub rpc: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rpc {
    pub rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardOutcome {
    pub shard: u32,
    /// ok, error or timeout.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Shard {
    pub shard: u32,
}

type Hist = Family<Rpc, Histogram, fn() -> Histogram>;
type ShardHist = Family<Shard, Histogram, fn() -> Histogram>;

fn latency_buckets() -> Histogram {
    // 0.25 ms to about 4 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

pub struct CoordinatorMetrics {
    pub requests: Family<RpcCode, Counter>,
    pub request_seconds: Hist,
    pub candidates: Histogram,
    pub partial_answers: Counter,
    pub shard_calls: Family<ShardOutcome, Counter>,
    pub shard_call_seconds: ShardHist,
    pub missing_shards: Family<Shard, Counter>,
    pub second_rounds: Counter,
}

impl CoordinatorMetrics {
    /// The metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = CoordinatorMetrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_buckets),
            candidates: Histogram::new(exponential_buckets(1.0, 4.0, 11)),
            partial_answers: Counter::default(),
            shard_calls: Family::default(),
            shard_call_seconds: Family::new_with_constructor(latency_buckets),
            missing_shards: Family::default(),
            second_rounds: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("shardrank_coordinator");
        r.register(
            "requests",
            "Requests by RPC and gRPC status code",
            m.requests.clone(),
        );
        r.register_with_unit(
            "request",
            "Server-side request latency by RPC",
            Unit::Seconds,
            m.request_seconds.clone(),
        );
        r.register(
            "candidates",
            "Candidate ids per Rank request",
            m.candidates.clone(),
        );
        r.register(
            "partial_answers",
            "Answers sent with at least one missing shard",
            m.partial_answers.clone(),
        );
        r.register(
            "shard_calls",
            "Calls to shards by shard and outcome (ok, error, timeout)",
            m.shard_calls.clone(),
        );
        r.register_with_unit(
            "shard_call",
            "Latency of calls to each shard",
            Unit::Seconds,
            m.shard_call_seconds.clone(),
        );
        r.register(
            "missing_shards",
            "Times a shard was listed in missing_shards",
            m.missing_shards.clone(),
        );
        r.register(
            "second_rounds",
            "Shard calls of the merge's second round",
            m.second_rounds.clone(),
        );
        m
    }
}

impl CoordinatorMetrics {
    /// Creates the known series at zero (every shard, every outcome, the usual codes), so
    /// that dashboards and alerts see them before the first event, not as absent.
    pub fn init_labels(&self, num_shards: u32) {
        for rpc in ["Rank", "Timeline"] {
            let _ = self.request_seconds.get_or_create(&Rpc { rpc });
        }
        for code in [
            "OK",
            "INVALID_ARGUMENT",
            "UNAVAILABLE",
            "DEADLINE_EXCEEDED",
            "RESOURCE_EXHAUSTED",
        ] {
            let _ = self.requests.get_or_create(&RpcCode { rpc: "Rank", code });
        }
        for shard in 0..num_shards {
            for outcome in ["ok", "error", "timeout"] {
                let _ = self
                    .shard_calls
                    .get_or_create(&ShardOutcome { shard, outcome });
            }
            let _ = self.shard_call_seconds.get_or_create(&Shard { shard });
            let _ = self.missing_shards.get_or_create(&Shard { shard });
        }
    }
}

pub use shardrank_proto::admin::code_label;
