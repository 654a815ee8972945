//! The two ranking stages of the timeline, on the shards that own the posts (the same md5
//! routing and the same models as Rank): the light ranker hydrates every candidate with
//! its light score and language; the heavy ranker scores the best of what the filters
//! left.

use super::fan_out::Shards;
use super::{Query, Scorer, State};
use shardrank_core::routing;
use shardrank_proto::codec::SharedShardRankRequest;
use shardrank_proto::v1::{ShardRankRequest, ShardRankResponse};
use std::collections::HashMap;

/// Sends each candidate to its shard (light only, or light then heavy) and returns the
/// shards' answers by id; shards that failed are added to `s.missing_shards`.
async fn rank_on_shards(
    shards: &Shards,
    q: &Query,
    s: &mut State,
    light_only: bool,
) -> Result<HashMap<u64, (f32, f32, u32)>, String> {
    let n = shards.num_shards();
    let ids: Vec<u64> = s.candidates.iter().map(|c| c.id).collect();
    // Shared requests: an attempt, hedge or retry does not copy the ids.
    let parts: Vec<(u32, SharedShardRankRequest)> = routing::partition(&ids, n)
        .into_iter()
        .enumerate()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(shard, ids)| {
            let count = ids.len() as u32;
            (
                shard as u32,
                ShardRankRequest {
                    shard_index: shard as u32,
                    num_shards: n,
                    user: Some(q.user.clone()),
                    candidate_ids: ids,
                    now_ms: q.now_ms,
                    heavy_skip: 0,
                    heavy_count: count,
                    light_only,
                }
                .into(),
            )
        })
        .collect();
    let called = parts.len();
    let trace = q.trace;
    let answers = shards
        .call_all(parts, q.deadline, move |h, req, timeout| async move {
            h.rank(req, timeout, trace.child()).await
        })
        .await;
    let mut scored = HashMap::with_capacity(ids.len());
    let mut failed = Vec::new();
    for (shard, res) in answers {
        let ok = res
            .map_err(|e| e.message().to_string())
            .and_then(|r: ShardRankResponse| {
                let m = r.ids.len();
                let heavy_ok = if light_only {
                    r.langs.len() == m
                } else {
                    r.heavy_scores.len() == m
                };
                if r.light_scores.len() != m || !heavy_ok {
                    return Err("malformed answer".to_string());
                }
                for i in 0..m {
                    let (heavy, lang) = if light_only {
                        (0.0, r.langs[i])
                    } else {
                        (r.heavy_scores[i], 0)
                    };
                    scored.insert(r.ids[i], (r.light_scores[i], heavy, lang));
                }
                Ok(())
            });
        if let Err(e) = ok {
            s.missing_shards.insert(shard);
            failed.push(format!("shard {shard}: {e}"));
        }
    }
    if called > 0 && failed.len() == called {
        return Err(format!("no shard answered: {}", failed.join("; ")));
    }
    Ok(scored)
}

/// Hydrator: light score and language of every candidate. Candidates the shards do not
/// return (unknown, or by an excluded author) are dropped.
pub struct LightRanker {
    pub shards: Shards,
}

#[tonic::async_trait]
impl Scorer for LightRanker {
    async fn score(&self, q: &Query, s: &mut State) -> Result<(), String> {
        if s.candidates.is_empty() {
            return Ok(());
        }
        let scored = rank_on_shards(&self.shards, q, s, true).await?;
        s.candidates.retain_mut(|c| match scored.get(&c.id) {
            Some(&(light, _, lang)) => {
                c.light = Some(light);
                c.lang = Some(lang as u16);
                true
            }
            None => false,
        });
        sort_by(&mut s.candidates, |c| c.light);
        Ok(())
    }
}

/// Scorer: the heavy (multi-head) score of the best `candidates` by light score; the
/// rest are dropped. Leaves the candidates in heavy order.
pub struct HeavyRanker {
    pub shards: Shards,
    pub candidates: usize,
}

#[tonic::async_trait]
impl Scorer for HeavyRanker {
    async fn score(&self, q: &Query, s: &mut State) -> Result<(), String> {
        sort_by(&mut s.candidates, |c| c.light);
        s.candidates.truncate(self.candidates);
        if s.candidates.is_empty() {
            return Ok(());
        }
        let scored = rank_on_shards(&self.shards, q, s, false).await?;
        s.candidates.retain_mut(|c| match scored.get(&c.id) {
            Some(&(light, heavy, _)) => {
                c.light = Some(light);
                c.heavy = Some(heavy);
                true
            }
            None => false,
        });
        sort_by(&mut s.candidates, |c| c.heavy);
        Ok(())
    }
}

/// Score descending (missing scores last), then id ascending: deterministic.
fn sort_by(v: &mut [super::Candidate], key: impl Fn(&super::Candidate) -> Option<f32>) {
    v.sort_by(|a, b| {
        let (x, y) = (key(a).unwrap_or(f32::MIN), key(b).unwrap_or(f32::MIN));
        y.total_cmp(&x).then(a.id.cmp(&b.id))
    });
}

/// The Rank pipeline's scorer: the exact distributed top-k of [`crate::rank`] (first round
/// at each shard's binomial share, a second round where a share was short, merge). Its
/// answer replaces the candidates held by reference.
pub struct ExactRanker {
    pub ranker: std::sync::Arc<crate::rank::Ranker>,
}

#[tonic::async_trait]
impl Scorer for ExactRanker {
    async fn score(&self, q: &Query, s: &mut State) -> Result<(), String> {
        let req = q
            .rank
            .clone()
            .ok_or("exact_ranker reads a Rank request; this pipeline has none")?;
        let answer = self
            .ranker
            .rank(req, q.deadline, q.trace)
            .await
            .map_err(|e| e.to_string())?;
        s.by_reference = 0;
        s.candidates = answer
            .candidates
            .iter()
            .map(|c| {
                let mut x = super::Candidate::new(c.id, c.author_id, "request", 0.0);
                x.light = Some(c.light_score);
                x.heavy = Some(c.score);
                x
            })
            .collect();
        s.missing_shards
            .extend(answer.missing_shards.iter().copied());
        s.rank_answer = Some(answer);
        Ok(())
    }
}
