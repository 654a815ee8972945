//! Where an event goes: topic, partition and key. Pure, so the producer, the tests and
//! any outside tool agree on it.

use shardrank_core::events::Event;
use shardrank_core::routing::shard_of;

/// Which of the two event topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicRole {
    Posts,
    Users,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub topic: TopicRole,
    pub partition: i32,
    /// The message key: the routing id (decimal, as md5 routing hashes it).
    pub key: u64,
}

fn to(topic: TopicRole, key: u64, num_shards: u32) -> Route {
    Route {
        topic,
        partition: shard_of(key, num_shards) as i32,
        key,
    }
}

/// The messages one event becomes with `num_shards` partitions per topic: a post's
/// events go to its owner's partition of the post topic; what is about a user to the
/// user topic by the acting user; a new post to both (by id, and by author).
pub fn routes(e: &Event, num_shards: u32) -> ([Route; 2], usize) {
    use TopicRole::*;
    let none = to(Posts, 0, 1);
    match e {
        Event::NewTweet(t) => (
            [
                to(Posts, t.id, num_shards),
                to(Users, t.author_id, num_shards),
            ],
            2,
        ),
        Event::Engagement(g) => ([to(Posts, g.tweet_id, num_shards), none], 1),
        Event::User(u) => ([to(Users, u.user_id, num_shards), none], 1),
        Event::Social(s) => ([to(Users, s.user_id, num_shards), none], 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardrank_core::corpus::{generate, CorpusSpec};

    #[test]
    fn a_posts_events_land_on_its_owners_partition_and_users_keep_their_order() {
        let spec = CorpusSpec::named("tiny", 42).unwrap();
        let n = 4;
        let mut seen = 0;
        generate(&spec, |e| {
            let (r, k) = routes(&e, n);
            let r = &r[..k];
            match &e {
                Event::NewTweet(t) => {
                    assert_eq!(r.len(), 2);
                    assert_eq!(r[0].topic, TopicRole::Posts);
                    assert_eq!(r[0].partition as u32, shard_of(t.id, n));
                    assert_eq!(r[0].key, t.id);
                    assert_eq!(r[1].topic, TopicRole::Users);
                    assert_eq!(r[1].key, t.author_id);
                }
                Event::Engagement(g) => {
                    assert_eq!(r.len(), 1);
                    assert_eq!(r[0].partition as u32, shard_of(g.tweet_id, n));
                }
                Event::Social(s) => {
                    assert_eq!(r[0].topic, TopicRole::Users);
                    assert_eq!(r[0].partition as u32, shard_of(s.user_id, n));
                }
                Event::User(u) => assert_eq!(r[0].key, u.user_id),
            }
            assert!(r.iter().all(|r| (0..n as i32).contains(&r.partition)));
            seen += 1;
        });
        assert!(seen > 10_000);
    }
}
