//! `shardrank rank`: sends real Rank requests to a coordinator and prints what came
//! back and how long it took. Candidates are drawn from the same deterministic corpus
//! the cluster loaded, so every id is known to it.

use shardrank_core::corpus::{generate, CorpusSpec, DEFAULT_SEED};
use shardrank_core::events::Event;
use shardrank_core::rng::Rng;
use shardrank_proto::v1::coordinator_client::CoordinatorClient;
use shardrank_proto::v1::RankRequest;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[derive(clap::Args)]
pub struct RankArgs {
    /// The coordinator's URL.
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    target: String,
    /// Corpus the cluster was started with; candidates are drawn from its tweets.
    #[arg(long, default_value = "standard", value_parser = clap::builder::PossibleValuesParser::new(CorpusSpec::NAMES))]
    corpus: String,
    #[arg(long, default_value_t = DEFAULT_SEED)]
    corpus_seed: u64,
    /// Candidates per request, drawn uniformly from the corpus.
    #[arg(long, default_value_t = 10_000)]
    candidates: usize,
    /// How many requests to send, one after the other.
    #[arg(long, default_value_t = 10)]
    requests: usize,
    /// top_k of each request (0 means the server's default, 100).
    #[arg(long, default_value_t = 100)]
    top_k: u32,
    /// Rank for this user; by default each request draws a user from the corpus.
    #[arg(long)]
    user_id: Option<u64>,
    /// How many of the first answer's candidates to print.
    #[arg(long, default_value_t = 5)]
    show: usize,
    /// How long to wait for the coordinator to report SERVING.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    wait_secs: u64,
    /// Seed for drawing users and candidates.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Ask for each request's own stats and print where its time went.
    #[arg(long)]
    stats: bool,
}

/// `service` is the health-check service name: "" for the server as a whole,
/// `shardrank.v1.Coordinator` to be sure it is a coordinator (a shard that took the
/// port answers NOT_FOUND for it).
pub async fn wait_serving(
    target: &str,
    service: &str,
    within: Duration,
) -> Result<Channel, String> {
    let endpoint = Channel::from_shared(target.to_string())
        .map_err(|e| format!("--target {target:?}: {e}"))?;
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < within {
        match endpoint.connect().await {
            Ok(ch) => match HealthClient::new(ch.clone())
                .check(HealthCheckRequest {
                    service: service.to_string(),
                })
                .await
            {
                Ok(r) if r.get_ref().status == 1 => return Ok(ch),
                Ok(_) => last = "not serving yet".into(),
                Err(e) => last = e.message().to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "--target {target}: not serving after {within:?} ({last})"
    ))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub async fn run(a: RankArgs) -> Result<String, String> {
    let spec = CorpusSpec::named(&a.corpus, a.corpus_seed)
        .ok_or_else(|| format!("--corpus {:?}: unknown corpus", a.corpus))?;
    let (mut tweets, mut users) = (Vec::new(), Vec::new());
    generate(&spec, |e| match e {
        Event::NewTweet(t) => tweets.push(t.id),
        Event::User(u) => users.push(u.user_id),
        _ => {}
    });
    if a.requests == 0 || a.candidates == 0 {
        return Err("--requests and --candidates must be at least 1".into());
    }
    let waited = Instant::now();
    let ch = wait_serving(
        &a.target,
        shardrank_proto::COORDINATOR_SERVICE,
        Duration::from_secs(a.wait_secs),
    )
    .await?;
    println!(
        "{} is serving (waited {:.2} s)",
        a.target,
        waited.elapsed().as_secs_f64()
    );
    let mut client = CoordinatorClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut rng = Rng::new(a.seed);
    let mut lat = Vec::with_capacity(a.requests);
    println!(
        "{:>4} {:>12} {:>10} {:>8} {:>8} {:>10} {:>10}",
        "req", "user", "candidates", "returned", "missing", "server_ms", "client_ms"
    );
    for r in 0..a.requests {
        let user = a
            .user_id
            .unwrap_or_else(|| users[rng.zipf(users.len() as u64, 0.8) as usize]);
        let ids: Vec<u64> = (0..a.candidates)
            .map(|_| tweets[rng.below(tweets.len() as u64) as usize])
            .collect();
        let t0 = Instant::now();
        let resp = client
            .rank(RankRequest {
                include_stats: a.stats,
                user_id: user,
                candidate_ids: ids,
                top_k: a.top_k,
            })
            .await
            .map_err(|s| format!("request {r}: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        lat.push(ms);
        println!(
            "{r:>4} {user:>12} {:>10} {:>8} {:>8} {:>10.2} {ms:>10.2}",
            a.candidates,
            resp.candidates.len(),
            format!("{:?}", resp.missing_shards),
            resp.latency_ms
        );
        if let Some(st) = &resp.stats {
            println!(
                "     route {:.2} ms, merge {:.2} ms, coverage {:.2}",
                st.route_ms, st.merge_ms, st.coverage
            );
            for c in &st.shard_calls {
                println!(
                    "     shard {}{}: {:.2} ms at the coordinator, {:.2} ms in the shard (light {:.2}, heavy {:.2}), {} candidates, {} heavy{}",
                    c.shard,
                    if c.second_round { " (round 2)" } else { "" },
                    c.latency_ms,
                    c.server_ms,
                    c.light_ms,
                    c.heavy_ms,
                    c.candidates,
                    c.heavy_scored,
                    if c.error.is_empty() { String::new() } else { format!(", error: {}", c.error) }
                );
            }
        }
        if r == 0 && a.show > 0 {
            println!(
                "     top {} of the first answer:",
                a.show.min(resp.candidates.len())
            );
            println!(
                "     {:>20} {:>16} {:>9} {:>9} {:>5}",
                "tweet", "author", "score", "light", "shard"
            );
            for c in resp.candidates.iter().take(a.show) {
                println!(
                    "     {:>20} {:>16} {:>9.4} {:>9.4} {:>5}",
                    c.id, c.author_id, c.score, c.light_score, c.shard
                );
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok(format!(
        "{} requests of {} candidates: client latency p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        lat.len(),
        a.candidates,
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        lat[lat.len() - 1]
    ))
}
