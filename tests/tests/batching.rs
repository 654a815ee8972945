//! Coalesced shard calls: a shard's RankBatch ranks each item exactly as Rank does, with
//! each item's own outcome; a coordinator that coalesces its concurrent requests' calls
//! answers each request exactly as it answers it alone, and as a coordinator that does
//! not coalesce.

use shardrank_proto::v1::coordinator_client::CoordinatorClient;
use shardrank_proto::v1::shard_client::ShardClient;
use shardrank_proto::v1::{
    RankRequest, ShardRankBatchItem, ShardRankBatchRequest, ShardRankRequest, ShardRankResponse,
    UserContext,
};
use shardrank_tests::corpus_facts::Facts;
use shardrank_tests::{http_get, metric, Cluster};
use tonic::transport::Channel;
use tonic::Code;

/// What a shard answered, without its own timings.
fn answer(r: &ShardRankResponse) -> ShardRankResponse {
    ShardRankResponse {
        light_ms: 0.0,
        heavy_ms: 0.0,
        total_ms: 0.0,
        ..r.clone()
    }
}

fn shard_request(facts: &Facts, k: usize, heavy: u32) -> ShardRankRequest {
    ShardRankRequest {
        shard_index: 0,
        num_shards: 2,
        user: Some(UserContext {
            user_id: facts.users[k],
            known: true,
            lang: "en".into(),
            ..Default::default()
        }),
        candidate_ids: facts
            .tweets
            .iter()
            .skip(k * 37)
            .step_by(3)
            .take(900)
            .copied()
            .collect(),
        now_ms: 1_700_000_000_000,
        heavy_skip: 0,
        heavy_count: heavy,
        light_only: k % 3 == 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ranks_each_item_as_rank_does_and_each_has_its_own_outcome() {
    let c = Cluster::start(2, &["--corpus", "tiny"]).await;
    let facts = Facts::of("tiny", 42);
    let mut shard = ShardClient::new(shardrank_tests::channel(&c.shard_urls[0]).await);
    let good: Vec<ShardRankRequest> = (0..4)
        .map(|k| shard_request(&facts, k, 50 + k as u32 * 20))
        .collect();
    let mut alone = Vec::new();
    for r in &good {
        alone.push(answer(&shard.rank(r.clone()).await.unwrap().into_inner()));
    }
    assert!(
        alone.iter().all(|a| !a.ids.is_empty()),
        "the requests rank something"
    );

    let wrong_layout = ShardRankRequest {
        num_shards: 3,
        ..good[0].clone()
    };
    let item = |request: Option<ShardRankRequest>, traceparent: &str| ShardRankBatchItem {
        request,
        timeout_us: 5_000_000,
        traceparent: traceparent.into(),
    };
    let batch = ShardRankBatchRequest {
        items: vec![
            item(
                Some(good[0].clone()),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            item(Some(wrong_layout), ""),
            item(Some(good[1].clone()), "not a trace context"),
            item(None, ""),
            item(Some(good[2].clone()), ""),
            item(Some(good[3].clone()), ""),
        ],
    };
    let results = shard.rank_batch(batch).await.unwrap().into_inner().results;
    assert_eq!(results.len(), 6, "one result per item, in order");
    for (i, k) in [(0, 0), (2, 1), (4, 2), (5, 3)] {
        assert_eq!(results[i].code, 0, "{:?}", results[i].message);
        assert_eq!(
            answer(results[i].response.as_ref().unwrap()),
            alone[k],
            "item {i}"
        );
    }
    assert_eq!(results[1].code, Code::FailedPrecondition as i32);
    assert!(results[1].message.contains("3"), "{}", results[1].message);
    assert!(results[1].response.is_none());
    assert_eq!(results[3].code, Code::InvalidArgument as i32);
    assert!(
        results[3].message.contains("item 3 has no request"),
        "{}",
        results[3].message
    );

    // An empty batch is an empty answer; an oversized one is refused whole, clearly.
    let empty = shard
        .rank_batch(ShardRankBatchRequest::default())
        .await
        .unwrap();
    assert!(empty.into_inner().results.is_empty());
    let huge = ShardRankBatchRequest {
        items: (0..1025).map(|_| item(None, "")).collect(),
    };
    let err = shard.rank_batch(huge).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("1025 items"), "{}", err.message());

    // Each item counts as a request of its own, under its code.
    let (_, m) = http_get(&format!("{}/metrics", c.shard_admin[0])).await;
    assert_eq!(
        metric(&m, "shardrank_shard_requests_total{code=\"OK\"}"),
        Some(8.0),
        "4 alone, 4 in the batch"
    );
    assert_eq!(
        metric(
            &m,
            "shardrank_shard_requests_total{code=\"INVALID_ARGUMENT\"}"
        ),
        Some(1.0)
    );
}

fn rank_request(facts: &Facts, k: usize) -> RankRequest {
    RankRequest {
        user_id: facts.users[k % facts.users.len()],
        candidate_ids: facts
            .tweets
            .iter()
            .skip(k * 11)
            .step_by(2)
            .take(1500)
            .copied()
            .collect(),
        top_k: 40,
        include_stats: false,
    }
}

type Answers = Vec<Vec<(u64, f32)>>;

/// The answers to `n` requests sent one after another, then all at once.
async fn answers(c: &Cluster, facts: &Facts, n: usize) -> (Answers, Answers) {
    answers_of(c.client().await, facts, n).await
}

async fn answers_of(
    mut client: CoordinatorClient<Channel>,
    facts: &Facts,
    n: usize,
) -> (Answers, Answers) {
    let pairs = |r: shardrank_proto::v1::RankResponse| {
        assert!(r.missing_shards.is_empty() && r.truncated_shards.is_empty());
        r.candidates
            .iter()
            .map(|s| (s.id, s.score))
            .collect::<Vec<_>>()
    };
    let mut one_by_one = Vec::new();
    for k in 0..n {
        one_by_one.push(pairs(
            client
                .rank(rank_request(facts, k))
                .await
                .unwrap()
                .into_inner(),
        ));
    }
    let mut calls = tokio::task::JoinSet::new();
    for k in 0..n {
        let mut client = client.clone();
        let req = rank_request(facts, k);
        calls.spawn(async move { (k, client.rank(req).await) });
    }
    let mut together = vec![Vec::new(); n];
    while let Some(r) = calls.join_next().await {
        let (k, res) = r.unwrap();
        together[k] = pairs(res.unwrap().into_inner());
    }
    (one_by_one, together)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_requests_are_answered_as_they_are_alone_and_without_coalescing() {
    let facts = Facts::of("tiny", 42);
    let n = 32;
    let c = Cluster::start(4, &["--corpus", "tiny"]).await;
    let (alone, together) = answers(&c, &facts, n).await;
    assert!(alone.iter().all(|a| a.len() == 40));
    assert_eq!(together, alone);
    // 32 requests at once to four shards, one batch call under way per shard: some
    // calls waited and went together.
    let (_, m) = http_get(&format!("{}/metrics", c.admin)).await;
    let items = metric(&m, "shardrank_coordinator_shard_batch_items_sum").unwrap();
    let batches = metric(&m, "shardrank_coordinator_shard_batch_items_count").unwrap();
    // (A second round would add calls; none is needed at this depth.)
    assert!(
        items >= (2 * n * 4) as f64,
        "every shard call goes through the batcher: {items}"
    );
    assert!(batches < items, "{batches} batches for {items} calls");
    drop(c);

    let off =
        Cluster::start_with(4, &["--corpus", "tiny"], &["--shard-batch-in-flight", "0"]).await;
    let (alone_off, together_off) = answers(&off, &facts, n).await;
    assert_eq!(alone_off, alone);
    assert_eq!(together_off, alone);
    let (_, m) = http_get(&format!("{}/metrics", off.admin)).await;
    assert_eq!(
        metric(&m, "shardrank_coordinator_shard_batch_items_count"),
        Some(0.0)
    );
}

/// A real shard, in this process (the tiny corpus' only partition), whose server does not
/// know RankBatch, as a binary from before it: RankBatch calls are routed to a method it
/// does not have, and answered UNIMPLEMENTED by tonic.
async fn shard_without_rank_batch() -> String {
    use shardrank_core::corpus::CorpusSpec;
    use shardrank_core::model::Models;
    use shardrank_core::source::Source;
    use shardrank_proto::v1::shard_server::ShardServer;
    use shardrank_shard::service::{ShardService, ShardState};
    use std::sync::{Arc, OnceLock, RwLock};
    use tonic::codegen::http;

    let models = Models::builtin();
    let source = Source::Corpus(CorpusSpec::named("tiny", 42).unwrap());
    let (store, _) = shardrank_shard::ingest::load(&source, 0, 1, models.light.clone()).unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let state = ShardState {
        metrics: shardrank_shard::metrics::ShardMetrics::register(&mut registry),
        index: 0,
        num_shards: 1,
        models,
        source: "tiny".into(),
        store: OnceLock::new(),
        live_position: Default::default(),
    };
    let _ = state.store.set(RwLock::new(store));
    let old = |mut req: http::Request<tonic::body::Body>| {
        if req.uri().path() == "/shardrank.v1.Shard/RankBatch" {
            *req.uri_mut() = http::Uri::from_static("/shardrank.v1.Shard/NotYetInvented");
        }
        req
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::util::MapRequestLayer::new(old))
            .add_service(ShardServer::new(ShardService {
                state: Arc::new(state),
            }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_rank_batch_is_called_one_by_one() {
    let facts = Facts::of("tiny", 42);
    let shard = shard_without_rank_batch().await;
    let mut direct = ShardClient::new(shardrank_tests::channel(&shard).await);
    let refused = direct
        .rank_batch(ShardRankBatchRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");

    let dir = shardrank_tests::scratch_dir("old-shard");
    let (port, admin) = (shardrank_tests::free_port(), shardrank_tests::free_port());
    let args: Vec<String> = [
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--admin-listen".into(),
        format!("127.0.0.1:{admin}"),
        "--shards".into(),
        shard.clone(),
        "--corpus".into(),
        "tiny".into(),
    ]
    .to_vec();
    let log = dir.join("coordinator.log");
    let mut coordinator = shardrank_tests::Proc::spawn("shardrank-coordinator", &args, log.clone());
    let url = format!("http://127.0.0.1:{port}");
    shardrank_tests::wait_serving(&url, "", &mut coordinator, shardrank_tests::START_TIMEOUT).await;
    let client = CoordinatorClient::new(shardrank_tests::channel(&url).await);
    let (alone, together) = answers_of(client, &facts, 16).await;

    // The same answers as a cluster whose shard serves RankBatch.
    let c = Cluster::start(1, &["--corpus", "tiny"]).await;
    let (want, _) = answers(&c, &facts, 16).await;
    assert_eq!(alone, want);
    assert_eq!(together, want);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("does not serve RankBatch").count(),
        1,
        "said once:\n{text}"
    );
}
