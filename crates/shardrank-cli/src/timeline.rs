//! `shardrank timeline`: one user's home timeline from a running cluster, with which
//! source each post came from, and optionally what each pipeline component did.

use shardrank_core::corpus::{generate, CorpusSpec};
use shardrank_core::events::{Event, SocialKind};
use shardrank_proto::v1::coordinator_client::CoordinatorClient;
use shardrank_proto::v1::TimelineRequest;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct TimelineArgs {
    /// The coordinator's URL.
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    target: String,
    /// Whose timeline. By default the user of --corpus who follows the most accounts.
    #[arg(long)]
    user_id: Option<u64>,
    /// Corpus the cluster was started with (to pick the default user).
    #[arg(long, default_value = "standard", value_parser = clap::builder::PossibleValuesParser::new(CorpusSpec::NAMES))]
    corpus: String,
    #[arg(long, default_value_t = shardrank_core::corpus::DEFAULT_SEED)]
    corpus_seed: u64,
    /// Entries to ask for (0 means the server's default, 20).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Print what each pipeline component did: time, outcome, candidates in and out.
    #[arg(long)]
    stats: bool,
    /// How long to wait for the coordinator to report SERVING.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    wait_secs: u64,
}

/// The user of the corpus with the most follows.
fn busiest_user(corpus: &str, seed: u64) -> Result<u64, String> {
    let spec = CorpusSpec::named(corpus, seed)
        .ok_or_else(|| format!("--corpus {corpus:?} is not a known corpus"))?;
    let mut follows: HashMap<u64, u32> = HashMap::new();
    generate(&spec, |e| {
        if let Event::Social(s) = e {
            if s.kind == SocialKind::Follow {
                *follows.entry(s.user_id).or_default() += 1;
            }
        }
    });
    follows
        .into_iter()
        .max_by_key(|&(u, n)| (n, std::cmp::Reverse(u)))
        .map(|(u, _)| u)
        .ok_or_else(|| "the corpus has no follows".to_string())
}

pub async fn run(a: TimelineArgs) -> Result<String, String> {
    let user_id = match a.user_id {
        Some(u) => u,
        None => busiest_user(&a.corpus, a.corpus_seed)?,
    };
    let ch = crate::rank::wait_serving(
        &a.target,
        shardrank_proto::COORDINATOR_SERVICE,
        Duration::from_secs(a.wait_secs),
    )
    .await?;
    let mut client = CoordinatorClient::new(ch);
    let t0 = Instant::now();
    let r = client
        .timeline(TimelineRequest {
            user_id,
            limit: a.limit,
            include_stats: a.stats,
            ..Default::default()
        })
        .await
        .map_err(|s| {
            format!(
                "Timeline for user {user_id}: {:?}: {}",
                s.code(),
                s.message()
            )
        })?
        .into_inner();
    let took = t0.elapsed();
    println!("home timeline of user {user_id}:");
    println!(
        "{:>4} {:>20} {:>20} {:>10}  source",
        "#", "post", "author", "score"
    );
    for (i, e) in r.entries.iter().enumerate() {
        println!(
            "{:>4} {:>20} {:>20} {:>10.4}  {}",
            i + 1,
            e.tweet_id,
            e.author_id,
            e.score,
            e.source
        );
    }
    if let Some(st) = &r.stats {
        println!("\npipeline {} (trace {}):", st.pipeline, st.trace_id);
        println!(
            "{:<18} {:<9} {:<8} {:>9} {:>7} {:>7}  error",
            "component", "kind", "outcome", "ms", "in", "out"
        );
        for c in &st.components {
            println!(
                "{:<18} {:<9} {:<8} {:>9.2} {:>7} {:>7}  {}",
                c.name, c.kind, c.outcome, c.latency_ms, c.candidates_in, c.candidates_out, c.error
            );
        }
    }
    Ok(format!(
        "{} entries, missing shards {:?}, server {:.2} ms, client {:.2} ms",
        r.entries.len(),
        r.missing_shards,
        r.latency_ms,
        took.as_secs_f64() * 1e3
    ))
}
