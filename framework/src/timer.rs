//! Durable timers: schedule work for a chat at a time, and handle it when it comes back.
//!
//! A handler takes [`Timers`] and schedules a named timer for its update's chat (and
//! user and topic). At the time, the timer comes back as an update of its own, handled by
//! `router.timer(..)` handlers, in the chat's order, by whichever pod owns the chat then.
//! Timers live in JetStream (the worker gives the dispatcher a [`TimerService`]), so a
//! restart, a rollout or a lost pod does not lose them.
//!
//! ```
//! use std::time::Duration;
//! use tgpipe::prelude::*;
//! use tgpipe::timer::{self, Timer, Timers};
//!
//! async fn remind(message: Arc<Message>, timers: Timers) -> Result {
//!     timers.after("remind", Duration::from_secs(60), "tea").await?;
//!     message.answer("I will remind you in a minute.").await
//! }
//!
//! async fn reminded(timer: Arc<Timer>) -> Result {
//!     let what: String = timer.payload().map_err(HandlerError::permanent)?;
//!     timer.answer(format!("Time for {what}!")).await
//! }
//!
//! let mut router = Router::new("main");
//! router.message(remind).filter(Command::new("remind"));
//! router.timer(reminded).filter(timer::named("remind"));
//! ```
//!
//! - **One timer per name.** Scheduling a name again, in the same chat for the same user,
//!   replaces the timer that waits. [`Timers::cancel`] removes it.
//! - **At least once, then deduplicated.** A timer fires at or after its time. If the
//!   stream's leader changes at that moment it may fire twice; the copy is found in the
//!   duplicate memory and skipped, like a repeated update.
//! - **State timeouts.** [`Timers::state_timeout`] and [`state_timed_out`] end a
//!   conversation left silent (see the example bot's `/form`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tgpipe_shared::timer::TimerBody;
pub use tgpipe_shared::timer::TimerScope;

use crate::context::{Context, Extensions};
use crate::extract::{ExtractError, FromContext, Requirement};
use crate::filter::{Filter, FilterOutcome};
use crate::fsm::FsmContext;
use crate::handler::BoxFuture;
use crate::update::{Event, Update};

/// The name of the timers [`Timers::state_timeout`] schedules.
pub const STATE_TIMEOUT: &str = "tgpipe.state_timeout";

/// A timer that fired: what `router.timer(..)` handlers take (as `Arc<Timer>`).
#[derive(Debug, Clone, PartialEq)]
pub struct Timer {
    /// Its update id: negative, random per scheduling.
    pub id: i64,
    /// The name it was scheduled under.
    pub name: String,
    /// The chat of the update that scheduled it.
    pub chat_id: Option<i64>,
    /// The user of the update that scheduled it.
    pub user_id: Option<i64>,
    /// The forum topic of the update that scheduled it.
    pub thread_id: Option<i64>,
    /// When it was due.
    pub due_at: SystemTime,
    /// When it was scheduled.
    pub scheduled_at: SystemTime,
    /// What the scheduling handler gave it.
    pub payload: serde_json::Value,
}

impl Timer {
    /// The payload, read as a `T`.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }

    /// How long after its time it runs (zero if early by the clocks).
    pub fn lateness(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.due_at)
            .unwrap_or_default()
    }

    /// Sends `text` into the chat the timer was scheduled in (the user's private chat
    /// when it had no chat), as `message.answer` does.
    pub fn answer(&self, text: impl Into<String>) -> crate::calls::SendMessage {
        let chat = self.chat_id.or(self.user_id).unwrap_or_default();
        crate::calls::send_message(chat, None, text.into())
    }

    /// The timer in an update's body, when the body is one.
    pub(crate) fn from_body(raw: &[u8]) -> Result<Timer, serde_json::Error> {
        let body: TimerBody = serde_json::from_slice(raw)?;
        let t = body.timer;
        Ok(Timer {
            id: body.update_id,
            name: t.name,
            chat_id: t.chat.map(|c| c.id),
            user_id: t.from.map(|u| u.id),
            thread_id: t.message_thread_id,
            due_at: UNIX_EPOCH + Duration::from_millis(t.due_at),
            scheduled_at: UNIX_EPOCH + Duration::from_millis(t.scheduled_at),
            payload: t.payload,
        })
    }
}

