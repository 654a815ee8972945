//! The feature vector both rankers read, defined once.
//!
//! Post features (age, media, reply, length), author features (followers, activity),
//! engagement counts, and user x post features (same language, author followed,
//! interest overlap). Values are computed in f32 in a fixed order, so the same
//! candidate gets the same bits on every shard.

use crate::fastmath;
use crate::lang::{Lang, UNKNOWN};
use crate::simd::Simd;

pub const NUM_FEATURES: usize = 18;

/// Names in vector order; model files record them and are checked against them.
pub const FEATURE_NAMES: [&str; NUM_FEATURES] = [
    "log_age_hours",
    "freshness",
    "has_media",
    "is_reply",
    "text_len",
    "short_text",
    "log_author_followers",
    "log_author_posts",
    "log_likes",
    "log_retweets",
    "log_replies",
    "log_engagement_per_follower",
    "log_engagement_velocity",
    "same_language",
    "author_followed",
    "interest_overlap",
    "followed_x_freshness",
    "media_x_interest",
];

/// What the shard knows of one post and its author.
#[derive(Clone, Copy, Debug, Default)]
pub struct PostView {
    pub created_at: i64,
    pub has_media: bool,
    pub is_reply: bool,
    pub text_len: u16,
    pub lang: Lang,
    pub likes: u32,
    pub retweets: u32,
    pub replies: u32,
    /// Engagement velocity: engagements in the last five 60-second event-time windows
    /// at the request's clock.
    pub velocity: u32,
    pub author_followers: u32,
    pub author_posts: u32,
    pub author_cluster: u32,
}

/// What the request says of the user. `interests` is sparse, sorted by cluster.
#[derive(Clone, Debug, Default)]
pub struct UserView {
    pub known: bool,
    pub lang: Lang,
    pub interests: Vec<(u32, f32)>,
}

impl UserView {
    #[inline]
    pub fn interest_in(&self, cluster: u32) -> f32 {
        // At most a handful of entries: a linear scan beats a search.
        for &(c, w) in &self.interests {
            if c == cluster {
                return w;
            }
        }
        0.0
    }
}

#[inline]
fn ln1p(x: u32) -> f32 {
    fastmath::ln_1p(x as f32)
}

#[inline]
fn weighted_engagement(post: &PostView) -> f32 {
    post.likes as f32 + 2.0 * post.retweets as f32 + 3.0 * post.replies as f32
}

/// The light ranker's logit in three parts, so that a shard can keep the parts that do
/// not depend on the request per post and per author, and compute per candidate only
/// the age and user terms. The model is linear, so the sum is the same model; every
/// shard sums the parts in the same order, so every shard gets the same bits.
pub mod light_parts {
    use super::*;
    use crate::model::LightModel;

    /// Post-only terms: media, reply, length, lifetime engagement (features 2-5, 8-10
    /// and the post half of 11). The velocity (12) moves with the clock: see
    /// [`velocity`].
    pub fn post(m: &LightModel, post: &PostView) -> f32 {
        let w = &m.weights;
        let mut z = w[2] * post.has_media as u32 as f32;
        z += w[3] * post.is_reply as u32 as f32;
        z += w[4] * (post.text_len as f32 / 280.0);
        z += w[5] * (post.text_len < 40) as u32 as f32;
        z += w[8] * ln1p(post.likes);
        z += w[9] * ln1p(post.retweets);
        z += w[10] * ln1p(post.replies);
        z += w[11] * fastmath::ln_1p(weighted_engagement(post));
        z
    }

    /// The velocity term (feature 12), at the request's clock.
    #[inline]
    pub fn velocity(m: &LightModel, velocity: u32) -> f32 {
        if velocity == 0 {
            0.0
        } else {
            m.weights[12] * ln1p(velocity)
        }
    }

    /// Author-only terms: followers, posts (features 6, 7 and the author half of 11).
    pub fn author(m: &LightModel, followers: u32, posts: u32) -> f32 {
        let w = &m.weights;
        let mut z = w[6] * ln1p(followers);
        z += w[7] * ln1p(posts);
        z -= w[11] * fastmath::ln(followers as f32 + 10.0);
        z
    }

    /// Candidates scored together by [`Batch::score`].
    pub const BATCH: usize = 32;

