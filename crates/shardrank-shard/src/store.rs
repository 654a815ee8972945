//! The partition's post store: arrays indexed by row, an id-to-row index, and the
//! author table the features read.
//!
//! Arrays rather than a map of heap objects: one allocation per array, about 92 bytes
//! per post with the index. A candidate's lookup is two cache misses: its slot in the
//! fingerprinted index (8 bytes), then its 32-byte [`Hot`] row, which holds what the
//! light ranker reads and the id that confirms the match. What only the heavy ranker
//! and ingestion read is a 16-byte [`Counts`] row, and what the features read of an
//! author a 16-byte [`Author`] row: one line each. Authors are kept for every user the
//! shard hears of (not only its partition's), so author features are global and
//! identical on every shard. The big arrays are on huge pages ([`crate::huge_pages`]).

mod snapshot;
pub use snapshot::{path as snapshot_path, SnapshotMeta};

use crate::index::{IdIndex, RowIndex};
use shardrank_core::events::{EngagementKind, Event, NewTweet, SocialKind};
use shardrank_core::features::{light_parts, PostView};
use shardrank_core::lang::Lang;
use shardrank_core::model::LightModel;
use shardrank_core::routing::shard_of;

/// Which part of an event a stream carries for this shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// The whole stream (an events file, the generator): every part of every event.
    All,
    /// The shard's partition of the post topic: its own posts and their engagement.
    Posts,
    /// The user topic: profiles, follows, and who posted (the author features).
    Users,
}

/// Events applied together by [`PostStore::apply_batch`].
pub const APPLY_BATCH: usize = 64;

const FLAG_MEDIA: u8 = 1;
const FLAG_REPLY: u8 = 2;

/// What the light ranker reads of a post, together: 32 bytes on a 32-byte boundary,
/// so one cache line (the index lands here in one more miss, and the id here confirms
/// the index's fingerprint match).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(32))]
pub struct Hot {
    pub id: u64,
    pub created_at: i64,
    /// The post's request-independent part of the light logit (see
    /// `features::light_parts`), kept current as engagement arrives.
    pub light_part: f32,
    /// Row in the author table.
    pub author: u32,
    pub lang: Lang,
    flags: u8,
    /// The newest engagement window of the post (a copy of its `Windows::newest`, in
    /// what was padding): most posts have had no engagement in the last five windows,
    /// and this says so without reading their windows.
    pub newest_window: i32,
}

impl Hot {
    #[inline]
    pub fn has_media(&self) -> bool {
        self.flags & FLAG_MEDIA != 0
    }
    #[inline]
    pub fn is_reply(&self) -> bool {
        self.flags & FLAG_REPLY != 0
    }
}

/// What only the heavy ranker and ingestion read of a post: 16 bytes on a 16-byte
/// boundary, so the heavy stage's gather waits for one line per post where a column per
/// counter made it wait for four.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct Counts {
    pub likes: u32,
    pub retweets: u32,
    pub replies: u32,
    pub text_len: u16,
}

/// What the features read of an author, together: 16 bytes on a 16-byte boundary, so
/// the light stage's two reads (light part, cluster) and the heavy stage's two
/// (followers, posts) are one line, often still cached from the light stage.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(16))]
pub struct Author {
    /// The author's request-independent part of the light logit.
    pub light_part: f32,
    pub cluster: u32,
    pub followers: u32,
    pub posts: u32,
}

/// Users as authors: what the author features need.
#[derive(Default)]
pub struct Authors {
    index: IdIndex,
    pub ids: Vec<u64>,
    /// By author row, as `ids`.
    pub rows: Vec<Author>,
    pub lang: Vec<Lang>,
}

impl Authors {
    pub fn get(&self, id: u64) -> Option<u32> {
        self.index.get(id)
    }

