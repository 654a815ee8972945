//! The gRPC face of the coordinator: deadlines in, statuses out.

use crate::error::CoordinatorError;
use crate::metrics::{code_label, Rpc, RpcCode};
use crate::pipeline::{Pipeline, Query};
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
    /// The Rank RPC's pipeline: the request's candidates, the exact ranker.
    pub rank_pipeline: Arc<Pipeline>,
    pub timeline: Arc<crate::timeline::Timeline>,
    pub default_timeout: Duration,
}

/// Counts a request whose future was dropped before it answered: the client cancelled
/// or its connection went. Dropping the future is also what cancels the fan-out.
struct CancelGuard<'a> {
    metrics: &'a crate::metrics::CoordinatorMetrics,
    rpc: &'static str,
    trace: TraceContext,
    done: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics
                .requests_cancelled
                .get_or_create(&Rpc { rpc: self.rpc })
                .inc();
            tracing::info!(
                trace_id = %self.trace.trace_hex(),
                rpc = self.rpc,
                "request cancelled by the client"
            );
        }
    }
}

impl CoordinatorService {
    /// Rank through its pipeline. The request is checked first: a bad request is
    /// INVALID_ARGUMENT, not a pipeline failure.
    async fn run_rank(
        &self,
        req: Arc<RankRequest>,
        deadline: tokio::time::Instant,
        trace: TraceContext,
    ) -> Result<RankResponse, CoordinatorError> {
        let k = crate::rank::validate(&req, self.ranker.max_candidates)?;
        let q = Query {
            user_id: req.user_id,
            user: Default::default(),
            user_lang: 0,
            now_ms: 0,
            limit: k,
            seen: Default::default(),
            deadline,
            trace,
            rank: Some(req.clone()),
        };
        let (state, components) = self
            .rank_pipeline
            .run(&q, &self.ranker.metrics)
            .await
            .map_err(|f| {
                CoordinatorError::PipelineFailed(format!(
                    "pipeline {} failed in component {}: {}",
                    self.rank_pipeline.name, f.component, f.error
                ))
            })?;
        let mut answer = state.rank_answer.ok_or_else(|| {
            CoordinatorError::Internal(format!(
                "pipeline {} has no ranker that answers Rank (exact_ranker)",
                self.rank_pipeline.name
            ))
        })?;
        if let Some(stats) = answer.stats.as_mut() {
            stats.components = components;
        }
        Ok(answer)
    }

    /// The request's budget: the client's grpc-timeout if it sent one, else the default.
    fn budget<T>(&self, req: &Request<T>) -> Duration {
        shardrank_proto::serving::request_timeout(req.metadata()).unwrap_or(self.default_timeout)
    }
}

impl CoordinatorService {
    /// What every RPC does around its work: runs it in its span, counts a cancelled
    /// request, records the outcome by gRPC code and the latency, logs a failure (with
    /// its trace id, which the span may not carry: see `request_span`).
    async fn observe<T>(
        &self,
        rpc: &'static str,
        span: tracing::Span,
        trace: TraceContext,
        work: impl std::future::Future<Output = Result<T, CoordinatorError>>,
    ) -> Result<T, Status> {
        let m = &self.ranker.metrics;
        let started = std::time::Instant::now();
        let mut guard = CancelGuard {
            metrics: m,
            rpc,
            trace,
            done: false,
        };
        let res = work.instrument(span.clone()).await;
        guard.done = true;
        let code = res
            .as_ref()
            .map_or_else(|e| e.grpc_code(), |_| tonic::Code::Ok);
        m.requests
            .get_or_create(&RpcCode {
                rpc,
                code: code_label(code),
            })
            .inc();
        m.request_seconds
            .get_or_create(&Rpc { rpc })
            .observe(started.elapsed().as_secs_f64());
        res.map_err(|e| {
            // "rank failed", "timeline failed": what operators search the logs for.
            let what = rpc.to_lowercase();
            span.in_scope(|| {
                tracing::info!(
                    trace_id = %trace.trace_hex(),
                    error = %e,
                    code = ?e.grpc_code(),
                    "{what} failed"
                )
            });
            e.into()
        })
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn rank(&self, request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        let budget = self.budget(&request);
        let deadline = tokio::time::Instant::now() + budget;
        let trace = TraceContext::from_metadata(request.metadata());
        let req = Arc::new(request.into_inner());
        let n = req.candidate_ids.len();
        // Every line logged for this request, here and in the shards, carries its trace id.
        let span = shardrank_proto::request_span!(
            "rank",
            trace_id = %trace.trace_hex(),
            user_id = req.user_id,
            candidates = n,
            top_k = req.top_k
        );
        shardrank_proto::otlp::link(&span, &trace);
        let _ = span
            .in_scope(|| tracing::debug!(budget_ms = budget.as_millis() as u64, "rank request"));
        self.ranker.metrics.candidates.observe(n as f64);
        let resp = self
            .observe("Rank", span, trace, self.run_rank(req, deadline, trace))
            .await?;
        if !resp.missing_shards.is_empty() {
            self.ranker.metrics.partial_answers.inc();
        }
        Ok(Response::new(resp))
    }

    async fn timeline(
        &self,
        request: Request<TimelineRequest>,
    ) -> Result<Response<TimelineResponse>, Status> {
        let budget = self.budget(&request);
        let deadline = tokio::time::Instant::now() + budget;
        let trace = TraceContext::from_metadata(request.metadata());
        let req = request.into_inner();
        let span = shardrank_proto::request_span!(
            "timeline",
            trace_id = %trace.trace_hex(),
            user_id = req.user_id,
            limit = req.limit
        );
        shardrank_proto::otlp::link(&span, &trace);
        self.observe(
            "Timeline",
            span,
            trace,
            self.timeline.timeline(req, deadline, trace),
        )
        .await
        .map(Response::new)
    }
}
