//! One Rank request, end to end: validate, route, scatter, (maybe) a second round,
//! merge. See the crate docs for the path and [`crate::merge`] for why it is exact.

use crate::error::CoordinatorError;
use crate::merge::{self, Candidate, ShardPart};
use crate::metrics::{CoordinatorMetrics, Shard, ShardOutcome};
use crate::placement;
use crate::shard_call::{self, CallPolicy, Outcome};
use crate::shard_client::ShardGroup;
use crate::users::UserStore;
use shardrank_core::routing;
use shardrank_proto::codec::SharedShardRankRequest;
use shardrank_proto::serving::TRACE_ONLY;
use shardrank_proto::trace::TraceContext;
use shardrank_proto::v1::{
    RankRequest, RankResponse, RequestStats, ScoredCandidate, ShardCallStats, ShardRankRequest,
    ShardRankResponse, UserContext,
};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub const DEFAULT_TOP_K: u32 = 100;
pub const MAX_TOP_K: u32 = 1000;
/// A second round is not started with less time than this left: the shards that did
/// answer would time out too. The answer is then the best of what round one brought.
const MIN_SECOND_ROUND: Duration = Duration::from_millis(5);
/// Up to this many ids, routing runs inline; above, on the blocking pool (md5 of 100k
/// ids is milliseconds of CPU that must not stall the async workers). A rank-10k
/// request's routing is about 0.15 ms: inline it holds a worker that long, where the
/// hand-off to the pool and back (two thread wake-ups) cost more than that. Inline, the
/// coordinator's CPU per rank-10k request went 0.73 -> 0.65 ms (six interleaved pairs).
const INLINE_ROUTING: usize = 16_384;
/// From this many ids, routing is split over the cores: it is the serial part of a
/// large request's latency (100,000 ids: about 3.5 ms on one core).
const PARALLEL_ROUTING: usize = 32_768;
/// Threads one request's routing may use.
const MAX_ROUTING_THREADS: usize = 4;

pub struct Ranker {
    pub metrics: Arc<CoordinatorMetrics>,
    pub shards: Vec<ShardGroup>,
    pub users: Arc<RwLock<UserStore>>,
    pub heavy_candidates: usize,
    pub max_candidates: usize,
    /// Replica choice, hedging and retries of shard calls.
    pub policy: CallPolicy,
    /// Fewer shards than this fraction of those called answering fails the request
    /// (UNAVAILABLE) instead of returning a thin answer; 0 accepts any answer.
    pub min_coverage: f64,
}

/// What a shard call may take of the time left: the rest minus room to merge and answer,
/// so that a stalled shard is reported in `missing_shards` before the client gives up.
pub fn shard_budget(left: Duration) -> Duration {
    let reserve = (left / 10).clamp(Duration::from_millis(2), Duration::from_millis(50));
    left.saturating_sub(reserve).max(Duration::from_millis(1))
}

/// Checks top_k and the request size; returns the effective top_k.
pub fn validate(req: &RankRequest, max_candidates: usize) -> Result<usize, CoordinatorError> {
    if req.top_k > MAX_TOP_K {
        return Err(CoordinatorError::InvalidArgument(format!(
            "top_k {} is above the limit of {MAX_TOP_K}",
            req.top_k
        )));
    }
    if req.candidate_ids.len() > max_candidates {
        return Err(CoordinatorError::InvalidArgument(format!(
            "{} candidate ids is above the limit of {max_candidates} per request",
            req.candidate_ids.len()
        )));
    }
    Ok(if req.top_k == 0 {
        DEFAULT_TOP_K
    } else {
        req.top_k
    } as usize)
}

