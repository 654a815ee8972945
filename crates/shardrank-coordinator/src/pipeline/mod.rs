//! Product Mixer pipelines: a request's work as a named, ordered list of components,
//! declared in a config file ([`config`]) and built by name from a registry
//! ([`registry`]), so a new pipeline is configuration, not code.
//!
//! A step is one kind of component: candidate sources (run concurrently), hydrators and
//! scorers (in order, they may call the shards), filters and selectors (in-process).
//! Each component has a failure policy: fail the request, or fail open (skip it and
//! record it). Every component is timed under its name: a tracing span, a latency
//! histogram and an outcome counter, and per request in the response's stats when the
//! client asks.
//!
//! The home timeline (`timeline.toml`): sources [`sources`] -> light ranking on the
//! shards [`rankers`] -> [`filters`] -> heavy ranking -> final filters and [`selectors`].

pub mod config;
pub mod fan_out;
pub mod filters;
pub mod rankers;
pub mod registry;
pub mod selectors;
pub mod sources;

use crate::metrics::{ComponentLabel, ComponentOutcome, CoordinatorMetrics};
use shardrank_core::lang::Lang;
use shardrank_proto::serving::TRACE_ONLY;
use shardrank_proto::trace::TraceContext;
use shardrank_proto::v1::{ComponentStats, RankRequest, RankResponse, UserContext};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// What every component of a request reads.
pub struct Query {
    pub user_id: u64,
    pub user: UserContext,
    pub user_lang: Lang,
    /// The clock of features and recency: the event-time watermark.
    pub now_ms: i64,
    pub limit: usize,
    pub seen: HashSet<u64>,
    pub deadline: Instant,
    pub trace: TraceContext,
    /// The Rank pipeline's request (its candidates are the request's ids).
    pub rank: Option<Arc<RankRequest>>,
}

/// One candidate as it moves through the pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub id: u64,
    pub author: u64,
    /// The source that brought it.
    pub source: &'static str,
    pub source_score: f32,
    pub light: Option<f32>,
    pub heavy: Option<f32>,
    pub lang: Option<Lang>,
}

impl Candidate {
    pub fn new(id: u64, author: u64, source: &'static str, source_score: f32) -> Self {
        Candidate {
            id,
            author,
            source,
            source_score,
            light: None,
            heavy: None,
            lang: None,
        }
    }
}

/// The request's state between components.
#[derive(Default, Debug)]
pub struct State {
    pub candidates: Vec<Candidate>,
    /// Shards that did not answer some call: the answer is partial.
    pub missing_shards: BTreeSet<u32>,
    /// Candidates held by reference, not as [`Candidate`]s: the Rank request's ids,
    /// which the exact ranker reads where they are (100,000 of them, with repeats).
    pub by_reference: usize,
    /// The Rank pipeline's answer.
    pub rank_answer: Option<RankResponse>,
}

/// What a source brings back.
#[derive(Default, Debug)]
pub struct Found {
    pub candidates: Vec<Candidate>,
    pub missing_shards: BTreeSet<u32>,
    /// Candidates brought by reference (see [`State::by_reference`]).
    pub by_reference: usize,
}

#[tonic::async_trait]
pub trait Source: Send + Sync {
    async fn fetch(&self, q: &Query) -> Result<Found, String>;
}

/// Hydrators and scorers: they change the candidates in place, and may call shards.
#[tonic::async_trait]
pub trait Scorer: Send + Sync {
    async fn score(&self, q: &Query, s: &mut State) -> Result<(), String>;
}

pub trait Filter: Send + Sync {
    fn filter(&self, q: &Query, candidates: &mut Vec<Candidate>) -> Result<(), String>;
}

pub trait Selector: Send + Sync {
    fn select(&self, q: &Query, candidates: &mut Vec<Candidate>);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Source,
    Hydrator,
    Filter,
    Scorer,
    Selector,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Hydrator => "hydrator",
            Kind::Filter => "filter",
            Kind::Scorer => "scorer",
            Kind::Selector => "selector",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Source,
            Kind::Hydrator,
            Kind::Filter,
            Kind::Scorer,
            Kind::Selector,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

pub enum Component {
    Source(Box<dyn Source>),
    Hydrator(Box<dyn Scorer>),
    Filter(Box<dyn Filter>),
    Scorer(Box<dyn Scorer>),
    Selector(Box<dyn Selector>),
}

impl Component {
    pub fn kind(&self) -> Kind {
        match self {
            Component::Source(_) => Kind::Source,
            Component::Hydrator(_) => Kind::Hydrator,
            Component::Filter(_) => Kind::Filter,
            Component::Scorer(_) => Kind::Scorer,
            Component::Selector(_) => Kind::Selector,
        }
    }
}

/// A component as a pipeline uses it: its name and failure policy.
pub struct Named {
    pub name: &'static str,
    pub component: Component,
    /// On error or timeout: skip it and go on (true), or fail the request.
    pub fail_open: bool,
    /// Its own time limit, within the request's deadline.
    pub timeout: Option<Duration>,
}

pub struct Step {
    pub kind: Kind,
    pub components: Vec<Named>,
}

pub struct Pipeline {
    pub name: &'static str,
    pub steps: Vec<Step>,
}

/// The request failed in a component whose policy is to fail it.
#[derive(Debug)]
pub struct Failed {
    pub component: &'static str,
    pub error: String,
    pub stats: Vec<ComponentStats>,
}

async fn bounded<T>(
    timeout: Option<Duration>,
    deadline: Instant,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let limit = timeout.map_or(left, |t| t.min(left));
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {limit:?}")),
    }
}

