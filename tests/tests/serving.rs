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
