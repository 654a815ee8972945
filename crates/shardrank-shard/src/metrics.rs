//! Every metric a shard exports, defined here and nowhere else. Served on the admin
//! port by `shardrank_proto::admin`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventType {
    /// new_tweet, like, retweet, reply, follow, unfollow, block, mute, user.
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stage {
    /// light or heavy.
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Topic {
    pub topic: String,
}

pub struct ShardMetrics {
    pub requests: Family<Code, Counter>,
    pub candidates: Family<Stage, Counter>,
    pub stage_seconds: Family<Stage, Histogram, fn() -> Histogram>,
    pub posts: Gauge,
    pub post_bytes: Gauge,
    pub requests_shed: Counter,
    pub rank_streams: Gauge,
    pub rank_stream_batches: Counter,
    pub truncated: Counter,
    pub events_malformed: Counter,
    pub retrieve_requests: Family<Code, Counter>,
    pub events_applied: Family<EventType, Counter>,
    pub watermark_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub duplicate_posts: Gauge,
    pub late_events: Gauge,
    pub consumer_lag: Family<Topic, Gauge>,
    pub events_replayed: Counter,
    pub log_truncations: Counter,
    pub events_misrouted: Gauge,
    pub last_snapshot_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub ingest_delay: Histogram,
}

impl ShardMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ShardMetrics {
            requests: Family::default(),
            candidates: Family::default(),
            stage_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
            }),
            posts: Gauge::default(),
            post_bytes: Gauge::default(),
            requests_shed: Counter::default(),
            rank_streams: Gauge::default(),
            rank_stream_batches: Counter::default(),
            truncated: Counter::default(),
            events_malformed: Counter::default(),
            retrieve_requests: Family::default(),
            events_applied: Family::default(),
            watermark_seconds: Gauge::default(),
            duplicate_posts: Gauge::default(),
            late_events: Gauge::default(),
            consumer_lag: Family::default(),
            events_replayed: Counter::default(),
            log_truncations: Counter::default(),
            events_misrouted: Gauge::default(),
            last_snapshot_seconds: Gauge::default(),
            // 0.25 ms .. 8 s.
            ingest_delay: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
        };
        let r = registry.sub_registry_with_prefix("shardrank_shard");
        r.register(
            "requests",
            "Rank requests by gRPC status code",
            m.requests.clone(),
        );
        r.register(
            "candidates_scored",
            "Candidates scored, by stage (light, heavy)",
            m.candidates.clone(),
        );
        r.register_with_unit(
            "stage",
            "Time per ranking stage",
            Unit::Seconds,
            m.stage_seconds.clone(),
        );
        r.register(
            "store_posts",
            "Posts held by this partition",
            m.posts.clone(),
        );
        r.register_with_unit(
            "store_post",
            "Memory held for posts (rows and index)",
            Unit::Bytes,
            m.post_bytes.clone(),
        );
        r.register(
            "requests_shed",
            "Rank requests refused at once with RESOURCE_EXHAUSTED (at --max-in-flight)",
            m.requests_shed.clone(),
        );
        r.register(
            "rank_streams",
            "RankStream streams open now (a coordinator's coalesced batches, one stream per connection)",
            m.rank_streams.clone(),
        );
        r.register(
            "rank_stream_batches",
            "Batches received on RankStream streams (each item also counts under requests)",
            m.rank_stream_batches.clone(),
        );
        r.register(
            "truncated_answers",
            "Answers whose heavy stage the request's deadline cut short",
            m.truncated.clone(),
        );
        r.register(
            "events_malformed",
            "Malformed events skipped (logged with their line number or offset; dead-lettered with Kafka)",
            m.events_malformed.clone(),
        );
        r.register(
            "retrieve_requests",
            "Retrieve (timeline candidate source) requests by gRPC status code",
            m.retrieve_requests.clone(),
        );
        r.register(
            "events_applied",
            "Live events applied to this partition's store, by type",
            m.events_applied.clone(),
        );
        r.register_with_unit(
            "watermark",
            "Event time of the newest event applied (Unix time)",
            Unit::Seconds,
            m.watermark_seconds.clone(),
        );
        r.register(
            "duplicate_posts",
            "new_tweet events for a post the partition already holds (ignored): a replayed stream",
            m.duplicate_posts.clone(),
        );
        r.register(
            "late_events",
            "Engagements older than the kept 60-second windows (left out of the velocity)",
            m.late_events.clone(),
        );
        r.register(
            "consumer_lag_events",
            "Kafka records not yet applied, per topic (partition end minus position)",
            m.consumer_lag.clone(),
        );
        r.register(
            "events_replayed",
            "Kafka records at offsets already applied, skipped (a replay never counts twice)",
            m.events_replayed.clone(),
        );
        r.register(
            "log_truncations",
            "Kafka partitions found cut below the position already applied (a broker that lost records): each logged as an error, reading resumed at the log's end",
            m.log_truncations.clone(),
        );
        r.register(
            "events_misrouted",
            "Records on this shard's partition of the post topic for posts another shard owns (ignored: a producer without the md5 partitioner)",
            m.events_misrouted.clone(),
        );
        r.register_with_unit(
            "ingest_delay",
            "Freshness: from an event's production (its Kafka timestamp, or its due time in the built-in stream) to its being applied and rankable",
            Unit::Seconds,
            m.ingest_delay.clone(),
        );
        r.register_with_unit(
            "last_snapshot_timestamp",
            "When the last snapshot of the partition was written (Unix time; age = time() - this)",
            Unit::Seconds,
            m.last_snapshot_seconds.clone(),
        );
        m
    }
}

impl ShardMetrics {
    /// Creates the known series at zero, so that they exist before the first request.
    pub fn init_labels(&self) {
        for code in [
            "OK",
            "UNAVAILABLE",
            "FAILED_PRECONDITION",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "RESOURCE_EXHAUSTED",
        ] {
            let _ = self.requests.get_or_create(&Code { code });
        }
        for r#type in shardrank_core::events::Event::TYPE_NAMES {
            let _ = self.events_applied.get_or_create(&EventType { r#type });
        }
        for stage in ["light", "heavy"] {
            let _ = self.candidates.get_or_create(&Stage { stage });
            let _ = self.stage_seconds.get_or_create(&Stage { stage });
        }
    }
}
