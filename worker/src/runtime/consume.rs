//! The consuming loop: pull the lane's updates, run the dispatcher, acknowledge.
//!
//! - **Backpressure**: a permit of `TGPIPE_CONCURRENCY` is taken before the next update is
//!   pulled, so at most that many updates are in this pod (queued or running); nothing is
//!   buffered without bound.
//! - **Order**: updates of one ordering key (the chat, else the user) run one at a time, in
//!   the order the stream delivered them; different keys run in parallel.
//! - **Acknowledgement**: handled or unhandled -> ack; a transient failure -> nak with a
//!   delay that doubles per delivery; a permanent failure, or a transient one at the last
//!   allowed delivery -> the update goes to the dead-letter stream with `Tg-Error` and
//!   `Tg-Deliveries`, then term. While a handler runs, in-progress acks keep the update
//!   from being redelivered to another pod.
//! - **Duplicates** older than JetStream's dedupe window are skipped with the per-chat
//!   memory of finished updates ([`super::seen`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use futures::{FutureExt, StreamExt};
use tgpipe_shared::subject::{UpdateSubject, dlq_subject};
use tgpipe_shared::{BotId, UpdateKind, extract_keys, headers};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::metrics;
use super::seen::Seen;
use crate::bot::Bot;
use crate::dispatcher::Dispatcher;
use crate::error::DispatchOutcome;

/// How updates are acknowledged and retried.
#[derive(Debug, Clone)]
pub struct AckSettings {
    /// Deliveries of an update before it is dead-lettered.
    pub max_deliver: u32,
    /// The consumer's ack wait; in-progress acks are sent at a third of it.
    pub ack_wait: Duration,
    /// First retry delay; doubles per delivery.
    pub retry_delay: Duration,
    /// Longest retry delay.
    pub retry_max_delay: Duration,
}

impl AckSettings {
    /// The nak delay after the `delivered`-th delivery failed.
    pub fn retry_delay(&self, delivered: u32) -> Duration {
        let doublings = delivered.saturating_sub(1).min(20);
        self.retry_delay
            .saturating_mul(1 << doublings)
            .min(self.retry_max_delay)
    }
}

/// What the consuming loop needs.
pub struct Consumer {
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) bots: Arc<HashMap<BotId, Bot>>,
    pub(crate) js: jetstream::Context,
    pub(crate) acks: AckSettings,
    pub(crate) seen: Option<Seen>,
    pub(crate) lane: String,
}

type OrderKey = (BotId, i64);

struct Job {
    msg: jetstream::Message,
    _permit: OwnedSemaphorePermit,
}

/// Per-key queues: a key present in the map has a task running its queue.
#[derive(Default)]
struct Scheduler {
    queues: Mutex<HashMap<OrderKey, VecDeque<Job>>>,
}

impl Scheduler {
    /// Queues `job` behind its key's running updates; returns it back when none runs
    /// (the caller then starts the key's task with it).
    fn enqueue(&self, key: OrderKey, job: Job) -> Option<Job> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        match queues.get_mut(&key) {
            Some(queue) => {
                queue.push_back(job);
                None
            }
            None => {
                queues.insert(key, VecDeque::new());
                Some(job)
            }
        }
    }

    /// The key's next job, or `None` (and the key is released) when its queue is empty.
    fn next(&self, key: OrderKey) -> Option<Job> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let next = queues.get_mut(&key).and_then(VecDeque::pop_front);
        if next.is_none() {
            queues.remove(&key);
        }
        next
    }
}

/// Why consuming stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The message stream could not be opened, or ended.
    #[error("the lane's message stream failed: {0}")]
    Stream(String),
}

fn header_i64(h: Option<&HeaderMap>, name: &str) -> Option<i64> {
    h?.get(name)?.as_str().parse().ok()
}

