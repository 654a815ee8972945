//! The coordinator's command line. Flag names are a contract: manifests and tests use them.

use clap::Parser;
use shardrank_core::source::DataArgs;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The shardrank coordinator: routes each candidate to its shard by md5(id) mod N, fans
/// out to all shards at once, and merges their answers into the exact global top-k.
#[derive(Parser, Debug, Clone)]
#[command(name = "shardrank-coordinator", version)]
pub struct CoordinatorConfig {
    /// Address to serve gRPC on (shardrank.v1.Coordinator, grpc.health.v1, reflection).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// The shards, in index order: commas separate shard indexes, `|` separates the
    /// replicas of one index. `http://a:7001|http://b:7001,http://c:7001|http://d:7001`
    /// is two shards with two replicas each; the number of comma-separated entries is the
    /// shard count. Load is spread over a shard's replicas (power of two choices over
    /// latency and calls in flight); a failed call is retried once on another replica.
    #[arg(
        long,
        default_value = "http://127.0.0.1:7001",
        value_name = "URL[|URL...],..."
    )]
    pub shards: String,
    /// Instead of --shards: the URL of replica {replica} of shard {shard}, expanded for
    /// every shard in 0..--num-shards and replica in 0..--replicas. Kubernetes manifests
    /// use it with the stable names of StatefulSet pods:
    /// `http://shardrank-shard-r{replica}-{shard}.shardrank-shard:7001`.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "shards",
        requires = "num_shards"
    )]
    pub shard_template: Option<String>,
    /// With --shard-template: the shard count.
    #[arg(long, value_name = "N", requires = "shard_template")]
    pub num_shards: Option<u32>,
    /// With --shard-template: replicas per shard.
    #[arg(long, value_name = "R", default_value_t = 1)]
    pub replicas: u32,
    /// Admin HTTP address for GET /metrics and GET /healthz; `none` turns it off.
    /// Default: the --listen host, port + 1000.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Once listening, write the bound addresses here (`grpc=HOST:PORT`, then
    /// `admin=HOST:PORT`), whole. With port 0 in --listen and --admin-listen, this is how
    /// whoever started the server learns its ports (`shardrank up` does so).
    #[arg(long, value_name = "FILE")]
    pub addr_file: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Kafka bootstrap brokers (HOST:PORT[,HOST:PORT...]): build the user store from
    /// every partition of --kafka-user-topic (read from the beginning; SERVING once read
    /// up to the ends as they were at start) and apply it live. Without --corpus and
    /// --events the topic is the only source. Off by default.
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_brokers: Option<String>,
    /// The user-events topic: profiles, follow, unfollow, block, mute, and who posted
    /// (see `shardrank produce`).
    #[arg(long, default_value = shardrank_kafka::USER_TOPIC, value_name = "TOPIC")]
    pub kafka_user_topic: String,
    /// Where the fan-out's inbox deliveries are published, in messages of up to 100
    /// (`{"updates":[{"user_id","tweet_id","author_id","created_at"}...]}`), for timeline
    /// caches downstream; `none` turns it off. With several coordinators, let one
    /// publish (each fans out into its own inboxes).
    #[arg(long, default_value = shardrank_kafka::TIMELINE_TOPIC, value_name = "TOPIC")]
    pub kafka_timeline_topic: String,
    /// Consumer group the positions are committed under after each applied batch.
    #[arg(long, default_value = "shardrank-coordinator", value_name = "GROUP")]
    pub kafka_group_id: String,
    /// Where malformed Kafka messages go, with headers naming their topic, partition,
    /// offset and what was wrong.
    #[arg(long, default_value = shardrank_kafka::DEAD_LETTER_TOPIC, value_name = "TOPIC")]
    pub kafka_dead_letter_topic: String,
    /// H: how many of the best candidates by light score the heavy ranker scores (at
    /// least top_k is always scored).
    #[arg(long, default_value_t = 1000)]
    pub heavy_candidates: usize,
    /// Deadline for a request when the client sends none (grpc-timeout); a shard that
    /// has not answered by then is listed in missing_shards.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub request_timeout_ms: u64,
    /// Most candidate ids accepted in one request (more: INVALID_ARGUMENT).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_candidates: usize,
    /// Most Rank requests processed at once; beyond it a request is refused at once with
    /// RESOURCE_EXHAUSTED instead of queueing into a timeout (load shedding).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_in_flight: usize,
    /// Async worker threads, on which every request's work runs. Default: one per core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Fewer answering shards than this fraction of those called fails a request with
    /// UNAVAILABLE instead of returning a thin answer; 0 accepts any answer.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub min_coverage: f64,
    /// Hedging: at most this many extra calls per shard call in the long run (a token
    /// bucket); 0 turns hedging off. Only shards with two or more replicas are hedged.
    #[arg(long, default_value_t = 0.1, value_name = "RATIO")]
    pub hedge_max_ratio: f64,
    /// Hedging: a call still unanswered after this percentile of its replica's recent
    /// latencies is sent to another replica too; the first answer wins.
    #[arg(long, default_value_t = 95.0, value_name = "PERCENTILE")]
    pub hedge_percentile: f64,
    /// Hedging: never hedge sooner than this.
    #[arg(long, default_value_t = 1, value_name = "MS")]
    pub hedge_min_delay_ms: u64,
    /// Coalescing: batch calls under way per replica. A small Rank call that finds them
    /// all busy waits for the next free one and goes with the others waiting then, in
    /// one RankBatch call (batches grow with load, never with added delay); 0 sends
    /// every call alone.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub shard_batch_in_flight: usize,
    /// Coalescing: most Rank calls in one batch call.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub shard_batch_max_items: usize,
    /// Coalescing: batches go as messages on one long-lived RankStream per replica (a
    /// message costs far less than a call); false sends each as a RankBatch call.
    /// Replicas without RankStream get calls either way.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub shard_stream: bool,
    /// Coalescing: a shard call with more candidate ids than this is always sent alone
    /// (its call is a small part of its cost, and a batch answers when its last item
    /// is ranked).
    #[arg(long, default_value_t = 8192, value_name = "IDS")]
    pub shard_batch_max_ids: usize,
    /// Retries of a failed shard call on another replica of the shard: 0 or 1. Never
    /// after a timeout, and only with time left before the deadline.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub retries: u32,
    /// How often every replica is health-checked (Info: reachable, loaded, right
    /// layout). A failing replica leaves the rotation; it is back when a check passes.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub health_check_ms: u64,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_message_bytes: usize,
    /// How long to wait at start-up for every shard to answer and be loaded.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub shard_wait_secs: u64,
    /// The timeline pipeline's config (TOML: steps of named components and their
    /// settings; see deploy/pipelines/timeline.toml). Default: the built-in one.
    #[arg(long, value_name = "FILE")]
    pub pipeline_config: Option<PathBuf>,
    /// The Rank RPC's pipeline config (see deploy/pipelines/rank.toml). Default: the
    /// built-in one.
    #[arg(long, value_name = "FILE")]
    pub rank_pipeline_config: Option<PathBuf>,
    /// Model directory: accepted for symmetry with the shards, which do the scoring;
    /// checked at start-up so a bad file fails here too.
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// On SIGTERM, how long in-flight requests may take before open connections are
    /// closed and the process exits.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub drain_secs: u64,
    /// Export spans over OTLP/gRPC to this collector (e.g. http://otel-collector:4317);
    /// off by default. Spans of one request share its W3C trace id across processes.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Log format on stderr: `text` or `json` (one object per line, with the request's
    /// trace id on every line logged for it). Filter with RUST_LOG.
    #[arg(long, default_value = "text", value_name = "FORMAT")]
    pub log_format: shardrank_proto::serving::LogFormat,
    /// Parse and check the flags, print the configuration, and exit without loading data,
    /// contacting shards or binding the port.
    #[arg(long)]
    pub check_config: bool,
}

