//! The user store's live streams: the built-in generator, or Kafka's user topic (every
//! partition: profiles, follows, blocks, mutes and who posted), read from the beginning
//! at start-up (the store is rebuilt from the topic, no snapshot) up to the ends as they
//! were, then applied as it arrives, positions committed after applying.

use crate::metrics::{CoordinatorMetrics, EventType, Topic};
use crate::users::UserStore;
use shardrank_core::events::Event;
use shardrank_kafka::{Assignment, ConsumerOptions, EventConsumer, Start};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

fn count_applied(metrics: &CoordinatorMetrics, events: &[Event], users: &UserStore) {
    let watermark_ms = users.watermark_ms;
    let delivered = users
        .delivered
        .saturating_sub(metrics.fanout_deliveries.get());
    metrics.fanout_deliveries.inc_by(delivered);
    for e in events {
        metrics
            .events_applied
            .get_or_create(&EventType {
                r#type: e.type_name(),
            })
            .inc();
    }
    metrics.watermark_seconds.set(watermark_ms as f64 / 1e3);
}

/// Applies the built-in live stream to the user store, for ever (follows, blocks and
/// mutes change what Rank and Timeline see on the next request; every event moves the
/// watermark, the clock of features). The same stream the shards apply.
pub async fn run_live(
    users: Arc<RwLock<UserStore>>,
    metrics: Arc<CoordinatorMetrics>,
    spec: shardrank_core::corpus::CorpusSpec,
    rate: f64,
) {
    let mut generator = shardrank_core::live::LiveGenerator::new(&spec, rate);
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let events = generator.take_due(start.elapsed().as_secs_f64(), 50_000);
        if events.is_empty() {
            continue;
        }
        let mut u = users.write().unwrap_or_else(|p| p.into_inner());
        for e in &events {
            u.apply(e);
        }
        count_applied(&metrics, &events, &u);
    }
}

/// The coordinator's Kafka flags, checked.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    pub brokers: String,
    pub user_topic: String,
    /// Where inbox deliveries are published (None: not published).
    pub timeline_topic: Option<String>,
    pub group_id: String,
    pub dead_letter_topic: String,
}

/// The user topic's consumer, and the publisher of the fan-out's deliveries.
pub struct UserStream {
    consumer: EventConsumer,
    timeline: Option<(shardrank_kafka::RawProducer, String, usize)>,
}

impl UserStream {
    /// Whether inbox deliveries are published (the store must keep them).
    pub fn publishes_updates(&self) -> bool {
        self.timeline.is_some()
    }
}

