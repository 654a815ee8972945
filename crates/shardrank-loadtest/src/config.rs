//! The load test's command line. Flags are kept stable: scripts and other teams use them.

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// Load-tests any server implementing shardrank.v1.Coordinator with the standard
/// workloads of bench/WORKLOADS.md: closed loop (--concurrency) for throughput, open
/// loop (--rate) for latency without coordinated omission.
#[derive(Parser, Debug, Clone)]
#[command(name = "shardrank-loadtest", version)]
pub struct LoadConfig {
    /// The coordinator's URL, e.g. http://127.0.0.1:7000.
    #[arg(long)]
    pub target: String,
    /// Workload id, or a comma-separated list run in turn: rank-1k, rank-10k, rank-100k,
    /// timeline.
    #[arg(long, default_value = "rank-1k")]
    pub workload: String,
    /// Corpus to draw users and candidate ids from (the cluster's corpus).
    #[arg(long, default_value = "standard", value_parser = clap::builder::PossibleValuesParser::new(shardrank_core::corpus::CorpusSpec::NAMES))]
    pub corpus: String,
    #[arg(long, default_value_t = shardrank_core::corpus::DEFAULT_SEED)]
    pub corpus_seed: u64,
    /// Draw candidate ids from this file (one decimal id per line) instead of the
    /// corpus, to load-test any other implementation of the contract. Users are then
    /// random ids (cold-start users).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["corpus"])]
    pub ids_file: Option<PathBuf>,
    /// Closed loop: this many requests in flight at all times (throughput).
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<u32>,
    /// Open loop: requests per second, sent on schedule whatever the server does;
    /// latency counts from the scheduled send time (latency).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured time per run (e.g. 15s, 500ms, 1m).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Time before measuring, not counted.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Append one JSON object per run to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// HTTP/2 connections to spread requests over, so the client is not the bottleneck.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Label of the cluster under test, written to the JSON `cluster` field (e.g. 4x1).
    #[arg(long, default_value = "unspecified")]
    pub cluster: String,
    /// Per-request deadline (sent as grpc-timeout).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Open loop: most requests in flight before new ones count as client-overloaded.
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// Distinct requests prepared per workload (sent round-robin).
    #[arg(long, default_value_t = 32)]
    pub pool: usize,
    /// Seed for drawing users and candidates.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// After each run, send this many requests of the workload that ask for their own
    /// stats, and print where their time went (per shard, per pipeline component).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub stats_sample: usize,
    /// Never draw a progress bar (it is drawn only on a terminal, outside CI, anyway).
    #[arg(long)]
    pub quiet: bool,
}

/// How a run drives load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Closed { concurrency: u32 },
    Open { rate: f64 },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Closed { .. } => "closed",
            Mode::Open { .. } => "open",
        }
    }

    pub fn level(&self) -> f64 {
        match *self {
            Mode::Closed { concurrency } => concurrency as f64,
            Mode::Open { rate } => rate,
        }
    }
}

impl LoadConfig {
    pub fn mode(&self) -> Result<Mode, String> {
        match (self.concurrency, self.rate) {
            (Some(0), _) => Err("--concurrency must be at least 1".into()),
            (Some(c), None) => Ok(Mode::Closed { concurrency: c }),
            (None, Some(r)) if !(r > 0.0 && r.is_finite()) => Err(format!(
                "--rate must be a positive number of requests per second, not {r}"
            )),
            (None, Some(r)) => Ok(Mode::Open { rate: r }),
            (None, None) => {
                Err("give --concurrency C (closed loop) or --rate R (open loop)".into())
            }
            (Some(_), Some(_)) => Err("--concurrency and --rate exclude each other".into()),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.duration.is_zero() {
            return Err("--duration must be more than 0".into());
        }
        if self.connections == 0 || self.pool == 0 {
            return Err("--connections and --pool must be at least 1".into());
        }
        if !(self.target.starts_with("http://") || self.target.starts_with("https://")) {
            return Err(format!(
                "--target {:?} must be a URL such as http://127.0.0.1:7000",
                self.target
            ));
        }
        Ok(())
    }
}
