//! What every shardrank server does the same way: `grpc.health.v1` for "" and its own
//! service, reflection v1 and v1alpha, tracing set-up, and stopping on SIGTERM/Ctrl-C.

use std::time::Duration;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The health service plus its reporter. Both "" and `service` start NOT_SERVING: a
/// server says SERVING only once it can answer (a shard: once its partition is loaded).
pub async fn health(
    service: &'static str,
    admin: Option<std::sync::Arc<crate::admin::Admin>>,
) -> (
    Health,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, server) = tonic_health::server::health_reporter();
    let health = Health {
        reporter,
        service,
        admin,
    };
    health.set(false).await;
    (health, server)
}

/// The HTTP/2 server both binaries build on. A 100k-id request is about 900 KB and a
/// shard's share 200 KB, and one connection carries every concurrent call to a shard:
/// hyper's 1 MB connection window holds five such calls, so eight in flight wait on
/// WINDOW_UPDATEs, and 16 KB frames make a request some sixty frames to parse. Windows
/// large enough for a few dozen large calls, and frames of up to 1 MB, instead (the
/// message size limits and the in-flight limit still bound what a peer can send).
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .max_frame_size(MAX_FRAME)
}

/// Bytes a peer may send on one connection before the server reads them.
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// The same for one call.
pub const STREAM_WINDOW: u32 = 8 << 20;
/// Largest HTTP/2 frame the servers accept.
pub const MAX_FRAME: u32 = 1 << 20;

/// Sets the status of "" and of the server's own service together.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    service: &'static str,
    /// The admin port's /healthz follows the same state.
    admin: Option<std::sync::Arc<crate::admin::Admin>>,
}

impl Health {
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        self.reporter.set_service_status(self.service, status).await;
        if let Some(a) = &self.admin {
            a.serving
                .store(serving, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Server reflection, v1 and v1alpha (grpcurl and older tools ask the latter).
pub fn reflection() -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the descriptor set is compiled into the binary and valid");
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the descriptor set is compiled into the binary and valid");
    (v1, v1alpha)
}

/// Stopping: on SIGTERM or Ctrl-C health turns NOT_SERVING, the server stops accepting
/// and finishes what is in flight; connections that have not closed after the drain
/// time are dropped, so a stuck client cannot keep the process alive.
#[derive(Clone)]
pub struct Shutdown {
    rx: tokio::sync::watch::Receiver<bool>,
}

impl Shutdown {
    /// Listens for the signal in the background.
    pub fn on_signal(health: Health) -> Shutdown {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            health.set(false).await;
            let _ = tx.send(true);
        });
        Shutdown { rx }
    }

    /// Resolves once shutdown was asked for.
    pub async fn requested(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|&v| v).await;
    }

    /// Resolves `drain` after shutdown was asked for.
    pub async fn drain_expired(&self, drain: std::time::Duration) {
        self.requested().await;
        tokio::time::sleep(drain).await;
        tracing::warn!(
            ?drain,
            "drain time over: closing the connections still open"
        );
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received: draining in-flight requests");
}

/// `--log-format`: human-readable text or one JSON object per line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not a log format (text or json)")),
        }
    }
}

/// Target of the spans that are there for the trace exporter only (a pipeline
/// component, a shard call). They are built only while spans are exported (without a
/// collector, tracing turns this target off), and log lines leave their fields out: the
/// log layer formats a span's fields into a string when the span is created, and a
/// request opens a dozen of these.
pub const TRACE_ONLY: &str = "shardrank_trace";

