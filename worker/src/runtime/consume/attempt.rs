//! One update's attempts: the duplicate check, the dispatch in a run slot under the
//! partition's fence, retries in place with backoff, then settling.
//!
//! A run slot is held only while the handler runs: the retry backoff, a Telegram pause
//! past the client's cap, a missing token and the client's own waits (rate limits,
//! flood waits, server backoff, through [`tgpipe::bot::idle`]) give it back.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use tgpipe::Outcome;
use tgpipe::bot::Bot;
use tgpipe::context::Extensions;
use tgpipe::fsm::Prefetched;
use tgpipe::update::Update;
use tgpipe_shared::registry::BotState;
use tgpipe_shared::subject::UpdateSubject;
use tgpipe_shared::{BotId, UpdateKind};
use tracing::Instrument;

use super::settle::{Action, Settle, panic_message};
use super::slots::Holder;
use super::{Job, Owned, Pod, metrics};
use crate::runtime::effects::{self, UpdateCalls};
use crate::runtime::redis_probe::needs_redis;
use crate::runtime::registry::RemovedPolicy;

/// How an attempt feeds the dispatcher.
struct Feed {
    /// The FSM state read ahead, for the FSM middleware.
    prefetched: Option<Prefetched>,
    /// Past its kind's deadline: to the `expired` handlers.
    expired: Option<tgpipe::expired::Expired>,
}

