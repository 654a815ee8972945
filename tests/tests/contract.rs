//! Every rule of the Rank contract, against a real 3-shard cluster on the tiny corpus.

use shardrank_core::rng::Rng;
use shardrank_proto::v1::{RankRequest, RankResponse, TimelineRequest};
use shardrank_tests::corpus_facts::{load_single, reference_answer, Facts};
use shardrank_tests::Cluster;
use std::collections::HashSet;
use tonic::Code;

const TINY: &[&str] = &["--corpus", "tiny"];

async fn rank(
    c: &Cluster,
    user_id: u64,
    ids: Vec<u64>,
    top_k: u32,
) -> Result<RankResponse, tonic::Status> {
    c.client()
        .await
        .rank(RankRequest {
            user_id,
            candidate_ids: ids,
            top_k,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn assert_sorted(r: &RankResponse) {
    for w in r.candidates.windows(2) {
        let ok = w[0].score > w[1].score || (w[0].score == w[1].score && w[0].id < w[1].id);
        assert!(
            ok,
            "not sorted by score desc, id asc: {:?} then {:?}",
            w[0], w[1]
        );
    }
}

#[tokio::test]
async fn answers_equal_the_single_machine_reference() {
    let c = Cluster::start(3, TINY).await;
    let facts = Facts::of("tiny", 42);
    let (store, users) = load_single(&facts.spec);
    let mut rng = Rng::new(11);
    for (n, top_k) in [
        (1usize, 0u32),
        (50, 10),
        (2000, 100),
        (8000, 1000),
        (30_000, 0),
    ] {
        let user = facts.users[rng.below(facts.users.len() as u64) as usize];
        let ids = facts.draw(&mut rng, n);
        let got = rank(&c, user, ids.clone(), top_k).await.unwrap();
        let k = if top_k == 0 { 100 } else { top_k as usize };
        let want = reference_answer(&store, &users, user, &ids, 1000, k);
        let got3: Vec<(u64, f32, f32)> = got
            .candidates
            .iter()
            .map(|x| (x.id, x.score, x.light_score))
            .collect();
        assert_eq!(got3, want, "n={n} top_k={top_k} user={user}");
        assert!(got.missing_shards.is_empty());
        assert_sorted(&got);
        for x in &got.candidates {
            assert_eq!(x.author_id, facts.author_of[&x.id]);
            assert_eq!(x.shard, shardrank_core::routing::shard_of(x.id, 3));
        }
    }
}

#[tokio::test]
async fn top_k_limits_empty_duplicates_and_unknown_ids() {
    let c = Cluster::start(3, TINY).await;
    let facts = Facts::of("tiny", 42);
    let user = facts.users[0];

    let err = rank(&c, user, facts.tweets[..10].to_vec(), 1001)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("1000"), "{}", err.message());

    let r = rank(&c, user, vec![], 10).await.unwrap();
    assert!(r.candidates.is_empty() && r.missing_shards.is_empty() && r.unknown_candidates == 0);

    // top_k 0 means 100.
    let r = rank(&c, 12345, facts.tweets[..500].to_vec(), 0)
        .await
        .unwrap();
    assert_eq!(r.candidates.len(), 100);

    // Repeats are ranked once; unknown ids are counted once each and never returned.
    let mut ids: Vec<u64> = facts.tweets[..30].to_vec();
    ids.extend_from_slice(&facts.tweets[..30]);
    let unknown = [1u64, 2, 3, 999_999_999_999];
    ids.extend_from_slice(&unknown);
    ids.extend_from_slice(&unknown);
    let r = rank(&c, 12345, ids, 1000).await.unwrap();
    assert_eq!(
        r.candidates.len(),
        30,
        "exactly the known distinct candidates"
    );
    assert_eq!(r.unknown_candidates, 4);
    let got: HashSet<u64> = r.candidates.iter().map(|x| x.id).collect();
    assert_eq!(got, facts.tweets[..30].iter().copied().collect());
    assert_sorted(&r);

    // Fewer known candidates than top_k: all of them.
    let r = rank(&c, 12345, vec![facts.tweets[5], 77], 10)
        .await
        .unwrap();
    assert_eq!(r.candidates.len(), 1);
    assert_eq!(r.unknown_candidates, 1);
    assert!(r.latency_ms > 0.0);
}

#[tokio::test]
async fn blocked_and_muted_authors_are_never_returned() {
    let c = Cluster::start(3, TINY).await;
    let facts = Facts::of("tiny", 42);
    // Users who block or mute authors that posted, with those authors' tweets as
    // candidates among others.
    let mut checked = 0;
    for (&user, authors) in facts.excluded.iter().take(20) {
        let theirs: Vec<u64> = facts
            .tweets
            .iter()
            .copied()
            .filter(|t| authors.contains(&facts.author_of[t]))
            .collect();
        if theirs.is_empty() {
            continue;
        }
        let mut ids = theirs.clone();
        ids.extend_from_slice(&facts.tweets[..200]);
        let r = rank(&c, user, ids.clone(), 1000).await.unwrap();
        assert!(
            r.candidates.iter().all(|x| !authors.contains(&x.author_id)),
            "user {user} saw an excluded author"
        );
        let eligible: HashSet<u64> = ids
            .iter()
            .copied()
            .filter(|t| !authors.contains(&facts.author_of[t]))
            .collect();
        assert_eq!(r.candidates.len(), eligible.len().min(1000));
        // The same candidates for a cold-start user do include them.
        let cold = rank(&c, 1, ids, 1000).await.unwrap();
        assert!(cold
            .candidates
            .iter()
            .any(|x| authors.contains(&x.author_id)));
        checked += 1;
    }
    assert!(
        checked >= 5,
        "the corpus should have users who exclude active authors"
    );
}

#[tokio::test]
async fn unknown_user_is_a_cold_start_for_rank_and_not_found_for_timeline() {
    let c = Cluster::start(2, TINY).await;
    let facts = Facts::of("tiny", 42);
    let r = rank(&c, 424242, facts.tweets[..300].to_vec(), 50)
        .await
        .unwrap();
    assert_eq!(r.candidates.len(), 50);
    let t = c
        .client()
        .await
        .timeline(TimelineRequest {
            user_id: facts.users[0],
            limit: 20,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.entries.len(), 20);
    let err = c
        .client()
        .await
        .timeline(TimelineRequest {
            user_id: 424242,
            limit: 20,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn rank_runs_as_a_pipeline_of_named_components() {
    let c = Cluster::start(2, TINY).await;
    let facts = Facts::of("tiny", 42);
    let r = c
        .client()
        .await
        .rank(RankRequest {
            user_id: facts.users[2],
            candidate_ids: facts.tweets[..2000].to_vec(),
            top_k: 10,
            include_stats: true,
        })
        .await
        .unwrap()
        .into_inner();
    let comps = &r.stats.as_ref().unwrap().components;
    let names: Vec<&str> = comps.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["request_candidates", "exact_ranker"]);
    assert_eq!(
        comps[0].candidates_out, 2000,
        "the request's ids, by reference"
    );
    assert_eq!(comps[1].candidates_out, 10);
    assert!(comps
        .iter()
        .all(|c| c.outcome == "ok" && !c.kind.is_empty()));
    let (_, m) = shardrank_tests::http_get(&format!("{}/metrics", c.admin)).await;
    assert_eq!(
        shardrank_tests::metric(
            &m,
            "shardrank_coordinator_component_outcomes_total{pipeline=\"rank\",component=\"exact_ranker\",outcome=\"ok\"}"
        ),
        Some(1.0)
    );
}
