//! Telemetry: tracing subscriber (text or JSON logs), OpenTelemetry trace export over
//! OTLP/HTTP when an endpoint is configured, and W3C trace context carried in NATS
//! headers so a trace follows an update from the ingress to the worker.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryArgs};

/// Keeps trace export running; flushes pending spans when dropped.
#[derive(Debug)]
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Flushing can fail when the collector is gone; spans are best effort.
            let _ = provider.shutdown();
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (a malformed endpoint, for example).
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[source] crate::BoxError),
    /// `TGPIPE_TRACE_FILTER` is not a filter in `RUST_LOG`'s syntax.
    #[error("TGPIPE_TRACE_FILTER is not a valid filter: {0}")]
    TraceFilter(String),
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs the global subscriber: text or JSON lines on stderr filtered by `RUST_LOG`
/// (default `info`), and OTLP/HTTP span export when `args.otlp_endpoint` is set,
/// filtered by `args.trace_filter` alone (each layer has its own filter, so
/// `RUST_LOG=warn` quiets the logs and keeps the traces).
pub fn init(service: &'static str, args: &TelemetryArgs) -> Result<TelemetryGuard, TelemetryError> {
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed(),
    };
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    // Checked before anything is installed: a typo must not silently export nothing.
    let span_filter = EnvFilter::try_new(&args.trace_filter)
        .map_err(|e| TelemetryError::TraceFilter(e.to_string()))?;
    let (otel, provider) = match args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        None => (None, None),
        Some(endpoint) => {
            let endpoint = endpoint.trim_end_matches('/');
            let endpoint = if endpoint.ends_with("/v1/traces") {
                endpoint.to_owned()
            } else {
                format!("{endpoint}/v1/traces")
            };
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| TelemetryError::Exporter(e.into()))?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(service)
                        .build(),
                )
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service))
                .with_filter(span_filter);
            EXPORTING.store(true, Ordering::Relaxed);
            (Some(layer), Some(provider))
        }
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint was configured). Hot paths create the
/// spans that only a trace needs, and propagate context, only when this is true.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

struct HeaderInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's W3C trace context (`traceparent`, `tracestate`) into
/// `headers`. Writes nothing when no trace is being recorded.
pub fn inject_current(headers: &mut async_nats::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers));
    });
}

/// Writes `span`'s W3C trace context into `headers` (a producer span, for example,
/// whose child the consumer's span becomes). Writes nothing when `span` records nothing.
pub fn inject(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers));
    });
}

struct W3cExtractor<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for W3cExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Makes `span` a child of a W3C context received over HTTP (a `traceparent` and an
/// optional `tracestate`), such as a tracing proxy's in front of the ingress. A value
/// that does not parse leaves `span` a root.
pub fn continue_from_w3c(traceparent: &str, tracestate: Option<&str>, span: &tracing::Span) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&W3cExtractor {
            traceparent,
            tracestate,
        })
    });
    let _ = span.set_parent(cx);
}

/// Makes `span` a child of the trace context carried in `headers`, if any.
pub fn continue_from(headers: &async_nats::HeaderMap, span: &tracing::Span) {
    let cx =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    // Fails only when the span is already closed or not an OpenTelemetry span.
    let _ = span.set_parent(cx);
}

static PROMETHEUS: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
    std::sync::OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle for
/// `/metrics` (`None` when another recorder was installed first, for example by an
/// embedding program). Every histogram named `*_seconds` gets buckets from 0.5 ms to
/// 30 s: publish latencies, handler times and Bot API calls alike.
pub fn prometheus() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PROMETHEUS
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0,
                    ],
                )
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}
