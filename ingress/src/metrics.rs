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

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::StatusCode;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tgpipe_shared::BotId;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle (`None`
/// when another recorder was installed first, for example by an embedding program).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("tgpipe_ingress_publish_seconds".to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ],
                )
                .ok()?;
            builder.install_recorder().ok()
        })
        .clone()
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
