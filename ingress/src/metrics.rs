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

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;

/// Installs the process-wide Prometheus recorder once and returns its handle (`None`
/// when another recorder was installed first).
pub fn install() -> Option<PrometheusHandle> {
    tgpipe_shared::telemetry::prometheus()
}

pub(crate) fn request(bot: Option<&Arc<str>>, status: StatusCode) {
    let bot: metrics::SharedString = match bot {
        Some(label) => Arc::clone(label).into(),
        None => "unknown".into(),
    };
    metrics::counter!("tgpipe_ingress_requests_total",
        "bot" => bot, "status" => status.as_str().to_owned())
    .increment(1);
}

pub(crate) fn published(bot: &Arc<str>, took: Duration, bytes: usize, duplicate: bool) {
    let bot: metrics::SharedString = Arc::clone(bot).into();
    metrics::histogram!("tgpipe_ingress_publish_seconds", "bot" => bot.clone())
        .record(took.as_secs_f64());
    metrics::counter!("tgpipe_ingress_body_bytes_total", "bot" => bot.clone())
        .increment(bytes as u64);
    if duplicate {
        metrics::counter!("tgpipe_ingress_duplicates_total", "bot" => bot).increment(1);
    }
}

/// Counts a request in flight for as long as it lives.
pub(crate) struct InFlight;

impl InFlight {
    pub(crate) fn enter() -> InFlight {
        metrics::gauge!("tgpipe_ingress_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("tgpipe_ingress_in_flight").decrement(1.0);
    }
}
