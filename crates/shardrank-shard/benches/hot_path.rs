//! Microbenchmarks of the hot path, per candidate (divan reports time per iteration;
//! each benchmark says what one iteration is). Run: `cargo bench -p shardrank-shard`.
//!
//! - routing: md5 of one decimal id and its shard, scalar and eight lanes at a time;
//! - store lookup: one id -> row on a 250,000-post partition (a random memory access);
//! - light ranker: one candidate's light score from the stored parts;
//! - heavy ranker: one candidate through the MLP, in batches of 1000;
//! - request decoding: a 100k-id RankRequest, per id;
//! - merge: the coordinator's exact merge of 4 shard answers of 300;
//! - sort: a shard's light-order sort of the 250 candidates it keeps at rank-1k;
//! - shard rank: a whole in-process Rank of 25,000 candidates (one shard's share of a
//!   100k request), per candidate; and the same with lookups that miss the caches as
//!   in the cluster (`shard_rank_25k_cold`).

use divan::{black_box, Bencher};
use shardrank_core::corpus::{generate, CorpusSpec, CORPUS_END_MS};
use shardrank_core::features::{extract_batch, light_parts, UserView, NUM_FEATURES};
use shardrank_core::model::heavy::Scratch;
use shardrank_core::model::Models;
use shardrank_core::rng::Rng;
use shardrank_core::routing;
use shardrank_shard::rank::{rank, RankParams, RequestUser};
use shardrank_shard::store::PostStore;
use std::sync::OnceLock;

fn main() {
    divan::main();
}

/// All four shards of the standard corpus (about 56 MB of index and rows: more than
/// this machine's 32 MB L3, as for the four shard processes of a 4x1 cluster).
fn stores() -> &'static [PostStore] {
    static S: OnceLock<Vec<PostStore>> = OnceLock::new();
    S.get_or_init(|| {
        let spec = CorpusSpec::named("standard", 42).unwrap();
        let mut stores: Vec<PostStore> = (0..4)
            .map(|i| PostStore::new(i, 4, Models::builtin().light))
            .collect();
        stores.iter_mut().for_each(PostStore::begin_load);
        generate(&spec, |e| stores.iter_mut().for_each(|s| s.apply(&e)));
        stores.iter_mut().for_each(PostStore::finish_load);
        stores
    })
}

/// Shard 0 of 4 of the standard corpus.
fn store() -> &'static PostStore {
    &stores()[0]
}

fn random_ids(n: usize) -> Vec<u64> {
    let s = store();
    let mut r = Rng::new(5);
    (0..n)
        .map(|_| s.id(r.below(s.len() as u64) as u32))
        .collect()
}

const N: usize = 4096;

#[divan::bench(items_count = N)]
fn routing_scalar_md5(b: Bencher) {
    let ids = random_ids(N);
    b.bench(|| {
        ids.iter()
            .map(|&id| routing::shard_of(black_box(id), 4))
            .sum::<u32>()
    });
}

#[divan::bench(items_count = N)]
fn routing_md5_8_lanes(b: Bencher) {
    let ids = random_ids(N);
    let mut out = vec![0u32; N];
    b.bench_local(|| shardrank_core::md5x8::shards(black_box(&ids), 4, &mut out));
}

#[divan::bench(items_count = N)]
fn routing_partition(b: Bencher) {
    let ids = random_ids(N);
    b.bench(|| routing::partition(black_box(&ids), 4));
}

#[divan::bench(items_count = N)]
fn store_lookup(b: Bencher) {
    let s = store();
    let ids = random_ids(N);
    b.bench(|| {
        ids.iter()
            .map(|&id| s.row(black_box(id)).unwrap_or(0) as u64)
            .sum::<u64>()
    });
}

/// The light score from the stored parts, in batches as the shard computes it (rows
/// in cache: the compute alone).
#[divan::bench(items_count = N)]
fn light_score_from_parts(b: Bencher) {
    let s = store();
    let m = Models::builtin();
    let rows: Vec<u32> = (0..N as u32).map(|i| i * 37 % s.len() as u32).collect();
    let user = UserView::default();
    let mut parts = light_parts::Batch::default();
    let mut scores = [0.0f32; light_parts::BATCH];
    b.bench_local(|| {
        let mut sum = 0.0f32;
        for chunk in rows.chunks(light_parts::BATCH) {
            parts.clear();
            for &row in chunk {
                let h = &s.hot[row as usize];
                let a = h.author as usize;
                parts.push(
                    &m.light,
                    h.light_part,
                    s.authors.rows[a].light_part,
                    h.created_at,
                    h.lang,
                    h.has_media(),
                    s.authors.rows[a].cluster,
                    false,
                    light_parts::velocity(&m.light, s.velocity(row, CORPUS_END_MS)),
                    &user,
                    CORPUS_END_MS,
                );
            }
            parts.score(&m.light, &mut scores);
            sum += scores[..chunk.len()].iter().sum::<f32>();
        }
        sum
    });
}

