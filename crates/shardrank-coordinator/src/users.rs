//! The user store: profiles, follows, blocks and mutes, built from the same event stream
//! as the shards. Per request it gives the [`UserContext`] every shard ranks with.
//!
//! Interests, in the spirit of SimClusters: a user's interest vector is the share of
//! the accounts it follows that are known for each cluster (the top few), so it moves
//! as soon as a follow does.

use shardrank_core::events::{Event, SocialKind};
use shardrank_core::ids::IdMap;
use shardrank_core::lang::{self, Lang};
use shardrank_proto::v1::UserContext;

/// How many interest clusters a user context carries.
pub const INTEREST_CLUSTERS: usize = 8;

#[derive(Default, Clone, Debug)]
pub struct User {
    pub lang: Lang,
    pub known_for: u32,
    /// Sorted, distinct.
    pub followees: Vec<u64>,
    pub blocked: Vec<u64>,
    pub muted: Vec<u64>,
}

#[derive(Default)]
pub struct UserStore {
    users: IdMap<User>,
    /// Per author, how many block or mute events name it: a spam signal.
    reports: IdMap<u32>,
    /// Per account, how many follow it (follows minus unfollows).
    followers: IdMap<u32>,
    /// Newest event time applied: the clock features are computed at.
    pub watermark_ms: i64,
    pub events: u64,
}

fn insert_sorted(v: &mut Vec<u64>, x: u64) {
    if let Err(pos) = v.binary_search(&x) {
        v.insert(pos, x);
    }
}

fn remove_sorted(v: &mut Vec<u64>, x: u64) {
    if let Ok(pos) = v.binary_search(&x) {
        v.remove(pos);
    }
}

impl UserStore {
    pub fn apply(&mut self, e: &Event) {
        self.events += 1;
        self.watermark_ms = self.watermark_ms.max(e.time());
        match e {
            Event::User(p) => {
                let u = self.users.entry(p.user_id).or_default();
                u.lang = p.lang;
                u.known_for = p.known_for;
            }
            Event::Social(s) => {
                let u = self.users.entry(s.user_id).or_default();
                match s.kind {
                    SocialKind::Follow => insert_sorted(&mut u.followees, s.target_id),
                    SocialKind::Unfollow => remove_sorted(&mut u.followees, s.target_id),
                    SocialKind::Block => insert_sorted(&mut u.blocked, s.target_id),
                    SocialKind::Mute => insert_sorted(&mut u.muted, s.target_id),
                }
                match s.kind {
                    SocialKind::Block | SocialKind::Mute => {
                        *self.reports.entry(s.target_id).or_default() += 1
                    }
                    SocialKind::Follow => *self.followers.entry(s.target_id).or_default() += 1,
                    SocialKind::Unfollow => {
                        let n = self.followers.entry(s.target_id).or_default();
                        *n = n.saturating_sub(1);
                    }
                }
            }
            // Posts and their engagement live on the shards.
            Event::NewTweet(_) | Event::Engagement(_) => {}
        }
    }

    /// How many times `author` was blocked or muted.
    pub fn reports(&self, author: u64) -> u32 {
        self.reports.get(&author).copied().unwrap_or(0)
    }

    /// How many accounts follow `author`.
    pub fn followers(&self, author: u64) -> u32 {
        self.followers.get(&author).copied().unwrap_or(0)
    }

    pub fn get(&self, user_id: u64) -> Option<&User> {
        self.users.get(&user_id)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// What the shards need to rank for `user_id`; an unknown user is a cold start.
    pub fn context(&self, user_id: u64) -> UserContext {
        let Some(u) = self.users.get(&user_id) else {
            return UserContext {
                user_id,
                known: false,
                ..Default::default()
            };
        };
        let mut excluded = Vec::with_capacity(u.blocked.len() + u.muted.len());
        excluded.extend_from_slice(&u.blocked);
        excluded.extend_from_slice(&u.muted);
        excluded.sort_unstable();
        excluded.dedup();
        let (interest_clusters, interest_weights) = self.interests(u);
        UserContext {
            user_id,
            known: true,
            lang: lang::format(u.lang),
            followees: u.followees.clone(),
            excluded_authors: excluded,
            interest_clusters,
            interest_weights,
        }
    }

    /// The top clusters among the accounts `u` follows, with their shares.
    fn interests(&self, u: &User) -> (Vec<u32>, Vec<f32>) {
        let mut counts: Vec<(u32, u32)> = Vec::new();
        for f in &u.followees {
            if let Some(fu) = self.users.get(f) {
                match counts.iter_mut().find(|(c, _)| *c == fu.known_for) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((fu.known_for, 1)),
                }
            }
        }
        // Most shared first, ties by cluster id: deterministic.
        counts.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counts.truncate(INTEREST_CLUSTERS);
        let total = u.followees.len().max(1) as f32;
        counts.iter().map(|&(c, n)| (c, n as f32 / total)).unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardrank_core::events::{Social, UserProfile};

    fn social(kind: SocialKind, user_id: u64, target_id: u64) -> Event {
        Event::Social(Social {
            kind,
            user_id,
            target_id,
            timestamp: 1,
        })
    }

    fn profile(user_id: u64, known_for: u32) -> Event {
        Event::User(UserProfile {
            user_id,
            lang: lang::parse("es").unwrap(),
            known_for,
            created_at: 0,
        })
    }

    #[test]
    fn follows_blocks_and_mutes_shape_the_context() {
        let mut s = UserStore::default();
        for e in [
            profile(1, 0),
            profile(10, 5),
            profile(11, 5),
            profile(12, 9),
        ] {
            s.apply(&e);
        }
        for t in [12, 10, 11, 11] {
            s.apply(&social(SocialKind::Follow, 1, t));
        }
        s.apply(&social(SocialKind::Follow, 1, 99)); // no profile: no cluster
        s.apply(&social(SocialKind::Unfollow, 1, 99));
        s.apply(&social(SocialKind::Block, 1, 30));
        s.apply(&social(SocialKind::Mute, 1, 20));
        s.apply(&social(SocialKind::Mute, 1, 30));
        let c = s.context(1);
        assert!(c.known);
        assert_eq!(c.lang, "es");
        assert_eq!(c.followees, vec![10, 11, 12]);
        assert_eq!(c.excluded_authors, vec![20, 30]);
        assert_eq!(c.interest_clusters, vec![5, 9]);
        assert_eq!(c.interest_weights, vec![2.0 / 3.0, 1.0 / 3.0]);
    }

    #[test]
    fn unknown_user_is_cold_start() {
        let s = UserStore::default();
        let c = s.context(77);
        assert!(!c.known);
        assert!(
            c.followees.is_empty()
                && c.excluded_authors.is_empty()
                && c.interest_clusters.is_empty()
        );
    }
}