/// The update's id and its ordering key (chat, else user), from the headers the ingress
/// wrote (`Nats-Msg-Id: <bot>:<update_id>`, `Tg-Chat-Id`, `Tg-User-Id`); from the body
/// when they are missing (a message published by other means).
fn update_keys(msg: &jetstream::Message) -> (Option<i64>, Option<i64>) {
    let h = msg.headers.as_ref();
    let from_id = h
        .and_then(|h| h.get(headers::MSG_ID))
        .and_then(|v| v.as_str().split(':').nth(1)?.parse::<i64>().ok());
    match from_id {
        Some(update_id) => (
            Some(update_id),
            header_i64(h, headers::CHAT_ID).or_else(|| header_i64(h, headers::USER_ID)),
        ),
        None => match extract_keys(&msg.payload) {
            Ok(k) => (Some(k.update_id), k.chat_id.or(k.user_id)),
            Err(_) => (None, None),
        },
    }
}

impl Consumer {
    /// Consumes until `shutdown` resolves, then stops pulling and gives in-flight updates
    /// `grace` to finish. Updates still unfinished after it are left unacknowledged: the
    /// server redelivers them after the ack wait, to this lane's other pods.
    pub async fn run(
        self: Arc<Self>,
        consumer: jetstream::consumer::PullConsumer,
        concurrency: usize,
        grace: Duration,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConsumeError> {
        let permits = Arc::new(Semaphore::new(concurrency));
        let scheduler = Arc::new(Scheduler::default());
        let tracker = TaskTracker::new();
        let mut messages = consumer
            .stream()
            // A batch at most as large as the pod's concurrency: everything pulled can run
            // soon, so nothing waits long enough in the pod to hit its ack wait.
            .max_messages_per_batch(concurrency.clamp(1, 1000))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| ConsumeError::Stream(e.to_string()))?;
        tokio::pin!(shutdown);
        let result = loop {
            let permit = tokio::select! {
                biased;
                () = &mut shutdown => break Ok(()),
                p = Arc::clone(&permits).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break Ok(()),
                },
            };
            let msg = tokio::select! {
                biased;
                () = &mut shutdown => break Ok(()),
                m = messages.next() => m,
            };
            let msg = match msg {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    // Missed heartbeats and similar: the stream recovers by itself.
                    tracing::warn!(error = %e, "pulling updates");
                    continue;
                }
                None => break Err(ConsumeError::Stream("ended".into())),
            };
            let job = Job {
                msg,
                _permit: permit,
            };
            match self.order_key(&job.msg) {
                Some(key) => {
                    if let Some(job) = scheduler.enqueue(key, job) {
                        let me = Arc::clone(&self);
                        let scheduler = Arc::clone(&scheduler);
                        tracker.spawn(async move {
                            let mut job = Some(job);
                            while let Some(j) = job {
                                me.process(j.msg).await;
                                job = scheduler.next(key);
                            }
                        });
                    }
                }
                None => {
                    let me = Arc::clone(&self);
                    tracker.spawn(async move { me.process(job.msg).await });
                }
            }
        };
        drop(messages);
        tracker.close();
        tracing::info!(in_flight = tracker.len(), "draining");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                unfinished = tracker.len(),
                "shutdown grace ran out; unfinished updates will be redelivered"
            );
        }
        result
    }

    fn order_key(&self, msg: &jetstream::Message) -> Option<OrderKey> {
        let h = msg.headers.as_ref();
        let bot = BotId::parse(h?.get(headers::BOT_ID)?.as_str())?;
        let id = header_i64(h, headers::CHAT_ID).or_else(|| header_i64(h, headers::USER_ID))?;
        Some((bot, id))
    }

    /// Handles one update and acknowledges it; never fails (every failure ends in a nak,
    /// a dead letter, or, when even those fail, redelivery after the ack wait).
    async fn process(&self, msg: jetstream::Message) {
        let (stream_seq, delivered) = match msg.info() {
            Ok(info) => (
                info.stream_sequence,
                u32::try_from(info.delivered).unwrap_or(u32::MAX),
            ),
            Err(_) => (0, 1),
        };
        let subject = UpdateSubject::parse(&msg.subject);
        let (bot_id, kind) = match &subject {
            Ok(s) => (s.bot, s.kind.clone()),
            Err(_) => (
                BotId(0),
                UpdateKind::from_field(tgpipe_shared::kind::INVALID_KIND),
            ),
        };
        let label = metrics::kind_label(&kind);
        metrics::consumed(label, delivered > 1);
        let (update_id, chat) = update_keys(&msg);
        let span = tracing::info_span!(
            "update",
            bot = %bot_id,
            kind = %kind.as_str(),
            update_id,
            delivered,
            lane = %self.lane,
        );
        // Extracting the trace context costs a header scan; skip it when nothing records.
        if let Some(h) = &msg.headers
            && !span.is_disabled()
        {
            tgpipe_shared::telemetry::continue_from(h, &span);
        }
        let chat = chat.zip(update_id);
        let action = async {
            if let Err(e) = &subject {
                return Action::DeadLetter(format!("not an update subject: {e}"));
            }
            let Some(bot) = self.bots.get(&bot_id) else {
                return Action::DeadLetter(format!(
                    "no token for bot {bot_id} in TGPIPE_BOT_TOKENS"
                ));
            };
            if let (Some(seen), Some((chat, update_id))) = (&self.seen, chat) {
                match seen.contains(bot_id, chat, update_id).await {
                    Ok(true) => return Action::Duplicate,
                    Ok(false) => {}
                    Err(e) => return self.failed(true, format!("redis: {e}"), delivered),
                }
            }
            let started = Instant::now();
            // A panicking handler fails this update, not the pod.
            let dispatch =
                std::panic::AssertUnwindSafe(self.dispatcher.feed_raw(bot, msg.payload.clone()))
                    .catch_unwind();
            let outcome = self.keep_in_progress(&msg, dispatch).await;
            metrics::handler_time(label, started.elapsed());
            match outcome {
                Ok(DispatchOutcome::Handled) => Action::Ack("handled"),
                Ok(DispatchOutcome::Unhandled) => Action::Ack("unhandled"),
                Ok(DispatchOutcome::Failed(e)) => {
                    self.failed(e.is_transient(), e.to_string(), delivered)
                }
                Err(panic) => Action::DeadLetter(format!(
                    "handler panicked: {}",
                    panic_message(panic.as_ref())
                )),
            }
        }
        .instrument(span.clone())
        .await;
        // Instrumented, never entered: a span guard held across an await would leak into
        // whatever else runs on this thread meanwhile.
        self.settle(
            &msg,
            action,
            Settle {
                bot_id,
                kind: &kind,
                label,
                chat,
                stream_seq,
                delivered,
            },
        )
        .instrument(span)
        .await;
    }

    /// Acknowledges, retries or dead-letters the update as the dispatch decided.
    async fn settle(&self, msg: &jetstream::Message, action: Action, at: Settle<'_>) {
        let Settle {
            bot_id,
            kind,
            label,
            chat,
            stream_seq,
            delivered,
        } = at;
        match action {
            Action::Ack(outcome) => {
                if let (Some(seen), Some((chat, update_id))) = (&self.seen, chat)
                    && let Err(e) = seen.insert(bot_id, chat, update_id).await
                {
                    // The update is done; a lost memory only weakens duplicate detection.
                    tracing::warn!(error = %e, "cannot remember the finished update");
                }
                metrics::outcome(label, outcome);
                ack(msg, AckKind::Ack).await;
            }
            Action::Duplicate => {
                tracing::info!(
                    "skipped: finished before (a duplicate older than the dedupe window)"
                );
                metrics::outcome(label, "duplicate");
                ack(msg, AckKind::Ack).await;
            }
            Action::Retry(error) => {
                let delay = self.acks.retry_delay(delivered);
                tracing::warn!(%error, ?delay, "failed transiently; will retry");
                metrics::outcome(label, "retried");
                ack(msg, AckKind::Nak(Some(delay))).await;
            }
            Action::DeadLetter(error) => {
                match self
                    .dead_letter(msg, bot_id, kind, stream_seq, delivered, &error)
                    .await
                {
                    Ok(()) => {
                        tracing::error!(%error, "dead-lettered");
                        metrics::outcome(label, "dead_lettered");
                        metrics::dead_letter(label);
                        ack(msg, AckKind::Term).await;
                    }
                    Err(e) => {
                        let delay = self.acks.retry_delay(delivered);
                        tracing::error!(%error, dlq_error = %e, "cannot dead-letter; will retry");
                        metrics::outcome(label, "retried");
                        ack(msg, AckKind::Nak(Some(delay))).await;
                    }
                }
            }
        }
    }

    fn failed(&self, transient: bool, error: String, delivered: u32) -> Action {
        if transient && delivered < self.acks.max_deliver {
            Action::Retry(error)
        } else if transient {
            Action::DeadLetter(format!(
                "{error} (still failing after {delivered} deliveries)"
            ))
        } else {
            Action::DeadLetter(error)
        }
    }

    /// Runs `work`, sending in-progress acks every third of the ack wait while it runs.
    /// Most handlers finish long before the first one is due, so this costs them a timer
    /// and no task.
    async fn keep_in_progress<T>(
        &self,
        msg: &jetstream::Message,
        work: impl Future<Output = T>,
    ) -> T {
        let every = (self.acks.ack_wait / 3).max(Duration::from_millis(100));
        tokio::pin!(work);
        loop {
            match tokio::time::timeout(every, &mut work).await {
                Ok(done) => return done,
                Err(_) => {
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "in-progress ack");
                    }
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        msg: &jetstream::Message,
        bot: BotId,
        kind: &UpdateKind,
        stream_seq: u64,
        delivered: u32,
        error: &str,
    ) -> Result<(), String> {
        let mut h = msg.headers.clone().unwrap_or_default();
        let original_id = h
            .get(headers::MSG_ID)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| format!("{bot}:seq{stream_seq}"));
        // A distinct id per dead-lettering: an update replayed and failing again within the
        // DLQ's dedupe window must not be dropped as a duplicate.
        h.insert(
            headers::MSG_ID,
            format!("{original_id}:dlq:{stream_seq}:{delivered}"),
        );
        h.insert(headers::ERROR, header_safe(error));
        h.insert(headers::DELIVERIES, delivered.to_string());
        let ack = self
            .js
            .publish_with_headers(dlq_subject(bot, kind), h, msg.payload.clone())
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .map_err(|_| "no acknowledgement from the dead-letter stream".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// What `settle` needs to know about the update.
struct Settle<'a> {
    bot_id: BotId,
    kind: &'a UpdateKind,
    label: &'static str,
    chat: Option<(i64, i64)>,
    stream_seq: u64,
    delivered: u32,
}

enum Action {
    Ack(&'static str),
    Duplicate,
    Retry(String),
    DeadLetter(String),
}

/// What a panic carried, when it is text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not text)")
}

async fn ack(msg: &jetstream::Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        // The server redelivers after the ack wait; the seen memory catches the repeat.
        tracing::warn!(error = %e, ?kind, "acknowledgement not sent");
    }
}

/// A header value: one line, at most 1 KiB (errors may quote user input).
pub(crate) fn header_safe(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > 1024 {
        let mut end = 1024;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let acks = AckSettings {
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            retry_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(10),
        };
        let delays: Vec<u64> = (1..=6).map(|d| acks.retry_delay(d).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(acks.retry_delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn header_values_are_one_bounded_line() {
        assert_eq!(header_safe("a\r\nb"), "a  b");
        let long = "é".repeat(1000);
        let safe = header_safe(&long);
        assert!(safe.len() <= 1024 && safe.chars().all(|c| c == 'é'));
    }
}