/// The heavy ranker's full feature vectors, in batches of 128 as the shard's heavy stage
/// builds them (views gathered, then the logarithms column by column).
#[divan::bench(items_count = N)]
fn heavy_features_batch(b: Bencher) {
    let s = store();
    let rows: Vec<u32> = (0..N as u32).map(|i| i * 37 % s.len() as u32).collect();
    let user = UserView::default();
    let mut x = vec![[0.0f32; NUM_FEATURES]; 128];
    let followed = [false; 128];
    b.bench_local(|| {
        let mut sum = 0.0f32;
        for chunk in rows.chunks(128) {
            let posts: Vec<_> = chunk.iter().map(|&r| s.view(r, CORPUS_END_MS)).collect();
            extract_batch(
                &posts,
                &followed[..chunk.len()],
                &user,
                CORPUS_END_MS,
                &mut x[..chunk.len()],
            );
            sum += x[0][0];
        }
        sum
    });
}

#[divan::bench(items_count = 1000usize)]
fn heavy_mlp_batch_1000(b: Bencher) {
    let m = Models::builtin();
    let mut r = Rng::new(1);
    let xs: Vec<[f32; NUM_FEATURES]> = (0..1000)
        .map(|_| std::array::from_fn(|_| r.f64() as f32))
        .collect();
    let mut out = vec![0.0; 1000];
    let mut scratch = Scratch::default();
    b.bench_local(|| m.heavy.score_batch(black_box(&xs), &mut out, &mut scratch));
}

/// Decoding a 100k-id `RankRequest` (what the coordinator does first with a request),
/// per id: prost's generated decoder from a slice, and the services' codec
/// (`shardrank_proto::codec`, a varint eight bytes at a time).
mod decode_rank_request_100k {
    use super::*;
    use prost::Message;
    use shardrank_proto::codec::WireMessage;
    use shardrank_proto::v1::RankRequest;

    fn bytes() -> Vec<u8> {
        let r = RankRequest {
            user_id: 7,
            candidate_ids: random_ids(100_000),
            ..Default::default()
        };
        r.encode_to_vec()
    }

    #[divan::bench(items_count = 100_000usize, sample_count = 30)]
    fn prost(b: Bencher) {
        let bytes = bytes();
        b.bench(|| RankRequest::decode(black_box(&bytes[..])).unwrap());
    }

    #[divan::bench(items_count = 100_000usize, sample_count = 30)]
    fn codec(b: Bencher) {
        let bytes = bytes();
        b.bench(|| RankRequest::decode_slice(black_box(&bytes[..])).unwrap());
    }
}

/// Decoding one shard's answer of 300 candidates (what the coordinator does with each
/// of a request's four answers), per candidate: prost, and the codec (each parallel
/// array as one copy into a vector sized once).
mod decode_shard_answer_300 {
    use super::*;
    use prost::Message;
    use shardrank_proto::codec::WireMessage;
    use shardrank_proto::v1::ShardRankResponse;

