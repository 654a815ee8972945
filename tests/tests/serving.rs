//! What every server does alike: health for "" and its own service, reflection v1 and
//! v1alpha, and a clean exit on SIGTERM.

use shardrank_tests::{wait_serving, Cluster};
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn health(url: &str, service: &str) -> Result<i32, tonic::Status> {
    let mut h = HealthClient::new(shardrank_tests::channel(url).await);
    h.check(HealthCheckRequest {
        service: service.into(),
    })
    .await
    .map(|r| r.into_inner().status)
}

macro_rules! list_services {
    ($module:ident, $url:expr) => {{
        use tonic_reflection::pb::$module::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$module::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$module::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::$module::ServerReflectionRequest;
        let mut c = ServerReflectionClient::new(shardrank_tests::channel($url).await);
        let reqs = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "shardrank.v1.RankRequest".into(),
                )),
            },
        ];
        let mut stream = c
            .server_reflection_info(tokio_stream::iter(reqs))
            .await
            .unwrap()
            .into_inner();
        let mut names = Vec::new();
        let mut files = 0;
        while let Some(resp) = stream.message().await.unwrap() {
            match resp.message_response {
                Some(MessageResponse::ListServicesResponse(l)) => {
                    names.extend(l.service.into_iter().map(|s| s.name))
                }
                Some(MessageResponse::FileDescriptorResponse(f)) => {
                    files += f.file_descriptor_proto.len()
                }
                other => panic!("unexpected reflection answer {other:?}"),
            }
        }
        assert!(
            files >= 1,
            "the file defining shardrank.v1.RankRequest is served"
        );
        names
    }};
}

