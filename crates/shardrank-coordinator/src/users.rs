//! The user store: profiles, follows, blocks and mutes, built from the same event stream
//! as the shards. Per request it gives the [`UserContext`] every shard ranks with.
//!
//! Fan-out on write: once the start-up load is done, a new post goes to the home inbox of
//! every follower of its author (the most recent [`INBOX_CAP`] kept), which the
//! in-network source reads; posts from before (the bulk load) are found by the shards'
//! in-network retrieval instead (fan-out on read), as Twitter's timelines mixed both.
//!
//! Interests, in the spirit of SimClusters: a user's interest vector is the share of
//! the accounts it follows that are known for each cluster (the top few), so it moves
//! as soon as a follow does.

use shardrank_core::events::{Event, SocialKind};
use shardrank_core::ids::IdMap;
use shardrank_core::lang::{self, Lang};
use shardrank_proto::v1::UserContext;
use std::collections::VecDeque;

/// How many interest clusters a user context carries.
pub const INTEREST_CLUSTERS: usize = 8;

/// Posts kept per home inbox (the most recent).
pub const INBOX_CAP: usize = 800;

/// A post in a home inbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxEntry {
    pub tweet_id: u64,
    pub author_id: u64,
    pub created_at: i64,
}

/// One delivery of a fan-out: `entry` went to `user_id`'s inbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineUpdate {
    pub user_id: u64,
    pub entry: InboxEntry,
}

/// Who follows an account.
#[derive(Default)]
struct Audience {
    /// Follows minus unfollows.
    count: u32,
    /// The distinct followers: the fan-out's recipients.
    list: Vec<u64>,
}

/// Follows of a bulk load, kept in arrival order and put into `audience` account by
/// account at the end. Applied one by one, a follow cost a hash probe and a push at the
/// tail of a random account's list: two cache misses, three quarters of the
/// coordinator's start-up for 5 million follows. Here it is one sequential write, and
/// the lists are built after a sort by account, each allocated once.
#[derive(Default)]
struct PendingFollows {
    /// (account, new follower), in event order.
    new: Vec<(u64, u64)>,
    /// Accounts followed again by a follower they already had (the count moves, the
    /// list does not).
    repeats: Vec<u64>,
}

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
    /// Per account, its followers: one entry for the count and the list, so that a
    /// follow, the bulk of the start-up load, costs one lookup there rather than two.
    audience: IdMap<Audience>,
    /// During a bulk load ([`Self::begin_load`]): the follows not yet in `audience`.
    loading: Option<PendingFollows>,
    inboxes: IdMap<VecDeque<InboxEntry>>,
    /// Fan new posts out to followers' inboxes (on once the start-up load is done).
    pub fan_out: bool,
    /// Keep each delivery for [`Self::take_updates`] (the Kafka timeline_updates topic).
    pub collect_updates: bool,
    updates: Vec<TimelineUpdate>,
    /// Inbox deliveries made.
    pub delivered: u64,
    /// Newest event time applied: the clock features are computed at.
    pub watermark_ms: i64,
    pub events: u64,
}

/// Inserts `x` if absent; whether it was.
fn insert_sorted(v: &mut Vec<u64>, x: u64) -> bool {
    match v.binary_search(&x) {
        Err(pos) => {
            v.insert(pos, x);
            true
        }
        Ok(_) => false,
    }
}

/// Removes `x` if present; whether it was.
fn remove_sorted(v: &mut Vec<u64>, x: u64) -> bool {
    match v.binary_search(&x) {
        Ok(pos) => {
            v.remove(pos);
            true
        }
        Err(_) => false,
    }
}

impl UserStore {
    /// Starts a bulk load: follows are collected and indexed by account at
    /// [`Self::finish_load`], which must come before the store is read.
    pub fn begin_load(&mut self) {
        self.loading.get_or_insert_with(PendingFollows::default);
    }

    /// Ends a bulk load: every follow collected is in its account's audience.
    pub fn finish_load(&mut self) {
        self.flush_follows();
        self.loading = None;
    }