/// A request's span (`rank`, `timeline`, `shard_rank`, `shard_retrieve`), with the
/// given fields. INFO while spans are exported, so that the collector gets every
/// request whatever `RUST_LOG` says; DEBUG otherwise, so that at the default level no
/// span is built per request. A span costs its registry entry, its fields formatted
/// into a string and an enter and exit through every layer on each poll: at INFO, the
/// tracing crates were 3.6% of the coordinator's samples and 4.2% of a shard's at
/// `rank-1k`, 1.5% and 0.4% after (BENCHMARKS.md). The lines a request logs at INFO and
/// above carry its `trace_id` as a field instead; at DEBUG every line inside the span
/// carries the span's fields as before.
#[macro_export]
macro_rules! request_span {
    ($name:literal, $($field:tt)*) => {
        if $crate::otlp::exporting() {
            ::tracing::info_span!($name, $($field)*)
        } else {
            ::tracing::debug_span!($name, $($field)*)
        }
    };
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). Span fields (the request's
/// trace id among them) are on every line logged inside the span, except those of
/// [`TRACE_ONLY`] spans; see [`request_span`] for when a request has a span.
pub fn init_tracing(format: LogFormat) {
    let _ = init_tracing_with(format, None);
}

/// Logging as [`init_tracing`], plus span export over OTLP when `otlp` is given. Keep the guard until exit and call
/// its `shutdown` to flush. Must run inside the Tokio runtime.
pub fn init_tracing_with(
    format: LogFormat,
    otlp: Option<crate::otlp::OtlpConfig>,
) -> Result<Option<crate::otlp::OtlpGuard>, String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        otlp.is_some(),
    );
    let fmt = log_layer(format, std::io::stderr);
    let (otel, guard) = match otlp {
        Some(c) => {
            let provider = crate::otlp::provider(c.endpoint, c.service, c.attributes)?;
            use opentelemetry::trace::TracerProvider;
            let tracer = provider.tracer(c.service.to_string());
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(crate::otlp::guard(provider)),
            )
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .with(filter)
        .try_init();
    Ok(guard)
}

/// What tracing builds, for every layer: `base` (from `RUST_LOG`), less the
/// [`TRACE_ONLY`] spans when nothing exports them (no layer would read them).
fn tracing_filter(
    base: tracing_subscriber::EnvFilter,
    exporting: bool,
) -> tracing_subscriber::EnvFilter {
    if exporting {
        return base;
    }
    base.add_directive(
        format!("{TRACE_ONLY}=off")
            .parse()
            .expect("a target directive parses"),
    )
}

/// The log lines' layer: every event, in spans other than [`TRACE_ONLY`] ones.
fn log_layer<W>(
    format: LogFormat,
    writer: W,
) -> Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    // Colours only for a person at a terminal: log files stay plain text, and a span's
    // fields are formatted without escape codes when it opens.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let logged =
        tracing_subscriber::filter::filter_fn(|m| !(m.is_span() && m.target() == TRACE_ONLY));
    match format {
        LogFormat::Text => fmt.with_filter(logged).boxed(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(logged)
            .boxed(),
    }
}

/// The async runtime a server runs on: `workers` threads for gRPC and the work done
/// inline (a small Rank), or one per core (what the machine, or the container's CPU
/// quota, allows) when None. Several servers on one machine each want their share of
/// the cores, not all of them: a message that wakes an idle sibling worker is a futex
/// wake and a thread switch, and on a VM an interrupt between cores. Blocking work (a
/// large Rank, loading) has its own pool either way.
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    b.enable_all().build()
}

/// The async workers for each of `processes` servers that share `cores` (a local
/// cluster's shards): its share of the cores, at least one. A shard given every core
/// (tokio's default) wakes an idle sibling worker for each batch it reads and each item
/// it spawns, and with more shards than cores that is a thread switch per wake-up: at
/// rank-1k, one worker per shard instead of two cut the shards' CPU per request by
/// 6-10% (BENCHMARKS.md).
pub fn share_of_cores(cores: usize, processes: u32) -> u16 {
    let share = cores / (processes.max(1) as usize);
    share.clamp(1, 1024) as u16
}

