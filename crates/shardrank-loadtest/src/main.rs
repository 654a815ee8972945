//! `shardrank-loadtest`: runs the standard workloads against a Coordinator and reports
//! throughput, latency quantiles, errors by code and partial answers.
//!
//! Path of a run: [`config`] (flags) -> [`workload`] (draw and encode a pool of
//! requests) -> [`client`] (connections, pre-encoded calls) -> [`driver`] (closed or
//! open loop) -> [`report`] (summary and JSON).

mod client;
mod config;
mod driver;
mod report;
mod sample;
mod workload;

use clap::Parser;
use config::{LoadConfig, Mode};
use indicatif::{ProgressBar, ProgressStyle};
use report::{RunHead, RunReport};
use shardrank_core::corpus::CorpusSpec;
use shardrank_proto::serving;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use workload::{build_pool, parse_list, Universe};

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    serving::exit_error("shardrank-loadtest", msg)
}

fn progress_bar(cfg: &LoadConfig, label: &str) -> Option<ProgressBar> {
    let total = cfg.warmup + cfg.duration;
    let show = !cfg.quiet
        && std::io::stderr().is_terminal()
        && std::env::var_os("CI").is_none()
        && total > Duration::from_secs(3);
    show.then(|| {
        let pb = ProgressBar::new(total.as_millis() as u64);
        pb.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed}/{duration} {msg}")
                .expect("valid template"),
        );
        pb.set_prefix(label.to_string());
        pb
    })
}

async fn run_one(
    cfg: &LoadConfig,
    mode: Mode,
    w: &workload::Workload,
    universe: &Universe,
    data: &str,
) -> Result<RunReport, String> {
    let channels = client::connect(&cfg.target, cfg.connections).await?;
    let pool = build_pool(w, universe, cfg.pool, cfg.seed);
    let target = Arc::new(driver::Target {
        channels,
        path: w.rpc.path(),
        pool,
        timeout: cfg.timeout,
    });
    let progress = Arc::new(driver::Progress::default());
    let bar = progress_bar(cfg, w.id);
    let ticker = bar.clone().map(|pb| {
        let p = progress.clone();
        let t0 = tokio::time::Instant::now();
        tokio::spawn(async move {
            loop {
                pb.set_position(t0.elapsed().as_millis() as u64);
                pb.set_message(format!(
                    "{} done, {} errors",
                    p.done.load(Ordering::Relaxed),
                    p.errors.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let cpu0 = driver::process_cpu();
    let wall0 = std::time::Instant::now();
    let window = driver::Window::new(cfg.warmup, cfg.duration);
    let stats = match mode {
        Mode::Closed { concurrency } => driver::closed(target, concurrency, window, progress).await,
        Mode::Open { rate } => {
            driver::open(target, rate, cfg.max_in_flight, window, progress).await
        }
    };
    let cpu_pct = 100.0 * (driver::process_cpu() - cpu0).as_secs_f64()
        / wall0.elapsed().as_secs_f64().max(1e-9);
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    let head = RunHead {
        workload: w.id.to_string(),
        cluster: cfg.cluster.clone(),
        mode: mode.name().to_string(),
        level: mode.level(),
        client_cpu_pct: cpu_pct,
        connections: cfg.connections,
        target: cfg.target.clone(),
        data: data.to_string(),
    };
    Ok(RunReport::new(&stats, cfg.duration, head))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = LoadConfig::parse();
    if let Err(e) = cfg.validate() {
        return fail(e);
    }
    let mode = match cfg.mode() {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let workloads = match parse_list(&cfg.workload) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    // Reach the target before spending time on the corpus.
    if let Err(e) = client::connect(&cfg.target, 1).await {
        return fail(e);
    }
    let (universe, data) = match &cfg.ids_file {
        Some(path) => match Universe::from_ids_file(path) {
            Ok(u) => (u, format!("ids-file {}", path.display())),
            Err(e) => return fail(e),
        },
        None => {
            let spec =
                CorpusSpec::named(&cfg.corpus, cfg.corpus_seed).expect("clap checked the name");
            (
                Universe::from_corpus(&spec),
                format!("corpus {} seed {}", spec.name, spec.seed),
            )
        }
    };
    for w in &workloads {
        let report = match run_one(&cfg, mode, w, &universe, &data).await {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        println!("{}", report.summary());
        if cfg.stats_sample > 0 {
            let ch = match client::connect(&cfg.target, 1).await {
                Ok(mut c) => c.remove(0),
                Err(e) => return fail(e),
            };
            match sample::sample(ch, w, &universe, cfg.stats_sample, cfg.seed, cfg.timeout).await {
                Ok(s) => println!("{s}"),
                Err(e) => return fail(e),
            }
        }
        if let Some(path) = &cfg.json {
            let line = serde_json::to_string(&report).expect("serialisable");
            let res = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = res {
                return fail(format!("--json {}: {e}", path.display()));
            }
        }
    }
    ExitCode::SUCCESS
}