impl FromContext for Arc<Timer> {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        match cx.event() {
            Event::Timer(t) => Ok(Arc::clone(t)),
            _ => Err(ExtractError::WrongEvent {
                wanted: "Timer",
                kind: cx.update().kind.to_string(),
            }),
        }
    }
}

/// A timer to schedule, as a [`TimerBackend`] receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct TimerRequest {
    /// Whose timer it is.
    pub scope: TimerScope,
    /// Its name (one waiting timer per name and scope).
    pub name: String,
    /// When it is due.
    pub due_at: SystemTime,
    /// The payload.
    pub payload: serde_json::Value,
}

/// Where timers are kept: the worker's is JetStream's message scheduling.
pub trait TimerBackend: Send + Sync + 'static {
    /// Keeps `timer` until it is due (replacing a waiting one of the same name and scope).
    fn schedule(&self, timer: TimerRequest) -> BoxFuture<'static, Result<(), TimerError>>;
    /// Removes the waiting timer of this name and scope, if there is one.
    fn cancel(&self, scope: TimerScope, name: String)
    -> BoxFuture<'static, Result<(), TimerError>>;
}

/// The timers of a dispatcher, given as state: the worker gives its own to every
/// dispatcher it runs; a test gives one over its own [`TimerBackend`].
#[derive(Clone)]
pub struct TimerService(Arc<dyn TimerBackend>);

impl TimerService {
    /// A service over `backend`.
    pub fn new(backend: impl TimerBackend) -> TimerService {
        TimerService(Arc::new(backend))
    }
}

impl std::fmt::Debug for TimerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TimerService")
    }
}

/// Why a timer could not be scheduled or cancelled.
#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    /// The update has neither a chat nor a user to come back to (a poll).
    #[error("this `{0}` update has no chat or user to schedule a timer for")]
    NoScope(String),
    /// The payload does not serialise to JSON.
    #[error("the timer's payload is not JSON: {0}")]
    Payload(#[source] serde_json::Error),
    /// The name is empty or longer than 256 bytes.
    #[error("a timer's name is 1 to 256 bytes, not {0}")]
    Name(usize),
    /// The timer is due later than the store keeps messages.
    #[error(
        "a timer can be due at most {max:?} ahead (the update stream's TGPIPE_MAX_AGE), not {wait:?}"
    )]
    TooFar {
        /// How far ahead it was asked for.
        wait: Duration,
        /// The furthest allowed.
        max: Duration,
    },
    /// Timers cannot work here (the server has no message schedules, or the update
    /// stream does not source the timers stream): the reason says what to do.
    #[error("timers are unavailable: {0}")]
    Unavailable(String),
    /// The store did not take it (NATS down, no acknowledgement): worth retrying.
    #[error("the timer store did not answer: {0}")]
    Store(#[source] tgpipe_shared::BoxError),
}

/// A store that did not answer is retried; everything else stays as it is.
impl crate::error::Transient for TimerError {
    fn is_transient(&self) -> bool {
        matches!(self, TimerError::Store(_))
    }
}

/// Schedules timers for the update's chat, user and topic: a handler argument.
///
/// The dispatcher needs a [`TimerService`] (the worker gives one); a handler taking
/// `Timers` without one is refused at build time.
#[derive(Clone, Debug)]
pub struct Timers {
    service: TimerService,
    scope: Option<TimerScope>,
    kind: String,
}

impl Timers {
    /// Schedules the timer `name` to fire after `delay` with `payload`, replacing a waiting
    /// timer of the same name.
    pub async fn after(
        &self,
        name: &str,
        delay: Duration,
        payload: impl Serialize,
    ) -> Result<(), TimerError> {
        self.at(name, SystemTime::now() + delay, payload).await
    }

