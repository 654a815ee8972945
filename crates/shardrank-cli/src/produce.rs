//! `shardrank produce`: loads an events file into Kafka with the md5 partitioner, so
//! that partition i of the post topic holds exactly shard i's posts.

use shardrank_core::events::{read_events, OnMalformed, ReadReport};
use shardrank_kafka::route::{routes, TopicRole};
use shardrank_kafka::topics::{ensure, Ensured};
use shardrank_kafka::{check_brokers, check_topic, EventProducer};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    /// Kafka bootstrap brokers, HOST:PORT[,HOST:PORT...].
    #[arg(long, value_name = "HOST:PORT")]
    brokers: String,
    /// The JSON-lines events file to load (see `shardrank gen`).
    #[arg(long, value_name = "FILE")]
    events: PathBuf,
    /// Shards of the cluster that will consume it: the topics get this many partitions
    /// (created if missing; an existing topic with another count is refused).
    #[arg(long, value_name = "N")]
    num_shards: u32,
    /// Topic of the posts' events (new_tweet, like, retweet, reply), partitioned by the
    /// md5 of the tweet id.
    #[arg(long, default_value = shardrank_kafka::POST_TOPIC)]
    post_topic: String,
    /// Topic of the users' events (profiles, follow, unfollow, block, mute, and a copy of
    /// each new_tweet keyed by its author), partitioned by the md5 of the user id.
    #[arg(long, default_value = shardrank_kafka::USER_TOPIC)]
    user_topic: String,
    /// Replication factor of topics it creates; -1 takes the broker's default.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    replication_factor: i32,
    /// Stop at the first malformed line, naming it (events before it are already sent).
    /// Without it a malformed line is reported with its number, counted and skipped.
    #[arg(long)]
    strict: bool,
}

pub async fn run(a: ProduceArgs) -> Result<String, String> {
    check_brokers(&a.brokers)?;
    check_topic("--post-topic", &a.post_topic)?;
    check_topic("--user-topic", &a.user_topic)?;
    if a.post_topic == a.user_topic {
        return Err("--post-topic and --user-topic must differ".into());
    }
    if a.num_shards == 0 || a.num_shards > 4096 {
        return Err(format!("--num-shards {}: expected 1 to 4096", a.num_shards));
    }
    if a.replication_factor == 0 || a.replication_factor < -1 {
        return Err(format!(
            "--replication-factor {}: expected -1 (broker default) or at least 1",
            a.replication_factor
        ));
    }
    let file = std::fs::File::open(&a.events)
        .map_err(|e| format!("--events {}: {e}", a.events.display()))?;
    let n = a.num_shards as usize;
    let ensured = ensure(
        &a.brokers,
        &[(&a.post_topic, n), (&a.user_topic, n)],
        a.replication_factor,
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| e.to_string())?;
    let producer = EventProducer::new(&a.brokers, &a.post_topic, &a.user_topic, a.num_shards)
        .map_err(|e| e.to_string())?;

    let t0 = Instant::now();
    let mut per_partition = vec![0u64; n];
    let mut user_messages = 0u64;
    let mut send_error = None;
    let mode = if a.strict {
        OnMalformed::Stop
    } else {
        OnMalformed::Skip
    };
    let path = a.events.display().to_string();
    let report: ReadReport = tokio::task::block_in_place(|| {
        read_events(
            std::io::BufReader::with_capacity(1 << 20, file),
            mode,
            |e| {
                if send_error.is_some() {
                    return;
                }
                match producer.send_event(&e) {
                    Ok(_) => {
                        let (rs, k) = routes(&e, a.num_shards);
                        for r in &rs[..k] {
                            match r.topic {
                                TopicRole::Posts => per_partition[r.partition as usize] += 1,
                                TopicRole::Users => user_messages += 1,
                            }
                        }
                    }
                    Err(err) => send_error = Some(err.to_string()),
                }
            },
        )
    })
    .map_err(|e| format!("--events {path}: {e}"))?;
    if let Some(e) = send_error {
        return Err(format!("producing to {}: {e}", a.brokers));
    }
    let delivered = tokio::task::block_in_place(|| producer.raw.flush(Duration::from_secs(60)))
        .map_err(|e| format!("producing to {}: {e}", a.brokers))?;
    report.log_skipped_to_stderr();
    let secs = t0.elapsed().as_secs_f64();
    let state = |e: &Ensured| match e {
        Ensured::Created => "created",
        Ensured::Existed => "existed",
    };
    let posts: u64 = per_partition.iter().sum();
    Ok(format!(
        "produced {} events from {path} in {secs:.2} s ({:.0} events/s): {} messages to {} ({}, {n} partitions: {}), {user_messages} to {} ({}); {delivered} delivered; {} malformed lines skipped",
        report.events,
        report.events as f64 / secs.max(1e-9),
        posts,
        a.post_topic,
        state(&ensured[0]),
        per_partition
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        a.user_topic,
        state(&ensured[1]),
        report.malformed,
    ))
}