    /// The light score's per-candidate inputs (stored parts, age, user terms) for up
    /// to [`BATCH`] candidates, in columns: the caller gathers them (random reads, one
    /// candidate at a time), then the age, freshness and sigmoid of all of them are
    /// computed in one loop the compiler vectorises (8 lanes with AVX2); the AVX2 and
    /// the portable loop both run [`finish`], so they give the same bits.
    #[derive(Clone)]
    pub struct Batch {
        len: usize,
        age_h: [f32; BATCH],
        /// bias + post part + author part + velocity part.
        base: [f32; BATCH],
        same_lang: [f32; BATCH],
        followed: [f32; BATCH],
        interest: [f32; BATCH],
        media: [f32; BATCH],
    }

    impl Default for Batch {
        fn default() -> Self {
            Batch {
                len: 0,
                age_h: [0.0; BATCH],
                base: [0.0; BATCH],
                same_lang: [0.0; BATCH],
                followed: [0.0; BATCH],
                interest: [0.0; BATCH],
                media: [0.0; BATCH],
            }
        }
    }

    impl Batch {
        pub fn len(&self) -> usize {
            self.len
        }

        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        pub fn is_full(&self) -> bool {
            self.len == BATCH
        }

        pub fn clear(&mut self) {
            self.len = 0;
        }

        /// Adds a candidate; the batch must not be full.
        #[inline]
        #[allow(clippy::too_many_arguments)]
        pub fn push(
            &mut self,
            m: &LightModel,
            post_part: f32,
            author_part: f32,
            created_at: i64,
            post_lang: Lang,
            has_media: bool,
            author_cluster: u32,
            author_followed: bool,
            velocity_part: f32,
            user: &UserView,
            now_ms: i64,
        ) {
            let i = self.len;
            self.age_h[i] = ((now_ms - created_at).max(0) as f32) / 3_600_000.0;
            self.base[i] = m.bias + post_part + author_part + velocity_part;
            self.same_lang[i] =
                (user.known && user.lang != UNKNOWN && user.lang == post_lang) as u32 as f32;
            self.followed[i] = author_followed as u32 as f32;
            self.interest[i] = user.interest_in(author_cluster);
            self.media[i] = has_media as u32 as f32;
            self.len = i + 1;
        }

