//! The gRPC face of the coordinator: deadlines in, statuses out.

use crate::error::CoordinatorError;
use crate::metrics::{code_label, Rpc, RpcCode};
use crate::rank::Ranker;
use shardrank_proto::trace::TraceContext;
use shardrank_proto::v1::coordinator_server::Coordinator;
use shardrank_proto::v1::{RankRequest, RankResponse, TimelineRequest, TimelineResponse};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};
use tracing::Instrument;

#[derive(Clone)]
pub struct CoordinatorService {
    pub ranker: Arc<Ranker>,
    pub default_timeout: Duration,
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl CoordinatorService {
    /// The request's budget: the client's grpc-timeout if it sent one, else the default.
    fn budget<T>(&self, req: &Request<T>) -> Duration {
        req.metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap_or(self.default_timeout)
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn rank(&self, request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        let budget = self.budget(&request);
        let deadline = tokio::time::Instant::now() + budget;
        let trace = TraceContext::from_metadata(request.metadata());
        let req = request.into_inner();
        let n = req.candidate_ids.len();
        // Every line logged for this request, here and in the shards, carries its trace id.
        let span = tracing::info_span!(
            "rank",
            trace_id = %trace.trace_hex(),
            user_id = req.user_id,
            candidates = n,
            top_k = req.top_k
        );
        let _ = span
            .in_scope(|| tracing::debug!(budget_ms = budget.as_millis() as u64, "rank request"));
        let m = &self.ranker.metrics;
        m.candidates.observe(n as f64);
        let started = std::time::Instant::now();
        let res = self
            .ranker
            .rank(req, deadline, trace)
            .instrument(span.clone())
            .await;
        let code = res
            .as_ref()
            .map_or_else(|e| e.grpc_code(), |_| tonic::Code::Ok);
        m.requests
            .get_or_create(&RpcCode {
                rpc: "Rank",
                code: code_label(code),
            })
            .inc();
        m.request_seconds
            .get_or_create(&Rpc { rpc: "Rank" })
            .observe(started.elapsed().as_secs_f64());
        match res {
            Ok(resp) => {
                if !resp.missing_shards.is_empty() {
                    m.partial_answers.inc();
                }
                Ok(Response::new(resp))
            }
            Err(e) => {
                span.in_scope(|| tracing::info!(error = %e, code = ?e.grpc_code(), "rank failed"));
                Err(e.into())
            }
        }
    }

    async fn timeline(
        &self,
        _: Request<TimelineRequest>,
    ) -> Result<Response<TimelineResponse>, Status> {
        let code = code_label(tonic::Code::Unimplemented);
        self.ranker
            .metrics
            .requests
            .get_or_create(&RpcCode {
                rpc: "Timeline",
                code,
            })
            .inc();
        Err(CoordinatorError::Unimplemented(
            "Timeline is not implemented yet (the home-timeline pipeline comes in a later release); use Rank".into(),
        )
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5000u"), Some(Duration::from_millis(5)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
