//! The built-in live event stream (`--live-events-per-sec R`): events after the corpus
//! ends, so that a demo shows ranking move without any outside service. Every process
//! generates the same stream: event k depends only on the seed, k and the events before
//! it, and its time is `CORPUS_END_MS + k / R` seconds, so the shards and the coordinator
//! apply the same events with the same times whenever each of them gets to them.
//!
//! The mix: 20% new posts (by corpus users), 60% likes, retweets and replies on recent
//! live posts, 16% follows of the authors of recent live posts (their next posts reach
//! the follower's in-network source), 2% blocks, 2% mutes.

use crate::corpus::{CorpusSpec, CORPUS_END_MS};
use crate::events::{Engagement, EngagementKind, Event, NewTweet, Social, SocialKind};
use crate::lang;
use crate::rng::{mix64, Rng};
use std::collections::VecDeque;

/// Live posts an engagement or follow may target (the most recent ones).
const RECENT: usize = 4096;

pub struct LiveGenerator {
    spec: CorpusSpec,
    rate: f64,
    k: u64,
    recent: VecDeque<(u64, u64)>,
}

/// Whether `id` is the id of a live post (live ids have the top bit set; corpus ids
/// never do).
pub fn is_live_post(id: u64) -> bool {
    id >> 63 == 1
}

impl LiveGenerator {
    /// Events per second of event time: `rate` (> 0).
    pub fn new(spec: &CorpusSpec, rate: f64) -> Self {
        LiveGenerator {
            spec: *spec,
            rate,
            k: 0,
            recent: VecDeque::with_capacity(RECENT),
        }
    }

    /// How many events are due after `elapsed_secs` of wall time.
    pub fn due(&self, elapsed_secs: f64) -> u64 {
        (elapsed_secs * self.rate).floor().max(0.0) as u64
    }

    /// The events due after `elapsed_secs` of wall time that were not taken yet, at most
    /// `max` (a process that fell behind catches up in bounded batches).
    pub fn take_due(&mut self, elapsed_secs: f64, max: u64) -> Vec<Event> {
        let n = self.due(elapsed_secs).saturating_sub(self.k).min(max);
        (0..n).map(|_| self.next_event()).collect()
    }

    /// Events generated so far.
    pub fn generated(&self) -> u64 {
        self.k
    }

    fn user(&self, r: &mut Rng) -> u64 {
        self.spec.user_id(r.below(self.spec.users))
    }

    /// The next event of the stream.
    pub fn next_event(&mut self) -> Event {
        let k = self.k;
        self.k += 1;
        let t = CORPUS_END_MS + (k as f64 * 1000.0 / self.rate) as i64;
        let mut r = Rng::fork(self.spec.seed ^ 0x4C49_5645, k);
        let roll = r.below(100);
        let target = if self.recent.is_empty() {
            None
        } else {
            Some(self.recent[r.below(self.recent.len() as u64) as usize])
        };
        match (roll, target) {
            (20..=79, Some((post, _))) => Event::Engagement(Engagement {
                kind: [
                    EngagementKind::Like,
                    EngagementKind::Retweet,
                    EngagementKind::Reply,
                ][r.below(3) as usize],
                user_id: self.user(&mut r),
                tweet_id: post,
                timestamp: t,
            }),
            (80..=99, Some((_, author))) => Event::Social(Social {
                kind: match roll {
                    80..=95 => SocialKind::Follow,
                    96..=97 => SocialKind::Block,
                    _ => SocialKind::Mute,
                },
                user_id: self.user(&mut r),
                target_id: author,
                timestamp: t,
            }),
            _ => {
                let id = (1u64 << 63) | (mix64(self.spec.seed ^ k.wrapping_mul(0x9E37)) >> 1);
                let author = self.user(&mut r);
                if self.recent.len() == RECENT {
                    self.recent.pop_front();
                }
                self.recent.push_back((id, author));
                Event::NewTweet(NewTweet {
                    id,
                    author_id: author,
                    created_at: t,
                    lang: lang::parse(["en", "en", "es", "ja", "pt"][r.below(5) as usize])
                        .expect("valid codes"),
                    has_media: r.below(4) == 0,
                    reply_to: None,
                    text_len: 20 + r.below(260) as u16,
                    likes: 0,
                    retweets: 0,
                    replies: 0,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_the_same_everywhere_and_well_formed() {
        let spec = CorpusSpec::named("tiny", 42).unwrap();
        let mut a = LiveGenerator::new(&spec, 100.0);
        let mut b = LiveGenerator::new(&spec, 100.0);
        let (mut posts, mut engaged, mut social) = (0, 0, 0);
        let mut seen_posts = std::collections::HashSet::new();
        for k in 0..2000 {
            let (x, y) = (a.next_event(), b.next_event());
            assert_eq!(x, y);
            assert_eq!(x.time(), CORPUS_END_MS + k * 10);
            match x {
                Event::NewTweet(t) => {
                    assert!(is_live_post(t.id) && seen_posts.insert(t.id));
                    posts += 1;
                }
                Event::Engagement(g) => {
                    assert!(seen_posts.contains(&g.tweet_id), "engages a live post");
                    engaged += 1;
                }
                Event::Social(_) => social += 1,
                Event::User(_) => panic!("no user events"),
            }
        }
        assert!(
            posts > 300 && engaged > 1000 && social > 300,
            "{posts} {engaged} {social}"
        );
        assert_eq!(a.due(1.5), 150);
        let mut c = LiveGenerator::new(&spec, 100.0);
        assert_eq!(c.take_due(0.5, 1000).len(), 50);
        assert_eq!(c.take_due(0.5, 1000).len(), 0, "taken once");
        assert_eq!(c.take_due(2.0, 100).len(), 100, "bounded batches");
        assert_eq!(c.generated(), 150);
    }
}
