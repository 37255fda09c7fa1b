//! Prometheus metrics of the worker runtime.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `tgpipe_worker_consumed_total` | counter | `kind` |
//! | `tgpipe_worker_redeliveries_total` | counter | `kind` |
//! | `tgpipe_worker_outcomes_total` | counter | `kind`, `outcome` (`handled`, `unhandled`, `duplicate`, `retried`, `dead_lettered`) |
//! | `tgpipe_worker_handler_seconds` | histogram | `kind` |
//! | `tgpipe_worker_dead_letters_total` | counter | `kind` |
//! | `tgpipe_worker_consumer_pending` | gauge | `lane`: updates in the stream not yet delivered (lag) |
//! | `tgpipe_worker_consumer_ack_pending` | gauge | `lane`: delivered, not yet acknowledged |
//!
//! Bot API calls are counted by the client (`tgpipe_bot_api_calls_total`). The `kind`
//! label holds the 27 known kinds, `unknown` for any other, so label sets stay bounded.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tgpipe_shared::UpdateKind;

/// Installs the process-wide Prometheus recorder once and returns its handle (`None`
/// when another recorder was installed first).
pub fn install() -> Option<PrometheusHandle> {
    tgpipe_shared::telemetry::prometheus()
}

pub(crate) fn kind_label(kind: &UpdateKind) -> &'static str {
    UpdateKind::ALL
        .iter()
        .find(|k| *k == kind)
        .map_or("unknown", UpdateKind::as_str)
}

pub(crate) fn consumed(kind: &'static str, redelivered: bool) {
    metrics::counter!("tgpipe_worker_consumed_total", "kind" => kind).increment(1);
    if redelivered {
        metrics::counter!("tgpipe_worker_redeliveries_total", "kind" => kind).increment(1);
    }
}

pub(crate) fn outcome(kind: &'static str, outcome: &'static str) {
    metrics::counter!("tgpipe_worker_outcomes_total", "kind" => kind, "outcome" => outcome)
        .increment(1);
}

pub(crate) fn handler_time(kind: &'static str, took: Duration) {
    metrics::histogram!("tgpipe_worker_handler_seconds", "kind" => kind).record(took.as_secs_f64());
}

pub(crate) fn dead_letter(kind: &'static str) {
    metrics::counter!("tgpipe_worker_dead_letters_total", "kind" => kind).increment(1);
}

pub(crate) fn lag(lane: &str, pending: u64, ack_pending: usize) {
    metrics::gauge!("tgpipe_worker_consumer_pending", "lane" => lane.to_owned())
        .set(pending as f64);
    metrics::gauge!("tgpipe_worker_consumer_ack_pending", "lane" => lane.to_owned())
        .set(ack_pending as f64);
}
