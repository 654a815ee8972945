//! Topic set-up: creates the event topics with one partition per shard when missing,
//! and refuses a topic whose partition count does not match the layout (the md5
//! routing would send events to the wrong shard).

use crate::{client_config, KafkaError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// What [`ensure`] did for a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ensured {
    Created,
    Existed,
}

/// How many partitions `topic` has, or None when it does not exist.
pub fn partitions(
    client: &rdkafka::client::Client<impl rdkafka::client::ClientContext>,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, KafkaError> {
    // All topics, not Some(topic): asking for one by name makes brokers with
    // auto-creation create it with their default partition count.
    let md = client
        .fetch_metadata(None, timeout)
        .map_err(|e| KafkaError::Unreachable {
            brokers: brokers.to_string(),
            msg: format!("no metadata within {timeout:?}: {e}"),
        })?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error() {
        None if !t.partitions().is_empty() => Ok(Some(t.partitions().len())),
        _ => Ok(None),
    }
}

/// Makes sure each `(topic, partitions)` exists with exactly that many partitions,
/// creating missing ones with `replication` copies (-1: the broker's default).
pub async fn ensure(
    brokers: &str,
    topics: &[(&str, usize)],
    replication: i32,
    timeout: Duration,
) -> Result<Vec<Ensured>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers).create()?;
    let mut out = Vec::with_capacity(topics.len());
    for &(topic, want) in topics {
        let have = {
            let client = admin.inner();
            tokio::task::block_in_place(|| partitions(client, brokers, topic, timeout))?
        };
        let done = match have {
            Some(n) if n == want => Ensured::Existed,
            Some(n) => {
                return Err(KafkaError::Topic {
                    topic: topic.to_string(),
                    msg: format!(
                        "has {n} partitions but the layout has {want} shards; events would \
                         reach the wrong shards (use a new topic for a new layout)"
                    ),
                })
            }
            None => {
                let new = NewTopic::new(topic, want as i32, TopicReplication::Fixed(replication));
                let opts = AdminOptions::new().operation_timeout(Some(timeout));
                let res = admin.create_topics([&new], &opts).await?;
                match res.into_iter().next() {
                    Some(Ok(_)) => Ensured::Created,
                    // Created meanwhile by another process: check it as an existing one.
                    Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ensured::Existed,
                    Some(Err((_, code))) => {
                        return Err(KafkaError::Topic {
                            topic: topic.to_string(),
                            msg: format!("creating it failed: {code}"),
                        })
                    }
                    None => {
                        return Err(KafkaError::Topic {
                            topic: topic.to_string(),
                            msg: "creating it gave no answer".into(),
                        })
                    }
                }
            }
        };
        out.push(done);
    }
    Ok(out)
}

/// How many partitions `topic` has, creating it with `partitions` when missing (for
/// topics whose partition count is free, such as the user and timeline topics); waits
/// while the brokers are away.
pub async fn partitions_or_create(
    brokers: &str,
    topic: &str,
    partitions: usize,
) -> Result<usize, KafkaError> {
    let (b, t) = (brokers.to_string(), topic.to_string());
    let have = tokio::task::spawn_blocking(move || crate::EventConsumer::partitions(&b, &t))
        .await
        .map_err(|e| KafkaError::Topic {
            topic: topic.to_string(),
            msg: e.to_string(),
        })??;
    if let Some(p) = have {
        return Ok(p);
    }
    ensure(brokers, &[(topic, partitions)], -1, Duration::from_secs(10)).await?;
    Ok(partitions)
}
