//! A shard that dies gives a partial answer, flagged; no shard at all is UNAVAILABLE.

use shardrank_proto::v1::RankRequest;
use shardrank_tests::corpus_facts::Facts;
use shardrank_tests::Cluster;
use tonic::Code;

#[tokio::test]
async fn a_killed_shard_gives_a_flagged_partial_answer() {
    let mut c = Cluster::start(4, &["--corpus", "tiny"]).await;
    let facts = Facts::of("tiny", 42);
    let ids: Vec<u64> = facts.tweets[..4000].to_vec();
    let live_only: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|&id| shardrank_core::routing::shard_of(id, 4) != 2)
        .collect();
    let rq = |ids: Vec<u64>| RankRequest {
        user_id: facts.users[3],
        candidate_ids: ids,
        top_k: 100,
        ..Default::default()
    };
    let full = c
        .client()
        .await
        .rank(rq(ids.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(full.missing_shards.is_empty());
    assert!(full.candidates.iter().any(|x| x.shard == 2));
    // The answer over the live shards' candidates, while all shards are up.
    let want = c
        .client()
        .await
        .rank(rq(live_only.clone()))
        .await
        .unwrap()
        .into_inner();

    c.kill_shard(2);
    let mut client = c.client().await;
    let part = client.rank(rq(ids.clone())).await.unwrap().into_inner();
    assert_eq!(part.missing_shards, vec![2]);
    assert_eq!(part.candidates.len(), 100);
    // A partial answer is the exact answer over what the live shards hold.
    assert_eq!(part.candidates, want.candidates);

    // Ids routed only to live shards: a complete answer, no missing shard listed.
    let r = client.rank(rq(live_only)).await.unwrap().into_inner();
    assert!(r.missing_shards.is_empty());
    assert_eq!(r.candidates, want.candidates);

    // Ids routed only to the dead shard: every called shard failed.
    let dead_only: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|&id| shardrank_core::routing::shard_of(id, 4) == 2)
        .collect();
    let err = client
        .rank(RankRequest {
            user_id: 1,
            candidate_ids: dead_only,
            top_k: 10,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("shard 2"), "{}", err.message());

    for i in [0, 1, 3] {
        c.kill_shard(i);
    }
    let err = client
        .rank(RankRequest {
            user_id: 1,
            candidate_ids: ids,
            top_k: 10,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_shard_is_reported_missing_within_the_deadline() {
    let c = Cluster::start(3, &["--corpus", "tiny"]).await;
    let facts = Facts::of("tiny", 42);
    let ids: Vec<u64> = facts.tweets[..3000].to_vec();
    let stopped = c.shards[1].child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &stopped])
        .status()
        .unwrap()
        .success());
    let mut client = c.client().await;
    let mut req = tonic::Request::new(RankRequest {
        user_id: facts.users[0],
        candidate_ids: ids,
        top_k: 20,
        ..Default::default()
    });
    req.set_timeout(std::time::Duration::from_millis(600));
    let t0 = std::time::Instant::now();
    let res = client.rank(req).await;
    let took = t0.elapsed();
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &stopped])
        .status();
    let r = res
        .expect("a stalled shard must not fail the request")
        .into_inner();
    assert_eq!(r.missing_shards, vec![1]);
    assert_eq!(r.candidates.len(), 20);
    assert!(
        took < std::time::Duration::from_millis(600),
        "answered after {took:?}"
    );
}