    /// Puts the collected follows into `audience`, in the order they arrived.
    fn flush_follows(&mut self) {
        let Some(p) = &mut self.loading else {
            return;
        };
        let (mut new, repeats) = (std::mem::take(&mut p.new), std::mem::take(&mut p.repeats));
        // Stable: an account's followers keep their arrival order.
        new.sort_by_key(|&(account, _)| account);
        for run in new.chunk_by(|a, b| a.0 == b.0) {
            let a = self.audience.entry(run[0].0).or_default();
            a.count += run.len() as u32;
            a.list.reserve_exact(run.len());
            a.list.extend(run.iter().map(|&(_, follower)| follower));
        }
        for account in repeats {
            self.audience.entry(account).or_default().count += 1;
        }
    }

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
                // Whether the follow graph changed (a repeated follow does not).
                let changed = match s.kind {
                    SocialKind::Follow => insert_sorted(&mut u.followees, s.target_id),
                    SocialKind::Unfollow => remove_sorted(&mut u.followees, s.target_id),
                    SocialKind::Block => insert_sorted(&mut u.blocked, s.target_id),
                    SocialKind::Mute => insert_sorted(&mut u.muted, s.target_id),
                };
                match s.kind {
                    SocialKind::Block | SocialKind::Mute => {
                        *self.reports.entry(s.target_id).or_default() += 1
                    }
                    SocialKind::Follow if self.loading.is_some() => {
                        let p = self.loading.as_mut().expect("checked");
                        match changed {
                            true => p.new.push((s.target_id, s.user_id)),
                            false => p.repeats.push(s.target_id),
                        }
                    }
                    SocialKind::Follow => {
                        let a = self.audience.entry(s.target_id).or_default();
                        a.count += 1;
                        if changed {
                            a.list.push(s.user_id);
                        }
                    }
                    SocialKind::Unfollow => {
                        // The follow it undoes may still be collected.
                        self.flush_follows();
                        let a = self.audience.entry(s.target_id).or_default();
                        a.count = a.count.saturating_sub(1);
                        if changed {
                            a.list.retain(|&u| u != s.user_id);
                        }
                    }
                }
            }
            Event::NewTweet(t) if self.fan_out => {
                self.flush_follows();
                let entry = InboxEntry {
                    tweet_id: t.id,
                    author_id: t.author_id,
                    created_at: t.created_at,
                };
                let Some(Audience {
                    list: followers, ..
                }) = self.audience.get(&t.author_id)
                else {
                    return;
                };
                for &f in followers {
                    let inbox = self.inboxes.entry(f).or_default();
                    inbox.push_front(entry);
                    inbox.truncate(INBOX_CAP);
                    if self.collect_updates {
                        self.updates.push(TimelineUpdate { user_id: f, entry });
                    }
                }
                self.delivered += followers.len() as u64;
            }
            // Posts and their engagement live on the shards.
            Event::NewTweet(_) | Event::Engagement(_) => {}
        }
    }

    /// `user_id`'s home inbox, most recent first.
    pub fn inbox(&self, user_id: u64) -> impl Iterator<Item = &InboxEntry> {
        self.inboxes.get(&user_id).into_iter().flatten()
    }

    /// The deliveries kept since the last call (with `collect_updates`).
    pub fn take_updates(&mut self) -> Vec<TimelineUpdate> {
        std::mem::take(&mut self.updates)
    }

    /// How many times `author` was blocked or muted.
    pub fn reports(&self, author: u64) -> u32 {
        self.reports.get(&author).copied().unwrap_or(0)
    }

    /// How many accounts follow `author`.
    pub fn followers(&self, author: u64) -> u32 {
        self.audience.get(&author).map_or(0, |a| a.count)
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

    fn post(id: u64, author: u64) -> Event {
        Event::NewTweet(shardrank_core::events::NewTweet {
            id,
            author_id: author,
            created_at: id as i64,
            lang: 0,
            has_media: false,
            reply_to: None,
            text_len: 10,
            likes: 0,
            retweets: 0,
            replies: 0,
        })
    }

    #[test]
    fn new_posts_fan_out_to_followers_inboxes_once_live() {
        let mut s = UserStore::default();
        s.apply(&social(SocialKind::Follow, 1, 50));
        s.apply(&social(SocialKind::Follow, 2, 50));
        s.apply(&social(SocialKind::Follow, 2, 50)); // twice: delivered once
        s.apply(&post(100, 50)); // the bulk load: not fanned out
        assert_eq!(s.inbox(1).count(), 0);
        s.fan_out = true;
        s.collect_updates = true;
        s.apply(&post(101, 50));
        s.apply(&post(102, 60)); // nobody follows 60
        let ids = |s: &UserStore, u| s.inbox(u).map(|e| e.tweet_id).collect::<Vec<_>>();
        assert_eq!(ids(&s, 1), vec![101]);
        assert_eq!(ids(&s, 2), vec![101]);
        assert_eq!(s.delivered, 2);
        let up = s.take_updates();
        assert_eq!(up.len(), 2);
        assert!(up
            .iter()
            .all(|u| u.entry.tweet_id == 101 && u.entry.author_id == 50));
        assert!(s.take_updates().is_empty());
        // Unfollowed: later posts no longer arrive; what arrived stays.
        s.apply(&social(SocialKind::Unfollow, 1, 50));
        s.apply(&post(103, 50));
        assert_eq!(ids(&s, 1), vec![101]);
        assert_eq!(ids(&s, 2), vec![103, 101]);
        // Bounded: the most recent INBOX_CAP, newest first.
        for k in 0..(INBOX_CAP as u64 + 10) {
            s.apply(&post(1000 + k, 50));
        }
        let inbox = ids(&s, 2);
        assert_eq!(inbox.len(), INBOX_CAP);
        assert_eq!(inbox[0], 1000 + INBOX_CAP as u64 + 9);
    }

    #[test]
    fn a_bulk_load_builds_the_same_audiences_as_event_by_event() {
        // Follows, repeats, unfollows (before and after their follow), blocks, posts.
        let mut r = shardrank_core::rng::Rng::new(9);
        let mut events = Vec::new();
        for _ in 0..5000 {
            let (user, target) = (r.below(60), 100 + r.below(40));
            let kind = match r.below(10) {
                0 => SocialKind::Unfollow,
                1 => SocialKind::Block,
                _ => SocialKind::Follow,
            };
            events.push(social(kind, user, target));
            if r.below(50) == 0 {
                events.push(post(1_000 + events.len() as u64, target));
            }
        }
        let mut one_by_one = UserStore::default();
        let mut bulk = UserStore::default();
        bulk.begin_load();
        for e in &events {
            one_by_one.apply(e);
            bulk.apply(e);
        }
        bulk.finish_load();
        assert_eq!(bulk.audience.len(), one_by_one.audience.len());
        for (account, a) in &one_by_one.audience {
            let b = &bulk.audience[account];
            assert_eq!((b.count, &b.list), (a.count, &a.list), "account {account}");
        }
        assert!(one_by_one.audience.values().any(|a| a.list.len() > 5));
        // And the same fan-out once live.
        for s in [&mut one_by_one, &mut bulk] {
            s.fan_out = true;
            s.apply(&post(99_999, 107));
        }
        assert_eq!(bulk.delivered, one_by_one.delivered);
        assert!(bulk.delivered > 0);
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