    /// Schedules the timer `name` to fire at `at` with `payload`, replacing a waiting
    /// timer of the same name. A time in the past fires at once.
    pub async fn at(
        &self,
        name: &str,
        at: SystemTime,
        payload: impl Serialize,
    ) -> Result<(), TimerError> {
        check_name(name)?;
        let payload = serde_json::to_value(payload).map_err(TimerError::Payload)?;
        let request = TimerRequest {
            scope: self.scope()?,
            name: name.to_owned(),
            due_at: at,
            payload,
        };
        self.service.0.schedule(request).await
    }

    /// Cancels the waiting timer `name`; nothing happens if none waits.
    pub async fn cancel(&self, name: &str) -> Result<(), TimerError> {
        check_name(name)?;
        self.service.0.cancel(self.scope()?, name.to_owned()).await
    }

    /// Ends the conversation's current state after `after` of silence: schedules the
    /// timer [`STATE_TIMEOUT`] with the current state. Call it again at each step (it
    /// replaces the waiting one); a handler filtered by [`state_timed_out`] runs when
    /// the time comes and the state has not changed since.
    pub async fn state_timeout(&self, fsm: &FsmContext, after: Duration) -> Result<(), TimerError> {
        let state = fsm
            .state()
            .await
            .map_err(|e| TimerError::Store(Box::new(e)))?;
        self.after(STATE_TIMEOUT, after, state).await
    }

    fn scope(&self) -> Result<TimerScope, TimerError> {
        self.scope
            .ok_or_else(|| TimerError::NoScope(self.kind.clone()))
    }
}

fn check_name(name: &str) -> Result<(), TimerError> {
    if name.is_empty() || name.len() > 256 {
        return Err(TimerError::Name(name.len()));
    }
    Ok(())
}

/// The scope of the timers an update schedules.
fn scope_of(update: &Update) -> Option<TimerScope> {
    if update.chat_id.is_none() && update.user_id.is_none() {
        return None;
    }
    Some(TimerScope {
        bot: update.bot,
        chat_id: update.chat_id,
        user_id: update.user_id,
        thread_id: update.thread_id,
    })
}

impl FromContext for Timers {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        let service = cx
            .get::<TimerService>()
            .cloned()
            .ok_or(ExtractError::Missing("TimerService"))?;
        Ok(Timers {
            service,
            scope: scope_of(cx.update()),
            kind: cx.update().kind.to_string(),
        })
    }

    fn requirement() -> Option<Requirement> {
        Some(Requirement::of::<TimerService>())
    }
}

/// Passes timers named `name`.
pub fn named(name: &'static str) -> impl Filter {
    move |cx: &Context| matches!(cx.event(), Event::Timer(t) if t.name == name)
}

/// Passes timers whose name starts with `prefix` (timers named per use, such as
/// `remind:<message id>`, so that they do not replace each other).
pub fn prefixed(prefix: &'static str) -> impl Filter {
    move |cx: &Context| matches!(cx.event(), Event::Timer(t) if t.name.starts_with(prefix))
}

/// Passes a [`STATE_TIMEOUT`] timer whose conversation is still in the state it was
/// scheduled in: the user was silent since. Needs the FSM.
pub fn state_timed_out() -> impl Filter {
    StateTimedOut
}

struct StateTimedOut;

impl Filter for StateTimedOut {
    fn requires(&self) -> Vec<Requirement> {
        crate::fsm::state_requires()
    }

    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        Box::pin(async move {
            let Event::Timer(t) = cx.event() else {
                return None;
            };
            if t.name != STATE_TIMEOUT {
                return None;
            }
            let when: Option<String> = t.payload().ok()?;
            let fsm = cx.get::<FsmContext>()?;
            let now = fsm.state().await.ok()?;
            (when.is_some() && now == when).then(Extensions::new)
        })
    }
}