/// A shard's answer as merge input, with its unknown-id count and whether it was
/// truncated; a malformed answer is the shard's failure.
fn to_part(index: u32, r: ShardRankResponse) -> Result<(ShardPart, u64, bool), String> {
    let n = r.ids.len();
    if r.author_ids.len() != n || r.light_scores.len() != n || r.heavy_scores.len() != n {
        return Err(format!(
            "shard {index} sent a malformed answer (array lengths differ)"
        ));
    }
    let items = (0..n)
        .map(|i| Candidate {
            id: r.ids[i],
            author_id: r.author_ids[i],
            light: r.light_scores[i],
            heavy: r.heavy_scores[i],
            shard: index,
        })
        .collect();
    Ok((
        ShardPart {
            shard: index,
            items,
            eligible: r.eligible as usize,
        },
        r.unknown as u64,
        r.truncated,
    ))
}

/// One shard's part of a round: its answer and how it was obtained.
struct Answer {
    shard: u32,
    out: Outcome<ShardRankResponse>,
    took: Duration,
}

impl Answer {
    /// The part as the request's stats report it.
    fn stats(&self, second_round: bool) -> ShardCallStats {
        let o = &self.out;
        let mut st = ShardCallStats {
            shard: self.shard,
            second_round,
            latency_ms: self.took.as_secs_f64() * 1e3,
            replica: o.replica as u32,
            attempts: o.attempts,
            retried: o.retried,
            hedged: o.hedged,
            hedge_won: o.hedge_won,
            ..Default::default()
        };
        match &o.result {
            Ok(r) => {
                st.light_ms = r.light_ms;
                st.heavy_ms = r.heavy_ms;
                st.server_ms = r.total_ms;
                st.candidates = r.eligible;
                st.heavy_scored = r.ids.len() as u32;
                st.truncated = r.truncated;
            }
            Err(e) => st.error = e.message().to_string(),
        }
        st
    }
}

struct Call {
    shard: u32,
    skip: usize,
    count: usize,
    /// Shared by the call's attempts and rounds: never copied.
    ids: Arc<Vec<u64>>,
}

impl Ranker {
    pub fn num_shards(&self) -> u32 {
        self.shards.len() as u32
    }