impl Pod {
    /// Handles one held update to its end: acknowledged, dead-lettered, or (when its
    /// partition stopped first) returned to the stream for the next owner.
    pub(super) async fn process(&self, job: Job) {
        let part = Arc::clone(&job.part);
        if part.stopped() {
            self.give_back(&job).await;
            return;
        }
        let me = &self.me;
        let (stream_seq, mut delivered) = job.src.position();
        let (bot_id, kind, update_id, chat) = match &job.env {
            Ok(env) => (
                env.bot,
                env.kind.clone(),
                Some(env.update_id),
                env.chat_id.or(env.user_id),
            ),
            // Still the subject's bot and kind when only a header was wrong.
            Err(_) => match UpdateSubject::parse(job.src.subject()) {
                Ok(s) => (s.bot, s.kind, None, None),
                Err(_) => (
                    BotId(0),
                    UpdateKind::from_field(tgpipe_shared::kind::INVALID_KIND),
                    None,
                    None,
                ),
            },
        };
        let label = metrics::kind_label(&kind);
        for _ in job.parts() {
            metrics::consumed(label, delivered > 1);
        }
        // A fired timer carries its time as when it was received.
        if label == tgpipe_shared::timer::TIMER_KIND
            && let Ok(env) = &job.env
        {
            let due = UNIX_EPOCH + Duration::from_millis(env.received_at_ms);
            metrics::timer_lateness(SystemTime::now().duration_since(due).unwrap_or_default());
        }
        let span = tracing::info_span!(
            "update",
            otel.kind = "consumer",
            otel.name = %format_args!("{} process", job.src.subject()),
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = %job.src.subject(),
            bot = %bot_id,
            kind = %kind.as_str(),
            update_id,
            delivered,
            lane = %me.lane,
            partition = %part.own.partition,
            stream_seq,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        // Extracting the trace context costs a header scan; skip it when nothing records.
        if let Some(h) = job.src.headers()
            && !span.is_disabled()
        {
            tgpipe_shared::telemetry::continue_from(h, &span);
        }
        let chat = chat.zip(update_id);
        let mut calls_done = None;
        let action = async {
            let env = match &job.env {
                Ok(env) => env,
                Err(e) => return Action::DeadLetter(format!("not an update: {e}")),
            };
            // The body parsed once, for every attempt.
            let update = Update::from_envelope(env);
            // The record of its Bot API calls, kept across its attempts.
            let calls = chat.map(|(chat, update_id)| {
                UpdateCalls::new(bot_id, chat, update_id, part.fence.clone(), delivered == 1)
            });
            calls_done = calls.clone();
            // What the first attempt reads from Redis, read together: the memory of
            // finished updates and, where no lock is taken, the FSM state (two commands
            // in flight on one connection: one round trip).
            let seen = async {
                match (&me.seen, chat) {
                    (Some(seen), Some((chat, update_id))) => {
                        seen.contains(bot_id, chat, update_id).await
                    }
                    _ => Ok(false),
                }
            };
            let state = async {
                let fsm = me.dispatcher.fsm().filter(|f| f.reads_state_unlocked())?;
                let key = fsm.key(&update)?;
                // A failure is not this read's to report: the dispatch reads again.
                let state = fsm.storage().get_state(&key).await.ok()?;
                Some(Prefetched { key, state })
            };
            let (seen, mut prefetched) = tokio::join!(seen, state);
            match seen {
                Ok(true) => return Action::Duplicate,
                Ok(false) => {}
                Err(e) => {
                    // Fails open: a lost memory only weakens duplicate detection.
                    tracing::warn!(error = %e, "cannot read the memory of finished updates");
                    metrics::seen_unavailable();
                    me.redis.failed();
                }
            }
            let first_attempt = Instant::now();
            // Kinds that expire go before the bot's others when both wait for a slot.
            let urgent = me.acks.interactive_first && me.acks.deadlines.has(&kind);
            loop {
                // Checked before every attempt: a callback query that waited out a
                // backlog, or kept failing, past the time Telegram takes its answer is
                // not run (its answer would fail) and does not hold the chat.
                // The tree's `expired` handlers, if it has some, run instead.
                let mut expired = None;
                if let Some(late) = me.acks.deadlines.overdue(&kind, env.received_at_ms, SystemTime::now()) {
                    tracing::info!(?late, "expired: past its kind's deadline (TGPIPE_DEADLINES); not run");
                    if !me.dispatcher.handles_expired() {
                        return Action::Ack("expired");
                    }
                    let deadline = me.acks.deadlines.of(kind.as_str()).unwrap_or_default();
                    expired = Some(tgpipe::expired::Expired {
                        age: deadline + late,
                        deadline,
                    });
                }
                let recoveries = me.redis.recoveries();
                // Taken per attempt: a bot added while its update waits is found.
                let bots = me.bots.snapshot();
                let action = match bots.get(&bot_id) {
                    // A bot the ingress knows before this pod does (a rollout): waited
                    // for within the retry budget, like any transient failure.
                    None => Action::Retry(
                        format!("no token for bot {bot_id} in TGPIPE_BOT_TOKENS or the registry"),
                        None,
                    ),
                    Some(b)
                        if b.state == BotState::Removed
                            && me.removed_policy == RemovedPolicy::DeadLetter =>
                    {
                        Action::DeadLetter(format!(
                            "bot {bot_id} was removed from the registry (TGPIPE_REMOVED_POLICY=dead-letter)"
                        ))
                    }
                    Some(b) => {
                        // A run slot, in the bot's turn; a partition given up meanwhile
                        // leaves the update to its next owner.
                        let slot = tokio::select! {
                            biased;
                            () = part.own.released() => return Action::GiveBack,
                            slot = self.keep_in_progress(&job, self.slots.acquire(bot_id, urgent)) => slot,
                        };
                        let holder = Holder::new(&self.slots, slot);
                        let update = update.clone();
                        let dispatch = effects::scope(
                            calls.clone(),
                            self.dispatch(
                                &b.bot,
                                update,
                                Feed { prefetched: prefetched.take(), expired },
                                &job,
                                &part,
                                label,
                            ),
                        );
                        match tgpipe::bot::idle::with_idle_hook(holder, dispatch).await {
                            Action::Ack(_) if expired.is_some() => Action::Ack("expired"),
                            action => action,
                        }
                    }
                };
                // A partition this pod no longer owns is the new owner's to finish or
                // dead-letter (a stale owner's fenced write fails its update here).
                if part.stopped() && matches!(action, Action::Retry(..) | Action::DeadLetter(_)) {
                    return Action::GiveBack;
                }
                let Action::Retry(error, asked) = action else {
                    return action;
                };
                // Dead-lettered only once both the attempts and the time are spent: an
                // outage of Redis or the Bot API shorter than the budget costs latency,
                // never an update.
                if delivered >= me.acks.max_deliver
                    && first_attempt.elapsed() >= me.acks.retry_budget
                {
                    return Action::DeadLetter(format!(
                        "{error} (still failing after {delivered} attempts in {:?})",
                        first_attempt.elapsed()
                    ));
                }
                // Retried in place: the chat waits, nothing of it overtakes this update.
                // A flood wait the Bot API asked for (over the client's cap) is honoured.
                let delay = me
                    .acks
                    .retry_delay(delivered)
                    .max(asked.unwrap_or_default());
                tracing::warn!(%error, ?delay, "failed transiently; will retry");
                metrics::outcome(label, "retried");
                let wait = self.keep_in_progress(&job, async {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => false,
                        () = part.own.released() => true,
                        // Redis failed and answers again: no need to wait out the backoff.
                        () = me.redis.recovered_after(recoveries) => false,
                    }
                });
                if wait.await {
                    return Action::GiveBack;
                }
                delivered += 1;
            }
        }
        .instrument(span.clone())
        .await;
        let acked = matches!(action, Action::Ack(_));
        // Instrumented, never entered: a span guard held across an await would leak into
        // whatever else runs on this thread meanwhile.
        self.settle(
            &job,
            action,
            Settle {
                bot_id,
                kind: &kind,
                label,
                chat,
                stream_seq,
                delivered,
                record: calls_done.as_ref().and_then(|c| c.record_key()),
            },
        )
        .instrument(span)
        .await;
        // With the memory of finished updates, its insert deleted the record.
        if let (true, None, Some(calls)) = (acked, &self.me.seen, calls_done) {
            calls.finished();
        }
    }