    fn bytes() -> Vec<u8> {
        let ids = random_ids(300);
        ShardRankResponse {
            author_ids: ids.iter().map(|id| id / 3).collect(),
            light_scores: (0..300).map(|i| i as f32 * 0.01).collect(),
            heavy_scores: (0..300).map(|i| i as f32 * -0.02).collect(),
            ids,
            eligible: 25_000,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[divan::bench(items_count = 300usize)]
    fn prost(b: Bencher) {
        let bytes = bytes();
        b.bench(|| ShardRankResponse::decode(black_box(&bytes[..])).unwrap());
    }

    #[divan::bench(items_count = 300usize)]
    fn codec(b: Bencher) {
        let bytes = bytes();
        b.bench(|| ShardRankResponse::decode_slice(black_box(&bytes[..])).unwrap());
    }
}

/// A shard's sort of what it keeps for the heavy stage, in light order: 250 items, a
/// rank-1k request's share (`topk::sort_ranked`), scores spread as a sigmoid's.
#[divan::bench(items_count = 250usize)]
fn sort_ranked_250(b: Bencher) {
    #[derive(Clone, Copy)]
    struct Item(f32, u64);
    impl shardrank_core::topk::Ranked for Item {
        fn score(&self) -> f32 {
            self.0
        }
        fn id(&self) -> u64 {
            self.1
        }
    }
    let mut r = Rng::new(12);
    let items: Vec<Item> = (0..250)
        .map(|_| {
            let x = r.f64() * 12.0 - 6.0;
            Item((1.0 / (1.0 + (-x).exp())) as f32, r.next_u64())
        })
        .collect();
    b.with_inputs(|| items.clone())
        .bench_local_refs(|v| shardrank_core::topk::sort_ranked(black_box(v)));
}

#[divan::bench(items_count = 1200usize)]
fn coordinator_merge_4x300(b: Bencher) {
    use shardrank_coordinator_merge::*;
    let parts = parts();
    b.bench(|| select(black_box(&parts), 1000, 100));
}

/// One shard's whole Rank of `n` random candidates, heavy-scoring the best `count`.
fn bench_shard_rank(b: Bencher, n: usize, count: usize) {
    let s = store();
    let m = Models::builtin();
    let ids = random_ids(n);
    let user = RequestUser::new(s, UserView::default(), &[], &[]);
    b.bench(|| {
        rank(
            s,
            &m.heavy,
            &user,
            &RankParams {
                ids: black_box(&ids),
                now_ms: CORPUS_END_MS,
                skip: 0,
                count,
                deadline: None,
                light_only: false,
            },
        )
    });
}

#[divan::bench(items_count = 25_000usize, sample_count = 30)]
fn shard_rank_25k(b: Bencher) {
    bench_shard_rank(b, 25_000, 300);
}

/// A shard's Rank of 25,000 candidates (heavy-scoring 300) where the lookups miss the
/// caches: each iteration takes the next of 32 random id lists per shard, over the four
/// shards' stores in turn. `shard_rank_25k` reuses one list, whose rows stay cached.
#[divan::bench(items_count = 25_000usize, sample_count = 128)]
fn shard_rank_25k_cold(b: Bencher) {
    bench_shard_rank_cold(b, 25_000, 300, 32);
}

/// A rank-1k share (250 candidates, all heavy-scored) where the rows miss the caches,
/// as in a 4x1 cluster: 256 random lists per shard, taken in turn over the four stores.
#[divan::bench(items_count = 250usize, sample_count = 1024)]
fn shard_rank_250_all_heavy_cold(b: Bencher) {
    bench_shard_rank_cold(b, 250, 250, 256);
}

/// One shard's Rank of `n` random candidates heavy-scoring the best `count`, each
/// iteration on the next of `lists` id lists per shard over the four stores in turn, so
/// that the rows are mostly not cached.
fn bench_shard_rank_cold(b: Bencher, n: usize, count: usize, lists: usize) {
    let stores = stores();
    let m = Models::builtin();
    let mut r = Rng::new(6);
    let lists: Vec<(usize, Vec<u64>)> = (0..lists)
        .flat_map(|_| 0..stores.len())
        .map(|k| {
            let s = &stores[k];
            let ids = (0..n)
                .map(|_| s.id(r.below(s.len() as u64) as u32))
                .collect();
            (k, ids)
        })
        .collect();
    let users: Vec<RequestUser> = stores
        .iter()
        .map(|s| RequestUser::new(s, UserView::default(), &[], &[]))
        .collect();
    let next = std::cell::Cell::new(0);
    b.bench_local(|| {
        let (k, ids) = &lists[next.get() % lists.len()];
        next.set(next.get() + 1);
        rank(
            &stores[*k],
            &m.heavy,
            &users[*k],
            &RankParams {
                ids: black_box(ids),
                now_ms: CORPUS_END_MS,
                skip: 0,
                count,
                deadline: None,
                light_only: false,
            },
        )
    });
}

/// The merge lives in the coordinator crate; a copy of its inputs here keeps the bench
/// free of a dependency cycle.
mod shardrank_coordinator_merge {
    pub use shardrank_coordinator::merge::{select, Candidate, ShardPart};
    use shardrank_core::rng::Rng;

    pub fn parts() -> Vec<ShardPart> {
        let mut r = Rng::new(3);
        (0..4)
            .map(|s| {
                let mut items: Vec<Candidate> = (0..300)
                    .map(|i| Candidate {
                        id: i * 4 + s,
                        author_id: 0,
                        light: r.f64() as f32,
                        heavy: r.f64() as f32,
                        shard: s as u32,
                    })
                    .collect();
                items.sort_by(|a, b| shardrank_core::topk::rank_cmp(a.light, a.id, b.light, b.id));
                ShardPart {
                    shard: s as u32,
                    items,
                    eligible: 25_000,
                }
            })
            .collect()
    }
}

/// A whole rank-1k share on one shard: 1000 candidates, all heavy-scored (H = 1000).
#[divan::bench(items_count = 1000usize, sample_count = 50)]
fn shard_rank_1k_all_heavy(b: Bencher) {
    bench_shard_rank(b, 1000, 1000);
}

/// The light stage alone on one core: 4096 random candidates (one chunk), light only.
#[divan::bench(items_count = 4096usize, sample_count = 200)]
fn shard_light_4k_one_core(b: Bencher) {
    let s = store();
    let m = Models::builtin();
    let ids = random_ids(4096);
    let user = RequestUser::new(s, UserView::default(), &[], &[]);
    b.bench(|| {
        rank(
            s,
            &m.heavy,
            &user,
            &RankParams {
                ids: black_box(&ids),
                now_ms: CORPUS_END_MS,
                skip: 0,
                count: 100,
                deadline: None,
                light_only: true,
            },
        )
    });
}
