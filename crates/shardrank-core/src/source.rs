//! Where a process gets its events at start-up: the built-in generator or a file. Both
//! binaries take the same flags, so the coordinator and the shards always read the
//! same stream.

use crate::corpus::{generate, CorpusSpec, DEFAULT_SEED};
use crate::events::{binary, read_events_with, Event, EventError, OnMalformed, ReadReport};
use std::io::Write;
use std::path::PathBuf;

/// The data flags shared by `shardrank-shard` and `shardrank-coordinator`.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// Built-in corpus to generate at start-up: `standard` (100,000 users, 1,000,000
    /// tweets) or `tiny` (1,000 users, 10,000 tweets). Ignored with --events. Default
    /// `standard`, except with --kafka-brokers, where no --corpus and no --events means
    /// the data comes from the topics alone.
    #[arg(long, value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(CorpusSpec::NAMES))]
    pub corpus: Option<String>,
    /// Seed of the built-in corpus; the same seed gives the same corpus on every process.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub corpus_seed: u64,
    /// Load events from this file (see `shardrank gen`) instead of generating a corpus:
    /// JSON lines, or the binary form (`gen --format binary`, told by its first bytes),
    /// which loads several times faster; a damaged binary file stops start-up with the
    /// byte offset (--strict and --dead-letter-file apply to JSON lines only).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Stop start-up at the first malformed line of --events, naming it. Without it, a
    /// malformed line is logged with its number, counted and skipped, and every other
    /// line is still applied.
    #[arg(long)]
    pub strict: bool,
    /// Append each malformed line of --events skipped to this file, as one JSON object
    /// per line: the source file, its line number, what was wrong and the line itself.
    /// (With Kafka, malformed messages go to the dead-letter topic instead.)
    #[arg(long, value_name = "FILE")]
    pub dead_letter_file: Option<PathBuf>,
    /// After loading, apply the built-in live event stream at this many events per
    /// second (new posts, engagement, follows, blocks, mutes after the corpus' end; the
    /// same stream on every process); 0 turns it off. Users come from --corpus.
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    pub live_events_per_sec: f64,
}

#[derive(Clone, Debug)]
pub enum Source {
    Corpus(CorpusSpec),
    File {
        path: PathBuf,
        strict: bool,
        dead_letters: Option<PathBuf>,
    },
    /// A built-in corpus generated beforehand into the binary form (`shardrank up` does
    /// so once for all its processes): the same stream as [`Source::Corpus`].
    Binary {
        path: PathBuf,
        header: crate::events::binary::Header,
        /// From the end record, for sizing (None: the file has none; reading it fails).
        tweets: Option<u64>,
    },
    /// Nothing at start-up: everything comes from the live stream (Kafka).
    Empty,
}

impl DataArgs {
    /// The corpus named, or the default one.
    pub fn corpus_name(&self) -> &str {
        self.corpus.as_deref().unwrap_or("standard")
    }

    /// Whether a start-up source was named (--corpus or --events).
    pub fn names_a_source(&self) -> bool {
        self.corpus.is_some() || self.events.is_some()
    }

    /// The live stream to run, if any: its corpus (for user ids) and rate.
    pub fn live(&self) -> Result<Option<(CorpusSpec, f64)>, String> {
        let r = self.live_events_per_sec;
        if !(r.is_finite() && r >= 0.0) || r > 1_000_000.0 {
            return Err(format!(
                "--live-events-per-sec {r}: expected 0 (off) up to 1000000"
            ));
        }
        if r == 0.0 {
            return Ok(None);
        }
        let spec = CorpusSpec::named(self.corpus_name(), self.corpus_seed)
            .ok_or_else(|| format!("--corpus {:?} is not a known corpus", self.corpus_name()))?;
        Ok(Some((spec, r)))
    }

