//! Candidate sources of the home timeline. Each asks every shard for its partition's
//! best posts for that source (see `shardrank_shard::retrieve`) and keeps the best
//! `limit` of their union; the in-network source reads the user's home inbox (fan-out on
//! write, [`crate::users`]) first.

use super::fan_out::Shards;
use super::{Candidate, Found, Query, Source};
use shardrank_proto::v1::{CandidateSource, RetrieveRequest};

pub struct Retrieve {
    pub name: &'static str,
    pub source: CandidateSource,
    pub shards: Shards,
    /// Most candidates this source brings.
    pub limit: usize,
    /// Only posts of the last this many hours (event time).
    pub max_age_hours: f64,
}

#[tonic::async_trait]
impl Source for Retrieve {
    async fn fetch(&self, q: &Query) -> Result<Found, String> {
        // Nothing to look for: no follows, or no interests.
        let idle = match self.source {
            CandidateSource::InNetwork => q.user.followees.is_empty(),
            CandidateSource::OutOfNetwork => q.user.interest_clusters.is_empty(),
            _ => false,
        };
        if idle || self.limit == 0 {
            return Ok(Found::default());
        }
        let n = self.shards.num_shards();
        let base = RetrieveRequest {
            shard_index: 0,
            num_shards: n,
            source: self.source as i32,
            user: Some(q.user.clone()),
            since_ms: q.now_ms - (self.max_age_hours * 3_600_000.0) as i64,
            now_ms: q.now_ms,
            limit: self.limit as u32,
        };
        let parts = (0..n)
            .map(|s| {
                let mut r = base.clone();
                r.shard_index = s;
                (s, r)
            })
            .collect();
        let trace = q.trace;
        let answers = self
            .shards
            .call_all(parts, q.deadline, move |h, req, timeout| async move {
                h.retrieve(req, timeout, trace.child()).await
            })
            .await;
        let mut found = Found::default();
        let mut errors = Vec::new();
        for (shard, res) in answers {
            match res {
                Ok(r) => {
                    if r.author_ids.len() != r.ids.len() || r.scores.len() != r.ids.len() {
                        found.missing_shards.insert(shard);
                        errors.push(format!("shard {shard}: malformed answer"));
                        continue;
                    }
                    for i in 0..r.ids.len() {
                        found.candidates.push(Candidate::new(
                            r.ids[i],
                            r.author_ids[i],
                            self.name,
                            r.scores[i],
                        ));
                    }
                }
                Err(e) => {
                    found.missing_shards.insert(shard);
                    errors.push(format!("shard {shard}: {}", e.message()));
                }
            }
        }
        if found.missing_shards.len() == n as usize {
            return Err(format!("no shard answered: {}", errors.join("; ")));
        }
        found.candidates.sort_unstable_by(|a, b| {
            b.source_score
                .total_cmp(&a.source_score)
                .then(a.id.cmp(&b.id))
        });
        found.candidates.truncate(self.limit);
        Ok(found)
    }
}

/// The in-network source: the user's home inbox (posts fanned out to it since start-up,
/// newest first), then the shards' retrieval by followed author for the rest (posts from
/// before start-up: fan-out on read), without repeats, up to `limit`.
pub struct InNetwork {
    pub retrieve: Retrieve,
    pub users: std::sync::Arc<std::sync::RwLock<crate::users::UserStore>>,
    /// Read the inbox (false: retrieval alone).
    pub inbox: bool,
}

#[tonic::async_trait]
impl Source for InNetwork {
    async fn fetch(&self, q: &Query) -> Result<Found, String> {
        let since = q.now_ms - (self.retrieve.max_age_hours * 3_600_000.0) as i64;
        let mut inbox: Vec<Candidate> = Vec::new();
        if self.inbox {
            let users = self.users.read().unwrap_or_else(|p| p.into_inner());
            // Unfollowed since delivery: no longer in-network.
            let follows = |a: &u64| q.user.followees.binary_search(a).is_ok();
            inbox.extend(
                users
                    .inbox(q.user_id)
                    .filter(|e| e.created_at >= since && follows(&e.author_id))
                    .take(self.retrieve.limit)
                    .map(|e| Candidate::new(e.tweet_id, e.author_id, self.retrieve.name, f32::MAX)),
            );
        }
        let mut found = match self.retrieve.fetch(q).await {
            Ok(f) => f,
            // The inbox alone still answers; the shards that failed are named.
            Err(e) if !inbox.is_empty() => {
                tracing::debug!(error = %e, "in-network retrieval failed: inbox only");
                Found::default()
            }
            Err(e) => return Err(e),
        };
        let mut seen: std::collections::HashSet<u64> = inbox.iter().map(|c| c.id).collect();
        inbox.extend(found.candidates.drain(..).filter(|c| seen.insert(c.id)));
        inbox.truncate(self.retrieve.limit);
        found.candidates = inbox;
        Ok(found)
    }
}

/// Fault injection, for drills and tests: a source that waits `delay`, then fails with
/// `error` if set, or brings nothing. With `fail_open` the timeline must come back anyway.
pub struct Fault {
    pub delay: std::time::Duration,
    pub error: Option<String>,
}

#[tonic::async_trait]
impl Source for Fault {
    async fn fetch(&self, _: &Query) -> Result<Found, String> {
        tokio::time::sleep(self.delay).await;
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(Found::default()),
        }
    }
}

/// The Rank pipeline's source: the request's own candidate ids, by reference.
pub struct RequestCandidates;

#[tonic::async_trait]
impl Source for RequestCandidates {
    async fn fetch(&self, q: &Query) -> Result<Found, String> {
        let req = q
            .rank
            .as_ref()
            .ok_or("request_candidates reads a Rank request; this pipeline has none")?;
        Ok(Found {
            by_reference: req.candidate_ids.len(),
            ..Default::default()
        })
    }
}