/// Parses `--shards`: commas between shards, `|` between replicas of one shard.
pub fn parse_shards(spec: &str) -> Result<Vec<Vec<String>>, String> {
    let shards: Vec<Vec<String>> = spec
        .split(',')
        .map(|s| s.split('|').map(|u| u.trim().to_string()).collect())
        .collect();
    for (i, replicas) in shards.iter().enumerate() {
        for url in replicas {
            if url.is_empty() {
                return Err(format!("--shards: shard {i} has an empty URL in {spec:?}"));
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "--shards: shard {i} URL {url:?} must start with http:// or https://"
                ));
            }
            url.parse::<tonic::transport::Uri>()
                .map_err(|e| format!("--shards: shard {i} URL {url:?} is not a valid URI: {e}"))?;
        }
    }
    let mut seen = std::collections::HashMap::new();
    for (i, replicas) in shards.iter().enumerate() {
        for url in replicas {
            if let Some(j) = seen.insert(url.as_str(), i) {
                return Err(format!(
                    "--shards: {url} is listed twice (shard {j} and shard {i}); each replica serves one shard index"
                ));
            }
        }
    }
    Ok(shards)
}

/// `--shard-template` as a `--shards` list: commas between shards, `|` between replicas.
pub fn expand_template(template: &str, num_shards: u32, replicas: u32) -> Result<String, String> {
    if !template.contains("{shard}") {
        return Err(format!(
            "--shard-template {template:?} must contain {{shard}}"
        ));
    }
    if replicas > 1 && !template.contains("{replica}") {
        return Err(format!(
            "--shard-template {template:?} must contain {{replica}} with --replicas {replicas}"
        ));
    }
    if num_shards == 0 || replicas == 0 {
        return Err("--num-shards and --replicas must be at least 1".into());
    }
    Ok((0..num_shards)
        .map(|s| {
            (0..replicas)
                .map(|r| {
                    template
                        .replace("{shard}", &s.to_string())
                        .replace("{replica}", &r.to_string())
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect::<Vec<_>>()
        .join(","))
}

impl CoordinatorConfig {
    /// How shard calls are made, from the flags.
    pub fn call_policy(&self) -> crate::shard_call::CallPolicy {
        crate::shard_call::CallPolicy {
            hedge_quantile: self.hedge_percentile / 100.0,
            hedge_min_delay: std::time::Duration::from_millis(self.hedge_min_delay_ms),
            retry: self.retries > 0,
        }
    }

    /// When shard calls are coalesced, from the flags.
    pub fn batch_policy(&self) -> crate::shard_batch::BatchPolicy {
        crate::shard_batch::BatchPolicy {
            in_flight: self.shard_batch_in_flight,
            max_items: self.shard_batch_max_items,
            max_item_ids: self.shard_batch_max_ids,
        }
    }

    pub fn validate(&self) -> Result<Vec<Vec<String>>, String> {
        if let Some(p) = &self.addr_file {
            shardrank_proto::addr_file::check(p)?;
        }
        if self.heavy_candidates == 0 {
            return Err("--heavy-candidates must be at least 1".into());
        }
        if self.request_timeout_ms == 0 {
            return Err("--request-timeout-ms must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            return Err("--max-in-flight must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.min_coverage) {
            return Err(format!(
                "--min-coverage {} must be a fraction between 0 and 1",
                self.min_coverage
            ));
        }
        if !(0.0..=1.0).contains(&self.hedge_max_ratio) {
            return Err(format!(
                "--hedge-max-ratio {} must be between 0 (off) and 1",
                self.hedge_max_ratio
            ));
        }
        if !(self.hedge_percentile > 0.0 && self.hedge_percentile <= 100.0) {
            return Err(format!(
                "--hedge-percentile {} must be in (0, 100]",
                self.hedge_percentile
            ));
        }
        if self.retries > 1 {
            return Err(format!(
                "--retries {} : a failed shard call is retried at most once (0 or 1)",
                self.retries
            ));
        }
        if !(1..=1024).contains(&self.shard_batch_max_items) {
            return Err(format!(
                "--shard-batch-max-items {} must be between 1 and 1024 (a shard refuses larger batches)",
                self.shard_batch_max_items
            ));
        }
        if self.health_check_ms < 10 {
            return Err("--health-check-ms must be at least 10".into());
        }
        if let Some(b) = &self.kafka_brokers {
            shardrank_kafka::check_brokers(b)?;
            shardrank_kafka::check_topic("--kafka-user-topic", &self.kafka_user_topic)?;
            if self.kafka_timeline_topic != "none" {
                shardrank_kafka::check_topic("--kafka-timeline-topic", &self.kafka_timeline_topic)?;
            }
            shardrank_kafka::check_topic(
                "--kafka-dead-letter-topic",
                &self.kafka_dead_letter_topic,
            )?;
            if self.kafka_group_id.is_empty() {
                return Err("--kafka-group-id must not be empty".into());
            }
            if self.data.live_events_per_sec > 0.0 {
                return Err(
                    "--kafka-brokers and --live-events-per-sec: choose one live stream".into(),
                );
            }
        }
        match &self.shard_template {
            Some(t) => parse_shards(&expand_template(
                t,
                self.num_shards.unwrap_or(0),
                self.replicas,
            )?),
            None => parse_shards(&self.shards),
        }
    }
}

impl CoordinatorConfig {
    /// The Kafka settings, when --kafka-brokers is given.
    pub fn kafka(&self) -> Option<crate::ingest::KafkaSettings> {
        Some(crate::ingest::KafkaSettings {
            brokers: self.kafka_brokers.clone()?,
            user_topic: self.kafka_user_topic.clone(),
            timeline_topic: (self.kafka_timeline_topic != "none")
                .then(|| self.kafka_timeline_topic.clone()),
            group_id: self.kafka_group_id.clone(),
            dead_letter_topic: self.kafka_dead_letter_topic.clone(),
        })
    }

    /// The start-up source: none with Kafka and no --corpus/--events.
    pub fn source(&self) -> Result<shardrank_core::source::Source, String> {
        if self.kafka_brokers.is_some() && !self.data.names_a_source() {
            return Ok(shardrank_core::source::Source::Empty);
        }
        self.data.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_to_shard_lists() {
        let t = "http://s-r{replica}-{shard}.svc:7001";
        assert_eq!(
            expand_template(t, 2, 2).unwrap(),
            "http://s-r0-0.svc:7001|http://s-r1-0.svc:7001,http://s-r0-1.svc:7001|http://s-r1-1.svc:7001"
        );
        assert_eq!(
            expand_template("http://s-{shard}:1", 3, 1).unwrap(),
            "http://s-0:1,http://s-1:1,http://s-2:1"
        );
        assert!(expand_template("http://s:1", 3, 1)
            .unwrap_err()
            .contains("{shard}"));
        assert!(expand_template("http://s-{shard}:1", 3, 2)
            .unwrap_err()
            .contains("{replica}"));
        assert!(expand_template(t, 0, 1).is_err());
    }

    #[test]
    fn shard_lists() {
        assert_eq!(parse_shards("http://a:1,http://b:2").unwrap().len(), 2);
        assert!(parse_shards("http://a:1,,http://b:2")
            .unwrap_err()
            .contains("shard 1"));
        assert!(parse_shards("a:1").unwrap_err().contains("http://"));
        let two = parse_shards("http://a:1|http://b:1,http://c:1|http://d:1").unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[1], vec!["http://c:1", "http://d:1"]);
        assert!(parse_shards("http://a:1|,http://b:2")
            .unwrap_err()
            .contains("shard 0 has an empty URL"));
        assert!(parse_shards("http://a:1|http://b:1,http://a:1")
            .unwrap_err()
            .contains("listed twice"));
    }
}
