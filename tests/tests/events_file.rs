//! One ingestion path: a corpus written by `shardrank gen` and loaded with --events
//! gives exactly the answers of the same corpus generated in-process.

use shardrank_core::rng::Rng;
use shardrank_proto::v1::RankRequest;
use shardrank_tests::corpus_facts::Facts;
use shardrank_tests::{run, scratch_dir, Cluster};
use std::time::Duration;

#[tokio::test]
async fn events_file_and_generator_agree() {
    let dir = scratch_dir("gen");
    let file = dir.join("tiny.jsonl");
    let (code, _, err) = run(
        "shardrank",
        &[
            "gen",
            "--corpus",
            "tiny",
            "--corpus-seed",
            "42",
            "--out",
            file.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{err}");
    let facts = Facts::of("tiny", 42);
    let lines = std::fs::read_to_string(&file).unwrap().lines().count();
    assert!(lines > facts.tweets.len());

    let file_args = ["--events", file.to_str().unwrap()];
    let (from_file, generated) = tokio::join!(
        Cluster::start(2, &file_args),
        Cluster::start(3, &["--corpus", "tiny"])
    );
    let (mut a, mut b) = (from_file.client().await, generated.client().await);
    let mut rng = Rng::new(9);
    for n in [10usize, 1000, 20_000] {
        let user = facts.users[rng.below(facts.users.len() as u64) as usize];
        let req = RankRequest {
            user_id: user,
            candidate_ids: facts.draw(&mut rng, n),
            top_k: 50,
            ..Default::default()
        };
        let x = a.rank(req.clone()).await.unwrap().into_inner();
        let y = b.rank(req).await.unwrap().into_inner();
        let key = |r: &shardrank_proto::v1::RankResponse| -> Vec<(u64, u32)> {
            r.candidates
                .iter()
                .map(|c| (c.id, c.score.to_bits()))
                .collect()
        };
        assert!(!x.candidates.is_empty());
        assert_eq!(key(&x), key(&y), "n={n}");
    }
}
