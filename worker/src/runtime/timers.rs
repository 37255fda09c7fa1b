//! The worker's durable timers: JetStream message schedules in the update stream.
//!
//! A timer is published to `tgtimer.at.<bot>.<shard>.<slot>` with `Nats-Schedule: @at
//! <time>`; at that time the stream's leader publishes it to `tg.<bot>.timer.<shard>`
//! (see [`tgpipe_shared::timer`]). From there it is an update of its chat's shard: the
//! partition's owner runs it in the chat's order, deduplicated like any update. Nothing
//! of a timer lives in a pod.

use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream::Stream};
use tgpipe::handler::BoxFuture;
use tgpipe::timer::{TimerBackend, TimerError, TimerRequest, TimerScope, TimerService};
use tgpipe_shared::stream::StreamSettings;
use tgpipe_shared::timer::{TIMER_SUBJECT_PREFIX, TimerBody, fired_subject, schedule_subject};
use tgpipe_shared::{OrderingKey, Shard, headers};

use super::metrics;

/// How long a schedule or cancel may wait for JetStream.
const PATIENCE: Duration = Duration::from_secs(5);

/// How far within the stream's `max_age` a timer must be due.
const MARGIN: Duration = Duration::from_secs(60);

/// How often a worker whose stream cannot keep timers looks again, when asked for one:
/// after `provision --apply` timers work without a restart.
const RECHECK: Duration = Duration::from_secs(1);

/// The timers of a worker, usable once it is connected and has checked the streams.
#[derive(Clone)]
pub(crate) struct NatsTimers(Arc<Inner>);

struct Inner {
    shards: NonZeroU16,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The connection and the update stream, or why timers cannot work.
    ready: Option<Result<Ready, String>>,
    /// Where to look again while they cannot, and when it was last looked at.
    recheck: Option<(jetstream::Context, StreamSettings, Instant)>,
}

#[derive(Clone)]
struct Ready {
    js: jetstream::Context,
    stream: Stream,
    /// The stream's `max_age`: a timer waiting longer would be removed unfired.
    max_age: Duration,
}

impl NatsTimers {
    pub(crate) fn new(shards: NonZeroU16) -> NatsTimers {
        NatsTimers(Arc::new(Inner {
            shards,
            state: Mutex::new(State::default()),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The dispatcher's view of them.
    pub(crate) fn service(&self) -> TimerService {
        TimerService::new(self.clone())
    }

    /// Timers that never work, with `why`: a dispatcher run without the stream (polling
    /// straight into the handlers).
    pub(crate) fn unavailable(why: &str) -> TimerService {
        let t = NatsTimers::new(NonZeroU16::MIN);
        t.state().ready = Some(Err(why.to_owned()));
        t.service()
    }

    /// Checks that timers can work with these streams and makes them usable; otherwise
    /// logs why at ERROR, and a schedule fails with that reason (looking again, at most
    /// once a second, whether the stream keeps timers now).
    pub(crate) async fn start(&self, js: &jetstream::Context, settings: &StreamSettings) {
        let ready = check(js, settings).await;
        match &ready {
            Ok(_) => tracing::info!(stream = %settings.name, "durable timers ready"),
            Err(why) => {
                tracing::error!(%why, "durable timers are unavailable; handlers that schedule one fail")
            }
        }
        let mut state = self.state();
        state.recheck = Some((js.clone(), settings.clone(), Instant::now()));
        state.ready = Some(ready);
    }

    async fn ready(&self) -> Result<Ready, TimerError> {
        let (js, settings) = {
            let mut state = self.state();
            let why = match &state.ready {
                Some(Ok(ready)) => return Ok(ready.clone()),
                Some(Err(why)) => why.clone(),
                None => {
                    return Err(TimerError::Unavailable(
                        "the worker has not connected to NATS yet".into(),
                    ));
                }
            };
            match &mut state.recheck {
                Some((js, settings, at)) if at.elapsed() >= RECHECK => {
                    *at = Instant::now();
                    (js.clone(), settings.clone())
                }
                _ => return Err(TimerError::Unavailable(why)),
            }
        };
        let ready = check(&js, &settings).await;
        if ready.is_ok() {
            tracing::info!(stream = %settings.name, "durable timers ready: the update stream keeps them now");
        }
        self.state().ready = Some(ready.clone());
        ready.map_err(TimerError::Unavailable)
    }

    fn shard(&self, scope: &TimerScope) -> Shard {
        let key = match (scope.chat_id, scope.user_id) {
            (Some(chat), _) => OrderingKey::Chat(chat),
            (None, Some(user)) => OrderingKey::User(user),
            (None, None) => OrderingKey::None,
        };
        Shard::of(key, self.0.shards)
    }
}

/// Whether the update stream can carry timers: message schedules allowed, and the
/// timers' subjects in the stream.
async fn check(js: &jetstream::Context, settings: &StreamSettings) -> Result<Ready, String> {
    let name = &settings.name;
    if !settings.timers {
        return Err("TGPIPE_TIMERS=false".into());
    }
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| format!("the update stream `{name}`: {e}"))?;
    let config = stream
        .info()
        .await
        .map_err(|e| format!("the update stream `{name}`: {e}"))?
        .config
        .clone();
    let subjects = format!("{TIMER_SUBJECT_PREFIX}.>");
    if !config.allow_message_schedules || !config.subjects.contains(&subjects) {
        let why = if config.max_bytes >= 0 {
            "it has a size limit (TGPIPE_STREAM_MAX_BYTES), and message schedules cannot refuse writes when full"
        } else {
            "it was created before timers, or on nats-server older than 2.12: run `tgpipe-worker provision --apply`"
        };
        return Err(format!(
            "the update stream `{name}` does not keep timers (message schedules on {subjects}): {why}"
        ));
    }
    Ok(Ready {
        js: js.clone(),
        stream,
        max_age: config.max_age,
    })
}

impl TimerBackend for NatsTimers {
    fn schedule(&self, timer: TimerRequest) -> BoxFuture<'static, Result<(), TimerError>> {
        let this = self.clone();
        Box::pin(async move {
            let result = this.publish(timer).await;
            metrics::timer_call("schedule", result_label(&result));
            result
        })
    }

    fn cancel(
        &self,
        scope: TimerScope,
        name: String,
    ) -> BoxFuture<'static, Result<(), TimerError>> {
        let this = self.clone();
        Box::pin(async move {
            let result = this.purge(scope, &name).await;
            metrics::timer_call("cancel", result_label(&result));
            result
        })
    }
}

fn result_label(r: &Result<(), TimerError>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(TimerError::Unavailable(_)) => "unavailable",
        Err(_) => "failed",
    }
}