    fn get_or_insert(&mut self, id: u64) -> u32 {
        if let Some(i) = self.index.get(id) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.index.insert(id, i);
        self.ids.push(id);
        self.rows.push(Author::default());
        self.lang.push(0);
        i
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Counts of what ingestion did, for logs and tests.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct IngestStats {
    pub events: u64,
    pub posts_added: u64,
    pub duplicate_posts: u64,
    pub engagements_applied: u64,
    /// Engagements with a tweet this shard owns but has not seen (yet).
    pub orphan_engagements: u64,
    /// Engagements older than the kept windows (counted in the totals, not the windows).
    pub late_engagements: u64,
    /// Post events on this shard's partition of the post topic for another shard's
    /// posts (a producer without the md5 partitioner): ignored.
    pub misrouted: u64,
}

pub struct PostStore {
    pub shard_index: u32,
    pub num_shards: u32,
    index: RowIndex,
    /// Rows: a post's id is in its hot row.
    pub hot: Vec<Hot>,
    /// Rows: engagement counters and text length.
    pub counts: Vec<Counts>,
    /// Engagement per post over the last ten 60-second windows (trending's velocity).
    pub windows: Vec<crate::windows::Windows>,
    pub authors: Authors,
    light: LightModel,
    /// While false (a bulk load), light parts are left stale and computed once at the end.
    live: bool,
    /// Newest event time applied.
    pub watermark_ms: i64,
    pub stats: IngestStats,
}

impl PostStore {
    pub fn new(shard_index: u32, num_shards: u32, light: LightModel) -> Self {
        PostStore {
            shard_index,
            num_shards,
            index: RowIndex::default(),
            hot: Vec::new(),
            counts: Vec::new(),
            windows: Vec::new(),
            authors: Authors::default(),
            light,
            live: true,
            watermark_ms: 0,
            stats: IngestStats::default(),
        }
    }

    /// Reserves room for about `posts` posts of this partition.
    pub fn reserve(&mut self, posts: usize) {
        let hot = &self.hot;
        self.index
            .reserve(hot.len() as u32, posts, |r| hot[r as usize].id);
        self.hot.reserve(posts);
        self.counts.reserve(posts);
        self.windows.reserve(posts);
    }

    /// Starts a bulk load: derived parts are computed once, by [`Self::finish_load`].
    pub fn begin_load(&mut self) {
        self.live = false;
    }

    /// Ends a bulk load: computes every derived part, then keeps them current per event.
    pub fn finish_load(&mut self) {
        for a in 0..self.authors.len() {
            self.refresh_author(a);
        }
        for r in 0..self.len() {
            self.refresh_post(r);
        }
        self.live = true;
        self.collapse_pages();
    }

    /// Moves the arrays a request reads at random onto huge pages (see
    /// [`crate::huge_pages`]). A rebuilt index is advised afresh; an array that
    /// ingestion grows past its capacity (it doubles, so rarely) may lose the advice if
    /// the allocator moves it, until the next load. The shard logs how much of it ended
    /// up on huge pages.
    pub fn collapse_pages(&self) {
        use crate::huge_pages::collapse;
        let a = &self.authors;
        self.index.collapse_pages();
        a.index.collapse_pages();
        collapse(&self.hot);
        collapse(&self.counts);
        collapse(&self.windows);
        collapse(&a.ids);
        collapse(&a.rows);
    }

    fn refresh_author(&mut self, a: usize) {
        let au = &mut self.authors.rows[a];
        au.light_part = light_parts::author(&self.light, au.followers, au.posts);
    }

    fn refresh_post(&mut self, r: usize) {
        // The stored part does not depend on the clock (the velocity term is added per
        // request).
        let v = self.view(r as u32, self.watermark_ms);
        self.hot[r].light_part = light_parts::post(&self.light, &v);
    }

    pub fn light_model(&self) -> &LightModel {
        &self.light
    }

    pub fn len(&self) -> usize {
        self.hot.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hot.is_empty()
    }

    /// The id of the post in `row`.
    #[inline]
    pub fn id(&self, row: u32) -> u64 {
        self.hot[row as usize].id
    }

    /// Every post's id, in row order.
    pub fn ids(&self) -> impl DoubleEndedIterator<Item = u64> + ExactSizeIterator + '_ {
        self.hot.iter().map(|h| h.id)
    }

    #[inline]
    pub fn row(&self, id: u64) -> Option<u32> {
        self.index.get(id, |r| self.hot[r as usize].id)
    }

    /// Index fingerprints of `bits` bits, so that lookups collide (tests of the checks).
    #[cfg(test)]
    pub fn narrow_index_fingerprints(&mut self, bits: u32) {
        let hot = &self.hot;
        self.index
            .narrow_fingerprints(bits, hot.len() as u32, |r| hot[r as usize].id);
    }

    /// The id index, for callers that prefetch ahead of their lookups.
    pub fn index(&self) -> &RowIndex {
        &self.index
    }

    #[inline]
    pub fn author(&self, row: u32) -> u32 {
        self.hot[row as usize].author
    }

    #[inline]
    pub fn owns(&self, id: u64) -> bool {
        shard_of(id, self.num_shards) == self.shard_index
    }

    /// The engagement velocity of a row at `now_ms` (0 without reading its windows when
    /// it has had no engagement in the last five).
    #[inline]
    pub fn velocity(&self, row: u32, now_ms: i64) -> u32 {
        self.velocity_in(row, now_ms, crate::windows::window(now_ms))
    }

    /// [`Self::velocity`] with the clock's window computed once per request.
    #[inline]
    pub fn velocity_in(&self, row: u32, now_ms: i64, now_window: i32) -> u32 {
        let r = row as usize;
        if crate::windows::Windows::may_move(self.hot[r].newest_window, now_window) {
            self.windows[r].velocity(now_ms)
        } else {
            0
        }
    }

    /// Hints the CPU to fetch `row`'s hot row (one cache line).
    #[inline(always)]
    pub fn prefetch_hot(&self, row: u32) {
        crate::index::prefetch(&self.hot[row as usize]);
    }

    /// Hints the CPU to fetch what [`Self::view`] of `row` reads: its counts and its
    /// author's row (the hot row is usually still cached from the light stage, the
    /// author's often; the windows are read only for the few posts with recent
    /// engagement).
    #[inline]
    pub fn prefetch_view(&self, row: u32) {
        use crate::index::prefetch;
        let r = row as usize;
        let a = self.hot[r].author as usize;
        prefetch(&self.counts[r]);
        prefetch(&self.authors.rows[a]);
    }

    /// The features' view of a row at the clock `now_ms`.
    #[inline]
    pub fn view(&self, row: u32, now_ms: i64) -> PostView {
        let r = row as usize;
        let (h, c) = (&self.hot[r], &self.counts[r]);
        let au = &self.authors.rows[h.author as usize];
        PostView {
            created_at: h.created_at,
            has_media: h.has_media(),
            is_reply: h.is_reply(),
            text_len: c.text_len,
            lang: h.lang,
            likes: c.likes,
            retweets: c.retweets,
            replies: c.replies,
            velocity: self.velocity(row, now_ms),
            author_followers: au.followers,
            author_posts: au.posts,
            author_cluster: au.cluster,
        }
    }

    /// Applies one event. Every shard applies the author-level part of every event (so
    /// author features agree everywhere) and the post-level part only for its own posts.
    pub fn apply(&mut self, e: &Event) {
        self.apply_from(e, Feed::All);
    }

    /// Applies the part of one event that `feed` carries for this shard.
    pub fn apply_from(&mut self, e: &Event, feed: Feed) {
        let owned = match e {
            Event::NewTweet(t) => self.owns(t.id),
            Event::Engagement(g) => self.owns(g.tweet_id),
            _ => false,
        };
        self.apply_routed(e, owned, feed);
    }

    /// Applies events in order, as [`Self::apply`] one by one would, but faster: the
    /// batch's tweet ids are routed eight MD5 lanes at a time, and every index slot the
    /// batch will touch is prefetched before the first event is applied, so the cache
    /// misses of a batch overlap.
    pub fn apply_batch(&mut self, events: &[Event]) {
        self.apply_batch_from(events, Feed::All)
    }

    /// [`Self::apply_batch`] of the part `feed` carries.
    pub fn apply_batch_from(&mut self, events: &[Event], feed: Feed) {
        // Only posts and engagements have an owner: their ids are gathered and routed
        // together (user and follow events, most of the corpus, are not hashed).
        let mut ids = [0u64; APPLY_BATCH];
        let mut owners = [0u32; APPLY_BATCH];
        for chunk in events.chunks(APPLY_BATCH) {
            let mut n = 0;
            for e in chunk {
                let routed = match e {
                    Event::User(u) => {
                        self.authors.index.prefetch(u.user_id);
                        None
                    }
                    Event::Social(x) => {
                        self.authors.index.prefetch(x.target_id);
                        None
                    }
                    Event::NewTweet(t) => {
                        self.authors.index.prefetch(t.author_id);
                        self.index.prefetch(t.id);
                        Some(t.id)
                    }
                    Event::Engagement(g) => {
                        self.index.prefetch(g.tweet_id);
                        Some(g.tweet_id)
                    }
                };
                if let Some(id) = routed {
                    ids[n] = id;
                    n += 1;
                }
            }
            if self.num_shards > 1 {
                shardrank_core::md5x8::shards(&ids[..n], self.num_shards, &mut owners[..n]);
            } else {
                owners[..n].fill(self.shard_index);
            }
            let mut owner = owners[..n].iter();
            for e in chunk {
                let owned = match e {
                    Event::NewTweet(_) | Event::Engagement(_) => {
                        owner.next().is_some_and(|&o| o == self.shard_index)
                    }
                    _ => false,
                };
                self.apply_routed(e, owned, feed);
            }
        }
    }

    /// Applies one event whose tweet (if any) is known to be `owned` or not.
    fn apply_routed(&mut self, e: &Event, owned: bool, feed: Feed) {
        self.stats.events += 1;
        self.watermark_ms = self.watermark_ms.max(e.time());
        match (e, feed) {
            // The post topic carries no user events; the user topic no engagement.
            (Event::User(_) | Event::Social(_), Feed::Posts)
            | (Event::Engagement(_), Feed::Users) => {}
            // The author's activity: counted from the user topic's copy of every post.
            (Event::NewTweet(t), Feed::Users) => {
                let a = self.authors.get_or_insert(t.author_id) as usize;
                self.authors.rows[a].posts += 1;
                if self.live {
                    self.refresh_author(a);
                }
            }
            (Event::NewTweet(_) | Event::Engagement(_), Feed::Posts) if !owned => {
                self.stats.misrouted += 1;
            }
            (Event::NewTweet(t), Feed::Posts) => self.add_tweet(t, true, false),
            _ => self.apply_whole(e, owned),
        }
    }

    fn apply_whole(&mut self, e: &Event, owned: bool) {
        match e {
            Event::User(u) => {
                let a = self.authors.get_or_insert(u.user_id) as usize;
                self.authors.rows[a].cluster = u.known_for;
                self.authors.lang[a] = u.lang;
            }
            Event::Social(s) => match s.kind {
                SocialKind::Follow => {
                    let a = self.authors.get_or_insert(s.target_id) as usize;
                    self.authors.rows[a].followers += 1;
                    if self.live {
                        self.refresh_author(a);
                    }
                }
                SocialKind::Unfollow => {
                    if let Some(a) = self.authors.get(s.target_id) {
                        let f = &mut self.authors.rows[a as usize].followers;
                        *f = f.saturating_sub(1);
                        if self.live {
                            self.refresh_author(a as usize);
                        }
                    }
                }
                // The coordinator's user store filters these per request.
                SocialKind::Block | SocialKind::Mute => {}
            },
            Event::NewTweet(t) => self.add_tweet(t, owned, true),
            Event::Engagement(g) => {
                if !owned {
                    return;
                }
                let Some(row) = self.row(g.tweet_id) else {
                    self.stats.orphan_engagements += 1;
                    return;
                };
                let r = row as usize;
                let counts = &mut self.counts[r];
                let c = match g.kind {
                    EngagementKind::Like => &mut counts.likes,
                    EngagementKind::Retweet => &mut counts.retweets,
                    EngagementKind::Reply => &mut counts.replies,
                };
                *c = c.saturating_add(1);
                if !self.windows[r].add(g.timestamp, self.watermark_ms) {
                    self.stats.late_engagements += 1;
                }
                self.hot[r].newest_window = self.windows[r].newest;
                self.stats.engagements_applied += 1;
                if self.live {
                    self.refresh_post(r);
                }
            }
        }
    }

    /// Adds a post (if `owned`); `count_author` counts it in the author's posts (the
    /// user topic's copy counts it instead when the post comes from the post topic).
    fn add_tweet(&mut self, t: &NewTweet, owned: bool, count_author: bool) {
        let a = self.authors.get_or_insert(t.author_id);
        if !owned {
            // Not ours, but the author's activity is a global feature.
            self.authors.rows[a as usize].posts += 1;
            if self.live {
                self.refresh_author(a as usize);
            }
            return;
        }
        let row = self.hot.len() as u32;
        let hot = &self.hot;
        if !self.index.insert(t.id, row, |r| hot[r as usize].id) {
            // Replayed event: applying it twice must not change anything.
            self.stats.duplicate_posts += 1;
            return;
        }
        if count_author {
            self.authors.rows[a as usize].posts += 1;
        }
        let flags = if t.has_media { FLAG_MEDIA } else { 0 }
            | if t.reply_to.is_some() { FLAG_REPLY } else { 0 };
        self.hot.push(Hot {
            id: t.id,
            created_at: t.created_at,
            light_part: 0.0,
            author: a,
            lang: t.lang,
            flags,
            newest_window: 0,
        });
        self.counts.push(Counts {
            likes: t.likes,
            retweets: t.retweets,
            replies: t.replies,
            text_len: t.text_len,
        });
        self.windows.push(Default::default());
        self.stats.posts_added += 1;
        if self.live {
            self.refresh_author(a as usize);
            self.refresh_post(row as usize);
        }
    }

    /// Bytes held for posts: rows at their capacity plus the index. Authors are
    /// reported apart, as they do not scale with posts.
    pub fn post_bytes(&self) -> usize {
        let per_row = std::mem::size_of::<Hot>()
            + std::mem::size_of::<Counts>()
            + std::mem::size_of::<crate::windows::Windows>();
        self.hot.capacity() * per_row + self.index.bytes()
    }

    pub fn author_bytes(&self) -> usize {
        self.authors.ids.capacity() * (8 + 4 * 4 + 2) + self.authors.index.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardrank_core::corpus::{generate, CorpusSpec};
    use shardrank_core::events::{Engagement, Social};
    use shardrank_core::model::defaults;

    fn tweet(id: u64, author: u64) -> Event {
        Event::NewTweet(NewTweet {
            id,
            author_id: author,
            created_at: 1000,
            lang: 0,
            has_media: true,
            reply_to: None,
            text_len: 50,
            likes: 2,
            retweets: 0,
            replies: 0,
        })
    }

    #[test]
    fn keeps_only_its_partition_and_counts_authors_globally() {
        let ids: Vec<u64> = (1..200).collect();
        let mut stores: Vec<PostStore> = (0..3)
            .map(|i| PostStore::new(i, 3, defaults::light()))
            .collect();
        for s in &mut stores {
            for &id in &ids {
                s.apply(&tweet(id, 7));
            }
        }
        let total: usize = stores.iter().map(PostStore::len).sum();
        assert_eq!(total, ids.len());
        for s in &stores {
            assert!(s.ids().all(|id| shard_of(id, 3) == s.shard_index));
            let a = s.authors.get(7).unwrap() as usize;
            assert_eq!(
                s.authors.rows[a].posts,
                ids.len() as u32,
                "author activity is global"
            );
        }
    }

    #[test]
    fn engagement_and_follows_move_the_features() {
        let mut s = PostStore::new(0, 1, defaults::light());
        s.apply(&tweet(10, 7));
        s.apply(&tweet(10, 7)); // replay: ignored
        assert_eq!(s.len(), 1);
        assert_eq!(s.stats.duplicate_posts, 1);
        for kind in [
            EngagementKind::Like,
            EngagementKind::Like,
            EngagementKind::Reply,
        ] {
            s.apply(&Event::Engagement(Engagement {
                kind,
                user_id: 1,
                tweet_id: 10,
                timestamp: 5000,
            }));
        }
        s.apply(&Event::Engagement(Engagement {
            kind: EngagementKind::Like,
            user_id: 1,
            tweet_id: 99,
            timestamp: 5,
        }));
        for kind in [SocialKind::Follow, SocialKind::Follow, SocialKind::Unfollow] {
            s.apply(&Event::Social(Social {
                kind,
                user_id: 2,
                target_id: 7,
                timestamp: 6,
            }));
        }
        let v = s.view(s.row(10).unwrap(), 5000);
        assert_eq!((v.likes, v.replies), (4, 1));
        // The velocity moves with the clock: the three are in the last five windows at
        // 5 s, out of them ten minutes later.
        assert_eq!(v.velocity, 3);
        assert_eq!(s.view(0, 5000 + 10 * 60_000).velocity, 0);
        // Live updates keep the derived light parts current.
        let m = defaults::light();
        assert_eq!(s.hot[0].light_part, light_parts::post(&m, &v));
        let a = s.author(0) as usize;
        assert_eq!(s.authors.rows[a].light_part, light_parts::author(&m, 1, 1));
        assert_eq!(v.author_followers, 1);
        assert!(v.has_media && !v.is_reply);
        assert_eq!(s.stats.orphan_engagements, 1);
        assert_eq!(s.watermark_ms, 5000);
    }

    #[test]
    fn batched_apply_equals_one_by_one() {
        let spec = CorpusSpec::named("tiny", 42).unwrap();
        let mut events = Vec::new();
        generate(&spec, |e| events.push(e));
        for n in [1u32, 3] {
            let mut a = PostStore::new(n - 1, n, defaults::light());
            let mut b = PostStore::new(n - 1, n, defaults::light());
            for e in &events {
                a.apply(e);
            }
            b.apply_batch(&events);
            assert!(a.ids().eq(b.ids()));
            assert_eq!(a.counts, b.counts);
            assert_eq!(a.windows, b.windows);
            assert_eq!(a.authors.rows, b.authors.rows);
            assert_eq!(a.stats, b.stats);
            let bits = |s: &PostStore| {
                s.hot
                    .iter()
                    .map(|h| (h.light_part.to_bits(), h.author, h.created_at))
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&a), bits(&b));
        }
    }

    #[test]
    fn the_post_and_user_feeds_together_equal_the_whole_stream() {
        // As Kafka splits it: the shard's posts and their engagement from its partition
        // of the post topic, users, follows and every post's author from the user topic,
        // each in its own order.
        let spec = CorpusSpec::named("tiny", 42).unwrap();
        let (index, n) = (1, 3);
        let mut whole = PostStore::new(index, n, defaults::light());
        let (mut posts, mut users) = (Vec::new(), Vec::new());
        generate(&spec, |e| {
            whole.apply(&e);
            match &e {
                Event::NewTweet(t) => {
                    if shard_of(t.id, n) == index {
                        posts.push(e.clone());
                    }
                    users.push(e);
                }
                Event::Engagement(g) if shard_of(g.tweet_id, n) == index => posts.push(e),
                Event::Engagement(_) => {}
                Event::User(_) | Event::Social(_) => users.push(e),
            }
        });
        let mut split = PostStore::new(index, n, defaults::light());
        split.apply_batch_from(&users[..users.len() / 2], Feed::Users);
        split.apply_batch_from(&posts, Feed::Posts);
        split.apply_batch_from(&users[users.len() / 2..], Feed::Users);
        assert!(split.ids().eq(whole.ids()));
        assert_eq!(split.counts, whole.counts);
        assert_eq!(split.windows, whole.windows);
        // Event time per partition: the split store has seen only its posts' events.
        assert!(split.watermark_ms <= whole.watermark_ms && split.watermark_ms > 0);
        for (r, id) in whole.ids().enumerate() {
            let (a, b) = (
                whole.view(r as u32, whole.watermark_ms),
                split.view(split.row(id).unwrap(), whole.watermark_ms),
            );
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "post {id}");
        }
        for (a, &id) in whole.authors.ids.iter().enumerate() {
            let b = split.authors.get(id).unwrap() as usize;
            assert_eq!(
                (
                    whole.authors.rows[a].posts,
                    whole.authors.rows[a].followers,
                    whole.authors.rows[a].cluster
                ),
                (
                    split.authors.rows[b].posts,
                    split.authors.rows[b].followers,
                    split.authors.rows[b].cluster
                ),
                "author {id}"
            );
            assert_eq!(
                whole.authors.rows[a].light_part.to_bits(),
                split.authors.rows[b].light_part.to_bits()
            );
        }
    }

    #[test]
    fn tiny_corpus_fits_the_memory_budget() {
        let spec = CorpusSpec::named("tiny", 42).unwrap();
        let mut s = PostStore::new(0, 1, defaults::light());
        s.reserve(spec.tweets as usize);
        generate(&spec, |e| s.apply(&e));
        assert_eq!(s.len() as u64, spec.tweets);
        let per_post = s.post_bytes() as f64 / s.len() as f64;
        assert!(per_post < 150.0, "{per_post} bytes per post");
    }
}
