//! Span export over OTLP: with --otlp-endpoint, the coordinator and the shards send their
//! spans to a collector (here a minimal OTLP/gRPC trace receiver in the test), and one
//! request's spans from every process carry the trace id its client sent.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use shardrank_proto::v1::RankRequest;
use shardrank_tests::corpus_facts::Facts;
use shardrank_tests::{free_port, Cluster};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// (service name, trace id as hex, span name) of every span received.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<(String, String, String)>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let hex: String = s.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    got.push((service.clone(), hex, s.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_one_request_reach_the_collector_from_every_process() {
    let collector = Collector::default();
    let port = free_port();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve(format!("127.0.0.1:{port}").parse().unwrap());
    tokio::spawn(server);
    let endpoint = format!("http://127.0.0.1:{port}");
    let c = Cluster::start(2, &["--corpus", "tiny", "--otlp-endpoint", &endpoint]).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let facts = Facts::of("tiny", 42);
    let mut req = tonic::Request::new(RankRequest {
        user_id: facts.users[1],
        candidate_ids: facts.tweets[..3000].to_vec(),
        top_k: 10,
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    c.client().await.rank(req).await.unwrap();

    let t0 = Instant::now();
    loop {
        let got = collector.0.lock().unwrap().clone();
        let of = |service: &str, name: &str| {
            got.iter()
                .filter(|(s, t, n)| s == service && t == trace_id && n == name)
                .count()
        };
        let (rank, calls, shards) = (
            of("shardrank-coordinator", "rank"),
            of("shardrank-coordinator", "shard_call"),
            of("shardrank-shard", "shard_rank"),
        );
        if rank == 1 && calls >= 2 && shards >= 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "spans of trace {trace_id}: rank {rank}, shard_call {calls}, shard_rank {shards}; received {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
