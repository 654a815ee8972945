//! What the tests know of a corpus, computed independently of the cluster: the tweets
//! and their authors, who blocks or mutes whom, and a single-process reference ranking.

use shardrank_coordinator::users::UserStore;
use shardrank_core::corpus::{generate, CorpusSpec};
use shardrank_core::events::{Event, SocialKind};
use shardrank_core::features::UserView;
use shardrank_core::lang;
use shardrank_core::model::Models;
use shardrank_core::rng::Rng;
use shardrank_core::topk::rank_cmp;
use shardrank_shard::rank::{rank, RankParams, RequestUser};
use shardrank_shard::store::PostStore;
use std::collections::HashMap;

pub struct Facts {
    pub spec: CorpusSpec,
    pub tweets: Vec<u64>,
    pub author_of: HashMap<u64, u64>,
    /// user -> authors it blocks or mutes.
    pub excluded: HashMap<u64, Vec<u64>>,
    pub users: Vec<u64>,
}

impl Facts {
    pub fn of(name: &str, seed: u64) -> Facts {
        let spec = CorpusSpec::named(name, seed).unwrap();
        let mut f = Facts {
            spec,
            tweets: Vec::new(),
            author_of: HashMap::new(),
            excluded: HashMap::new(),
            users: Vec::new(),
        };
        generate(&spec, |e| match e {
            Event::NewTweet(t) => {
                f.tweets.push(t.id);
                f.author_of.insert(t.id, t.author_id);
            }
            Event::User(u) => f.users.push(u.user_id),
            Event::Social(s) if matches!(s.kind, SocialKind::Block | SocialKind::Mute) => {
                f.excluded.entry(s.user_id).or_default().push(s.target_id)
            }
            _ => {}
        });
        f
    }

    /// `n` candidate ids drawn uniformly (with repeats) from the corpus.
    pub fn draw(&self, rng: &mut Rng, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| self.tweets[rng.below(self.tweets.len() as u64) as usize])
            .collect()
    }
}

/// The answer as one machine computes it, without the distributed protocol: light-score
/// every candidate, heavy-score the global top `h`, return the top `k` by heavy score.
/// Returns (id, heavy, light) triples.
pub fn reference_answer(
    store: &PostStore,
    users: &UserStore,
    user_id: u64,
    ids: &[u64],
    h: usize,
    k: usize,
) -> Vec<(u64, f32, f32)> {
    let ctx = users.context(user_id);
    let view = UserView {
        known: ctx.known,
        lang: lang::parse(&ctx.lang).unwrap(),
        interests: ctx
            .interest_clusters
            .iter()
            .copied()
            .zip(ctx.interest_weights.iter().copied())
            .collect(),
    };
    let user = RequestUser::new(store, view, &ctx.followees, &ctx.excluded_authors);
    let out = rank(
        store,
        &Models::builtin().heavy,
        &user,
        &RankParams {
            ids,
            now_ms: users.watermark_ms,
            skip: 0,
            count: h.max(k),
            deadline: None,
            light_only: false,
        },
    );
    let mut v: Vec<(u64, f32, f32)> = out
        .items
        .iter()
        .map(|(c, heavy)| (c.id, *heavy, c.light))
        .collect();
    v.sort_by(|a, b| rank_cmp(a.1, a.0, b.1, b.0));
    v.truncate(k);
    v
}

/// A whole-corpus store and the user store, as a one-shard cluster would hold them.
pub fn load_single(spec: &CorpusSpec) -> (PostStore, UserStore) {
    let mut store = PostStore::new(0, 1, Models::builtin().light);
    store.begin_load();
    let mut users = UserStore::default();
    generate(spec, |e| {
        store.apply(&e);
        users.apply(&e);
    });
    store.finish_load();
    (store, users)
}
