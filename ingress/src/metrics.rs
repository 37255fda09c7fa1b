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
//! The `bot` label only ever holds configured bot ids, so a scan of random paths cannot
//! grow the label set.

use std::time::Duration;

use axum::http::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;
use tgpipe_shared::BotId;

/// Installs the process-wide Prometheus recorder once and returns its handle (`None`
/// when another recorder was installed first).
pub fn install() -> Option<PrometheusHandle> {
    tgpipe_shared::telemetry::prometheus()
}

fn bot_label(bot: Option<BotId>) -> String {
    bot.map_or_else(|| "unknown".to_owned(), |b| b.to_string())
}

pub(crate) fn request(bot: Option<BotId>, status: StatusCode) {
    metrics::counter!("tgpipe_ingress_requests_total",
        "bot" => bot_label(bot), "status" => status.as_u16().to_string())
    .increment(1);
}

pub(crate) fn published(bot: BotId, took: Duration, bytes: usize, duplicate: bool) {
    let bot = bot.to_string();
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