impl Pipeline {
    /// Runs every step in order. `Err` when a component that fails the request failed.
    pub async fn run(
        &self,
        q: &Query,
        metrics: &Arc<CoordinatorMetrics>,
    ) -> Result<(State, Vec<ComponentStats>), Failed> {
        let mut state = State::default();
        let mut stats: Vec<ComponentStats> = Vec::new();
        for step in &self.steps {
            if step.kind == Kind::Source {
                let runs = step.components.iter().map(|n| {
                    let span =
                        tracing::info_span!(target: TRACE_ONLY, "component", pipeline = self.name, component = n.name);
                    async move {
                        let t0 = Instant::now();
                        let res = match &n.component {
                            Component::Source(s) => {
                                bounded(n.timeout, q.deadline, s.fetch(q)).await
                            }
                            _ => unreachable!("a source step holds sources (checked at build)"),
                        };
                        (n, res, t0.elapsed())
                    }
                    .instrument(span)
                });
                let mut seen: HashSet<u64> = state.candidates.iter().map(|c| c.id).collect();
                for (n, res, took) in futures_util::future::join_all(runs).await {
                    let before = state.candidates.len();
                    let (outcome, error, brought) = match res {
                        Ok(found) => {
                            let brought = found.candidates.len() + found.by_reference;
                            state.by_reference += found.by_reference;
                            state.missing_shards.extend(found.missing_shards);
                            // A post two sources bring keeps the first (config order).
                            state
                                .candidates
                                .extend(found.candidates.into_iter().filter(|c| seen.insert(c.id)));
                            ("ok", String::new(), brought)
                        }
                        Err(e) => (if n.fail_open { "skipped" } else { "failed" }, e, 0),
                    };
                    stats.push(record(
                        self.name, n, outcome, took, before, brought, &error, metrics, &q.trace,
                    ));
                    if outcome == "failed" {
                        return Err(Failed {
                            component: n.name,
                            error,
                            stats,
                        });
                    }
                }
                continue;
            }
            for n in &step.components {
                let span = tracing::info_span!(target: TRACE_ONLY, "component", pipeline = self.name, component = n.name);
                let t0 = Instant::now();
                let before = state.candidates.len() + state.by_reference;
                let res = async {
                    match &n.component {
                        Component::Hydrator(s) | Component::Scorer(s) => {
                            // A failed scorer leaves the state as it was.
                            let mut trial = State {
                                candidates: state.candidates.clone(),
                                missing_shards: state.missing_shards.clone(),
                                by_reference: state.by_reference,
                                rank_answer: state.rank_answer.clone(),
                            };
                            bounded(n.timeout, q.deadline, s.score(q, &mut trial)).await?;
                            state = trial;
                            Ok(())
                        }
                        Component::Filter(f) => f.filter(q, &mut state.candidates),
                        Component::Selector(s) => {
                            s.select(q, &mut state.candidates);
                            Ok(())
                        }
                        Component::Source(_) => unreachable!("sources run in source steps"),
                    }
                }
                .instrument(span)
                .await;
                let (outcome, error) = match res {
                    Ok(()) => ("ok", String::new()),
                    Err(e) => (if n.fail_open { "skipped" } else { "failed" }, e),
                };
                let after = state.candidates.len() + state.by_reference;
                stats.push(record(
                    self.name,
                    n,
                    outcome,
                    t0.elapsed(),
                    before,
                    after,
                    &error,
                    metrics,
                    &q.trace,
                ));
                if outcome == "failed" {
                    return Err(Failed {
                        component: n.name,
                        error,
                        stats,
                    });
                }
            }
        }
        Ok((state, stats))
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    pipeline: &'static str,
    n: &Named,
    outcome: &'static str,
    took: Duration,
    before: usize,
    after: usize,
    error: &str,
    metrics: &CoordinatorMetrics,
    trace: &TraceContext,
) -> ComponentStats {
    metrics
        .component_seconds
        .get_or_create(&ComponentLabel {
            pipeline,
            component: n.name,
        })
        .observe(took.as_secs_f64());
    metrics
        .component_outcomes
        .get_or_create(&ComponentOutcome {
            pipeline,
            component: n.name,
            outcome,
        })
        .inc();
    if outcome != "ok" {
        tracing::warn!(
            trace_id = %trace.trace_hex(),
            pipeline,
            component = n.name,
            outcome,
            error,
            "pipeline component failed"
        );
    }
    ComponentStats {
        name: n.name.to_string(),
        kind: n.component.kind().name().to_string(),
        outcome: outcome.to_string(),
        latency_ms: took.as_secs_f64() * 1e3,
        candidates_in: before as u32,
        candidates_out: after as u32,
        error: error.to_string(),
    }
}
