//! Bad input and overload at the door: requests too large or too many candidates are
//! refused clearly and lose nothing; a cancelled request cancels its fan-out; a shard
//! at its in-flight limit sheds at once; a minimum coverage turns a thin answer into
//! UNAVAILABLE.

use shardrank_proto::v1::shard_client::ShardClient;
use shardrank_proto::v1::{RankRequest, ShardRankRequest};
use shardrank_tests::corpus_facts::Facts;
use shardrank_tests::{http_get, metric, Cluster};
use std::time::{Duration, Instant};
use tonic::Code;

fn request(facts: &Facts, ids: Vec<u64>) -> RankRequest {
    RankRequest {
        user_id: facts.users[1],
        candidate_ids: ids,
        top_k: 10,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_clearly_and_nothing_is_lost() {
    let c = Cluster::start_with(
        2,
        &["--corpus", "tiny"],
        &["--max-candidates", "5000", "--max-message-bytes", "200000"],
    )
    .await;
    let facts = Facts::of("tiny", 42);
    let mut client = c.client().await;
    let ok = client
        .rank(request(&facts, facts.tweets[..5000].to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.candidates.len(), 10);

    let err = client
        .rank(request(&facts, facts.tweets[..5001].to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit of 5000"), "{}", err.message());

    // Over the message size: refused before decoding, as RESOURCE_EXHAUSTED.
    let big: Vec<u64> = facts.tweets.iter().copied().cycle().take(30_000).collect();
    let err = client.rank(request(&facts, big)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("too large") && err.message().contains("200000"),
        "{}",
        err.message()
    );

    // The same connection serves the next request as before.
    let again = client
        .rank(request(&facts, facts.tweets[..5000].to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.candidates, ok.candidates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_candidate_limit_is_a_million() {
    let c = Cluster::start(1, &["--corpus", "tiny"]).await;
    let facts = Facts::of("tiny", 42);
    let ids: Vec<u64> = facts
        .tweets
        .iter()
        .copied()
        .cycle()
        .take(1_000_001)
        .collect();
    let err = c
        .client()
        .await
        .rank(request(&facts, ids))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("limit of 1000000"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_cancels_its_fan_out() {
    let c = Cluster::start(2, &["--corpus", "tiny"]).await;
    let facts = Facts::of("tiny", 42);
    // A stalled shard keeps the request's call to it waiting.
    c.signal_shard(1, "STOP");
    let mut client = c.client().await;
    let mut req = tonic::Request::new(request(&facts, facts.tweets[..2000].to_vec()));
    req.set_timeout(Duration::from_secs(30));
    let t0 = Instant::now();
    let gave_up = tokio::time::timeout(Duration::from_millis(500), client.rank(req)).await;
    if let Ok(answer) = &gave_up {
        // It should still be waiting on the stalled shard; say what came back instead.
        let summary = answer.as_ref().map(|r| {
            let r = r.get_ref();
            (r.candidates.len(), r.missing_shards.clone())
        });
        panic!(
            "the call returned within 500 ms instead of waiting on the stalled shard: {summary:?}\ncoordinator log:\n{}",
            c.coordinator.log_tail()
        );
    }
    // The client dropped its call: the coordinator drops the request and its calls.
    let m = loop {
        let (_, m) = http_get(&format!("{}/metrics", c.admin)).await;
        if metric(&m, "shardrank_coordinator_shard_calls_in_flight") == Some(0.0) {
            break m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "shard calls still in flight:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        metric(
            &m,
            "shardrank_coordinator_requests_cancelled_total{rpc=\"Rank\"}"
        ),
        Some(1.0)
    );
    c.signal_shard(1, "CONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_minimum_coverage_a_request_fails_unavailable() {
    let mut c = Cluster::start_with(4, &["--corpus", "tiny"], &["--min-coverage", "0.9"]).await;
    let facts = Facts::of("tiny", 42);
    let mut client = c.client().await;
    let full = client
        .rank(request(&facts, facts.tweets[..3000].to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert!(full.missing_shards.is_empty());
    c.kill_shard(3);
    let err = client
        .rank(request(&facts, facts.tweets[..3000].to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("only 3 of 4 shards answered") && err.message().contains("0.9"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_at_its_in_flight_limit_sheds_at_once() {
    let c = Cluster::start(1, &["--corpus", "tiny", "--max-in-flight", "1"]).await;
    let facts = Facts::of("tiny", 42);
    let shard = shardrank_tests::channel(&c.shard_urls[0]).await;
    let ids: Vec<u64> = facts.tweets.iter().copied().cycle().take(200_000).collect();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let mut client = ShardClient::new(shard.clone()).max_encoding_message_size(64 << 20);
        let req = ShardRankRequest {
            shard_index: 0,
            num_shards: 1,
            candidate_ids: ids.clone(),
            heavy_count: 100,
            ..Default::default()
        };
        calls.spawn(async move {
            let t0 = Instant::now();
            (client.rank(req).await.map(|_| ()), t0.elapsed())
        });
    }
    let (mut ok, mut shed) = (0, 0);
    while let Some(r) = calls.join_next().await {
        match r.unwrap() {
            (Ok(()), _) => ok += 1,
            (Err(s), took) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("--max-in-flight"), "{}", s.message());
                assert!(took < Duration::from_secs(2), "refused at once, not queued");
                shed += 1;
            }
        }
    }
    assert!(ok >= 1 && shed >= 1, "ok {ok}, shed {shed}");
    let (_, m) = http_get(&format!("{}/metrics", c.shard_admin[0])).await;
    assert_eq!(
        metric(&m, "shardrank_shard_requests_shed_total"),
        Some(shed as f64)
    );
}
