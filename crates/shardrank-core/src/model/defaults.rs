//! The built-in models, made by code so that they are the same in every build.
//!
//! The light weights are set by hand to plausible signs and sizes (fresh, engaged,
//! followed, in-language, on-interest posts first). The heavy network is seeded
//! Xavier-initialised with head biases at typical base rates; it is a placeholder with
//! the real shape until trained weights are dropped into a model directory, which is
//! exactly what the safetensors layout is for.

use super::heavy::{HeavyModel, DEFAULT_HEAD_WEIGHTS};
use super::light::LightModel;
use crate::features::NUM_FEATURES;
use crate::rng::Rng;

pub const HIDDEN: usize = 64;

pub fn light() -> LightModel {
    LightModel {
        weights: [
            -0.35, // log_age_hours
            0.8,   // freshness
            0.3,   // has_media
            -0.4,  // is_reply
            0.1,   // text_len
            -0.1,  // short_text
            0.15,  // log_author_followers
            -0.05, // log_author_posts
            0.35,  // log_likes
            0.25,  // log_retweets
            0.2,   // log_replies
            0.5,   // log_engagement_per_follower
            0.3,   // log_engagement_velocity
            0.9,   // same_language
            1.6,   // author_followed
            1.2,   // interest_overlap
            0.5,   // followed_x_freshness
            0.3,   // media_x_interest
        ],
        bias: -3.0,
    }
}

pub fn heavy() -> HeavyModel {
    let mut r = Rng::fork(0x5eed, 99);
    let mut init = |n_out: usize, n_in: usize| -> Vec<f32> {
        let a = (6.0 / (n_in + n_out) as f64).sqrt();
        (0..n_out * n_in)
            .map(|_| ((r.f64() * 2.0 - 1.0) * a) as f32)
            .collect()
    };
    let w1 = init(HIDDEN, NUM_FEATURES);
    let w2 = init(HIDDEN, HIDDEN);
    let w3 = init(4, HIDDEN);
    let b1 = vec![0.01; HIDDEN];
    let b2 = vec![0.01; HIDDEN];
    // logit of base rates: like 10%, retweet 2%, reply 1%, negative feedback 0.1%.
    let b3 = [-2.197, -3.892, -4.595, -6.907];
    HeavyModel::from_layers(
        HIDDEN,
        HIDDEN,
        &w1,
        &b1,
        &w2,
        &b2,
        &w3,
        b3,
        DEFAULT_HEAD_WEIGHTS,
    )
}