    /// The source these flags name; a file must exist and be readable.
    pub fn source(&self) -> Result<Source, String> {
        match &self.events {
            Some(path) => {
                let file_error =
                    |e: &dyn std::fmt::Display| format!("--events {}: {e}", path.display());
                if let Some((header, tweets)) = binary::probe(path).map_err(|e| match e {
                    EventError::Io(e) => file_error(&e),
                    e => file_error(&e),
                })? {
                    return Ok(Source::Binary {
                        path: path.clone(),
                        header,
                        tweets,
                    });
                }
                if let Some(d) = &self.dead_letter_file {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(d)
                        .map_err(|e| format!("--dead-letter-file {}: {e}", d.display()))?;
                }
                Ok(Source::File {
                    path: path.clone(),
                    strict: self.strict,
                    dead_letters: self.dead_letter_file.clone(),
                })
            }
            None => CorpusSpec::named(self.corpus_name(), self.corpus_seed)
                .map(Source::Corpus)
                .ok_or_else(|| {
                    format!(
                        "--corpus {:?}: expected one of {:?}",
                        self.corpus_name(),
                        CorpusSpec::NAMES
                    )
                }),
        }
    }
}

impl Source {
    /// Feeds every event to `apply`, in stream order; reports what was read and skipped.
    pub fn for_each(&self, mut apply: impl FnMut(Event)) -> Result<ReadReport, EventError> {
        match self {
            Source::Corpus(spec) => {
                let mut n = 0u64;
                generate(spec, |e| {
                    n += 1;
                    apply(e)
                });
                Ok(ReadReport {
                    events: n,
                    ..Default::default()
                })
            }
            Source::File {
                path,
                strict,
                dead_letters,
            } => {
                let f = std::fs::File::open(path)?;
                let mode = if *strict {
                    OnMalformed::Stop
                } else {
                    OnMalformed::Skip
                };
                let reader = std::io::BufReader::with_capacity(1 << 20, f);
                let mut dead = match dead_letters {
                    Some(d) => Some(std::io::BufWriter::new(
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(d)?,
                    )),
                    None => None,
                };
                let mut dead_err = None;
                let source = path.display().to_string();
                let res = read_events_with(reader, mode, apply, |line, raw, error| {
                    if let (Some(w), None) = (&mut dead, &dead_err) {
                        let entry = serde_json::json!({
                            "source": source,
                            "line": line,
                            "error": error,
                            "raw": String::from_utf8_lossy(raw),
                        });
                        if let Err(e) = serde_json::to_writer(&mut *w, &entry)
                            .map_err(std::io::Error::from)
                            .and_then(|_| w.write_all(b"\n"))
                        {
                            dead_err = Some(e);
                        }
                    }
                });
                if let Some(w) = &mut dead {
                    w.flush()?;
                }
                if let Some(e) = dead_err {
                    return Err(EventError::Io(e));
                }
                res.map_err(|e| match e {
                    EventError::Malformed { line, msg } => EventError::Malformed {
                        line,
                        msg: format!("{}: {msg}", path.display()),
                    },
                    other => other,
                })
            }
            Source::Binary { path, .. } => {
                // Unbuffered: the reader keeps its own buffer and decodes in place.
                binary::read_binary(std::fs::File::open(path)?, apply)
                    .map(|(_, report)| report)
                    .map_err(|e| match e {
                        EventError::Binary { offset, msg } => EventError::Binary {
                            offset,
                            msg: format!("{msg} (in {})", path.display()),
                        },
                        other => other,
                    })
            }
            Source::Empty => Ok(ReadReport::default()),
        }
    }

    /// A rough count of tweets, to size the store before loading.
    pub fn expected_tweets(&self) -> Option<u64> {
        match self {
            Source::Corpus(spec) => Some(spec.tweets),
            Source::Binary { tweets, .. } => *tweets,
            Source::File { .. } | Source::Empty => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Corpus(spec) => format!("corpus {} (seed {})", spec.name, spec.seed),
            // The same stream as generating it, so the same name: a snapshot made from
            // one is good for the other.
            Source::Binary { header, .. } => {
                format!("corpus {} (seed {})", header.corpus, header.seed)
            }
            Source::File { path, .. } => format!("events file {}", path.display()),
            Source::Empty => "no start-up source (the live stream only)".to_string(),
        }
    }
}
