//! One Timeline request: the user's home timeline, built by the timeline pipeline
//! ([`crate::pipeline`], configured by `--pipeline-config`).

use crate::error::CoordinatorError;
use crate::metrics::CoordinatorMetrics;
use crate::pipeline::{Pipeline, Query};
use crate::users::UserStore;
use shardrank_proto::trace::TraceContext;
use shardrank_proto::v1::{PipelineStats, TimelineEntry, TimelineRequest, TimelineResponse};
use std::sync::{Arc, RwLock};
use tokio::time::Instant;

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 500;
/// Most seen ids one request may carry.
pub const MAX_SEEN: usize = 100_000;

pub struct Timeline {
    pub pipeline: Pipeline,
    pub users: Arc<RwLock<UserStore>>,
    pub metrics: Arc<CoordinatorMetrics>,
}

impl Timeline {
    pub async fn timeline(
        &self,
        req: TimelineRequest,
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<TimelineResponse, CoordinatorError> {
        let started = Instant::now();
        if req.limit > MAX_LIMIT {
            return Err(CoordinatorError::InvalidArgument(format!(
                "limit {} is above the limit of {MAX_LIMIT}",
                req.limit
            )));
        }
        if req.seen_ids.len() > MAX_SEEN {
            return Err(CoordinatorError::InvalidArgument(format!(
                "{} seen ids is above the limit of {MAX_SEEN}",
                req.seen_ids.len()
            )));
        }
        let limit = if req.limit == 0 {
            DEFAULT_LIMIT
        } else {
            req.limit
        } as usize;
        let q = {
            let users = self.users.read().unwrap_or_else(|p| p.into_inner());
            let Some(u) = users.get(req.user_id) else {
                return Err(CoordinatorError::NotFound(format!(
                    "user {} is not known to this cluster (no event in the stream names it)",
                    req.user_id
                )));
            };
            let mut user = users.context(req.user_id);
            // A user who follows nobody has no interests from follows: start from the
            // cluster the user is known for, so out-of-network has something to match.
            if user.interest_clusters.is_empty() {
                user.interest_clusters = vec![u.known_for];
                user.interest_weights = vec![1.0];
            }
            Query {
                user_id: req.user_id,
                user_lang: u.lang,
                user,
                now_ms: users.watermark_ms,
                limit,
                seen: req.seen_ids.iter().copied().collect(),
                deadline,
                trace,
                rank: None,
            }
        };
        let (state, components) = self.pipeline.run(&q, &self.metrics).await.map_err(|f| {
            CoordinatorError::PipelineFailed(format!(
                "pipeline {} failed in component {}: {}",
                self.pipeline.name, f.component, f.error
            ))
        })?;
        let missing: Vec<u32> = state.missing_shards.into_iter().collect();
        if !missing.is_empty() {
            self.metrics.partial_answers.inc();
        }
        Ok(TimelineResponse {
            entries: state
                .candidates
                .into_iter()
                .map(|c| TimelineEntry {
                    tweet_id: c.id,
                    author_id: c.author,
                    score: c.heavy.or(c.light).unwrap_or(c.source_score),
                    source: c.source.to_string(),
                })
                .collect(),
            missing_shards: missing,
            latency_ms: started.elapsed().as_secs_f64() * 1e3,
            stats: req.include_stats.then(|| PipelineStats {
                pipeline: self.pipeline.name.to_string(),
                components,
                trace_id: trace.trace_hex(),
            }),
        })
    }
}