impl NatsTimers {
    async fn publish(&self, timer: TimerRequest) -> Result<(), TimerError> {
        let ready = self.ready().await?;
        let wait = timer
            .due_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        // The stream removes a message older than its max_age, fired or not.
        if !ready.max_age.is_zero() && wait + MARGIN >= ready.max_age {
            return Err(TimerError::TooFar {
                wait,
                max: ready.max_age.saturating_sub(MARGIN),
            });
        }
        let shard = self.shard(&timer.scope);
        let due_ms = unix_ms(timer.due_at);
        let id = -(rand::random_range(1..(1i64 << 52)));
        let body = TimerBody::new(
            id,
            &timer.scope,
            &timer.name,
            due_ms,
            unix_ms(SystemTime::now()),
            timer.payload,
        );
        let body = serde_json::to_vec(&body).map_err(TimerError::Payload)?;
        let mut h = HeaderMap::new();
        h.insert("Nats-Schedule", format!("@at {}", rfc3339_ms(due_ms)));
        h.insert(
            "Nats-Schedule-Target",
            fired_subject(timer.scope.bot, shard),
        );
        // The waiting timer of the same name (the same subject) goes.
        h.insert("Nats-Rollup", "sub");
        // Kept on the fired copy: its lateness is measured from here.
        h.insert(headers::RECEIVED_AT, due_ms.to_string());
        let subject = schedule_subject(timer.scope.bot, shard, timer.scope.slot(&timer.name));
        let ack = ready
            .js
            .publish_with_headers(subject, h, body.into())
            .await
            .map_err(|e| TimerError::Store(Box::new(e)))?;
        match tokio::time::timeout(PATIENCE, ack).await {
            Ok(Ok(_)) => Ok(()),
            // Retried like any store failure: a leader election answers with an error
            // too, and a stream that cannot keep timers was found before the publish.
            Ok(Err(e)) => Err(TimerError::Store(Box::new(e))),
            Err(_) => Err(TimerError::Store(
                "no acknowledgement from the update stream".into(),
            )),
        }
    }

    async fn purge(&self, scope: TimerScope, name: &str) -> Result<(), TimerError> {
        let ready = self.ready().await?;
        let subject = schedule_subject(scope.bot, self.shard(&scope), scope.slot(name));
        match tokio::time::timeout(PATIENCE, ready.stream.purge().filter(subject)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(TimerError::Store(Box::new(e))),
            Err(_) => Err(TimerError::Store("no answer from the update stream".into())),
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `ms` (unix milliseconds) as RFC 3339 in UTC: `2026-12-07T18:30:00.250Z`.
fn rfc3339_ms(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let (y, mo, d) = crate::set_webhook::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_796_668_199_999), "2026-12-07T18:29:59.999Z");
        assert_eq!(rfc3339_ms(4_102_444_800_000), "2100-01-01T00:00:00.000Z");
    }
}
