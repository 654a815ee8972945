//! The shard's Kafka stream: partition `--shard-index` of the post topic (its posts and
//! their engagement) and every partition of the user topic (profiles, follows and who
//! posted: the author features, which are global).
//!
//! Start-up: from the snapshot's positions (or the beginning without one), read up to
//! the partitions' ends as they were at start, then report healthy: once a shard
//! serves, everything produced before it started is rankable. Then, for ever: apply
//! what arrives in short write-locked batches, commit the positions after applying,
//! snapshot every --snapshot-interval-secs with the positions the file reflects.
//! Blocking code on a thread of its own (librdkafka's poll blocks).

use super::{publish, unix_now, write_snapshot, LiveSnapshots};
use crate::metrics::{ShardMetrics, Topic};
use crate::service::ShardState;
use crate::store::{Feed, PostStore};
use shardrank_core::events::Event;
use shardrank_kafka::{Assignment, ConsumerOptions, EventConsumer, Record, Start};
use std::time::{Duration, Instant};

/// The shard's Kafka flags, checked.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    pub brokers: String,
    pub post_topic: String,
    pub user_topic: String,
    pub group_id: String,
    pub dead_letter_topic: String,
}

/// Creates the topics if missing (one partition per shard) and refuses a post topic
/// whose partition count is not the layout's; retries while the brokers are away.
pub async fn prepare(k: &KafkaSettings, num_shards: u32) -> Result<usize, String> {
    let n = num_shards as usize;
    let mut backoff = Duration::from_millis(100);
    loop {
        match shardrank_kafka::topics::ensure(
            &k.brokers,
            &[(&k.post_topic, n), (&k.user_topic, n)],
            -1,
            Duration::from_secs(5),
        )
        .await
        {
            Ok(_) => break,
            Err(e @ shardrank_kafka::KafkaError::Topic { .. }) => return Err(e.to_string()),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "kafka not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    let brokers = k.brokers.clone();
    let user_topic = k.user_topic.clone();
    tokio::task::spawn_blocking(move || EventConsumer::partitions(&brokers, &user_topic))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("topic {} vanished after it was created", k.user_topic))
}

/// A consumer of this shard's partitions, at the positions `restored` (a snapshot's)
/// or from the beginning.
pub fn open(
    k: &KafkaSettings,
    index: u32,
    user_partitions: usize,
    restored: &[(String, i32, i64)],
) -> Result<EventConsumer, String> {
    let start = |topic: &str, partition: i32| {
        restored
            .iter()
            .find(|(t, p, _)| t == topic && *p == partition)
            .map_or(Start::Beginning, |&(_, _, next)| Start::Offset(next))
    };
    let mut parts = vec![Assignment {
        topic: k.post_topic.clone(),
        partition: index as i32,
        start: start(&k.post_topic, index as i32),
    }];
    for p in 0..user_partitions as i32 {
        parts.push(Assignment {
            topic: k.user_topic.clone(),
            partition: p,
            start: start(&k.user_topic, p),
        });
    }
    tracing::info!(?parts, group = %k.group_id, "kafka: assigned");
    EventConsumer::new(
        &ConsumerOptions {
            brokers: k.brokers.clone(),
            group_id: k.group_id.clone(),
            dead_letter_topic: Some(k.dead_letter_topic.clone()),
        },
        &parts,
    )
    .map_err(|e| e.to_string())
}

fn positions(c: &EventConsumer) -> Vec<(String, i32, i64)> {
    c.positions()
        .into_iter()
        .map(|p| (p.topic, p.partition, p.next))
        .collect()
}

/// Applies records in order, each run of one topic as a batch with its feed; returns the
/// events applied (for the metrics).
fn apply(store: &mut PostStore, records: Vec<Record>, post_topic: &str) -> Vec<Event> {
    let mut applied = Vec::with_capacity(records.len());
    let mut run: Vec<Event> = Vec::new();
    let mut run_feed = Feed::Posts;
    for r in records {
        let feed = if &*r.topic == post_topic {
            Feed::Posts
        } else {
            Feed::Users
        };
        if feed != run_feed && !run.is_empty() {
            store.apply_batch_from(&run, run_feed);
            applied.append(&mut run);
        }
        run_feed = feed;
        run.push(r.event);
    }
    store.apply_batch_from(&run, run_feed);
    applied.append(&mut run);
    applied
}

fn note_batch(m: &ShardMetrics, b: &shardrank_kafka::Batch) {
    m.events_malformed.inc_by(b.malformed);
    m.events_replayed.inc_by(b.replayed);
    m.log_truncations.inc_by(b.truncated);
}

fn publish_lag(m: &ShardMetrics, c: &EventConsumer) {
    for (topic, lag) in c.lag() {
        m.consumer_lag.get_or_create(&Topic { topic }).set(lag);
    }
}

/// Reads up to the partitions' ends as of now into `store` (not yet serving, so no
/// lock and no per-event refresh); returns the events applied.
pub fn catch_up(
    c: &mut EventConsumer,
    store: &mut PostStore,
    k: &KafkaSettings,
    m: &ShardMetrics,
) -> u64 {
    let t0 = Instant::now();
    let targets = c.high_watermarks();
    store.begin_load();
    let mut n = 0u64;
    let mut last_log = Instant::now();
    while !c.reached(&targets) {
        let batch = c.poll_batch(20_000, Duration::from_millis(200));
        note_batch(m, &batch);
        let applied = apply(store, batch.records, &k.post_topic);
        publish(m, store, &applied);
        n += applied.len() as u64;
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::info!(events = n, ?targets, positions = ?c.positions(), "kafka: catching up");
        }
    }
    store.finish_load();
    c.commit();
    publish_lag(m, c);
    tracing::info!(
        events = n,
        posts = store.len(),
        secs = t0.elapsed().as_secs_f64(),
        "kafka: caught up with the partitions' ends at start"
    );
    n
}

