//! Reading events from assigned partitions at positions the caller owns.
//!
//! The caller's state (a shard's snapshot) records the next offset of every partition it
//! reflects, and is the source of truth for where to resume: an in-memory store that
//! restarts without a snapshot must replay from the beginning whatever the group last
//! committed (as a Kafka Streams state store restores from its changelog). Offsets are
//! still committed to the consumer group after each applied batch (at-least-once), so
//! the usual tooling shows each consumer's progress and lag.
//!
//! Applying is idempotent by sequence: a partition's offsets only move forward, a record
//! at an offset already applied (a broker re-delivery after a reconnect, say) is
//! skipped and counted, and a jump forward (records deleted by retention before they
//! were read) is logged as a gap.
//!
//! A record below the position can also mean the log was cut below it (a broker that
//! lost its tail, an unclean leader election): the consumer's position was out of
//! range, the client restarted at the log's beginning, and new records now take
//! offsets the state has passed. Skipping them as replays would drop them silently, so
//! the first record below the position asks the broker where the partition ends: if
//! it ends below the position, the cut is logged as an error and counted
//! (`Batch::truncated`), and reading resumes at the log's end as it is now. Records
//! written between the cut and that moment, at offsets below the end, cannot be told
//! from the old ones without leader epochs; the error names their range.

use crate::producer::{dead_letter_headers, RawProducer};
use crate::{client_config, KafkaError};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message};
use shardrank_core::events::{parse_event, Event};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where a partition's reading starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    Beginning,
    /// The next offset to read.
    Offset(i64),
}

/// One partition to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub topic: String,
    pub partition: i32,
    pub start: Start,
}

/// The next offset to read of one partition: what the caller's state reflects once the
/// records returned so far are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub next: i64,
}

pub struct ConsumerOptions {
    pub brokers: String,
    /// Consumer group the offsets are committed under.
    pub group_id: String,
    /// Where malformed messages go (None: logged and counted only).
    pub dead_letter_topic: Option<String>,
}

/// An event read, with where it was.
#[derive(Clone, Debug)]
pub struct Record {
    /// Shared with the consumer's own (no allocation per record).
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// The message's timestamp (ms since the epoch; the producer's clock by default).
    pub timestamp_ms: Option<i64>,
    pub event: Event,
}

/// What one poll returned.
#[derive(Default, Debug)]
pub struct Batch {
    pub records: Vec<Record>,
    /// Malformed messages: logged with their offset, dead-lettered, skipped.
    pub malformed: u64,
    /// Records at offsets already applied: skipped.
    pub replayed: u64,
    /// Partitions found cut below the position (see the module's notes).
    pub truncated: u64,
}

/// High watermarks from librdkafka's statistics (every second), for the lag.
#[derive(Default)]
struct Ctx {
    high: Mutex<HashMap<(String, i32), i64>>,
    last_error_log: Mutex<Option<Instant>>,
}

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        let mut high = self.high.lock().unwrap_or_else(|p| p.into_inner());
        for (name, t) in s.topics {
            for (p, part) in t.partitions {
                if p >= 0 && part.hi_offset >= 0 {
                    high.insert((name.clone(), p), part.hi_offset);
                }
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // A broker that is away is reported on every reconnect attempt: log it at most
        // every 10 s (librdkafka retries with backoff on its own).
        let mut last = self
            .last_error_log
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(error = %error, reason, "kafka client error (retrying with backoff)");
        }
    }
}

impl ConsumerContext for Ctx {}

struct Part {
    topic: std::sync::Arc<str>,
    partition: i32,
    next: i64,
    committed: i64,
    /// Started at the beginning and nothing read yet: the first offset may be > 0.
    fresh: bool,
    /// The position at which records below it were last checked to be replays (the
    /// partition's end was at or past it): one broker round trip per position.
    replays_checked_at: Option<i64>,
}

/// What a record below a partition's position `next` is, given where the partition's
/// log ends now (`end`, the high watermark).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BelowPosition {
    /// The log still reaches the position: a re-delivery of an applied record.
    Replay,
    /// The log ends below the position: it was cut, and reading resumes at `end`.
    Truncated { end: i64 },
}