    /// Sends each call to its shard at once (each to a replica chosen by
    /// [`shard_call`]); answers come back in any order. Dropping the future (the client
    /// cancelled) aborts every call still in flight.
    async fn scatter(
        &self,
        calls: Vec<Call>,
        user: &UserContext,
        now_ms: i64,
        deadline: Instant,
        trace: TraceContext,
    ) -> Vec<Answer> {
        let mut set = JoinSet::new();
        for c in calls {
            let group = self.shards[c.shard as usize].clone();
            let head = ShardRankRequest {
                shard_index: c.shard,
                num_shards: self.num_shards(),
                user: Some(user.clone()),
                candidate_ids: Vec::new(),
                now_ms,
                heavy_skip: c.skip as u32,
                heavy_count: c.count as u32,
                light_only: false,
            };
            let req = SharedShardRankRequest::new(head, c.ids);
            let metrics = self.metrics.clone();
            let policy = self.policy.clone();
            // A child of the request's span: lines about this call carry its trace id.
            let span = tracing::info_span!(
                target: TRACE_ONLY,
                "shard_call",
                shard = c.shard,
                skip = c.skip,
                count = c.count
            );
            set.spawn(tracing::Instrument::instrument(
                async move {
                    let t0 = Instant::now();
                    let send = |replica: usize, left: Duration| {
                        let handles = group.handles.clone();
                        let req = req.clone();
                        async move {
                            let budget = shard_budget(left);
                            handles[replica].rank(req, budget, trace.child()).await
                        }
                    };
                    let out = shard_call::call(&group.set, deadline, &policy, send).await;
                    let outcome = match &out.result {
                        Ok(_) => "ok",
                        Err(s) if s.code() == tonic::Code::DeadlineExceeded => "timeout",
                        Err(_) => "error",
                    };
                    metrics
                        .shard_calls
                        .get_or_create(&ShardOutcome {
                            shard: c.shard,
                            outcome,
                        })
                        .inc();
                    let took = t0.elapsed();
                    metrics
                        .shard_call_seconds
                        .get_or_create(&Shard { shard: c.shard })
                        .observe(took.as_secs_f64());
                    Answer {
                        shard: c.shard,
                        out,
                        took,
                    }
                },
                span,
            ));
        }
        let mut out = Vec::with_capacity(set.len());
        // Dropping the set (a cancelled request) aborts the calls still in flight.
        while let Some(res) = set.join_next().await {
            match res {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::error!(trace_id = %trace.trace_hex(), "shard call task failed: {e}")
                }
            }
        }
        out
    }

    pub async fn rank(
        &self,
        req: Arc<RankRequest>,
        deadline: Instant,
        trace: TraceContext,
    ) -> Result<RankResponse, CoordinatorError> {
        let started = Instant::now();
        let k = validate(&req, self.max_candidates)?;
        if req.candidate_ids.is_empty() {
            return Ok(RankResponse {
                latency_ms: started.elapsed().as_secs_f64() * 1e3,
                ..Default::default()
            });
        }
        let h = self.heavy_candidates.max(k);
        let (user, now_ms) = {
            let users = self.users.read().unwrap_or_else(|p| p.into_inner());
            (users.context(req.user_id), users.watermark_ms)
        };
        let n = self.num_shards();
        let include_stats = req.include_stats;
        let mut stats = RequestStats {
            trace_id: trace.trace_hex(),
            ..Default::default()
        };
        let route_started = Instant::now();
        let by_shard = if req.candidate_ids.len() <= INLINE_ROUTING {
            routing::partition(&req.candidate_ids, n)
        } else {
            let req = req.clone();
            tokio::task::spawn_blocking(move || {
                let ids = &req.candidate_ids;
                if ids.len() >= PARALLEL_ROUTING {
                    let cores = shardrank_proto::serving::cores();
                    routing::partition_parallel(ids, n, cores.min(MAX_ROUTING_THREADS))
                } else {
                    routing::partition(ids, n)
                }
            })
            .await
            .map_err(|e| CoordinatorError::Internal(format!("routing task failed: {e}")))?
        };
        stats.route_ms = route_started.elapsed().as_secs_f64() * 1e3;
        let by_shard: Vec<Arc<Vec<u64>>> = by_shard.into_iter().map(Arc::new).collect();
        let counts: Vec<usize> = by_shard.iter().map(|ids| ids.len()).collect();
        let depth = placement::first_round(&counts, h);

        // Round one: every shard that was sent candidates.
        let calls = by_shard
            .iter()
            .enumerate()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(s, ids)| Call {
                shard: s as u32,
                skip: 0,
                count: depth[s],
                ids: ids.clone(),
            })
            .collect::<Vec<_>>();
        let called = calls.len();
        let mut parts: Vec<ShardPart> = Vec::with_capacity(called);
        let mut missing: Vec<u32> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        let mut unknown = 0u64;
        let mut truncated: Vec<u32> = Vec::new();
        for a in self.scatter(calls, &user, now_ms, deadline, trace).await {
            if include_stats {
                stats.shard_calls.push(a.stats(false));
            }
            let shard = a.shard;
            let res = a.out.result.map_err(|s| s.message().to_string());
            match res.and_then(|r| to_part(shard, r)) {
                Ok((part, u, cut)) => {
                    unknown += u;
                    if cut {
                        truncated.push(shard);
                    }
                    parts.push(part);
                }
                Err(e) => {
                    tracing::warn!(trace_id = %trace.trace_hex(), shard, error = %e, elapsed_ms = started.elapsed().as_millis() as u64, "shard failed: answering without it");
                    missing.push(shard);
                    errors.push(format!("shard {shard}: {e}"));
                }
            }
        }
        if parts.is_empty() {
            return Err(CoordinatorError::Unavailable(errors.join("; ")));
        }
        if (parts.len() as f64) < self.min_coverage * called as f64 {
            return Err(CoordinatorError::Unavailable(format!(
                "only {} of {called} shards answered, below the minimum coverage of {}: {}",
                parts.len(),
                self.min_coverage,
                errors.join("; ")
            )));
        }

        // Round two, only where a shard's first share may have been too small (and it
        // had the time to score all of it: a truncated shard is out of time).
        let mut refetch = merge::shortfall(&parts, h);
        refetch.retain(|r| !truncated.contains(&parts[r.part].shard));
        if !refetch.is_empty()
            && deadline.saturating_duration_since(Instant::now()) < MIN_SECOND_ROUND
        {
            tracing::warn!(
                trace_id = %trace.trace_hex(),
                shards = refetch.len(),
                "no time left for a second round: answering from round one"
            );
            refetch.clear();
        }
        if !refetch.is_empty() {
            self.metrics.second_rounds.inc_by(refetch.len() as u64);
            let calls = refetch
                .iter()
                .map(|r| {
                    let shard = parts[r.part].shard;
                    Call {
                        shard,
                        skip: r.skip,
                        count: r.count,
                        ids: by_shard[shard as usize].clone(),
                    }
                })
                .collect();
            tracing::debug!(shards = refetch.len(), "second round");
            for a in self.scatter(calls, &user, now_ms, deadline, trace).await {
                if include_stats {
                    stats.shard_calls.push(a.stats(true));
                }
                let shard = a.shard;
                let res = a.out.result.map_err(|s| s.message().to_string());
                match res.and_then(|r| to_part(shard, r)) {
                    Ok((more, _, cut)) => {
                        if cut {
                            truncated.push(shard);
                        }
                        if let Some(p) = parts.iter_mut().find(|p| p.shard == shard) {
                            p.items.extend(more.items);
                        }
                    }
                    Err(e) => {
                        // Its first share stays in the answer, flagged as partial.
                        tracing::warn!(trace_id = %trace.trace_hex(), shard, error = %e, "shard failed in the second round");
                        missing.push(shard);
                    }
                }
            }
        }

        let merge_started = Instant::now();
        let best = merge::select(&parts, h, k);
        stats.merge_ms = merge_started.elapsed().as_secs_f64() * 1e3;
        missing.sort_unstable();
        missing.dedup();
        truncated.sort_unstable();
        truncated.dedup();
        for &shard in &truncated {
            self.metrics
                .truncated_answers
                .get_or_create(&Shard { shard })
                .inc();
        }
        for &shard in &missing {
            self.metrics
                .missing_shards
                .get_or_create(&Shard { shard })
                .inc();
        }
        Ok(RankResponse {
            candidates: best
                .into_iter()
                .map(|c| ScoredCandidate {
                    id: c.id,
                    score: c.heavy,
                    shard: c.shard,
                    author_id: c.author_id,
                    light_score: c.light,
                })
                .collect(),
            unknown_candidates: unknown,
            latency_ms: started.elapsed().as_secs_f64() * 1e3,
            stats: include_stats.then(|| {
                stats.coverage = (called - missing.len()) as f64 / called as f64;
                stats
            }),
            missing_shards: missing,
            truncated_shards: truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_budget_leaves_room_to_merge() {
        assert_eq!(
            shard_budget(Duration::from_millis(2000)),
            Duration::from_millis(1950)
        );
        assert_eq!(
            shard_budget(Duration::from_millis(100)),
            Duration::from_millis(90)
        );
        assert_eq!(
            shard_budget(Duration::from_millis(10)),
            Duration::from_millis(8)
        );
        assert_eq!(shard_budget(Duration::ZERO), Duration::from_millis(1));
    }

    #[test]
    fn top_k_limits() {
        let req = |top_k, n: usize| RankRequest {
            user_id: 1,
            candidate_ids: vec![1; n],
            top_k,
            ..Default::default()
        };
        assert_eq!(validate(&req(0, 1), 10).unwrap(), 100);
        assert_eq!(validate(&req(1000, 1), 10).unwrap(), 1000);
        let e = validate(&req(1001, 1), 10).unwrap_err();
        assert!(
            e.to_string().contains("1000") && matches!(e, CoordinatorError::InvalidArgument(_))
        );
        let e = validate(&req(5, 11), 10).unwrap_err();
        assert!(e.to_string().contains("limit of 10"));
    }
}
