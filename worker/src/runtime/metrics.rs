//! Prometheus metrics of the worker runtime.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `tgpipe_worker_consumed_total` | counter | `kind` |
//! | `tgpipe_worker_redeliveries_total` | counter | `kind` |
//! | `tgpipe_worker_outcomes_total` | counter | `kind`, `outcome` (`handled`, `unhandled`, `expired`, `duplicate`, `retried`, `dead_lettered`) |
//! | `tgpipe_worker_handler_seconds` | histogram | `kind` |
//! | `tgpipe_worker_dead_letters_total` | counter | `kind` |
//! | `tgpipe_worker_consumer_pending` | gauge | `lane`: updates not yet delivered (lag) of the partitions this pod owns; `sum by (lane)` over the pods is the lane's lag |
//! | `tgpipe_worker_consumer_ack_pending` | gauge | `lane`: delivered, not yet acknowledged, of the partitions this pod owns |
//! | `tgpipe_worker_partitions_owned` | gauge | `lane` |
//! | `tgpipe_worker_rebalances_total` | counter | `lane`: partitions taken by this pod |
//! | `tgpipe_worker_backlog_plans_total` | counter | `lane`: plans this pod made from the partitions' backlogs (it was the lane's planner) |
//! | `tgpipe_worker_backlog_moves_total` | counter | `lane`: partitions those plans moved to another pod |
//! | `tgpipe_worker_partitions_lost_total` | counter | `lane`: leases lost without a handover (expired or taken) |
//! | `tgpipe_worker_handover_seconds` | histogram | `lane`: from the decision to give a partition up to its lease's deletion |
//! | `tgpipe_worker_held_updates` | gauge | `lane`: updates queued in the pod (in memory or parked), not yet started |
//! | `tgpipe_worker_parked_updates` | gauge | `lane`: of them, parked past a chat's or the pod's cap (only their stream sequence kept) |
//! | `tgpipe_worker_bot_running` | gauge | `lane`, `bot`: run slots a bot holds |
//! | `tgpipe_worker_bot_waiting` | gauge | `lane`, `bot`: a bot's dispatches waiting for a run slot |
//! | `tgpipe_worker_chat_queue_depth_max` | gauge | `lane`: the deepest chat queue in the pod |
//! | `tgpipe_worker_oldest_held_seconds` | gauge | `lane`: age of the oldest held update that has not started |
//! | `tgpipe_worker_albums_total` | counter | `outcome` (as `tgpipe_worker_outcomes_total`, `given_back`): albums settled, each once with all its parts |
//! | `tgpipe_worker_album_parts_total` | counter | `outcome`: the parts of those albums |
//! | `tgpipe_worker_album_parts_collected_total` | counter | parts taken into an album being collected (a part given back and collected again counts again) |
//! | `tgpipe_worker_seen_unavailable_total` | counter | the memory of finished updates could not be read or written (fails open) |
//!
//! The webhook watchdog's `tgpipe_webhook_*` metrics are set in `webhook_watch`.
//!
//! Bot API calls are counted by the client (`tgpipe_bot_api_calls_total`). The `kind`
//! label holds the 27 known kinds, `unknown` for any other, so label sets stay bounded.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tgpipe_shared::UpdateKind;

/// Installs the process-wide Prometheus recorder once and returns its handle (`None`
/// when another recorder was installed first).
pub(super) fn install() -> Option<PrometheusHandle> {
    tgpipe_shared::telemetry::prometheus()
}

pub(crate) fn kind_label(kind: &UpdateKind) -> &'static str {
    if kind.as_str() == tgpipe_shared::timer::TIMER_KIND {
        return tgpipe_shared::timer::TIMER_KIND;
    }
    UpdateKind::ALL
        .iter()
        .find(|k| *k == kind)
        .map_or("unknown", UpdateKind::as_str)
}

/// A timer scheduled or cancelled, by result (`ok`, `unavailable`, `failed`).
pub(crate) fn timer_call(op: &'static str, result: &'static str) {
    metrics::counter!("tgpipe_worker_timer_calls_total", "op" => op, "result" => result)
        .increment(1);
}