pub fn below_position(next: i64, end: i64) -> BelowPosition {
    if end < next {
        BelowPosition::Truncated { end }
    } else {
        BelowPosition::Replay
    }
}

/// Reads the assigned partitions in order from the given positions.
pub struct EventConsumer {
    consumer: BaseConsumer<Ctx>,
    parts: Vec<Part>,
    dead_letters: Option<(RawProducer, String)>,
    brokers: String,
    group: String,
    /// Cuts found by [`Self::high_watermarks`], reported with the next batch.
    truncated_unreported: u64,
}

/// Logs a malformed message with where it was, and sends it to the dead-letter topic.
fn dead_letter(
    to: &Option<(RawProducer, String)>,
    group: &str,
    (topic, partition, offset): (&str, i32, i64),
    key: &[u8],
    payload: &[u8],
    error: &str,
) {
    let dlt = to.as_ref().map(|(_, t)| t.as_str());
    tracing::warn!(
        topic,
        partition,
        offset,
        error,
        dead_letter_topic = dlt,
        "malformed event skipped"
    );
    if let Some((producer, dlt)) = to {
        let headers = dead_letter_headers(topic, partition, offset, group, error);
        if let Err(e) = producer.send(dlt, 0, key, payload, Some(headers)) {
            tracing::warn!(topic, partition, offset, error = %e, "dead-lettering failed");
        }
    }
}