    /// One attempt at the update: the dispatch under the partition's fence, bounded by
    /// the handler timeout, a panic caught.
    async fn dispatch(
        &self,
        bot: &Bot,
        update: Update,
        Feed {
            prefetched,
            expired,
        }: Feed,
        job: &Job,
        part: &Arc<Owned>,
        label: &'static str,
    ) -> Action {
        let started = Instant::now();
        // The FSM state read ahead, for the FSM middleware.
        let mut values = Extensions::new();
        if let Some(p) = prefetched {
            values.insert(p);
        }
        // A panicking handler fails this update, not the pod.
        let feed = async {
            if let Some(expired) = expired {
                return self
                    .me
                    .dispatcher
                    .feed_expired(bot, update, expired, values)
                    .await;
            }
            let Some(album) = &job.album else {
                return self.me.dispatcher.feed_with(bot, update, values).await;
            };
            // An album: its parts together, the first (whose keys the update has) first.
            let mut parts = Vec::with_capacity(1 + album.len());
            parts.push(update);
            parts.extend(
                album
                    .iter()
                    .filter_map(|j| j.env.as_ref().ok())
                    .map(Update::from_envelope),
            );
            self.me.dispatcher.feed_album(bot, parts, values).await
        };
        let dispatch = std::panic::AssertUnwindSafe(tgpipe::fsm::with_owner_fence(
            part.fence.clone(),
            tokio::time::timeout(self.me.acks.handler_timeout, feed),
        ))
        .catch_unwind();
        // The handlers' span, only for a trace (each Bot API call is its child): without
        // export it would be one more span per update for nothing.
        let span = if tgpipe_shared::telemetry::exporting() {
            tracing::info_span!("handle", bot_username = bot.username().unwrap_or(""))
        } else {
            tracing::Span::none()
        };
        // A lost partition may be taken by another pod once its lease expires: the
        // dispatch is cancelled before then (the lease's local deadline comes first), so
        // that two pods never run the partition at once.
        let outcome = tokio::select! {
            biased;
            () = part.own.lost() => {
                tracing::warn!("partition lost; dispatch cancelled, the next owner runs the update again");
                metrics::handler_time(label, started.elapsed());
                return Action::GiveBack;
            }
            outcome = self.keep_in_progress(job, dispatch).instrument(span) => outcome,
        };
        metrics::handler_time(label, started.elapsed());
        match outcome {
            Ok(Ok(Ok(Outcome::Handled))) => Action::Ack("handled"),
            Ok(Ok(Ok(Outcome::Skipped))) => Action::Ack("unhandled"),
            Ok(Ok(Err(e))) if e.is_transient() => {
                if needs_redis(&e) {
                    self.me.redis.failed();
                }
                // `{:#}`: the message and its causes (a storage error's own words).
                Action::Retry(format!("{e:#}"), e.retry_after())
            }
            Ok(Ok(Err(e))) => Action::DeadLetter(format!("{e:#}")),
            // Stuck on an external call: its chat would wait forever.
            Ok(Err(_)) => Action::Retry(
                format!(
                    "the dispatch did not finish within TGPIPE_HANDLER_TIMEOUT ({:?})",
                    self.me.acks.handler_timeout
                ),
                None,
            ),
            Err(panic) => Action::DeadLetter(format!(
                "handler panicked: {}",
                panic_message(panic.as_ref())
            )),
        }
    }

    /// Runs `work`, keeping the update (and its album's parts) from redelivery with an
    /// in-progress ack every third of the ack wait.
    pub(super) async fn keep_in_progress<T>(&self, job: &Job, work: impl Future<Output = T>) -> T {
        let every = (self.me.acks.ack_wait / 3).max(Duration::from_millis(100));
        tokio::pin!(work);
        loop {
            match tokio::time::timeout(every, &mut work).await {
                Ok(done) => return done,
                Err(_) => self.progress(job.parts()).await,
            }
        }
    }
}
