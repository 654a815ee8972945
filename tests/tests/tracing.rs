//! One request followed across processes: the client's W3C traceparent reaches every
//! shard, and its trace id is on the shards' and the coordinator's JSON log lines.

use shardrank_proto::v1::RankRequest;
use shardrank_tests::corpus_facts::Facts;
use shardrank_tests::Cluster;

fn json_lines_with(path: &std::path::Path, needle: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_id_travels_from_client_to_every_shard() {
    // This test binary has this one test: the processes it starts log at debug level.
    std::env::set_var("RUST_LOG", "info,shardrank_shard=debug");
    let c = Cluster::start(3, &["--corpus", "tiny", "--log-format", "json"]).await;
    let facts = Facts::of("tiny", 42);
    let mut client = c.client().await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = tonic::Request::new(RankRequest {
        user_id: 1,
        candidate_ids: facts.tweets[..900].to_vec(),
        top_k: 10,
        include_stats: true,
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let r = client.rank(req).await.unwrap().into_inner();
    assert_eq!(r.stats.unwrap().trace_id, trace_id);
    for i in 0..3 {
        let lines = json_lines_with(&c.dir.join(format!("shard-{i}.log")), trace_id);
        assert!(
            lines.iter().any(|l| l["fields"]["message"] == "ranked"),
            "shard {i} has no 'ranked' line for the trace: {lines:?}"
        );
    }

    // A failed request's log line on the coordinator carries its trace id too.
    let bad_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut req = tonic::Request::new(RankRequest {
        user_id: 1,
        candidate_ids: vec![1],
        top_k: 5000,
        include_stats: true,
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{bad_trace}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    assert!(client.rank(req).await.is_err());
    let lines = json_lines_with(&c.dir.join("coordinator.log"), bad_trace);
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "rank failed"),
        "{lines:?}"
    );

    // Without a traceparent, each request starts its own trace.
    let ask = || RankRequest {
        user_id: 1,
        candidate_ids: facts.tweets[..50].to_vec(),
        top_k: 5,
        include_stats: true,
    };
    let a = client
        .rank(ask())
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .trace_id;
    let b = client
        .rank(ask())
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .trace_id;
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
    assert_ne!(a, "0".repeat(32));
}