impl EventConsumer {
    pub fn new(opts: &ConsumerOptions, assignments: &[Assignment]) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer<Ctx> = client_config(&opts.brokers)
            .set("group.id", &opts.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Only for a start at the beginning or an offset deleted by retention.
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "1000")
            .set("fetch.wait.max.ms", "10")
            .create_with_context(Ctx::default())?;
        let parts: Vec<Part> = assignments
            .iter()
            .map(|a| {
                let next = match a.start {
                    Start::Beginning => 0,
                    Start::Offset(o) => o,
                };
                Part {
                    topic: a.topic.as_str().into(),
                    partition: a.partition,
                    next,
                    committed: next,
                    fresh: a.start == Start::Beginning,
                    replays_checked_at: None,
                }
            })
            .collect();
        assign(&consumer, &parts)?;
        let dead_letters = match &opts.dead_letter_topic {
            Some(t) => Some((RawProducer::new(&opts.brokers)?, t.clone())),
            None => None,
        };
        Ok(EventConsumer {
            consumer,
            parts,
            dead_letters,
            brokers: opts.brokers.clone(),
            group: opts.group_id.clone(),
            truncated_unreported: 0,
        })
    }

    /// Waits up to `wait` for the first record, then takes what is ready, up to `max`.
    /// Parses straight from librdkafka's buffer: only a malformed message is copied
    /// (to the dead-letter topic).
    pub fn poll_batch(&mut self, max: usize, wait: Duration) -> Batch {
        let mut batch = Batch {
            truncated: std::mem::take(&mut self.truncated_unreported),
            ..Batch::default()
        };
        let mut timeout = wait;
        while batch.records.len() < max {
            let msg = match self.consumer.poll(timeout) {
                None => break,
                Some(Err(e)) => {
                    self.consumer.context().error(e, "poll");
                    break;
                }
                Some(Ok(m)) => m,
            };
            timeout = Duration::ZERO;
            let (partition, offset) = (msg.partition(), msg.offset());
            let Some(p) = self
                .parts
                .iter_mut()
                .find(|p| p.partition == partition && *p.topic == *msg.topic())
            else {
                continue;
            };
            if offset < p.next {
                if p.replays_checked_at != Some(p.next) {
                    let end = self
                        .consumer
                        .fetch_watermarks(&p.topic, partition, Duration::from_secs(5))
                        .map(|(_, high)| high);
                    match end.map(|end| below_position(p.next, end)) {
                        Ok(BelowPosition::Truncated { end }) => {
                            report_cut(p, end, &format!("records written since the cut at offsets below {end}, if any, are not applied"));
                            batch.truncated += 1;
                            p.next = end;
                            p.replays_checked_at = None;
                            // Skip the re-read from the log's beginning; if the seek
                            // fails, the records below `end` are skipped as they come.
                            if let Err(e) = self.consumer.seek(
                                &p.topic,
                                partition,
                                Offset::Offset(end),
                                Duration::from_secs(5),
                            ) {
                                tracing::warn!(topic = &*p.topic, partition, error = %e, "seek after a truncated log failed");
                            }
                            continue;
                        }
                        Ok(BelowPosition::Replay) => p.replays_checked_at = Some(p.next),
                        // Unknown: counted as a replay, asked again at the next one.
                        Err(e) => self.consumer.context().error(e, "fetch_watermarks"),
                    }
                }
                if offset < p.next {
                    batch.replayed += 1;
                    continue;
                }
            }
            if offset > p.next && !p.fresh {
                tracing::warn!(
                    topic = &*p.topic,
                    partition,
                    expected = p.next,
                    got = offset,
                    "offsets {}..{} are gone (deleted by retention before they were read?)",
                    p.next,
                    offset - 1
                );
            }
            p.fresh = false;
            p.next = offset + 1;
            let payload = msg.payload().unwrap_or_default();
            match parse_event(payload) {
                Ok(event) => batch.records.push(Record {
                    topic: p.topic.clone(),
                    partition,
                    offset,
                    timestamp_ms: msg.timestamp().to_millis(),
                    event,
                }),
                Err(e) => {
                    batch.malformed += 1;
                    let at = (&*p.topic, partition, offset);
                    let key = msg.key().unwrap_or_default();
                    dead_letter(&self.dead_letters, &self.group, at, key, payload, &e);
                }
            }
        }
        batch
    }

    /// Where every partition stands: the next offset to read.
    pub fn positions(&self) -> Vec<Position> {
        self.parts
            .iter()
            .map(|p| Position {
                topic: p.topic.to_string(),
                partition: p.partition,
                next: p.next,
            })
            .collect()
    }

    /// Commits the positions of the records returned so far (call after applying them).
    pub fn commit(&mut self) {
        let mut tpl = TopicPartitionList::new();
        for p in self.parts.iter().filter(|p| p.next != p.committed) {
            if tpl
                .add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next))
                .is_err()
            {
                continue;
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match self.consumer.commit(&tpl, CommitMode::Async) {
            Ok(()) => {
                for p in &mut self.parts {
                    p.committed = p.next;
                }
            }
            Err(e) => self.consumer.context().error(e, "commit"),
        }
    }

    /// Records not yet read, per topic (from the latest statistics; a partition not yet
    /// fetched counts as 0).
    pub fn lag(&self) -> Vec<(String, i64)> {
        let high = self
            .consumer
            .context()
            .high
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, i64)> = Vec::new();
        for p in &self.parts {
            let lag = high
                .get(&(p.topic.to_string(), p.partition))
                .map_or(0, |&h| (h - p.next).max(0));
            match out.iter_mut().find(|(t, _)| **t == *p.topic) {
                Some((_, l)) => *l += lag,
                None => out.push((p.topic.to_string(), lag)),
            }
        }
        out
    }

    /// The end of every assigned partition now (asked of the broker, retried with
    /// backoff until it answers): reading up to it is catching up.
    ///
    /// Called before reading, it also finds the cuts made while this consumer was down:
    /// a restored position past its partition's end is reported as a cut (counted in
    /// the next batch's `truncated`) and reading starts at the end, so that no record
    /// produced from now on takes an offset below the position and is skipped.
    pub fn high_watermarks(&mut self) -> Vec<i64> {
        let ends = self.fetch_ends();
        let mut cut = false;
        for (p, &end) in self.parts.iter_mut().zip(&ends) {
            // Positions of `fresh` partitions are not the caller's: nothing to compare.
            let below = below_position(p.next, end);
            if !p.fresh && matches!(below, BelowPosition::Truncated { .. }) {
                report_cut(p, end, "nothing produced from now on is skipped");
                p.next = end;
                cut = true;
                self.truncated_unreported += 1;
            }
        }
        if cut {
            // Nothing read yet at start: assigning again moves the fetch positions
            // (a seek needs a partition already fetching). If it fails, the broker's
            // reset starts reading at the beginning, and the records below the new
            // positions are skipped as replays.
            if let Err(e) = assign(&self.consumer, &self.parts) {
                tracing::warn!(error = %e, "assigning at the partitions' ends failed");
            }
        }
        ends
    }

    fn fetch_ends(&self) -> Vec<i64> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let res: Result<Vec<i64>, rdkafka::error::KafkaError> = self
                .parts
                .iter()
                .map(|p| {
                    self.consumer
                        .fetch_watermarks(&p.topic, p.partition, Duration::from_secs(5))
                        .map(|(_, high)| high)
                })
                .collect();
            match res {
                Ok(h) => return h,
                Err(e) => {
                    tracing::warn!(brokers = %self.brokers, error = %e, retry_in = ?backoff, "cannot read the partitions' ends yet");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Whether every partition has been read up to `targets` (from [`Self::high_watermarks`]).
    pub fn reached(&self, targets: &[i64]) -> bool {
        self.parts.iter().zip(targets).all(|(p, &t)| p.next >= t)
    }

    /// How many partitions `topic` has, asking until the broker answers; None when the
    /// topic does not exist.
    pub fn partitions(brokers: &str, topic: &str) -> Result<Option<usize>, KafkaError> {
        let client: BaseConsumer = client_config(brokers).create()?;
        let mut backoff = Duration::from_millis(100);
        loop {
            match crate::topics::partitions(client.client(), brokers, topic, Duration::from_secs(5))
            {
                Ok(n) => return Ok(n),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "waiting for the brokers");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Assigns the partitions at their positions (`fresh` ones at the beginning).
fn assign(consumer: &BaseConsumer<Ctx>, parts: &[Part]) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for p in parts {
        let at = if p.fresh {
            Offset::Beginning
        } else {
            Offset::Offset(p.next)
        };
        tpl.add_partition_offset(&p.topic, p.partition, at)?;
    }
    consumer.assign(&tpl)?;
    Ok(())
}

/// Logs that `p`'s log ends at `end`, below its position; `then` says what it means for
/// records written since.
fn report_cut(p: &Part, end: i64, then: &str) {
    tracing::error!(
        topic = &*p.topic,
        partition = p.partition,
        position = p.next,
        log_end = end,
        "the partition's log ends at offset {end}, below this consumer's position {}: offsets {end}..{} were applied here and are gone from the broker (a broker that lost its tail, or an unclean leader election). Resuming at {end}; {then}",
        p.next,
        p.next - 1
    );
}

/// A message as stored, for tools and tests (dead letters, say).
#[derive(Clone, Debug)]
pub struct RawMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// Reads every message of `topic` (all partitions) from the beginning up to its ends
/// as they are now, giving up after `timeout`.
pub fn read_all(
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<RawMessage>, KafkaError> {
    use rdkafka::message::Headers;
    let t0 = Instant::now();
    let Some(n) = EventConsumer::partitions(brokers, topic)? else {
        return Ok(Vec::new());
    };
    let consumer: BaseConsumer = client_config(brokers)
        .set("group.id", "shardrank-read-all")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::with_capacity(n);
    for p in 0..n as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        ends.push(consumer.fetch_watermarks(topic, p, timeout)?.1);
    }
    consumer.assign(&tpl)?;
    let mut next = vec![0i64; n];
    let mut out = Vec::new();
    while next.iter().zip(&ends).any(|(a, b)| a < b) && t0.elapsed() < timeout {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        next[m.partition() as usize] = m.offset() + 1;
        let headers = m.headers().map_or(Vec::new(), |h| {
            h.iter()
                .map(|h| {
                    let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                    (h.key.to_string(), v.into_owned())
                })
                .collect()
        });
        out.push(RawMessage {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().unwrap_or_default().to_vec(),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_below_the_position_is_a_replay_only_while_the_log_reaches_it() {
        assert_eq!(below_position(100, 100), BelowPosition::Replay);
        assert_eq!(below_position(100, 250), BelowPosition::Replay);
        assert_eq!(
            below_position(100, 99),
            BelowPosition::Truncated { end: 99 }
        );
        assert_eq!(below_position(100, 0), BelowPosition::Truncated { end: 0 });
    }
}