/// How late a fired timer started, after its time.
pub(crate) fn timer_lateness(late: Duration) {
    metrics::histogram!("tgpipe_worker_timer_lateness_seconds").record(late.as_secs_f64());
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

pub(crate) fn album(outcome: &'static str, parts: usize) {
    metrics::counter!("tgpipe_worker_albums_total", "outcome" => outcome).increment(1);
    metrics::counter!("tgpipe_worker_album_parts_total", "outcome" => outcome)
        .increment(parts as u64);
}

pub(crate) fn album_part_collected() {
    metrics::counter!("tgpipe_worker_album_parts_collected_total").increment(1);
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

pub(crate) fn partitions_owned(lane: &str, n: usize) {
    metrics::gauge!("tgpipe_worker_partitions_owned", "lane" => lane.to_owned()).set(n as f64);
}

pub(crate) fn rebalance(lane: &str) {
    metrics::counter!("tgpipe_worker_rebalances_total", "lane" => lane.to_owned()).increment(1);
}

pub(crate) fn backlog_plan(lane: &str, moves: usize) {
    metrics::counter!("tgpipe_worker_backlog_plans_total", "lane" => lane.to_owned()).increment(1);
    metrics::counter!("tgpipe_worker_backlog_moves_total", "lane" => lane.to_owned())
        .increment(moves as u64);
}

pub(crate) fn partition_lost(lane: &str) {
    metrics::counter!("tgpipe_worker_partitions_lost_total", "lane" => lane.to_owned())
        .increment(1);
}

pub(crate) fn handover(lane: &str, took: Duration) {
    metrics::histogram!("tgpipe_worker_handover_seconds", "lane" => lane.to_owned())
        .record(took.as_secs_f64());
}

pub(crate) fn queues(lane: &str, held: usize, parked: usize, deepest: usize, oldest: Duration) {
    metrics::gauge!("tgpipe_worker_held_updates", "lane" => lane.to_owned()).set(held as f64);
    metrics::gauge!("tgpipe_worker_parked_updates", "lane" => lane.to_owned()).set(parked as f64);
    metrics::gauge!("tgpipe_worker_chat_queue_depth_max", "lane" => lane.to_owned())
        .set(deepest as f64);
    metrics::gauge!("tgpipe_worker_oldest_held_seconds", "lane" => lane.to_owned())
        .set(oldest.as_secs_f64());
}

pub(crate) fn seen_unavailable() {
    metrics::counter!("tgpipe_worker_seen_unavailable_total").increment(1);
}

/// Each bot's run slots and waiting dispatches. A bot that left the pod's queues is
/// reported once more at zero, then no longer.
pub(crate) fn bot_slots(lane: &str, load: &[(tgpipe_shared::BotId, (usize, usize))]) {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static SHOWN: Mutex<Option<HashSet<(String, u64)>>> = Mutex::new(None);
    let mut shown = SHOWN.lock().unwrap_or_else(|p| p.into_inner());
    let shown = shown.get_or_insert_with(HashSet::new);
    let mut now = HashSet::new();
    for (bot, (running, waiting)) in load {
        let labels = [("lane", lane.to_owned()), ("bot", bot.to_string())];
        metrics::gauge!("tgpipe_worker_bot_running", &labels).set(*running as f64);
        metrics::gauge!("tgpipe_worker_bot_waiting", &labels).set(*waiting as f64);
        now.insert((lane.to_owned(), bot.0));
    }
    for (l, bot) in shown.iter().filter(|k| k.0 == lane && !now.contains(*k)) {
        let labels = [("lane", l.clone()), ("bot", bot.to_string())];
        metrics::gauge!("tgpipe_worker_bot_running", &labels).set(0.0);
        metrics::gauge!("tgpipe_worker_bot_waiting", &labels).set(0.0);
    }
    shown.retain(|k| k.0 != lane);
    shown.extend(now);
}
