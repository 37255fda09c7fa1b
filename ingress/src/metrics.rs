//! Prometheus metrics of the ingress.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `tgpipe_ingress_requests_total` | counter | `bot` (id, or `unknown`), `status` |
//! | `tgpipe_ingress_publish_seconds` | histogram | `bot` |
//! | `tgpipe_ingress_body_bytes_total` | counter | `bot` |
//! | `tgpipe_ingress_duplicates_total` | counter | `bot` |
//! | `tgpipe_ingress_in_flight` | gauge | |
//!
//! The `bot` label only ever holds served bot ids (static ones, and the first
//! [`crate::bots::LABELLED_BOTS`] of the registry by id; the others are `other`), so a
//! scan of random paths cannot grow the label set, nor can a registry of many bots.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;

/// Installs the process-wide Prometheus recorder once and returns its handle (`None`
/// when another recorder was installed first).
pub fn install() -> Option<PrometheusHandle> {
    let handle = tgpipe_shared::telemetry::prometheus();
    // The request counter exists from the start, at zero, so that rates and the
    // alerts over it work before the first request: a peer outside the allowed ranges
    // is closed at accept and never becomes a request
    // (`tgpipe_ingress_connections_refused_total`).
    metrics::counter!("tgpipe_ingress_requests_total",
        "bot" => "unknown", "status" => "403")
    .increment(0);
    handle
}

/// A served bot's metric handles, registered at its first request and kept with the
/// bot: a stored update then touches its counters and histogram directly, with no
/// label set built, hashed and looked up per request. Other answers than `200` (rare,
/// and unbounded in kind) go through the registry as before.
#[derive(Debug, Default)]
pub(crate) struct BotMetrics(OnceLock<Handles>);

#[derive(Debug)]
struct Handles {
    ok: Counter,
    publish_seconds: Histogram,
    body_bytes: Counter,
    duplicates: Counter,
}

impl BotMetrics {
    fn handles(&self, label: &Arc<str>) -> &Handles {
        self.0.get_or_init(|| {
            let bot: metrics::SharedString = Arc::clone(label).into();
            Handles {
                ok: metrics::counter!("tgpipe_ingress_requests_total",
                    "bot" => bot.clone(), "status" => "200"),
                publish_seconds: metrics::histogram!("tgpipe_ingress_publish_seconds",
                    "bot" => bot.clone()),
                body_bytes: metrics::counter!("tgpipe_ingress_body_bytes_total",
                    "bot" => bot.clone()),
                duplicates: metrics::counter!("tgpipe_ingress_duplicates_total", "bot" => bot),
            }
        })
    }
}

pub(crate) fn request(bot: Option<(&Arc<str>, &BotMetrics)>, status: StatusCode) {
    if let (Some((label, handles)), StatusCode::OK) = (bot, status) {
        handles.handles(label).ok.increment(1);
        return;
    }
    let bot: metrics::SharedString = match bot {
        Some((label, _)) => Arc::clone(label).into(),
        None => "unknown".into(),
    };
    metrics::counter!("tgpipe_ingress_requests_total",
        "bot" => bot, "status" => status.as_str().to_owned())
    .increment(1);
}

pub(crate) fn published(
    bot: (&Arc<str>, &BotMetrics),
    took: Duration,
    bytes: usize,
    duplicate: bool,
) {
    let h = bot.1.handles(bot.0);
    h.publish_seconds.record(took.as_secs_f64());
    h.body_bytes.increment(bytes as u64);
    if duplicate {
        h.duplicates.increment(1);
    }
}

/// Counts a request in flight for as long as it lives.
pub(crate) struct InFlight(Gauge);

impl InFlight {
    /// `gauge` is the state's handle of `tgpipe_ingress_in_flight` ([`in_flight`]).
    pub(crate) fn enter(gauge: &Gauge) -> InFlight {
        gauge.increment(1.0);
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The handle of `tgpipe_ingress_in_flight`, taken once per server (after the recorder
/// is installed).
pub(crate) fn in_flight() -> Gauge {
    metrics::gauge!("tgpipe_ingress_in_flight")
}
