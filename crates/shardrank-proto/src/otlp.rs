//! Span export over OTLP (gRPC), off unless `--otlp-endpoint` is given: the request's
//! tracing spans (coordinator `rank`/`timeline`, its `shard_call`s and pipeline
//! `component`s, the shards' `shard_rank`/`shard_retrieve`) go to a collector (Jaeger,
//! Tempo, the OpenTelemetry Collector), joined into one trace by the W3C trace context
//! the processes already pass to each other.

use crate::trace::TraceContext;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Where spans go and how this process names itself there.
pub struct OtlpConfig<'a> {
    /// The collector, e.g. `http://collector:4317`.
    pub endpoint: &'a str,
    pub service: &'a str,
    /// Resource attributes, e.g. the shard index.
    pub attributes: Vec<(&'static str, String)>,
}

/// Keeps the exporter alive; flushes what is buffered when the process stops.
pub struct OtlpGuard {
    provider: SdkTracerProvider,
}

impl OtlpGuard {
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("otlp: flushing spans at shutdown: {e}");
        }
    }
}

/// The provider for `endpoint` (e.g. `http://collector:4317`), naming this process
/// `service` with `attributes`. Must run inside the Tokio runtime.
pub fn provider(
    endpoint: &str,
    service: &str,
    attributes: Vec<(&'static str, String)>,
) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(500))
                .build(),
        )
        .build();
    let resource = Resource::builder_empty()
        .with_service_name(service.to_string())
        .with_attributes(
            attributes
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v))
                .collect::<Vec<_>>(),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(resource)
        .build())
}

pub fn guard(provider: SdkTracerProvider) -> OtlpGuard {
    EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    OtlpGuard { provider }
}

/// Whether spans are exported (an [`OtlpGuard`] was made): without it, [`link`] has no
/// layer to tell, and building the remote context for nothing cost a shard about 0.3%
/// of its CPU at `rank-1k`.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process exports spans (`--otlp-endpoint` was given and tracing is up).
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Makes `span` a child of the remote span in `ctx` (the caller's), so that the spans of
/// every process of a request share its trace id. A no-op without OTLP export.
pub fn link(span: &tracing::Span, ctx: &TraceContext) {
    if !exporting() {
        return;
    }
    let remote = SpanContext::new(
        TraceId::from_bytes(ctx.trace_id.to_be_bytes()),
        SpanId::from_bytes(ctx.span_id.to_be_bytes()),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}