/// Writes a snapshot at the consumer's positions; the metric says when.
pub fn snapshot(
    store: &PostStore,
    c: &EventConsumer,
    s: &LiveSnapshots,
    index: u32,
    num_shards: u32,
    m: &ShardMetrics,
) {
    let file = crate::store::snapshot_path(&s.dir, index, num_shards);
    if write_snapshot(store, &file, &s.source, 0, positions(c)) {
        m.last_snapshot_seconds.set(unix_now());
    }
}

/// Applies what arrives, for ever (the thread ends with the process).
pub fn run(
    mut c: EventConsumer,
    state: std::sync::Arc<ShardState>,
    k: KafkaSettings,
    snapshots: Option<LiveSnapshots>,
) {
    let Some(lock) = state.store.get() else {
        tracing::error!("kafka: the live loop started before the partition was loaded");
        return;
    };
    let m = &state.metrics;
    let mut last_snapshot = Instant::now();
    let mut last_lag = Instant::now();
    loop {
        // Short batches: a request waits at most one batch's apply for the lock.
        let batch = c.poll_batch(5_000, Duration::from_millis(50));
        note_batch(m, &batch);
        if !batch.records.is_empty() {
            let stamps: Vec<i64> = batch
                .records
                .iter()
                .filter_map(|r| r.timestamp_ms)
                .collect();
            {
                let mut st = lock.write().unwrap_or_else(|p| p.into_inner());
                let applied = apply(&mut st, batch.records, &k.post_topic);
                publish(m, &st, &applied);
            }
            let now_ms = unix_now() * 1e3;
            for t in stamps {
                m.ingest_delay.observe(((now_ms - t as f64) / 1e3).max(0.0));
            }
        }
        // At-least-once: committed only once applied.
        c.commit();
        if last_lag.elapsed() >= Duration::from_secs(1) {
            last_lag = Instant::now();
            publish_lag(m, &c);
        }
        if let Some(s) = &snapshots {
            if last_snapshot.elapsed() >= s.every {
                last_snapshot = Instant::now();
                // Under the read lock: the file is the store at exactly these positions.
                let st = lock.read().unwrap_or_else(|p| p.into_inner());
                snapshot(&st, &c, s, state.index, state.num_shards, m);
            }
        }
    }
}
