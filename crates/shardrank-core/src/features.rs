//! The feature vector both rankers read, defined once.
//!
//! Post features (age, media, reply, length), author features (followers, activity),
//! engagement counts, and user x post features (same language, author followed,
//! interest overlap). Values are computed in f32 in a fixed order, so the same
//! candidate gets the same bits on every shard.

use crate::lang::{Lang, UNKNOWN};

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
    (x as f32).ln_1p()
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
        z += w[11] * weighted_engagement(post).ln_1p();
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
        z -= w[11] * (followers as f32 + 10.0).ln();
        z
    }

    /// The light score from the stored parts plus the age and user terms.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn score(
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
    ) -> f32 {
        let w = &m.weights;
        let age_h = ((now_ms - created_at).max(0) as f32) / 3_600_000.0;
        let freshness = (-age_h / 24.0).exp();
        let followed = author_followed as u32 as f32;
        let interest = user.interest_in(author_cluster);
        let mut z = m.bias + post_part + author_part + velocity_part;
        z += w[0] * age_h.ln_1p();
        z += w[1] * freshness;
        z += w[13] * (user.known && user.lang != UNKNOWN && user.lang == post_lang) as u32 as f32;
        z += w[14] * followed;
        z += w[15] * interest;
        z += w[16] * followed * freshness;
        z += w[17] * has_media as u32 as f32 * interest;
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
    let freshness = (-age_h / 24.0).exp();
    let media = post.has_media as u32 as f32;
    let followed = author_followed as u32 as f32;
    let interest = user.interest_in(post.author_cluster);
    let weighted = weighted_engagement(post);
    out[0] = age_h.ln_1p();
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
    out[11] = weighted.ln_1p() - (post.author_followers as f32 + 10.0).ln();
    out[12] = ln1p(post.velocity);
    out[13] = (user.known && user.lang != UNKNOWN && user.lang == post.lang) as u32 as f32;
    out[14] = followed;
    out[15] = interest;
    out[16] = followed * freshness;
    out[17] = media * interest;
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let fast = light_parts::score(
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
