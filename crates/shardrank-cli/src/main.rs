//! `shardrank`: the operator's CLI.
//!
//! - `shardrank gen`: writes a built-in corpus as an events file, so outside tools and
//!   other systems load exactly the same data and draw the same ids.
//! - `shardrank model export`: writes the built-in models as safetensors files, the
//!   starting point for a model directory (`--model-dir`).
//! - `shardrank rank`: sends Rank requests to a coordinator and prints the answers.
//! - `shardrank up`: a whole cluster as local processes, until Ctrl-C.
//! - `shardrank produce`: loads an events file into Kafka with the md5 partitioner.

mod produce;
mod rank;
mod timeline;
mod up;

use clap::{Parser, Subcommand};
use shardrank_core::corpus::{generate, CorpusSpec, DEFAULT_SEED};
use shardrank_core::events::binary;
use shardrank_core::events::{Event, EventWriter};
use shardrank_core::model::Models;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "shardrank", version, about = "shardrank operator CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a built-in corpus as an events file: JSON lines (schema version 1) or the
    /// binary form, which processes load several times faster.
    Gen {
        /// Which corpus: `standard` (100,000 users, 1,000,000 tweets) or `tiny`.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(CorpusSpec::NAMES))]
        corpus: String,
        /// Seed; the same seed gives the same corpus.
        #[arg(long, default_value_t = DEFAULT_SEED)]
        corpus_seed: u64,
        /// Output file (`-` for standard output).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// `json` (JSON lines, for any tool) or `binary` (`--events` reads either).
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
    },
    /// Send Rank requests with candidates drawn from a corpus; print answers and latency.
    Rank(rank::RankArgs),
    /// Show one user's home timeline (Coordinator.Timeline), with each post's source.
    Timeline(timeline::TimelineArgs),
    /// Start a local cluster (shards and a coordinator on loopback) until Ctrl-C.
    Up(up::UpArgs),
    /// Load an events file into Kafka: the post topic partitioned by the shards' md5
    /// routing, the user topic by user; topics created with N partitions if missing.
    Produce(produce::ProduceArgs),
    /// Wait until a server's health check says SERVING (exit 0), or time out (exit 2).
    Wait {
        /// The server's URL.
        #[arg(long, default_value = "http://127.0.0.1:7000")]
        target: String,
        /// How long to wait.
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        timeout_secs: u64,
    },
    /// Model files.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Write the built-in models as light.safetensors and heavy.safetensors.
    Export {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
    /// Load a model directory and report its shapes, or what is wrong with it.
    Check {
        #[arg(long, value_name = "DIR")]
        model_dir: PathBuf,
    },
}

/// An events file's form.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Binary,
}

/// Writes corpus `spec` to `out` (`-`: standard output) in `format`; the events written.
pub fn write_corpus(spec: &CorpusSpec, format: Format, out: &Path) -> Result<u64, String> {
    let sink: Box<dyn Write> = if out.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(out).map_err(|e| format!("creating {}: {e}", out.display()))?,
        )
    };
    let sink = BufWriter::with_capacity(1 << 20, sink);
    let failed = |e: std::io::Error| format!("writing {}: {e}", out.display());
    // The first write error ends the writing (the generator itself cannot stop).
    fn drive(
        spec: &CorpusSpec,
        mut write: impl FnMut(&Event) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        let (mut n, mut err) = (0u64, None);
        generate(spec, |e| {
            if err.is_none() {
                match write(&e) {
                    Ok(()) => n += 1,
                    Err(e) => err = Some(e),
                }
            }
        });
        err.map_or(Ok(n), Err)
    }
    match format {
        Format::Json => {
            let mut w = EventWriter::new(sink, spec.name, spec.seed).map_err(failed)?;
            let n = drive(spec, |e| w.write(e)).map_err(failed)?;
            w.finish().map_err(failed)?;
            Ok(n)
        }
        Format::Binary => binary::write_corpus(spec, sink).map_err(failed),
    }
}

fn gen(corpus: &str, seed: u64, out: &Path, format: Format) -> Result<String, String> {
    let spec = CorpusSpec::named(corpus, seed)
        .ok_or_else(|| format!("--corpus {corpus:?} is not a known corpus"))?;
    let n = write_corpus(&spec, format, out).map_err(|e| format!("--out: {e}"))?;
    Ok(format!(
        "wrote {n} events of corpus {} (seed {seed}) to {}",
        spec.name,
        out.display()
    ))
}

fn block_on<F: std::future::Future<Output = Result<String, String>>>(
    f: F,
) -> Result<String, String> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => Err(format!("starting the runtime: {e}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Rank(args) => block_on(rank::run(args)),
        Command::Up(args) => block_on(up::run(args)),
        Command::Produce(args) => block_on(produce::run(args)),
        Command::Timeline(args) => block_on(timeline::run(args)),
        Command::Wait { target, timeout_secs } => block_on(async move {
            let t0 = std::time::Instant::now();
            rank::wait_serving(&target, "", std::time::Duration::from_secs(timeout_secs))
                .await
                .map(|_| format!("{target} is serving (after {:.2} s)", t0.elapsed().as_secs_f64()))
        }),
        Command::Gen {
            corpus,
            corpus_seed,
            out,
            format,
        } => gen(&corpus, corpus_seed, &out, format),
        Command::Model { command: ModelCommand::Export { out_dir } } => Models::builtin()
            .save_dir(&out_dir)
            .map(|_| format!("wrote the built-in models to {}", out_dir.display()))
            .map_err(|e| format!("--out-dir {}: {e}", out_dir.display())),
        Command::Model { command: ModelCommand::Check { model_dir } } => Models::load_dir(&model_dir)
            .map(|m| {
                let (h1, h2) = m.heavy.hidden();
                format!(
                    "{}: ok: light ranker over {} features; heavy ranker {}-{h1}-{h2}-4, head weights {:?}",
                    model_dir.display(),
                    shardrank_core::features::NUM_FEATURES,
                    shardrank_core::features::NUM_FEATURES,
                    m.heavy.head_weights
                )
            })
            .map_err(|e| e.to_string()),
    };
    match res {
        Ok(msg) => {
            eprintln!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shardrank: error: {e}");
            ExitCode::from(2)
        }
    }
}
