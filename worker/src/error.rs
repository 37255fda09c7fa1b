//! Errors of handlers and of dispatch, and how the runtime should treat them.

use std::error::Error as StdError;
use std::fmt;

/// An error a handler (or middleware, or extractor) returned. It keeps the original error
/// so `errors` handlers can match on its type (see [`crate::filter::ErrorIs`]), and knows
/// whether retrying could help (the runtime naks transient errors and dead-letters
/// permanent ones).
pub struct HandlerError {
    inner: Box<dyn StdError + Send + Sync + 'static>,
    transient: bool,
}

impl HandlerError {
    /// A permanent error: retrying the update would fail the same way.
    pub fn permanent(e: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> HandlerError {
        HandlerError {
            inner: e.into(),
            transient: false,
        }
    }

    /// A transient error: the update should be retried later (a peer was unavailable).
    pub fn transient(e: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> HandlerError {
        HandlerError {
            inner: e.into(),
            transient: true,
        }
    }

    /// Whether a retry could succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// Whether the original error is a `T`.
    pub fn is<T: StdError + 'static>(&self) -> bool {
        self.inner.is::<T>()
    }

    /// The original error as a `T`.
    pub fn downcast_ref<T: StdError + 'static>(&self) -> Option<&T> {
        self.inner.downcast_ref()
    }

    /// The original error.
    pub fn inner(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.inner
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("error", &self.inner)
            .field("transient", &self.transient)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

/// Errors that know whether they are transient convert with that knowledge; any other
/// error is permanent.
impl<E: StdError + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> HandlerError {
        let transient = classify(&e);
        HandlerError {
            inner: Box::new(e),
            transient,
        }
    }
}

fn classify(e: &(dyn StdError + 'static)) -> bool {
    if let Some(b) = e.downcast_ref::<crate::bot::BotError>() {
        return b.is_transient();
    }
    if let Some(x) = e.downcast_ref::<crate::extract::ExtractError>() {
        return x.is_transient();
    }
    if let Some(f) = e.downcast_ref::<crate::fsm::FsmError>() {
        return f.is_transient();
    }
    false
}

/// What dispatching one update came to.
#[derive(Debug)]
pub enum DispatchOutcome {
    /// A handler (or an `errors` handler) handled it, or a middleware consumed it.
    Handled,
    /// No handler took it (the runtime acknowledges it all the same).
    Unhandled,
    /// It failed and no `errors` handler took the error.
    Failed(std::sync::Arc<HandlerError>),
}

/// Why a dispatcher could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    /// A handler takes a value nothing provides: not application state, not a
    /// middleware's declared value, not one of its filters' values.
    #[error(
        "handler #{index} of the `{observer}` observer of router `{router}` takes `{type_name}`, which nothing provides (give it as state with `Dispatcher::builder(..).state(..)`, or declare the middleware or filter that inserts it)"
    )]
    MissingDependency {
        /// The router's name.
        router: String,
        /// The observer.
        observer: String,
        /// The handler's position in the observer (registration order, from 0).
        index: usize,
        /// The missing type.
        type_name: &'static str,
    },
    /// A handler takes `FsmContext` (or `SceneContext`), but the dispatcher has no FSM.
    #[error(
        "handler #{index} of the `{observer}` observer of router `{router}` takes the FSM, but the dispatcher has none (configure it with `Dispatcher::builder(..).fsm(Fsm::new(storage))`)"
    )]
    FsmNotConfigured {
        /// The router's name.
        router: String,
        /// The observer.
        observer: String,
        /// The handler's position in the observer (registration order, from 0).
        index: usize,
    },
    /// Two routers in one tree share a name (names identify routers in errors and logs).
    #[error("two routers are named `{0}`")]
    DuplicateRouter(String),
}
