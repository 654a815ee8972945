//! The shard's command line. Flag names are a contract: manifests and tests use them.

use clap::Parser;
use shardrank_core::source::DataArgs;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A shardrank shard worker: owns partition --shard-index of --num-shards (posts whose
/// md5(id) mod N is the index) and ranks candidates in it over gRPC.
#[derive(Parser, Debug, Clone)]
#[command(name = "shardrank-shard", version)]
pub struct ShardConfig {
    /// Address to serve gRPC on (shardrank.v1.Shard, grpc.health.v1, reflection).
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,
    /// This shard's partition index, in 0..--num-shards.
    #[arg(long, default_value_t = 0)]
    pub shard_index: u32,
    /// How many partitions the cluster has; must match the coordinator's shard list.
    #[arg(long, default_value_t = 1)]
    pub num_shards: u32,
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
    /// Directory with light.safetensors and heavy.safetensors; the built-in default
    /// models when absent.
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Largest gRPC message accepted, in bytes (a request of N ids is about 8N bytes).
    #[arg(long, default_value_t = 64 << 20)]
    pub max_message_bytes: usize,
    /// Most Rank requests processed at once (a RankBatch call counts as one); beyond it a
    /// request is refused at once with RESOURCE_EXHAUSTED (the coordinator then tries
    /// another replica) instead of queueing into a timeout.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub max_in_flight: usize,
    /// Async worker threads: gRPC, and the small Ranks, which run inline. Default: one
    /// per core. Shards sharing a machine want its cores divided among them (`shardrank
    /// up` does that); a large Rank runs on the blocking pool, on every core, either way.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Keep a snapshot of the partition here: loaded at start-up instead of replaying the
    /// source when it matches (layout, source, checksum), written after a rebuild and,
    /// with the live stream, every --snapshot-interval-secs with the stream position.
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// Kafka bootstrap brokers (HOST:PORT[,HOST:PORT...]): consume partition
    /// --shard-index of --kafka-topic and every partition of --kafka-user-topic, live
    /// (topics created with --num-shards partitions if missing). Without --corpus and
    /// --events the partition is built from the topics alone; health says SERVING once
    /// it has read what the topics held at start. Off by default.
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_brokers: Option<String>,
    /// The post-events topic: new_tweet, like, retweet, reply, partitioned by md5 of the
    /// tweet id (see `shardrank produce`).
    #[arg(long, default_value = shardrank_kafka::POST_TOPIC, value_name = "TOPIC")]
    pub kafka_topic: String,
    /// The user-events topic: profiles, follows, and who posted (the author features,
    /// which are global), all partitions.
    #[arg(long, default_value = shardrank_kafka::USER_TOPIC, value_name = "TOPIC")]
    pub kafka_user_topic: String,
    /// Consumer group the positions are committed under, after each applied batch
    /// (for lag tooling; where to resume comes from the snapshot). Default
    /// `shardrank-shard-<index>-of-<num-shards>`.
    #[arg(long, value_name = "GROUP")]
    pub kafka_group_id: Option<String>,
    /// Where malformed Kafka messages go, with headers naming their topic, partition,
    /// offset and what was wrong.
    #[arg(long, default_value = shardrank_kafka::DEAD_LETTER_TOPIC, value_name = "TOPIC")]
    pub kafka_dead_letter_topic: String,
    /// With a live stream (Kafka or the generator) and --snapshot-dir: how often to
    /// snapshot.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub snapshot_interval_secs: u64,
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
    /// Back the store's big arrays (id index, rows, counters) with transparent huge
    /// pages, so that a request's random lookups do not also miss the TLB. A hint to
    /// the kernel: with THP off it changes nothing. `false` keeps the default pages.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub huge_pages: bool,
    /// Parse and check the flags and the model files, print the configuration, and exit
    /// without loading data or binding the port.
    #[arg(long)]
    pub check_config: bool,
}

impl ShardConfig {
    /// Checks what clap cannot: relations between flags.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = &self.addr_file {
            shardrank_proto::addr_file::check(p)?;
        }
        if self.max_in_flight == 0 {
            return Err("--max-in-flight must be at least 1".into());
        }
        if self.num_shards == 0 {
            return Err("--num-shards must be at least 1".into());
        }
        if self.shard_index >= self.num_shards {
            return Err(format!(
                "--shard-index {} must be less than --num-shards {}",
                self.shard_index, self.num_shards
            ));
        }
        if let Some(b) = &self.kafka_brokers {
            shardrank_kafka::check_brokers(b)?;
            shardrank_kafka::check_topic("--kafka-topic", &self.kafka_topic)?;
            shardrank_kafka::check_topic("--kafka-user-topic", &self.kafka_user_topic)?;
            shardrank_kafka::check_topic(
                "--kafka-dead-letter-topic",
                &self.kafka_dead_letter_topic,
            )?;
            if self.kafka_topic == self.kafka_user_topic {
                return Err("--kafka-topic and --kafka-user-topic must differ".into());
            }
            if self.data.live_events_per_sec > 0.0 {
                return Err(
                    "--kafka-brokers and --live-events-per-sec: choose one live stream".into(),
                );
            }
        }
        Ok(())
    }

    /// The Kafka settings, when --kafka-brokers is given.
    pub fn kafka(&self) -> Option<crate::ingest::kafka::KafkaSettings> {
        let brokers = self.kafka_brokers.clone()?;
        Some(crate::ingest::kafka::KafkaSettings {
            brokers,
            post_topic: self.kafka_topic.clone(),
            user_topic: self.kafka_user_topic.clone(),
            group_id: self.kafka_group_id.clone().unwrap_or_else(|| {
                format!(
                    "shardrank-shard-{}-of-{}",
                    self.shard_index, self.num_shards
                )
            }),
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
