//! Pipeline config files (TOML): the steps, in order, each a kind and the components it
//! runs; then per-component settings. Checked when built: an unknown component or
//! setting, a component of another kind than its step, or a step that needs candidates
//! before any source, is an error naming it.
//!
//! ```toml
//! name = "timeline"
//! steps = [
//!   { kind = "source", components = ["in_network", "trending"] },
//!   { kind = "hydrator", components = ["light_ranker"] },
//!   { kind = "selector", components = ["truncate"] },
//! ]
//! [components.in_network]
//! limit = 1500          # component settings
//! fail_open = true      # every component: skip it on error (default: sources only)
//! timeout_ms = 50       # every component: its own time limit
//! ```

use super::registry::{self, Env, Settings};
use super::{Kind, Named, Pipeline, Step};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The built-in home timeline pipeline: `deploy/pipelines/timeline.toml`.
pub const DEFAULT_TIMELINE: &str = include_str!("../../../../deploy/pipelines/timeline.toml");
/// The built-in Rank pipeline: `deploy/pipelines/rank.toml`.
pub const DEFAULT_RANK: &str = include_str!("../../../../deploy/pipelines/rank.toml");

/// A pipeline config's text and where it came from: the file `path` names (given with
/// `flag`), or the built-in `default`.
pub fn read(
    path: Option<&std::path::Path>,
    default: &str,
    flag: &str,
) -> Result<(String, String), String> {
    match path {
        Some(p) => std::fs::read_to_string(p)
            .map(|t| (t, p.display().to_string()))
            .map_err(|e| format!("{flag} {}: {e}", p.display())),
        None => Ok((default.to_string(), "built-in".to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineConfig {
    name: String,
    steps: Vec<StepConfig>,
    #[serde(default)]
    components: BTreeMap<String, toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepConfig {
    kind: String,
    components: Vec<String>,
}

/// Parses and checks a pipeline config and builds it with `env`. `origin` names the
/// file in errors.
pub fn build(text: &str, origin: &str, env: &Env) -> Result<Pipeline, String> {
    let cfg: PipelineConfig =
        toml::from_str(text).map_err(|e| format!("pipeline config {origin}: {e}"))?;
    let err = |msg: String| format!("pipeline config {origin} ({}): {msg}", cfg.name);
    let known = || {
        registry::COMPONENTS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut used = std::collections::BTreeSet::new();
    let mut steps = Vec::new();
    let mut have_source = false;
    for (i, step) in cfg.steps.iter().enumerate() {
        let kind = Kind::parse(&step.kind).ok_or_else(|| {
            err(format!(
                "step {}: unknown kind {:?} (source, hydrator, filter, scorer, selector)",
                i + 1,
                step.kind
            ))
        })?;
        if step.components.is_empty() {
            return Err(err(format!(
                "step {} ({}) names no component",
                i + 1,
                step.kind
            )));
        }
        let mut components = Vec::new();
        for c in &step.components {
            let (name, ckind) = registry::lookup(c).ok_or_else(|| {
                err(format!(
                    "step {}: unknown component {c:?} (known: {})",
                    i + 1,
                    known()
                ))
            })?;
            if ckind != kind {
                return Err(err(format!(
                    "step {}: component {c:?} is a {}, not a {}",
                    i + 1,
                    ckind.name(),
                    kind.name()
                )));
            }
            if kind != Kind::Source && !have_source {
                return Err(err(format!(
                    "step {}: component {c:?} ({}) comes before any candidate source",
                    i + 1,
                    kind.name()
                )));
            }
            used.insert(c.clone());
            let mut s = Settings::new(name, cfg.components.get(c).cloned().unwrap_or_default());
            let fail_open = s.bool("fail_open", kind == Kind::Source).map_err(&err)?;
            let timeout_ms = s.usize("timeout_ms", 0).map_err(&err)?;
            let component = registry::build(name, &mut s, env).map_err(&err)?;
            s.finish().map_err(&err)?;
            components.push(Named {
                name,
                component,
                fail_open,
                timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms as u64)),
            });
        }
        have_source |= kind == Kind::Source;
        steps.push(Step { kind, components });
    }
    if !have_source {
        return Err(err("no candidate source step".into()));
    }
    if let Some(unused) = cfg.components.keys().find(|k| !used.contains(*k)) {
        return Err(err(format!(
            "settings for component {unused:?}, which no step runs"
        )));
    }
    let name: &'static str = Box::leak(cfg.name.clone().into_boxed_str());
    Ok(Pipeline { name, steps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::fan_out::Shards;
    use std::sync::{Arc, RwLock};

    fn env() -> Env {
        let users = Arc::new(RwLock::new(Default::default()));
        let mut registry = prometheus_client::registry::Registry::default();
        Env {
            shards: Shards {
                groups: Arc::new(Vec::new()),
                policy: Default::default(),
            },
            users: users.clone(),
            ranker: Arc::new(crate::rank::Ranker {
                metrics: Arc::new(crate::metrics::CoordinatorMetrics::register(&mut registry)),
                shards: Vec::new(),
                users,
                heavy_candidates: 1000,
                max_candidates: 1000,
                policy: Default::default(),
                min_coverage: 0.0,
            }),
        }
    }

    fn fails(text: &str) -> String {
        match build(text, "test.toml", &env()) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_default_rank_pipeline_builds() {
        let p = build(DEFAULT_RANK, "built-in", &env()).unwrap();
        assert_eq!(p.name, "rank");
        assert_eq!(p.steps.len(), 2);
        assert!(!p.steps[0].components[0].fail_open);
    }

    #[test]
    fn the_default_timeline_builds() {
        let p = build(DEFAULT_TIMELINE, "built-in", &env()).unwrap();
        assert_eq!(p.name, "timeline");
        assert_eq!(p.steps[0].kind, Kind::Source);
        assert_eq!(p.steps[0].components.len(), 3);
        assert!(p.steps[0].components.iter().all(|c| c.fail_open));
    }

    #[test]
    fn bad_configs_name_what_is_wrong() {
        let e = fails(
            r#"name = "t"
steps = [{ kind = "source", components = ["in_network", "telepathy"] }]"#,
        );
        assert!(e.contains("unknown component \"telepathy\""), "{e}");
        let e = fails(
            r#"name = "t"
steps = [{ kind = "scorer", components = ["heavy_ranker"] },
         { kind = "source", components = ["trending"] }]"#,
        );
        assert!(
            e.contains("\"heavy_ranker\" (scorer) comes before any candidate source"),
            "{e}"
        );
        let e = fails(
            r#"name = "t"
steps = [{ kind = "source", components = ["light_ranker"] }]"#,
        );
        assert!(
            e.contains("\"light_ranker\" is a hydrator, not a source"),
            "{e}"
        );
        let e = fails(
            r#"name = "t"
steps = [{ kind = "source", components = ["trending"] }]
[components.trending]
limt = 5"#,
        );
        assert!(e.contains("trending") && e.contains("limt"), "{e}");
        let e = fails(
            r#"name = "t"
steps = [{ kind = "source", components = ["trending"] }]
[components.in_network]
limit = 5"#,
        );
        assert!(e.contains("\"in_network\", which no step runs"), "{e}");
        let e = fails(
            r#"name = "t"
steps = [{ kind = "source", components = ["trending"] }]
[components.trending]
limit = -1"#,
        );
        assert!(e.contains("`limit` must be a non-negative integer"), "{e}");
        let e = fails("name = \"t\"\nsteps = [");
        assert!(e.contains("test.toml"), "{e}");
    }
}
