//! The map/reduce invariant: any number of shards returns exactly the answer of one
//! shard (same ids, same order, bit-identical scores), on the standard corpus, for
//! requests of 1, 100, 10,000 and 100,000 candidates.

use shardrank_core::rng::Rng;
use shardrank_proto::v1::{RankRequest, RankResponse};
use shardrank_tests::corpus_facts::Facts;
use shardrank_tests::Cluster;

type Answer = Vec<(u64, u32, u32, u64)>;

fn key(r: &RankResponse) -> Answer {
    r.candidates
        .iter()
        .map(|c| {
            (
                c.id,
                c.score.to_bits(),
                c.light_score.to_bits(),
                c.author_id,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_shards_answer_exactly_like_one() {
    let (four, one) = tokio::join!(
        Cluster::start(4, &["--corpus", "standard"]),
        Cluster::start(1, &["--corpus", "standard"])
    );
    let facts = Facts::of("standard", 42);
    let (mut c4, mut c1) = (four.client().await, one.client().await);
    let mut rng = Rng::new(2026);
    let mut compared = 0;
    for &(n, requests) in &[(1usize, 20), (100, 20), (10_000, 8), (100_000, 3)] {
        for i in 0..requests {
            // Known users (some with blocks and mutes) and cold-start users.
            let user = match i % 3 {
                0 => *facts
                    .excluded
                    .keys()
                    .nth(rng.below(facts.excluded.len() as u64) as usize)
                    .unwrap(),
                1 => facts.users[rng.below(facts.users.len() as u64) as usize],
                _ => rng.next_u64(),
            };
            let top_k = [0u32, 10, 100, 1000][rng.below(4) as usize];
            let ids = facts.draw(&mut rng, n);
            let req = RankRequest {
                user_id: user,
                candidate_ids: ids,
                top_k,
                ..Default::default()
            };
            let (a, b) = tokio::join!(c4.rank(req.clone()), c1.rank(req));
            let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
            assert!(a.missing_shards.is_empty() && b.missing_shards.is_empty());
            let want_len = (if top_k == 0 { 100 } else { top_k as usize }).min(n);
            assert!(
                b.candidates.len() <= want_len && !b.candidates.is_empty(),
                "n={n}: {} entries",
                b.candidates.len()
            );
            assert_eq!(key(&a), key(&b), "n={n} top_k={top_k} user={user}");
            assert_eq!(a.unknown_candidates, b.unknown_candidates);
            // Candidates come from every shard of the 4-shard cluster on large requests.
            if n >= 10_000 {
                let shards: std::collections::HashSet<u32> =
                    a.candidates.iter().map(|c| c.shard).collect();
                assert_eq!(shards.len(), 4);
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 51);
}