/// This machine's cores (or the container's CPU quota), at least one.
pub fn cores() -> usize {
    // Asked once: std reads the cgroup's CPU quota from /proc and /sys at every call,
    // and a large Rank asks on its way to routing.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Registers `shardrank_runtime_workers`: the async worker threads of the runtime this
/// is called on, so that an operator can see what `--worker-threads` resolved to.
pub fn register_runtime(registry: &mut prometheus_client::registry::Registry) {
    let workers = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    workers.set(tokio::runtime::Handle::current().metrics().num_workers() as i64);
    registry.register(
        "shardrank_runtime_workers",
        "Async worker threads of this process's runtime",
        workers,
    );
}

/// Prints `program: error: msg` and gives the exit code for a configuration or start-up
/// error (2), the same for every binary.
pub fn exit_error(program: &str, msg: impl std::fmt::Display) -> std::process::ExitCode {
    eprintln!("{program}: error: {msg}");
    std::process::ExitCode::from(2)
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The time a request may take, from its `grpc-timeout` header, if it sent one.
pub fn request_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_sharing_a_machine_divide_its_cores_and_get_at_least_one_each() {
        assert_eq!(share_of_cores(2, 4), 1);
        assert_eq!(share_of_cores(2, 1), 2);
        assert_eq!(share_of_cores(16, 4), 4);
        assert_eq!(share_of_cores(16, 5), 3);
        assert_eq!(share_of_cores(2, 8), 1);
        assert_eq!(share_of_cores(4, 0), 4);
        assert_eq!(share_of_cores(1, u32::MAX), 1);
    }

    /// Tests that install a scoped subscriber run one at a time: callsites cache their
    /// interest across every live subscriber, and two tests' filters would meet there.
    static ONE_SUBSCRIBER: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A log line inside a trace-only span carries the request span's fields (its trace
    /// id) and not the trace-only span's; an ordinary span's fields are still there.
    #[test]
    fn trace_only_spans_stay_out_of_log_lines() {
        let _one = ONE_SUBSCRIBER.lock().unwrap_or_else(|p| p.into_inner());
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        for format in [LogFormat::Text, LogFormat::Json] {
            let buf = Buf::default();
            let out = buf.clone();
            let subscriber =
                tracing_subscriber::registry().with(log_layer(format, move || out.clone()));
            tracing::subscriber::with_default(subscriber, || {
                let rank = tracing::info_span!("rank", trace_id = "4bf92f35");
                let _r = rank.enter();
                let call = tracing::info_span!(target: TRACE_ONLY, "shard_call", skip = 777);
                let _c = call.enter();
                tracing::info!("inside the call");
                let part = tracing::info_span!("part", step = 31337);
                let _p = part.enter();
                tracing::info!("inside a part");
            });
            let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{text}");
            assert!(lines[0].contains("4bf92f35"), "{text}");
            assert!(
                !text.contains("777") && !text.contains("shard_call"),
                "{text}"
            );
            // Text shows every enabled span of the scope, JSON the innermost.
            assert!(lines[1].contains("31337"), "{text}");
            if format == LogFormat::Text {
                assert!(lines[1].contains("4bf92f35"), "{text}");
            }
        }
    }

    /// Without export, a request's span exists only at DEBUG, and the trace-only spans
    /// not at all; ordinary INFO spans and events are untouched.
    #[test]
    fn without_export_request_and_trace_only_spans_are_not_built() {
        let _one = ONE_SUBSCRIBER.lock().unwrap_or_else(|p| p.into_inner());
        use tracing_subscriber::layer::SubscriberExt;
        assert!(!crate::otlp::exporting());
        let at = |level: &str| {
            tracing_subscriber::registry().with(tracing_filter(
                tracing_subscriber::EnvFilter::new(level),
                false,
            ))
        };
        tracing::subscriber::with_default(at("info"), || {
            assert!(crate::request_span!("rank", trace_id = "4bf92f35").is_disabled());
            assert!(tracing::info_span!(target: TRACE_ONLY, "shard_call").is_disabled());
            assert!(!tracing::info_span!("startup").is_disabled());
            assert!(tracing::event_enabled!(tracing::Level::INFO));
        });
        tracing::subscriber::with_default(at("debug"), || {
            assert!(!crate::request_span!("rank", trace_id = "4bf92f35").is_disabled());
            assert!(tracing::info_span!(target: TRACE_ONLY, "shard_call").is_disabled());
        });
        let exported = tracing_subscriber::registry().with(tracing_filter(
            tracing_subscriber::EnvFilter::new("info"),
            true,
        ));
        tracing::subscriber::with_default(exported, || {
            assert!(!tracing::info_span!(target: TRACE_ONLY, "shard_call").is_disabled());
        });
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5000u"), Some(Duration::from_millis(5)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
