//! The event stream over Kafka (librdkafka through `rdkafka`, built from its bundled
//! sources: the client most Kafka users run, with consumer groups, committed offsets,
//! idempotent producing and statistics; see the README for the choice).
//!
//! Layout of the topics (`shardrank produce` writes it, the binaries read it):
//! - the post-events topic (`tweet_events`) has one partition per shard; `new_tweet`,
//!   `like`, `retweet` and `reply` are keyed by the tweet id and sent to partition
//!   `shard_of(tweet id)`, the same md5 routing as the coordinator's. Shard i consumes
//!   partition i directly (every replica of it does).
//! - the user-events topic (`user_events`) holds what is about users: profiles,
//!   `follow`, `unfollow`, `block`, `mute`, keyed by the acting user (so one user's
//!   events keep their order), and a copy of every `new_tweet` keyed by its author (the
//!   author's activity). The coordinator consumes it for its user store and fan-out;
//!   shards consume it for the author features, which are global.
//! - a malformed message goes to the dead-letter topic with headers naming where it came
//!   from and why it was refused.
//!
//! Messages are the JSON lines of the events file format, one event each.

pub mod consumer;
pub mod producer;
pub mod route;
pub mod topics;

pub use consumer::{
    read_all, Assignment, Batch, ConsumerOptions, EventConsumer, Position, RawMessage, Record,
    Start,
};
pub use producer::{EventProducer, RawProducer};
pub use route::{routes, Route, TopicRole};

/// Default topic names (flags override them).
pub const POST_TOPIC: &str = "tweet_events";
pub const USER_TOPIC: &str = "user_events";
pub const TIMELINE_TOPIC: &str = "timeline_updates";
pub const DEAD_LETTER_TOPIC: &str = "dead_letters";

/// What can go wrong talking to Kafka; every message names the topic or broker.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("topic {topic}: {msg}")]
    Topic { topic: String, msg: String },
    #[error("{failed} messages not delivered; the first failed with: {first}")]
    Undelivered { failed: u64, first: String },
    #[error("brokers {brokers}: {msg}")]
    Unreachable { brokers: String, msg: String },
}

/// The client settings every shardrank Kafka client shares.
pub(crate) fn client_config(brokers: &str) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        // Reconnect with backoff when a broker goes away (librdkafka doubles it up to
        // the max); the processes keep serving what they have meanwhile.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000")
        .set("socket.keepalive.enable", "true")
        .set("client.id", "shardrank");
    c
}

/// Checks a `--kafka-brokers` value: comma-separated HOST:PORT.
pub fn check_brokers(brokers: &str) -> Result<(), String> {
    if brokers.trim().is_empty() {
        return Err("--kafka-brokers: empty; expected HOST:PORT[,HOST:PORT...]".into());
    }
    for b in brokers.split(',') {
        let b = b.trim();
        let ok = b
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(format!(
                "--kafka-brokers: {b:?} is not HOST:PORT (e.g. 127.0.0.1:9092)"
            ));
        }
    }
    Ok(())
}

/// Checks a topic name as Kafka does (1..249 of [a-zA-Z0-9._-], not `.` or `..`).
pub fn check_topic(flag: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{flag} {name:?}: a topic name is 1 to 249 of the characters a-z A-Z 0-9 . _ -"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked_with_the_reason() {
        assert!(check_brokers("127.0.0.1:9092,kafka-0.kafka:9092").is_ok());
        for bad in ["", "localhost", "host:", ":9092", "h:0", "h:99999"] {
            let e = check_brokers(bad).unwrap_err();
            assert!(e.starts_with("--kafka-brokers"), "{e}");
        }
        assert!(check_topic("--kafka-topic", "tweet_events").is_ok());
        for bad in ["", ".", "a b", "ü", &"x".repeat(250)] {
            assert!(check_topic("--kafka-topic", bad)
                .unwrap_err()
                .contains("--kafka-topic"));
        }
    }
}
