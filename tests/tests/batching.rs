//! Coalesced shard calls: a shard's RankBatch (and each batch on a RankStream) ranks
//! each item exactly as Rank does, with each item's own outcome; a coordinator that
//! coalesces its concurrent requests' calls answers each request exactly as it answers
//! it alone, as one that sends its batches as calls, and as one that does not coalesce;
//! a replica without RankStream or RankBatch (an older binary) still gets every call.

use shardrank_proto::v1::coordinator_client::CoordinatorClient;
use shardrank_proto::v1::shard_client::ShardClient;
use shardrank_proto::v1::{
    RankRequest, ShardRankBatchItem, ShardRankBatchRequest, ShardRankRequest, ShardRankResponse,
    UserContext,
};
use shardrank_tests::corpus_facts::Facts;
use shardrank_tests::{http_get, metric, Cluster};
use std::sync::Arc;
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

/// `n` requests to shard 0 of `c` (request k heavy-scores `heavy(k)`), each answered
/// alone by Rank: a client of the shard, the requests and their answers.
async fn ranked_alone(
    c: &Cluster,
    facts: &Facts,
    n: usize,
    heavy: impl Fn(u32) -> u32,
) -> (
    ShardClient<Channel>,
    Vec<ShardRankRequest>,
    Vec<ShardRankResponse>,
) {
    let mut shard = ShardClient::new(shardrank_tests::channel(&c.shard_urls[0]).await);
    let reqs: Vec<ShardRankRequest> = (0..n)
        .map(|k| shard_request(facts, k, heavy(k as u32)))
        .collect();
    let mut alone = Vec::new();
    for r in &reqs {
        alone.push(answer(&shard.rank(r.clone()).await.unwrap().into_inner()));
    }
    (shard, reqs, alone)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ranks_each_item_as_rank_does_and_each_has_its_own_outcome() {
    let c = Cluster::start(2, &["--corpus", "tiny"]).await;
    let facts = Facts::of("tiny", 42);
    let (mut shard, good, alone) = ranked_alone(&c, &facts, 4, |k| 50 + k * 20).await;
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
        sequence: 0,
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
        sequence: 0,
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
    // The batches went as messages on one stream per shard, which stays open.
    let mut streamed = 0.0;
    for admin in &c.shard_admin {
        let (_, m) = http_get(&format!("{admin}/metrics")).await;
        assert_eq!(metric(&m, "shardrank_shard_rank_streams"), Some(1.0));
        streamed += metric(&m, "shardrank_shard_rank_stream_batches_total").unwrap();
    }
    assert_eq!(streamed, batches, "every batch on a stream");
    drop(c);

    // The same batches as RankBatch calls.
    let calls = Cluster::start_with(4, &["--corpus", "tiny"], &["--shard-stream", "false"]).await;
    let (alone_calls, together_calls) = answers(&calls, &facts, n).await;
    assert_eq!(alone_calls, alone);
    assert_eq!(together_calls, alone);
    let (_, m) = http_get(&format!("{}/metrics", calls.admin)).await;
    assert!(metric(&m, "shardrank_coordinator_shard_batch_items_count").unwrap() > 0.0);
    let (_, m) = http_get(&format!("{}/metrics", calls.shard_admin[0])).await;
    assert_eq!(
        metric(&m, "shardrank_shard_rank_stream_batches_total"),
        Some(0.0)
    );
    drop(calls);

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

/// A real shard of the tiny corpus (its only partition), in this process.
fn tiny_shard() -> shardrank_shard::service::ShardService {
    use shardrank_core::corpus::CorpusSpec;
    use shardrank_core::model::Models;
    use shardrank_core::source::Source;
    use shardrank_shard::service::{ShardService, ShardState};
    use std::sync::{Arc, OnceLock, RwLock};

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
    ShardService::new(Arc::new(state))
}

/// Serves `shard` on loopback as a binary from before the RPCs named in `missing` (e.g.
/// "RankBatch"): calls to them are routed to a method it does not have, and answered
/// UNIMPLEMENTED by tonic. Returns its URL.
async fn serve_without(
    shard: shardrank_shard::service::ShardService,
    missing: &'static [&'static str],
) -> String {
    use shardrank_proto::v1::shard_server::ShardServer;
    use tonic::codegen::http;

    let old = move |mut req: http::Request<tonic::body::Body>| {
        let method = req.uri().path().trim_start_matches("/shardrank.v1.Shard/");
        if missing.contains(&method) {
            *req.uri_mut() = http::Uri::from_static("/shardrank.v1.Shard/NotYetInvented");
        }
        req
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::util::MapRequestLayer::new(old))
            .add_service(ShardServer::new(shard))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    url
}

/// A coordinator over the one shard at `shard` (tiny corpus), logging to `log`.
async fn coordinator_over(shard: &str, log: &std::path::Path) -> (shardrank_tests::Proc, String) {
    let (port, admin) = (shardrank_tests::free_port(), shardrank_tests::free_port());
    let args: Vec<String> = [
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--admin-listen".into(),
        format!("127.0.0.1:{admin}"),
        "--shards".into(),
        shard.to_string(),
        "--corpus".into(),
        "tiny".into(),
    ]
    .to_vec();
    let mut coordinator =
        shardrank_tests::Proc::spawn("shardrank-coordinator", &args, log.to_path_buf());
    let url = format!("http://127.0.0.1:{port}");
    shardrank_tests::wait_serving(&url, "", &mut coordinator, shardrank_tests::START_TIMEOUT).await;
    (coordinator, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_rank_batch_is_called_one_by_one() {
    let facts = Facts::of("tiny", 42);
    // A binary from before both: no RankStream, no RankBatch.
    let shard = serve_without(tiny_shard(), &["RankStream", "RankBatch"]).await;
    let mut direct = ShardClient::new(shardrank_tests::channel(&shard).await);
    let refused = direct
        .rank_batch(ShardRankBatchRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");

    let dir = shardrank_tests::scratch_dir("old-shard");
    let log = dir.join("coordinator.log");
    let (_coordinator, url) = coordinator_over(&shard, &log).await;
    let client = CoordinatorClient::new(shardrank_tests::channel(&url).await);
    let (alone, together) = answers_of(client, &facts, 16).await;

    // The same answers as a cluster whose shard serves RankBatch.
    let c = Cluster::start(1, &["--corpus", "tiny"]).await;
    let (want, _) = answers(&c, &facts, 16).await;
    assert_eq!(alone, want);
    assert_eq!(together, want);
    let text = std::fs::read_to_string(&log).unwrap();
    for said in ["does not serve RankStream", "does not serve RankBatch"] {
        assert_eq!(text.matches(said).count(), 1, "{said}: once\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_rank_stream_gets_rank_batch_calls() {
    let facts = Facts::of("tiny", 42);
    let shard = tiny_shard();
    let state = shard.state.clone();
    let url = serve_without(shard, &["RankStream"]).await;

    let dir = shardrank_tests::scratch_dir("no-stream-shard");
    let log = dir.join("coordinator.log");
    let (_coordinator, coordinator) = coordinator_over(&url, &log).await;
    let client = CoordinatorClient::new(shardrank_tests::channel(&coordinator).await);
    let (alone, together) = answers_of(client, &facts, 16).await;

    let c = Cluster::start(1, &["--corpus", "tiny"]).await;
    let (want, _) = answers(&c, &facts, 16).await;
    assert_eq!(alone, want);
    assert_eq!(together, want);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("does not serve RankStream").count(),
        1,
        "said once:\n{text}"
    );
    assert!(!text.contains("does not serve RankBatch"), "{text}");
    // Every request was ranked here, and none of it on a stream.
    let m = &state.metrics;
    assert_eq!(m.rank_stream_batches.get(), 0);
    let ok = m
        .requests
        .get_or_create(&shardrank_shard::metrics::Code { code: "OK" })
        .get();
    assert_eq!(ok, 32, "16 requests one by one, then 16 at once");
}

/// Batches sent on one RankStream, collected by sequence until the shard ends the answers.
async fn stream_answers(
    shard: &str,
    batches: Vec<ShardRankBatchRequest>,
) -> std::collections::HashMap<u64, Vec<shardrank_proto::v1::ShardRankBatchResult>> {
    let mut client = ShardClient::new(shardrank_tests::channel(shard).await);
    let mut answers = client
        .rank_stream(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let mut got = std::collections::HashMap::new();
    // The client's side closes after the last batch: every batch is still answered,
    // then the answers end cleanly.
    while let Some(a) = answers.message().await.unwrap() {
        assert!(
            got.insert(a.sequence, a.results).is_none(),
            "one answer per batch"
        );
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rank_stream_answers_each_batch_by_its_sequence_and_goes_on_after_a_refused_one() {
    let c = Cluster::start(2, &["--corpus", "tiny"]).await;
    let facts = Facts::of("tiny", 42);
    let (_, reqs, alone) = ranked_alone(&c, &facts, 3, |k| 40 + k * 30).await;
    let item = |r: &ShardRankRequest| ShardRankBatchItem {
        request: Some(r.clone()),
        timeout_us: 5_000_000,
        traceparent: String::new(),
    };
    let wrong_layout = ShardRankRequest {
        num_shards: 3,
        ..reqs[0].clone()
    };
    let batches = vec![
        ShardRankBatchRequest {
            items: vec![item(&reqs[0]), item(&wrong_layout), item(&reqs[1])],
            sequence: 7,
        },
        ShardRankBatchRequest {
            items: (0..1025).map(|_| item(&reqs[2])).collect(),
            sequence: 8,
        },
        ShardRankBatchRequest {
            items: vec![item(&reqs[2])],
            sequence: 9,
        },
    ];
    let got = stream_answers(&c.shard_urls[0], batches).await;
    assert_eq!(got.len(), 3, "{:?}", got.keys());
    let first = &got[&7];
    assert_eq!(first.len(), 3);
    assert_eq!(answer(first[0].response.as_ref().unwrap()), alone[0]);
    assert_eq!(first[1].code, Code::FailedPrecondition as i32);
    assert_eq!(answer(first[2].response.as_ref().unwrap()), alone[1]);
    // Too many items: each is refused, clearly, and the stream goes on.
    let refused = &got[&8];
    assert_eq!(refused.len(), 1025);
    assert!(refused
        .iter()
        .all(|r| r.code == Code::InvalidArgument as i32
            && r.message.contains("1025 items")
            && r.response.is_none()));
    assert_eq!(got[&9].len(), 1);
    assert_eq!(answer(got[&9][0].response.as_ref().unwrap()), alone[2]);

    let (_, m) = http_get(&format!("{}/metrics", c.shard_admin[0])).await;
    assert_eq!(
        metric(&m, "shardrank_shard_rank_stream_batches_total"),
        Some(3.0)
    );
    // Items count as requests under their codes; a batch refused whole is the sender's
    // error, as a RankBatch call of 1025 items is, and is not counted.
    let count = |code: &str| {
        metric(
            &m,
            &format!("shardrank_shard_requests_total{{code=\"{code}\"}}"),
        )
    };
    assert_eq!(count("OK"), Some(6.0), "3 alone, 3 on the stream");
    assert_eq!(count("FAILED_PRECONDITION"), Some(1.0));
    assert_eq!(count("INVALID_ARGUMENT"), Some(0.0));
    // This test's stream has ended (and the coordinator, which has ranked nothing, has
    // opened none).
    assert_eq!(metric(&m, "shardrank_shard_rank_streams"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_batch_over_the_in_flight_limit_is_refused_item_by_item() {
    let facts = Facts::of("tiny", 42);
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = refused.clone();
    let mut shard = tiny_shard();
    // No batch may be in flight: every one is over the limit.
    shard.admission = Some(shardrank_proto::admission::Admission::new(
        0,
        &[],
        Arc::new(move |path: &str| {
            assert_eq!(path, "/shardrank.v1.Shard/RankStream");
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }),
    ));
    let url = serve_without(shard, &[]).await;
    let req = ShardRankRequest {
        num_shards: 1,
        ..shard_request(&facts, 0, 50)
    };
    let batch = |sequence| ShardRankBatchRequest {
        items: vec![
            ShardRankBatchItem {
                request: Some(req.clone()),
                ..Default::default()
            };
            2
        ],
        sequence,
    };
    let got = stream_answers(&url, vec![batch(1), batch(2)]).await;
    assert_eq!(got.len(), 2);
    for results in got.values() {
        assert_eq!(results.len(), 2);
        for r in results {
            assert_eq!(r.code, Code::ResourceExhausted as i32, "{}", r.message);
            assert!(r.message.contains("--max-in-flight"), "{}", r.message);
        }
    }
    assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 2);
}

/// A shard whose first RankStream reads one batch and ends without answering (as a
/// replica that restarts with a batch in flight), and whose later streams answer every
/// batch with one empty OK result per item.
struct EndsOnce {
    opened: Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl shardrank_proto::v1::shard_server::Shard for EndsOnce {
    async fn rank(
        &self,
        _: tonic::Request<ShardRankRequest>,
    ) -> Result<tonic::Response<ShardRankResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }

    async fn info(
        &self,
        _: tonic::Request<shardrank_proto::v1::ShardInfoRequest>,
    ) -> Result<tonic::Response<shardrank_proto::v1::ShardInfoResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }

    async fn retrieve(
        &self,
        _: tonic::Request<shardrank_proto::v1::RetrieveRequest>,
    ) -> Result<tonic::Response<shardrank_proto::v1::RetrieveResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }

    async fn rank_batch(
        &self,
        _: tonic::Request<ShardRankBatchRequest>,
    ) -> Result<tonic::Response<shardrank_proto::v1::ShardRankBatchResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }

    type RankStreamStream = tokio_stream::wrappers::UnboundedReceiverStream<
        Result<shardrank_proto::v1::ShardRankBatchResponse, tonic::Status>,
    >;

    async fn rank_stream(
        &self,
        request: tonic::Request<tonic::Streaming<ShardRankBatchRequest>>,
    ) -> Result<tonic::Response<Self::RankStreamStream>, tonic::Status> {
        let first = self
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            == 0;
        let mut batches = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(b)) = batches.message().await {
                if first {
                    return; // ends the answers (tx dropped) with the batch unanswered
                }
                let results = b
                    .items
                    .iter()
                    .map(|_| shardrank_proto::v1::ShardRankBatchResult {
                        code: 0,
                        message: String::new(),
                        response: Some(ShardRankResponse::default()),
                    })
                    .collect();
                let _ = tx.send(Ok(shardrank_proto::v1::ShardRankBatchResponse {
                    results,
                    sequence: b.sequence,
                }));
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_fails_its_batch_unavailable_and_the_next_batch_opens_another() {
    use shardrank_coordinator::shard_stream::BatchStream;
    use shardrank_proto::codec::{SharedBatchItem, SharedShardRankBatch};
    use std::time::Duration;

    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(shardrank_proto::v1::shard_server::ShardServer::new(
                EndsOnce {
                    opened: opened.clone(),
                },
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let grpc = tonic::client::Grpc::new(shardrank_tests::channel(&url).await);
    let stream = BatchStream::new(0, url.as_str().into(), grpc);
    let batch = |items: usize| SharedShardRankBatch {
        items: Arc::new(
            (0..items)
                .map(|_| SharedBatchItem {
                    request: ShardRankRequest::default().into(),
                    timeout_us: 1_000_000,
                    traceparent: String::new(),
                })
                .collect(),
        ),
        sequence: 0,
    };
    let lost = stream
        .send(batch(2), Duration::from_secs(5))
        .await
        .unwrap_err();
    // Retryable, and says which shard and why (not a timeout).
    assert_eq!(lost.code(), Code::Unavailable, "{lost:?}");
    assert!(
        lost.message().contains("shard 0 at") && lost.message().contains("stream ended"),
        "{}",
        lost.message()
    );
    // The next batch opens a new stream and is answered by its own sequence.
    for items in [3, 1] {
        let answer = stream
            .send(batch(items), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.results.len(), items);
        assert!(
            answer.sequence > 1,
            "numbered by the sender: {}",
            answer.sequence
        );
    }
    assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 2);
}
