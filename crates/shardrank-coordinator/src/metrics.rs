//! Every metric the coordinator exports, defined here and nowhere else (names follow
//! Prometheus conventions: `shardrank_` prefix, base units, `_total` on counters,
//! histograms for latencies). Served on the admin port by `shardrank_proto::admin`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Topic {
    pub topic: String,
}

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabel {
    pub shard: u32,
    pub replica: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabel {
    pub pipeline: &'static str,
    pub component: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentOutcome {
    pub pipeline: &'static str,
    pub component: &'static str,
    /// ok, failed or skipped (failed, fail-open).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventType {
    pub r#type: &'static str,
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
    pub shard_calls_in_flight: Gauge,
    /// Items per batch (coalesced Rank calls; see `shard_batch`), streamed or called.
    pub shard_batch_items: Histogram,
    pub shard_retries: Family<Shard, Counter>,
    pub shard_hedges: Family<Shard, Counter>,
    pub shard_hedges_won: Family<Shard, Counter>,
    pub replica_ejections: Family<ReplicaLabel, Counter>,
    pub replica_up: Family<ReplicaLabel, Gauge>,
    pub truncated_answers: Family<Shard, Counter>,
    pub requests_cancelled: Family<Rpc, Counter>,
    pub requests_shed: Family<Rpc, Counter>,
    pub component_seconds: Family<ComponentLabel, Histogram, fn() -> Histogram>,
    pub component_outcomes: Family<ComponentOutcome, Counter>,
    pub events_applied: Family<EventType, Counter>,
    pub watermark_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub consumer_lag: Family<Topic, Gauge>,
    pub events_malformed: Counter,
    pub events_replayed: Counter,
    pub log_truncations: Counter,
    pub fanout_deliveries: Counter,
    pub timeline_updates_published: Counter,
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
            shard_calls_in_flight: Gauge::default(),
            shard_batch_items: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            shard_retries: Family::default(),
            shard_hedges: Family::default(),
            shard_hedges_won: Family::default(),
            replica_ejections: Family::default(),
            replica_up: Family::default(),
            truncated_answers: Family::default(),
            requests_cancelled: Family::default(),
            requests_shed: Family::default(),
            component_seconds: Family::new_with_constructor(latency_buckets),
            component_outcomes: Family::default(),
            events_applied: Family::default(),
            watermark_seconds: Gauge::default(),
            consumer_lag: Family::default(),
            events_malformed: Counter::default(),
            events_replayed: Counter::default(),
            log_truncations: Counter::default(),
            fanout_deliveries: Counter::default(),
            timeline_updates_published: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("shardrank_coordinator");
        r.register(
            "requests",
            "Requests by RPC and gRPC status code",
            m.requests.clone(),
        );
        r.register(
            "shard_batch_items",
            "Rank calls coalesced into each batch to a replica (a RankStream message or a RankBatch call)",
            m.shard_batch_items.clone(),
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
        r.register(
            "shard_calls_in_flight",
            "Calls to shard replicas in flight",
            m.shard_calls_in_flight.clone(),
        );
        r.register(
            "shard_retries",
            "Failed shard calls retried on another replica",
            m.shard_retries.clone(),
        );
        r.register(
            "shard_hedges",
            "Hedged shard calls (a second copy sent to another replica)",
            m.shard_hedges.clone(),
        );
        r.register(
            "shard_hedges_won",
            "Hedged shard calls whose second copy answered first",
            m.shard_hedges_won.clone(),
        );
        r.register(
            "replica_ejections",
            "Times a replica was taken out of rotation (failed calls or health checks)",
            m.replica_ejections.clone(),
        );
        r.register(
            "replica_up",
            "1 while a replica is in rotation, 0 while ejected",
            m.replica_up.clone(),
        );
        r.register(
            "truncated_answers",
            "Shard answers cut short by the deadline before the heavy stage finished",
            m.truncated_answers.clone(),
        );
        r.register(
            "requests_cancelled",
            "Requests the client cancelled (or whose connection closed) before the answer",
            m.requests_cancelled.clone(),
        );
        r.register(
            "requests_shed",
            "Requests refused at once with RESOURCE_EXHAUSTED because the server was at its in-flight limit",
            m.requests_shed.clone(),
        );
        r.register_with_unit(
            "component",
            "Latency of each pipeline component",
            Unit::Seconds,
            m.component_seconds.clone(),
        );
        r.register(
            "component_outcomes",
            "Pipeline component runs by outcome (ok, failed, skipped by fail-open)",
            m.component_outcomes.clone(),
        );
        r.register(
            "events_applied",
            "Live events applied to the user store, by type",
            m.events_applied.clone(),
        );
        r.register_with_unit(
            "watermark",
            "Event time of the newest event applied: the clock of features (Unix time)",
            Unit::Seconds,
            m.watermark_seconds.clone(),
        );
        r.register(
            "consumer_lag_events",
            "Kafka records of the user topic not yet applied (partition ends minus positions)",
            m.consumer_lag.clone(),
        );
        r.register(
            "events_malformed",
            "Malformed events skipped (logged with their offset and dead-lettered with Kafka)",
            m.events_malformed.clone(),
        );
        r.register(
            "events_replayed",
            "Kafka records at offsets already applied, skipped",
            m.events_replayed.clone(),
        );
        r.register(
            "log_truncations",
            "Kafka partitions found cut below the position already applied (a broker that lost records): each logged as an error, reading resumed at the log's end",
            m.log_truncations.clone(),
        );
        r.register(
            "fanout_deliveries",
            "New posts delivered to a follower's home inbox (fan-out on write)",
            m.fanout_deliveries.clone(),
        );
        r.register(
            "timeline_updates_published",
            "Messages of up to 100 inbox deliveries published to the Kafka timeline topic",
            m.timeline_updates_published.clone(),
        );
        m
    }
}

impl CoordinatorMetrics {
    /// Creates the known series at zero (every shard, every outcome, the usual codes), so
    /// that dashboards and alerts see them before the first event, not as absent.
    pub fn init_labels(&self, replicas: &[usize]) {
        let num_shards = replicas.len() as u32;
        for r#type in shardrank_core::events::Event::TYPE_NAMES {
            let _ = self.events_applied.get_or_create(&EventType { r#type });
        }
        for rpc in ["Rank", "Timeline"] {
            let _ = self.request_seconds.get_or_create(&Rpc { rpc });
            let _ = self.requests_cancelled.get_or_create(&Rpc { rpc });
            let _ = self.requests_shed.get_or_create(&Rpc { rpc });
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
            let _ = self.shard_retries.get_or_create(&Shard { shard });
            let _ = self.shard_hedges.get_or_create(&Shard { shard });
            let _ = self.shard_hedges_won.get_or_create(&Shard { shard });
            let _ = self.truncated_answers.get_or_create(&Shard { shard });
            for replica in 0..replicas[shard as usize] as u32 {
                let _ = self
                    .replica_ejections
                    .get_or_create(&ReplicaLabel { shard, replica });
            }
        }
    }
}

pub use shardrank_proto::admin::code_label;
