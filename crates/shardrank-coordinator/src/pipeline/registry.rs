//! Every component a pipeline config may name, its kind, its settings, and how it is
//! built. Adding a component is adding a line here and its file.

use super::fan_out::Shards;
use super::{filters, rankers, selectors, sources, Component, Kind};
use crate::users::UserStore;
use shardrank_proto::v1::CandidateSource;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

/// What components are built with.
#[derive(Clone)]
pub struct Env {
    pub shards: Shards,
    pub users: Arc<RwLock<UserStore>>,
    /// The exact Rank path, for the Rank pipeline.
    pub ranker: Arc<crate::rank::Ranker>,
}

/// Every registered component: name and kind.
pub const COMPONENTS: &[(&str, Kind)] = &[
    ("in_network", Kind::Source),
    ("out_of_network", Kind::Source),
    ("trending", Kind::Source),
    ("light_ranker", Kind::Hydrator),
    ("heavy_ranker", Kind::Scorer),
    ("seen", Kind::Filter),
    ("blocked_muted", Kind::Filter),
    ("author_diversity", Kind::Filter),
    ("spam", Kind::Filter),
    ("language", Kind::Filter),
    ("truncate", Kind::Selector),
    ("blend", Kind::Selector),
    ("fault", Kind::Source),
    ("request_candidates", Kind::Source),
    ("exact_ranker", Kind::Scorer),
];

/// The static name and kind of a registered component.
pub fn lookup(name: &str) -> Option<(&'static str, Kind)> {
    COMPONENTS.iter().copied().find(|(n, _)| *n == name)
}

/// A component's settings table, tracking which keys were read, so that a key no
/// component knows is an error naming it.
pub struct Settings<'a> {
    pub component: &'a str,
    table: toml::Table,
    read: BTreeSet<String>,
}

impl<'a> Settings<'a> {
    pub fn new(component: &'a str, table: toml::Table) -> Self {
        Settings {
            component,
            table,
            read: BTreeSet::new(),
        }
    }

    fn get(&mut self, key: &str) -> Option<toml::Value> {
        self.read.insert(key.to_string());
        self.table.get(key).cloned()
    }

    pub fn usize(&mut self, key: &str, default: usize) -> Result<usize, String> {
        match self.get(key) {
            None => Ok(default),
            Some(toml::Value::Integer(n)) if n >= 0 => Ok(n as usize),
            Some(v) => Err(format!(
                "component {}: `{key}` must be a non-negative integer, not {v}",
                self.component
            )),
        }
    }

    pub fn f64(&mut self, key: &str, default: f64) -> Result<f64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(toml::Value::Integer(n)) if n >= 0 => Ok(n as f64),
            Some(toml::Value::Float(x)) if x >= 0.0 && x.is_finite() => Ok(x),
            Some(v) => Err(format!(
                "component {}: `{key}` must be a non-negative number, not {v}",
                self.component
            )),
        }
    }

    pub fn string(&mut self, key: &str) -> Result<Option<String>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(format!(
                "component {}: `{key}` must be a string, not {v}",
                self.component
            )),
        }
    }

    pub fn bool(&mut self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(toml::Value::Boolean(b)) => Ok(b),
            Some(v) => Err(format!(
                "component {}: `{key}` must be true or false, not {v}",
                self.component
            )),
        }
    }

    /// Keys present that nothing read.
    pub fn finish(self) -> Result<(), String> {
        let unknown: Vec<&String> = self
            .table
            .keys()
            .filter(|k| !self.read.contains(*k))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "component {}: unknown setting(s) {unknown:?}",
                self.component
            ))
        }
    }
}

/// Builds component `name` from its settings.
pub fn build(name: &'static str, s: &mut Settings, env: &Env) -> Result<Component, String> {
    let retrieve = |source, s: &mut Settings, limit, hours| -> Result<Component, String> {
        Ok(Component::Source(Box::new(sources::Retrieve {
            name,
            source,
            shards: env.shards.clone(),
            limit: s.usize("limit", limit)?,
            max_age_hours: s.f64("max_age_hours", hours)?,
        })))
    };
    Ok(match name {
        "in_network" => Component::Source(Box::new(sources::InNetwork {
            retrieve: sources::Retrieve {
                name,
                source: CandidateSource::InNetwork,
                shards: env.shards.clone(),
                limit: s.usize("limit", 1500)?,
                max_age_hours: s.f64("max_age_hours", 48.0)?,
            },
            users: env.users.clone(),
            inbox: s.bool("inbox", true)?,
        })),
        "out_of_network" => retrieve(CandidateSource::OutOfNetwork, s, 1000, 24.0)?,
        "trending" => retrieve(CandidateSource::Trending, s, 500, 24.0)?,
        "light_ranker" => Component::Hydrator(Box::new(rankers::LightRanker {
            shards: env.shards.clone(),
        })),
        "heavy_ranker" => Component::Scorer(Box::new(rankers::HeavyRanker {
            shards: env.shards.clone(),
            candidates: s.usize("candidates", 300)?,
        })),
        "seen" => Component::Filter(Box::new(filters::Seen)),
        "blocked_muted" => Component::Filter(Box::new(filters::BlockedMuted)),
        "author_diversity" => Component::Filter(Box::new(filters::AuthorDiversity {
            max_per_author: s.usize("max_per_author", 3)?.max(1),
        })),
        "spam" => Component::Filter(Box::new(filters::Spam {
            users: env.users.clone(),
            min_reports: s.usize("min_reports", 5)? as u32,
            max_report_rate: s.f64("max_report_rate", 0.05)?,
        })),
        "language" => Component::Filter(Box::new(filters::Language)),
        "truncate" => Component::Selector(Box::new(selectors::Truncate)),
        "blend" => {
            let share = s.f64("in_network_share", 0.5)?;
            if share > 1.0 {
                return Err(format!(
                    "component {name}: `in_network_share` {share} is above 1"
                ));
            }
            Component::Selector(Box::new(selectors::Blend {
                in_network_share: share,
            }))
        }
        "request_candidates" => Component::Source(Box::new(sources::RequestCandidates)),
        "exact_ranker" => Component::Scorer(Box::new(rankers::ExactRanker {
            ranker: env.ranker.clone(),
        })),
        "fault" => Component::Source(Box::new(sources::Fault {
            delay: std::time::Duration::from_millis(s.usize("delay_ms", 0)? as u64),
            error: s.string("error")?,
        })),
        other => return Err(format!("no component named {other:?} is registered")),
    })
}
