//! The admin port of real processes: /healthz, and /metrics counters that move by the
//! right amounts after real requests.

use shardrank_proto::v1::{RankRequest, TimelineRequest};
use shardrank_tests::corpus_facts::Facts;
use shardrank_tests::{http_get, metric, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_the_right_amounts() {
    let mut c = Cluster::start(3, &["--corpus", "tiny"]).await;
    let facts = Facts::of("tiny", 42);
    for url in std::iter::once(&c.admin).chain(&c.shard_admin) {
        assert_eq!(
            http_get(&format!("{url}/healthz")).await,
            (200, "ok\n".to_string())
        );
        assert_eq!(http_get(&format!("{url}/nope")).await.0, 404);
    }

    let mut client = c.client().await;
    for i in 0..5 {
        let ids = facts.tweets[i * 300..(i + 1) * 300].to_vec();
        client
            .rank(RankRequest {
                user_id: facts.users[i],
                candidate_ids: ids,
                top_k: 10,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert!(client
        .rank(RankRequest {
            user_id: 1,
            candidate_ids: vec![1],
            top_k: 5000,
            ..Default::default()
        })
        .await
        .is_err());
    assert!(client
        .timeline(TimelineRequest {
            user_id: 1,
            limit: 5,
            ..Default::default()
        })
        .await
        .is_err());

    let (status, m) = http_get(&format!("{}/metrics", c.admin)).await;
    assert_eq!(status, 200);
    let get = |k: &str| metric(&m, k).unwrap_or_else(|| panic!("no {k} in\n{m}"));
    assert_eq!(
        get(r#"shardrank_coordinator_requests_total{rpc="Rank",code="OK"}"#),
        5.0
    );
    assert_eq!(
        get(r#"shardrank_coordinator_requests_total{rpc="Rank",code="INVALID_ARGUMENT"}"#),
        1.0
    );
    assert_eq!(
        get(r#"shardrank_coordinator_requests_total{rpc="Timeline",code="NOT_FOUND"}"#),
        1.0
    );
    assert_eq!(
        get(r#"shardrank_coordinator_request_seconds_count{rpc="Rank"}"#),
        6.0
    );
    assert_eq!(get("shardrank_coordinator_candidates_count"), 6.0);
    assert_eq!(get("shardrank_coordinator_partial_answers_total"), 0.0);
    // Each answered request called all 3 shards once, plus any second-round calls.
    let ok_calls: Vec<f64> = (0..3)
        .map(|s| {
            get(&format!(
                r#"shardrank_coordinator_shard_calls_total{{shard="{s}",outcome="ok"}}"#
            ))
        })
        .collect();
    let second = get("shardrank_coordinator_second_rounds_total");
    assert_eq!(ok_calls.iter().sum::<f64>(), 15.0 + second);

    // Every shard counted the calls the coordinator made to it.
    for (s, url) in c.shard_admin.iter().enumerate() {
        let (_, sm) = http_get(&format!("{url}/metrics")).await;
        assert_eq!(
            metric(&sm, r#"shardrank_shard_requests_total{code="OK"}"#),
            Some(ok_calls[s]),
            "shard {s}:\n{sm}"
        );
        assert!(metric(&sm, "shardrank_shard_store_posts").unwrap() > 3000.0);
        // About a third of 5 x 300 candidates each.
        assert!(
            metric(
                &sm,
                r#"shardrank_shard_candidates_scored_total{stage="light"}"#
            )
            .unwrap()
                > 300.0
        );
        assert!(
            metric(&sm, r#"shardrank_shard_stage_seconds_count{stage="heavy"}"#).unwrap() >= 5.0
        );
    }

    // A dead shard: an error call, a missing shard, a partial answer.
    c.kill_shard(2);
    let r = client
        .rank(RankRequest {
            user_id: 1,
            candidate_ids: facts.tweets[..600].to_vec(),
            top_k: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.missing_shards, vec![2]);
    let (_, m) = http_get(&format!("{}/metrics", c.admin)).await;
    assert_eq!(
        metric(
            &m,
            r#"shardrank_coordinator_shard_calls_total{shard="2",outcome="error"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"shardrank_coordinator_missing_shards_total{shard="2"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "shardrank_coordinator_partial_answers_total"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_can_ask_for_its_own_stats() {
    let mut c = Cluster::start(3, &["--corpus", "tiny"]).await;
    let facts = Facts::of("tiny", 42);
    let mut client = c.client().await;
    let ask = |include_stats| RankRequest {
        user_id: 1,
        candidate_ids: facts.tweets[..900].to_vec(),
        top_k: 10,
        include_stats,
    };
    assert!(
        client
            .rank(ask(false))
            .await
            .unwrap()
            .into_inner()
            .stats
            .is_none(),
        "no stats unless asked"
    );

    let r = client.rank(ask(true)).await.unwrap().into_inner();
    let st = r.stats.expect("stats when asked");
    assert_eq!(st.coverage, 1.0);
    let first: Vec<_> = st.shard_calls.iter().filter(|s| !s.second_round).collect();
    let mut shards: Vec<u32> = first.iter().map(|s| s.shard).collect();
    shards.sort_unstable();
    assert_eq!(shards, vec![0, 1, 2]);
    for s in &st.shard_calls {
        assert!(s.error.is_empty());
        assert!(s.server_ms > 0.0 && s.server_ms <= s.latency_ms, "{s:?}");
        assert!(s.light_ms + s.heavy_ms <= s.server_ms + 0.01, "{s:?}");
    }
    // Every candidate is known: the shards' eligible counts add up to the request.
    assert_eq!(first.iter().map(|s| s.candidates).sum::<u32>(), 900);
    assert!(st.route_ms > 0.0 && st.merge_ms >= 0.0);
    assert!(st.route_ms + st.merge_ms < r.latency_ms);

    c.kill_shard(0);
    let st = client
        .rank(ask(true))
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!((st.coverage - 2.0 / 3.0).abs() < 1e-9);
    let dead = st.shard_calls.iter().find(|s| s.shard == 0).unwrap();
    assert!(!dead.error.is_empty());
}

/// The Grafana dashboard only names metrics the binaries export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_names_only_exported_metrics() {
    let c = Cluster::start(2, &["--corpus", "tiny"]).await;
    let facts = Facts::of("tiny", 42);
    c.client()
        .await
        .rank(RankRequest {
            user_id: 1,
            candidate_ids: facts.tweets[..100].to_vec(),
            top_k: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, mut exported) = http_get(&format!("{}/metrics", c.admin)).await;
    exported.push_str(&http_get(&format!("{}/metrics", c.shard_admin[0])).await.1);
    let mut names = 0;
    for word in shardrank_tests::dashboard_metrics() {
        // Kafka's consumer lag exists only with Kafka: tests/kafka.rs checks those.
        if word.contains("consumer_lag") {
            continue;
        }
        assert!(
            shardrank_tests::exports(&exported, &word),
            "dashboard names {word}, which no binary exports"
        );
        names += 1;
    }
    assert!(names >= 10);
}
