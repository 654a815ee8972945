//! Sending events: idempotent producing (a retried send is not written twice), explicit
//! partitions from [`crate::route`], deliveries counted by a callback.

use crate::route::{routes, TopicRole};
use crate::{client_config, KafkaError};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use shardrank_core::events::{encode, Event};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Counts deliveries; keeps the first failure's reason.
#[derive(Default)]
pub struct Deliveries {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
                if first.is_none() {
                    *first = Some(e.to_string());
                }
            }
        }
    }
}

/// Sends messages as given (any topic, explicit partition); librdkafka's thread sends
/// them in batches. Idempotent: a send retried after a lost acknowledgement is not
/// written twice.
pub struct RawProducer {
    inner: ThreadedProducer<Deliveries>,
}

impl RawProducer {
    pub fn new(brokers: &str) -> Result<Self, KafkaError> {
        let inner = client_config(brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create_with_context(Deliveries::default())?;
        Ok(RawProducer { inner })
    }

    pub fn deliveries(&self) -> &Deliveries {
        self.inner.context()
    }

    /// Queues one message, waiting while librdkafka's queue is full.
    pub fn send(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), KafkaError> {
        let mut record = BaseRecord::to(topic)
            .partition(partition)
            .key(key)
            .payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Waits until every queued message is delivered or failed; an error names how
    /// many failed and the first reason. Returns how many were delivered in all.
    pub fn flush(&self, timeout: Duration) -> Result<u64, KafkaError> {
        self.inner.flush(timeout)?;
        let d = self.deliveries();
        let failed = d.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = d
                .first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            return Err(KafkaError::Undelivered { failed, first });
        }
        Ok(d.delivered.load(Ordering::Relaxed))
    }
}

/// Writes events to the post and user topics by [`routes`].
pub struct EventProducer {
    pub raw: RawProducer,
    post_topic: String,
    user_topic: String,
    num_shards: u32,
}

impl EventProducer {
    pub fn new(
        brokers: &str,
        post_topic: &str,
        user_topic: &str,
        num_shards: u32,
    ) -> Result<Self, KafkaError> {
        Ok(EventProducer {
            raw: RawProducer::new(brokers)?,
            post_topic: post_topic.to_string(),
            user_topic: user_topic.to_string(),
            num_shards,
        })
    }

    fn topic(&self, role: TopicRole) -> &str {
        match role {
            TopicRole::Posts => &self.post_topic,
            TopicRole::Users => &self.user_topic,
        }
    }

    /// Queues `e` for every topic it belongs to; returns how many messages went to the
    /// post topic and to the user topic.
    pub fn send_event(&self, e: &Event) -> Result<(u64, u64), KafkaError> {
        let payload = encode(e);
        let (rs, n) = routes(e, self.num_shards);
        let mut counts = (0, 0);
        let mut key = itoa::Buffer::new();
        for r in &rs[..n] {
            let key = key.format(r.key);
            self.raw.send(
                self.topic(r.topic),
                r.partition,
                key.as_bytes(),
                &payload,
                None,
            )?;
            match r.topic {
                TopicRole::Posts => counts.0 += 1,
                TopicRole::Users => counts.1 += 1,
            }
        }
        Ok(counts)
    }
}

/// The headers a dead-lettered message carries: where it came from, who refused it
/// (every consumer group of a topic dead-letters on its own) and why.
pub fn dead_letter_headers(
    topic: &str,
    partition: i32,
    offset: i64,
    group: &str,
    error: &str,
) -> OwnedHeaders {
    let partition = partition.to_string();
    let offset = offset.to_string();
    OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: "source_topic",
            value: Some(topic),
        })
        .insert(Header {
            key: "source_partition",
            value: Some(&partition),
        })
        .insert(Header {
            key: "source_offset",
            value: Some(&offset),
        })
        .insert(Header {
            key: "consumer_group",
            value: Some(group),
        })
        .insert(Header {
            key: "error",
            value: Some(error),
        })
}