/// Publishes deliveries in messages of up to 100, keyed and partitioned by the first
/// recipient.
fn publish_updates(
    updates: &[crate::users::TimelineUpdate],
    to: &(shardrank_kafka::RawProducer, String, usize),
    metrics: &CoordinatorMetrics,
) {
    let (producer, topic, partitions) = to;
    for chunk in updates.chunks(100) {
        let body: Vec<String> = chunk
            .iter()
            .map(|u| {
                format!(
                    r#"{{"user_id":{},"tweet_id":{},"author_id":{},"created_at":{}}}"#,
                    u.user_id, u.entry.tweet_id, u.entry.author_id, u.entry.created_at
                )
            })
            .collect();
        let payload = format!(r#"{{"updates":[{}]}}"#, body.join(","));
        let key = chunk[0].user_id;
        let partition = shardrank_core::routing::shard_of(key, *partitions as u32) as i32;
        match producer.send(
            topic,
            partition,
            key.to_string().as_bytes(),
            payload.as_bytes(),
            None,
        ) {
            Ok(()) => {
                metrics.timeline_updates_published.inc();
            }
            Err(e) => tracing::warn!(topic, error = %e, "publishing timeline updates failed"),
        };
    }
}

/// A consumer of every partition of the user topic from the beginning (created with
/// `num_shards` partitions if missing); waits while the brokers are away.
pub async fn open(k: &KafkaSettings, num_shards: u32) -> Result<UserStream, String> {
    let partitions = shardrank_kafka::topics::partitions_or_create(
        &k.brokers,
        &k.user_topic,
        num_shards as usize,
    )
    .await
    .map_err(|e| e.to_string())?;
    let parts: Vec<Assignment> = (0..partitions as i32)
        .map(|partition| Assignment {
            topic: k.user_topic.clone(),
            partition,
            start: Start::Beginning,
        })
        .collect();
    let consumer = EventConsumer::new(
        &ConsumerOptions {
            brokers: k.brokers.clone(),
            group_id: k.group_id.clone(),
            dead_letter_topic: Some(k.dead_letter_topic.clone()),
        },
        &parts,
    )
    .map_err(|e| e.to_string())?;
    let timeline = match &k.timeline_topic {
        Some(t) => {
            let partitions =
                shardrank_kafka::topics::partitions_or_create(&k.brokers, t, num_shards as usize)
                    .await
                    .map_err(|e| e.to_string())?;
            let producer =
                shardrank_kafka::RawProducer::new(&k.brokers).map_err(|e| e.to_string())?;
            Some((producer, t.clone(), partitions))
        }
        None => None,
    };
    Ok(UserStream { consumer, timeline })
}

/// Polls up to `max` events (waiting up to `wait` for the first), counting what was
/// skipped.
fn take(
    c: &mut EventConsumer,
    metrics: &CoordinatorMetrics,
    max: usize,
    wait: Duration,
) -> Vec<Event> {
    let batch = c.poll_batch(max, wait);
    metrics.events_malformed.inc_by(batch.malformed);
    metrics.events_replayed.inc_by(batch.replayed);
    metrics.log_truncations.inc_by(batch.truncated);
    batch.records.into_iter().map(|r| r.event).collect()
}

fn apply(users: &mut UserStore, events: &[Event], metrics: &CoordinatorMetrics) {
    for e in events {
        users.apply(e);
    }
    count_applied(metrics, events, users);
}

fn publish_lag(metrics: &CoordinatorMetrics, c: &EventConsumer) {
    for (topic, lag) in c.lag() {
        metrics
            .consumer_lag
            .get_or_create(&Topic { topic })
            .set(lag);
    }
}

/// Reads the user topic up to its ends as of now into `users` (blocking).
pub fn catch_up(s: &mut UserStream, users: &mut UserStore, metrics: &CoordinatorMetrics) {
    let c = &mut s.consumer;
    let t0 = Instant::now();
    let targets = c.high_watermarks();
    let mut n = 0;
    while !c.reached(&targets) {
        let events = take(c, metrics, 20_000, Duration::from_millis(200));
        apply(users, &events, metrics);
        n += events.len();
    }
    c.commit();
    publish_lag(metrics, c);
    tracing::info!(
        events = n,
        users = users.len(),
        secs = t0.elapsed().as_secs_f64(),
        "kafka: user topic read up to its ends at start"
    );
}

/// Applies what arrives, for ever, in short write-locked batches (blocking: run it on a
/// thread of its own).
pub fn run(mut s: UserStream, users: Arc<RwLock<UserStore>>, metrics: Arc<CoordinatorMetrics>) {
    let c = &mut s.consumer;
    let mut last_lag = Instant::now();
    loop {
        // Polled unlocked; applied in one short write-locked batch.
        let events = take(c, &metrics, 5_000, Duration::from_millis(50));
        if !events.is_empty() {
            let updates = {
                let mut u = users.write().unwrap_or_else(|p| p.into_inner());
                apply(&mut u, &events, &metrics);
                u.take_updates()
            };
            if let (Some(t), false) = (&s.timeline, updates.is_empty()) {
                publish_updates(&updates, t, &metrics);
            }
        }
        c.commit();
        if last_lag.elapsed() >= Duration::from_secs(1) {
            last_lag = Instant::now();
            publish_lag(&metrics, c);
        }
    }
}