        /// The scores of the candidates in push order, into `out[..len]`.
        pub fn score(&self, m: &LightModel, out: &mut [f32; BATCH]) {
            match Simd::detect() {
                // SAFETY: the CPU has the level's features (`Simd::detect`).
                #[cfg(target_arch = "x86_64")]
                Simd::Avx512 => unsafe { self.score_avx512(m, out) },
                #[cfg(target_arch = "x86_64")]
                Simd::Avx2 => unsafe { self.score_avx2(m, out) },
                Simd::Portable => self.score_plain(m, out),
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn score_avx2(&self, m: &LightModel, out: &mut [f32; BATCH]) {
            self.score_plain(m, out)
        }

        /// The same loop in 16 lanes.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx2")]
        pub(super) unsafe fn score_avx512(&self, m: &LightModel, out: &mut [f32; BATCH]) {
            self.score_plain(m, out)
        }

        #[inline(always)]
        pub(super) fn score_plain(&self, m: &LightModel, out: &mut [f32; BATCH]) {
            // All BATCH lanes, whatever `len`: a fixed trip count vectorises cleanly,
            // and the lanes past `len` are ignored.
            for (i, o) in out.iter_mut().enumerate() {
                *o = finish(m, self, i);
            }
        }
    }

    /// The score of candidate `i` of `b`; the sums run in one fixed order (no fused
    /// multiply-add: Rust never contracts), so every path gets the same bits.
    #[inline(always)]
    fn finish(m: &LightModel, b: &Batch, i: usize) -> f32 {
        let w = &m.weights;
        let age_h = b.age_h[i];
        let freshness = fastmath::exp(-age_h / 24.0);
        let followed = b.followed[i];
        let interest = b.interest[i];
        let mut z = b.base[i];
        z += w[0] * fastmath::ln_1p(age_h);
        z += w[1] * freshness;
        z += w[13] * b.same_lang[i];
        z += w[14] * followed;
        z += w[15] * interest;
        z += w[16] * followed * freshness;
        z += w[17] * b.media[i] * interest;
        crate::model::sigmoid(z)
    }
}

/// Fills `out` with the features of `post` for `user` at event time `now_ms`.
#[inline]
pub fn extract(
    post: &PostView,
    author_followed: bool,
    user: &UserView,
    now_ms: i64,
    out: &mut [f32; NUM_FEATURES],
) {
    let age_h = ((now_ms - post.created_at).max(0) as f32) / 3_600_000.0;
    let freshness = fastmath::exp(-age_h / 24.0);
    let media = post.has_media as u32 as f32;
    let followed = author_followed as u32 as f32;
    let interest = user.interest_in(post.author_cluster);
    let weighted = weighted_engagement(post);
    out[0] = fastmath::ln_1p(age_h);
    out[1] = freshness;
    out[2] = media;
    out[3] = post.is_reply as u32 as f32;
    out[4] = post.text_len as f32 / 280.0;
    out[5] = (post.text_len < 40) as u32 as f32;
    out[6] = ln1p(post.author_followers);
    out[7] = ln1p(post.author_posts);
    out[8] = ln1p(post.likes);
    out[9] = ln1p(post.retweets);
    out[10] = ln1p(post.replies);
    out[11] = fastmath::ln_1p(weighted) - fastmath::ln(post.author_followers as f32 + 10.0);
    out[12] = ln1p(post.velocity);
    out[13] = (user.known && user.lang != UNKNOWN && user.lang == post.lang) as u32 as f32;
    out[14] = followed;
    out[15] = interest;
    out[16] = followed * freshness;
    out[17] = media * interest;
}

/// Candidates whose transcendental features are computed together in
/// [`extract_batch`].
const COLUMN: usize = 16;

/// [`extract`] for many candidates, bit for bit the same values: the ten logarithms
/// and exponentials per candidate are computed column by column over groups of
/// [`COLUMN`], in loops the compiler vectorises (8 lanes with AVX2), where one at a
/// time they cost the heavy stage as much as its network.
pub fn extract_batch(
    posts: &[PostView],
    followed: &[bool],
    user: &UserView,
    now_ms: i64,
    out: &mut [[f32; NUM_FEATURES]],
) {
    assert!(posts.len() == followed.len() && posts.len() == out.len());
    match Simd::detect() {
        // SAFETY: the CPU has the level's features (`Simd::detect`).
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { extract_batch_avx512(posts, followed, user, now_ms, out) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { extract_batch_avx2(posts, followed, user, now_ms, out) },
        Simd::Portable => extract_batch_plain(posts, followed, user, now_ms, out),
    }
}

/// The same loops in 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn extract_batch_avx512(
    posts: &[PostView],
    followed: &[bool],
    user: &UserView,
    now_ms: i64,
    out: &mut [[f32; NUM_FEATURES]],
) {
    extract_batch_plain(posts, followed, user, now_ms, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn extract_batch_avx2(
    posts: &[PostView],
    followed: &[bool],
    user: &UserView,
    now_ms: i64,
    out: &mut [[f32; NUM_FEATURES]],
) {
    extract_batch_plain(posts, followed, user, now_ms, out)
}

#[inline(always)]
fn extract_batch_plain(
    posts: &[PostView],
    followed: &[bool],
    user: &UserView,
    now_ms: i64,
    out: &mut [[f32; NUM_FEATURES]],
) {
    for ((posts, followed), out) in posts
        .chunks(COLUMN)
        .zip(followed.chunks(COLUMN))
        .zip(out.chunks_mut(COLUMN))
    {
        // Arguments of ln (as 1 + x for ln_1p) and of exp, one column each.
        let mut age_h = [0.0f32; COLUMN];
        let mut ln_args = [[1.0f32; COLUMN]; 8];
        for (i, post) in posts.iter().enumerate() {
            let a = ((now_ms - post.created_at).max(0) as f32) / 3_600_000.0;
            age_h[i] = a;
            ln_args[0][i] = 1.0 + a;
            ln_args[1][i] = 1.0 + post.author_followers as f32;
            ln_args[2][i] = 1.0 + post.author_posts as f32;
            ln_args[3][i] = 1.0 + post.likes as f32;
            ln_args[4][i] = 1.0 + post.retweets as f32;
            ln_args[5][i] = 1.0 + post.replies as f32;
            ln_args[6][i] = 1.0 + weighted_engagement(post);
            ln_args[7][i] = post.author_followers as f32 + 10.0;
        }
        let mut lns = [[0.0f32; COLUMN]; 8];
        for (l, a) in lns.iter_mut().zip(&ln_args) {
            for (l, &a) in l.iter_mut().zip(a) {
                *l = fastmath::ln(a);
            }
        }
        let mut freshness = [0.0f32; COLUMN];
        for (f, &a) in freshness.iter_mut().zip(&age_h) {
            *f = fastmath::exp(-a / 24.0);
        }
        for (i, ((post, &followed), o)) in posts.iter().zip(followed).zip(out).enumerate() {
            let media = post.has_media as u32 as f32;
            let followed = followed as u32 as f32;
            let interest = user.interest_in(post.author_cluster);
            o[0] = lns[0][i];
            o[1] = freshness[i];
            o[2] = media;
            o[3] = post.is_reply as u32 as f32;
            o[4] = post.text_len as f32 / 280.0;
            o[5] = (post.text_len < 40) as u32 as f32;
            o[6] = lns[1][i];
            o[7] = lns[2][i];
            o[8] = lns[3][i];
            o[9] = lns[4][i];
            o[10] = lns[5][i];
            o[11] = lns[6][i] - lns[7][i];
            // Most posts have no recent engagement: ln_1p(0) = 0 without a column.
            o[12] = if post.velocity == 0 {
                0.0
            } else {
                ln1p(post.velocity)
            };
            o[13] = (user.known && user.lang != UNKNOWN && user.lang == post.lang) as u32 as f32;
            o[14] = followed;
            o[15] = interest;
            o[16] = followed * freshness[i];
            o[17] = media * interest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The light score of a full batch is the same bits on every path this CPU has
    /// (the portable loop, AVX2, AVX-512): shards on different CPUs rank alike.
    #[test]
    fn light_score_paths_agree_bit_for_bit() {
        let mut r = crate::rng::Rng::new(11);
        let m = crate::model::defaults::light();
        let user = UserView {
            known: true,
            lang: 3,
            interests: vec![(1, 0.5), (4, 0.25)],
        };
        let now = 1_700_000_000_000i64;
        let mut parts = light_parts::Batch::default();
        while !parts.is_full() {
            let followers = (r.next_u64() >> (34 + r.below(30))) as u32;
            parts.push(
                &m,
                r.f64() as f32 - 0.5,
                light_parts::author(&m, followers, r.below(5000) as u32),
                // From in the future (age 0) to a year old.
                now - r.below(365 * 86_400_000) as i64 + 3_600_000,
                r.below(5) as Lang,
                r.below(2) == 0,
                r.below(6) as u32,
                r.below(3) == 0,
                light_parts::velocity(&m, r.below(200) as u32),
                &user,
                now,
            );
        }
        let bits = |s: [f32; light_parts::BATCH]| s.map(f32::to_bits);
        let mut want = [0.0; light_parts::BATCH];
        parts.score_plain(&m, &mut want);
        let mut got = [0.0; light_parts::BATCH];
        parts.score(&m, &mut got);
        assert_eq!(bits(got), bits(want), "dispatched");
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") {
                // SAFETY: checked just above.
                unsafe { parts.score_avx2(&m, &mut got) };
                assert_eq!(bits(got), bits(want), "avx2");
            }
            if has!("avx512f") {
                // SAFETY: checked just above.
                unsafe { parts.score_avx512(&m, &mut got) };
                assert_eq!(bits(got), bits(want), "avx512");
            }
        }
    }

    #[test]
    fn batch_extraction_equals_one_at_a_time_bit_for_bit() {
        let mut r = crate::rng::Rng::new(3);
        let user = UserView {
            known: true,
            lang: 3,
            interests: vec![(1, 0.5), (4, 0.25)],
        };
        let now = 1_700_000_000_000;
        let posts: Vec<PostView> = (0..77)
            .map(|i| PostView {
                created_at: now - r.below(30 * 86_400_000) as i64 + if i == 0 { 5000 } else { 0 },
                has_media: r.below(2) == 0,
                is_reply: r.below(3) == 0,
                text_len: r.below(280) as u16,
                lang: r.below(5) as Lang,
                likes: (r.next_u64() >> (40 + r.below(24))) as u32,
                retweets: r.below(1000) as u32,
                replies: r.below(100) as u32,
                velocity: if i % 3 == 0 { r.below(50) as u32 } else { 0 },
                author_followers: (r.next_u64() >> (34 + r.below(30))) as u32,
                author_posts: r.below(5000) as u32,
                author_cluster: r.below(6) as u32,
            })
            .collect();
        let followed: Vec<bool> = (0..posts.len()).map(|i| i % 4 == 0).collect();
        // Every path this CPU has: dispatched, portable, AVX2, AVX-512.
        let run = |f: &dyn Fn(&mut [[f32; NUM_FEATURES]])| {
            let mut out = vec![[0.0f32; NUM_FEATURES]; posts.len()];
            f(&mut out);
            out
        };
        let mut paths = vec![
            (
                "dispatched",
                run(&|o| extract_batch(&posts, &followed, &user, now, o)),
            ),
            (
                "plain",
                run(&|o| extract_batch_plain(&posts, &followed, &user, now, o)),
            ),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") {
                // SAFETY: checked just above.
                let f = |o: &mut _| unsafe { extract_batch_avx2(&posts, &followed, &user, now, o) };
                paths.push(("avx2", run(&f)));
            }
            if has!("avx512f") {
                // SAFETY: checked just above.
                let f =
                    |o: &mut _| unsafe { extract_batch_avx512(&posts, &followed, &user, now, o) };
                paths.push(("avx512", run(&f)));
            }
        }
        for (i, (post, &f)) in posts.iter().zip(&followed).enumerate() {
            let mut one = [0.0f32; NUM_FEATURES];
            extract(post, f, &user, now, &mut one);
            for (path, batch) in &paths {
                assert_eq!(
                    one.map(f32::to_bits),
                    batch[i].map(f32::to_bits),
                    "{path}: candidate {i}"
                );
            }
        }
    }

    #[test]
    fn known_post_gives_known_features() {
        let en = crate::lang::parse("en").unwrap();
        let post = PostView {
            created_at: 0,
            has_media: true,
            is_reply: false,
            text_len: 20,
            lang: en,
            likes: 9,
            retweets: 1,
            replies: 0,
            velocity: 4,
            author_followers: 990,
            author_posts: 3,
            author_cluster: 7,
        };
        let user = UserView {
            known: true,
            lang: en,
            interests: vec![(2, 0.25), (7, 0.5)],
        };
        let mut f = [0.0; NUM_FEATURES];
        extract(&post, true, &user, 24 * 3_600_000, &mut f);
        let close = |a: f32, b: f64| (a as f64 - b).abs() < 1e-6;
        assert!(close(f[0], (25.0f64).ln()));
        assert!(close(f[1], (-1.0f64).exp()));
        assert_eq!(f[2], 1.0);
        assert_eq!(f[3], 0.0);
        assert!(close(f[4], 20.0 / 280.0));
        assert_eq!(f[5], 1.0);
        assert!(close(f[6], (991.0f64).ln()));
        assert!(close(f[8], (10.0f64).ln()));
        assert!(close(f[11], (12.0f64).ln() - (1000.0f64).ln()));
        assert!(close(f[12], (5.0f64).ln()));
        assert_eq!(f[13], 1.0);
        assert_eq!(f[14], 1.0);
        assert_eq!(f[15], 0.5);
        assert!(close(f[16], (-1.0f64).exp()));
        assert_eq!(f[17], 0.5);
        // The split light score is the same model as the dot product over the vector.
        let m = crate::model::defaults::light();
        let mut parts = light_parts::Batch::default();
        parts.push(
            &m,
            light_parts::post(&m, &post),
            light_parts::author(&m, post.author_followers, post.author_posts),
            post.created_at,
            post.lang,
            post.has_media,
            post.author_cluster,
            true,
            light_parts::velocity(&m, post.velocity),
            &user,
            24 * 3_600_000,
        );
        let mut scores = [0.0; light_parts::BATCH];
        parts.score(&m, &mut scores);
        let fast = scores[0];
        assert!(
            (fast - m.score(&f)).abs() < 1e-6,
            "{fast} vs {}",
            m.score(&f)
        );
        // A cold-start user has no personal features.
        extract(&post, false, &UserView::default(), 24 * 3_600_000, &mut f);
        assert_eq!(
            (f[13], f[14], f[15], f[16], f[17]),
            (0.0, 0.0, 0.0, 0.0, 0.0)
        );
    }
}