#[tokio::test]
async fn health_and_reflection_on_both_binaries() {
    let c = Cluster::start(2, &["--corpus", "tiny"]).await;
    let serving = ServingStatus::Serving as i32;
    for (url, service) in [
        (&c.url, "shardrank.v1.Coordinator"),
        (&c.shard_urls[0], "shardrank.v1.Shard"),
    ] {
        assert_eq!(health(url, "").await.unwrap(), serving);
        assert_eq!(health(url, service).await.unwrap(), serving);
        let err = health(url, "no.such.Service").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        for names in [list_services!(v1, url), list_services!(v1alpha, url)] {
            assert!(names.iter().any(|n| n == service), "{names:?}");
            assert!(
                names.iter().any(|n| n == "grpc.health.v1.Health"),
                "{names:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_process_cleanly() {
    let mut c = Cluster::start(2, &["--corpus", "tiny"]).await;
    // An open client connection does not hold the exit up.
    let _client = c.client().await;
    let status = c
        .coordinator
        .terminate(Duration::from_secs(10))
        .expect("coordinator exits on SIGTERM");
    assert!(status.success(), "coordinator exit: {status}");
    for s in &mut c.shards {
        let status = s
            .terminate(Duration::from_secs(10))
            .expect("shard exits on SIGTERM");
        assert!(status.success(), "shard exit: {status}");
    }
}

/// `--worker-threads` sizes each server's async runtime, and /metrics says what it
/// resolved to; without the flag, one worker per core.
#[tokio::test]
async fn worker_threads_size_each_servers_runtime() {
    let c = Cluster::start_full(
        2,
        1,
        &["--corpus", "tiny"],
        &["--worker-threads", "3"],
        &["--worker-threads", "1"],
    )
    .await;
    use shardrank_tests::{http_get, metric};
    let facts = shardrank_tests::corpus_facts::Facts::of("tiny", 42);
    let workers = |text: &str| metric(text, "shardrank_runtime_workers");
    for admin in &c.shard_admin {
        let (_, m) = http_get(&format!("{admin}/metrics")).await;
        assert_eq!(workers(&m), Some(3.0), "{admin}");
    }
    let (_, m) = http_get(&format!("{}/metrics", c.admin)).await;
    assert_eq!(workers(&m), Some(1.0));
    let r = c
        .client()
        .await
        .rank(shardrank_proto::v1::RankRequest {
            user_id: facts.users[0],
            candidate_ids: facts.tweets[..500].to_vec(),
            top_k: 10,
            include_stats: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.missing_shards.is_empty(), "{:?}", r.missing_shards);
    assert_eq!(r.candidates.len(), 10);

    // Without the flag: one worker per core.
    let dir = shardrank_tests::scratch_dir("workers");
    let addr_file = dir.join("shard.addr");
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--addr-file",
        addr_file.to_str().unwrap(),
        "--corpus",
        "tiny",
    ]
    .map(String::from)
    .to_vec();
    let mut shard = shardrank_tests::Proc::spawn("shardrank-shard", &args, dir.join("shard.log"));
    let bound = shardrank_tests::bound_addrs(&mut shard, &addr_file).await;
    let url = format!("http://{}", bound.grpc);
    wait_serving(&url, "", &mut shard, Duration::from_secs(120)).await;
    let cores = shardrank_proto::serving::cores() as f64;
    let (_, m) = http_get(&format!("http://{}/metrics", bound.admin.unwrap())).await;
    assert_eq!(workers(&m), Some(cores));
}

#[tokio::test]
async fn a_shard_reports_not_serving_until_its_partition_is_loaded() {
    // The standard corpus takes a moment to load: health must not say SERVING before.
    let port = shardrank_tests::free_port();
    let dir = shardrank_tests::scratch_dir("loading");
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--corpus",
        "standard",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut shard = shardrank_tests::Proc::spawn("shardrank-shard", &args, dir.join("shard.log"));
    let url = format!("http://127.0.0.1:{port}");
    // Poll until the port answers; the first answer must be NOT_SERVING.
    let first = loop {
        if let Ok(ch) = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
        {
            break HealthClient::new(ch)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(first, ServingStatus::NotServing as i32);
    wait_serving(
        &url,
        "shardrank.v1.Shard",
        &mut shard,
        Duration::from_secs(120),
    )
    .await;
}

/// A shard keeps a coordinator's RankStream open between batches. On SIGTERM it must
/// stop taking batches on it, answer those it has, and end it, so that the drain does
/// not wait for the coordinator to close it; the coordinator sends the batches that
/// were on their way to the other replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_draining_under_load_ends_its_stream_and_costs_no_request() {
    use shardrank_tests::{http_get, metric};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let mut c = Cluster::start_replicated(1, 2, &["--corpus", "tiny"], &[]).await;
    let facts = shardrank_tests::corpus_facts::Facts::of("tiny", 42);
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for k in 0..6usize {
        let (mut client, stop) = (c.client().await, stop.clone());
        let req = shardrank_proto::v1::RankRequest {
            user_id: facts.users[k],
            candidate_ids: facts
                .tweets
                .iter()
                .skip(k)
                .step_by(3)
                .take(800)
                .copied()
                .collect(),
            top_k: 20,
            include_stats: false,
        };
        load.spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match client.rank(req.clone()).await {
                    Ok(r) if r.get_ref().missing_shards.is_empty() => ok += 1,
                    Ok(r) => failed.push(format!("partial: {:?}", r.get_ref().missing_shards)),
                    Err(s) => failed.push(format!("{s:?}")),
                }
            }
            (ok, failed)
        });
    }
    // Wait until a replica has a stream open: that one is stopped.
    let t0 = std::time::Instant::now();
    let streaming = loop {
        let mut open = None;
        for (k, admin) in c.shard_admin.iter().enumerate() {
            let (_, m) = http_get(&format!("{admin}/metrics")).await;
            if metric(&m, "shardrank_shard_rank_streams") == Some(1.0) {
                open = Some(k);
            }
        }
        if let Some(k) = open {
            break k;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no stream opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t1 = std::time::Instant::now();
    // The drain allows 10 s; an open stream must not use them.
    let status = c.shards[streaming]
        .terminate(Duration::from_secs(8))
        .expect("the replica exits on SIGTERM despite its open stream");
    assert!(status.success(), "shard exit: {status}");
    let drained = t1.elapsed();
    assert!(drained < Duration::from_secs(5), "drained in {drained:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(r) = load.join_next().await {
        let (o, f) = r.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(ok > 50, "{ok} requests");
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
}
