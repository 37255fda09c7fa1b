//! Errors of handlers and of dispatch, and how the runtime should treat them.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

pub use tgpipe_bot::ErrorClass;

/// What a handler returns when it can fail: `Result` is `Result<(), HandlerError>`, so
/// `?` works on any error and a bot needs no error enum of its own (anyhow's `Result`).
///
/// ```
/// use tgpipe::prelude::*;
///
/// async fn age(message: Arc<Message>) -> Result {
///     let age: u8 = message.text_or_caption().parse()?; // a ParseIntError: permanent
///     message.answer(format!("{age} it is")).await?; // a BotError: classified as it says
///     Ok(())
/// }
/// ```
pub type Result<T = (), E = HandlerError> = std::result::Result<T, E>;

/// An error type of the application that knows whether it is transient.
///
/// Errors are classified when a handler's error becomes a [`HandlerError`]: the error
/// and then each of its [`source`](StdError::source)s (its causes) in turn, the first
/// one whose type knows decides. The framework's own errors know ([`crate::BotError`],
/// [`crate::FsmError`], [`crate::extract::ExtractError`], Redis and I/O errors), so an
/// application error that wraps one as its cause (`#[error("sending the reply")]
/// Api(#[from] BotError)`) is as transient as what it wraps. An application type that
/// wants to decide for itself implements `Transient` and is registered with
/// [`DispatcherBuilder::transient_errors`](crate::DispatcherBuilder::transient_errors)
/// (a type cannot be asked for a trait through `dyn Error` without being named once).
///
/// A wrapper with `#[error(transparent)]` hides the wrapped error: thiserror forwards
/// its `source()` to the wrapped error's causes, so neither the wrapped type nor its
/// class is in the chain. Such an enum either implements `Transient` itself (asking
/// each variant's `class()`) and is registered, or wraps with a message; or the
/// handler returns [`Result`] and needs no enum.
///
/// ```
/// use tgpipe::error::Transient;
///
/// #[derive(Debug, thiserror::Error)]
/// enum PaymentError {
///     #[error("the payment provider is down")]
///     ProviderDown,
///     #[error("the card was declined")]
///     Declined,
/// }
///
/// impl Transient for PaymentError {
///     fn is_transient(&self) -> bool {
///         matches!(self, PaymentError::ProviderDown)
///     }
/// }
/// ```
pub trait Transient: StdError + Send + Sync + 'static {
    /// Whether a retry of the update could succeed.
    fn is_transient(&self) -> bool;

    /// The class, as [`HandlerError::class`] reports it.
    fn class(&self) -> ErrorClass {
        if self.is_transient() {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        }
    }
}

/// Asks one error (not its sources) whether it is transient: `None` when its type does
/// not know.
pub(crate) type Classifier = fn(&(dyn StdError + 'static)) -> Option<bool>;

/// The classifier of a registered [`Transient`] type.
pub(crate) fn classifier_of<E: Transient>() -> Classifier {
    ask::<E>
}

/// An error a handler (or middleware, or extractor) returned. It keeps the original error
/// so `errors` handlers can match on its type (see [`crate::filter::ErrorIs`]), and knows
/// whether retrying could help (the runtime naks transient errors and dead-letters
/// permanent ones).
///
/// An error converted with `?` or `From` is classified by walking its `source()` chain
/// (see [`Transient`]); [`HandlerError::transient`] and [`HandlerError::permanent`] say it
/// outright and are never reclassified.
///
/// ```
/// use tgpipe::{BotError, HandlerError};
///
/// #[derive(Debug, thiserror::Error)]
/// enum Error {
///     #[error("sending the reply")]
///     Api(#[from] BotError),
///     #[error("no such product")]
///     NoProduct,
/// }
///
/// let wrapped: HandlerError = Error::Api(BotError::Server(502)).into();
/// assert!(wrapped.is_transient());
/// assert!(!HandlerError::from(Error::NoProduct).is_transient());
/// ```
pub struct HandlerError {
    inner: Box<dyn StdError + Send + Sync + 'static>,
    class: ErrorClass,
    /// Said outright by the caller: registered classifiers do not override it.
    explicit: bool,
}

impl HandlerError {
    /// A permanent error: retrying the update would fail the same way.
    pub fn permanent(e: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> HandlerError {
        HandlerError {
            inner: e.into(),
            class: ErrorClass::Permanent,
            explicit: true,
        }
    }

    /// A transient error: the update should be retried later (a peer was unavailable).
    pub fn transient(e: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> HandlerError {
        HandlerError {
            inner: e.into(),
            class: ErrorClass::Transient,
            explicit: true,
        }
    }

    /// A permanent error with a message and no other cause (anyhow's `anyhow!`).
    ///
    /// ```
    /// let e = tgpipe::HandlerError::msg("no such product");
    /// assert_eq!(e.to_string(), "no such product");
    /// assert!(!e.is_transient());
    /// ```
    pub fn msg(message: impl fmt::Display) -> HandlerError {
        HandlerError::permanent(message.to_string())
    }

    /// Whether a retry could succeed: the class the runtime acts on (it naks a transient
    /// failure and dead-letters a permanent one).
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// Whether a retry could succeed (`class() == ErrorClass::Transient`).
    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }

    /// The original error and then its causes, outermost first (anyhow's `chain`).
    ///
    /// ```
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    /// let e = tgpipe::HandlerError::from(tgpipe::FsmError::storage(io));
    /// let chain: Vec<String> = e.chain().map(|e| e.to_string()).collect();
    /// assert_eq!(chain, ["FSM storage unavailable", "refused"]);
    /// assert_eq!(format!("{e:#}"), "FSM storage unavailable: refused");
    /// ```
    pub fn chain(&self) -> impl Iterator<Item = &(dyn StdError + 'static)> {
        let inner: &(dyn StdError + 'static) = self.inner();
        chain(inner).take(MAX_CHAIN)
    }

    /// Why a 403 in the chain was refused (a user who blocked the bot, ...): the first
    /// [`crate::BotError`] of the chain says, or a `ForbiddenReason` the application
    /// failed with.
    pub fn forbidden_reason(&self) -> Option<crate::bot::ForbiddenReason> {
        match self.find::<crate::BotError>() {
            Some(e) => e.forbidden_reason(),
            None => self.find::<crate::bot::ForbiddenReason>().copied(),
        }
    }

    /// Whether the original error is a `T`.
    pub fn is<T: StdError + 'static>(&self) -> bool {
        self.inner().is::<T>()
    }

    /// The original error as a `T`.
    pub fn downcast_ref<T: StdError + 'static>(&self) -> Option<&T> {
        self.inner().downcast_ref()
    }

    /// The first `T` in the error's `source()` chain, the original error included: finds
    /// the [`crate::BotError`] inside an application error that wraps it.
    pub fn find<T: StdError + 'static>(&self) -> Option<&T> {
        self.chain().find_map(|e| e.downcast_ref::<T>())
    }

    /// The wait a Bot API flood control (429) asked for, if a `RetryAfter` is in the
    /// chain: the runtime can redeliver the update after it rather than after its
    /// usual backoff. (Not found through an application error that wraps the
    /// `BotError` with `#[error(transparent)]`, which hides it.)
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self.find::<crate::BotError>()? {
            crate::BotError::RetryAfter(wait) => Some(*wait),
            _ => None,
        }
    }

    /// The original error.
    pub fn inner(&self) -> &(dyn StdError + Send + Sync + 'static) {
        match self.inner.downcast_ref::<Shared>() {
            Some(shared) => shared.0.inner(),
            None => &*self.inner,
        }
    }

    /// The error back from the `Arc` that `errors` handlers saw it in
    /// ([`ErrorEvent`](crate::error::ErrorEvent)): itself when no handler kept a
    /// clone, else a handle on the shared one, alike in everything but ownership.
    pub(crate) fn shared(e: Arc<HandlerError>) -> HandlerError {
        Arc::try_unwrap(e).unwrap_or_else(|e| HandlerError {
            class: e.class,
            explicit: true,
            inner: Box::new(Shared(e)),
        })
    }

    /// Classifies again with the application's registered [`Transient`] types (unless
    /// the error was made transient or permanent outright).
    pub(crate) fn reclassify(&mut self, extra: &[Classifier]) {
        if !self.explicit && !extra.is_empty() {
            self.class = classify(self.inner(), extra);
        }
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("error", &self.inner)
            .field("class", &self.class)
            .finish()
    }
}

/// The original error's message; with `{:#}`, its causes too, joined by `: ` (anyhow's
/// alternate form), which is what logs and dead letters show.
impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return fmt::Display::fmt(self.inner(), f);
        }
        for (i, e) in self.chain().enumerate() {
            if i > 0 {
                f.write_str(": ")?;
            }
            fmt::Display::fmt(e, f)?;
        }
        Ok(())
    }
}

/// The original error, whose `source()` chain is the causes: for a library that
/// takes a `dyn Error` (`tracing`'s `error = e.as_ref() as &dyn Error`).
impl AsRef<dyn StdError + Send + Sync + 'static> for HandlerError {
    fn as_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        self.inner()
    }
}

/// Into a boxed error with the same chain, e.g. for `anyhow::Error::from_boxed`, or
/// for `?` in a function that returns `Box<dyn Error>`.
impl From<HandlerError> for Box<dyn StdError + Send + Sync + 'static> {
    fn from(e: HandlerError) -> Self {
        e.inner
    }
}

/// A [`HandlerError`] that an `errors` handler kept a clone of.
#[derive(Debug)]
struct Shared(Arc<HandlerError>);

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl StdError for Shared {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.inner().source()
    }
}

/// Errors that know whether they are transient convert with that knowledge, found
/// anywhere in their `source()` chain; any other error is permanent.
impl<E: StdError + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> HandlerError {
        let class = classify(&e, &[]);
        HandlerError {
            inner: Box::new(e),
            class,
            explicit: false,
        }
    }
}

/// An error and its sources, outermost first.
fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |e: &&'a (dyn StdError + 'static)| (*e).source())
}

/// How deep the `source()` chain is followed (a chain that loops must still end).
const MAX_CHAIN: usize = 32;

/// The first error of the chain that knows decides: the application's registered
/// types, then the framework's own.
pub(crate) fn classify(e: &(dyn StdError + 'static), extra: &[Classifier]) -> ErrorClass {
    let transient = chain(e)
        .take(MAX_CHAIN)
        .find_map(|e| extra.iter().find_map(|c| c(e)).or_else(|| known(e)))
        .unwrap_or(false);
    if transient {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

/// The error types of the framework and of the clients it uses: each implements
/// [`Transient`], like an application's registered types, and is asked the same way.
const BUILT_IN: &[Classifier] = &[
    ask::<ErrorClass>,
    ask::<crate::bot::ForbiddenReason>,
    ask::<crate::bot::BotError>,
    ask::<crate::extract::ExtractError>,
    ask::<crate::fsm::FsmError>,
    ask::<crate::timer::TimerError>,
    #[cfg(feature = "redis")]
    ask::<redis::RedisError>,
    ask::<std::io::Error>,
];

/// Asks one error, if it is an `E`.
fn ask<E: Transient>(e: &(dyn StdError + 'static)) -> Option<bool> {
    e.downcast_ref::<E>().map(Transient::is_transient)
}

fn known(e: &(dyn StdError + 'static)) -> Option<bool> {
    BUILT_IN.iter().find_map(|ask| ask(e))
}

/// A classification found in a `source()` chain decides as it says.
impl Transient for ErrorClass {
    fn is_transient(&self) -> bool {
        *self == ErrorClass::Transient
    }
}

/// A recipient that blocked the bot, left or was never there stays so.
impl Transient for crate::bot::ForbiddenReason {
    fn is_transient(&self) -> bool {
        false
    }
}

/// Flood control, server and network errors ([`BotError::is_transient`](crate::BotError::is_transient)).
impl Transient for crate::bot::BotError {
    fn is_transient(&self) -> bool {
        crate::bot::BotError::is_transient(self)
    }
}

/// Connection failures and timeouts; a Redis answer (a script error, a wrong type) is
/// permanent.
#[cfg(feature = "redis")]
impl Transient for redis::RedisError {
    fn is_transient(&self) -> bool {
        self.is_io_error()
            || self.is_timeout()
            || self.is_connection_dropped()
            || self.is_connection_refusal()
            || self.is_cluster_error()
    }
}

/// I/O that may work later: timeouts, refused, reset or broken connections.
impl Transient for std::io::Error {
    fn is_transient(&self) -> bool {
        use std::io::ErrorKind as K;
        matches!(
            self.kind(),
            K::TimedOut
                | K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::BrokenPipe
                | K::Interrupted
                | K::WouldBlock
        )
    }
}

/// The error an `errors` handler receives.
#[derive(Debug, Clone)]
pub struct ErrorEvent(pub Arc<HandlerError>);

impl crate::extract::FromContext for ErrorEvent {
    fn from_context(cx: &crate::context::Context) -> Result<Self, crate::extract::ExtractError> {
        cx.get::<ErrorEvent>()
            .cloned()
            .ok_or(crate::extract::ExtractError::Missing("ErrorEvent"))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BotError;

    /// An application error enum that wraps the framework's errors as its causes.
    #[derive(Debug, thiserror::Error)]
    enum AppError {
        #[error("calling the Bot API")]
        Api(#[from] BotError),
        #[error("reading the form")]
        Fsm(#[from] crate::FsmError),
        #[error("context: {source}")]
        Context {
            #[source]
            source: Box<AppError>,
        },
        #[error("bad input")]
        BadInput,
    }

    #[test]
    fn a_wrapped_bot_api_502_is_transient() {
        assert!(HandlerError::from(AppError::Api(BotError::Server(502))).is_transient());
        // Two levels down.
        let deep = AppError::Context {
            source: Box::new(AppError::Api(BotError::Network("reset".into()))),
        };
        let e = HandlerError::from(deep);
        assert_eq!(e.class(), ErrorClass::Transient);
    }

    #[test]
    #[cfg(feature = "redis")]
    fn a_wrapped_redis_blip_is_transient() {
        let blip = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = AppError::Fsm(crate::FsmError::storage(redis::RedisError::from(blip)));
        assert!(HandlerError::from(e).is_transient());
    }

    #[test]
    fn wrapped_fsm_lease_errors_are_transient() {
        let key = || "tgpipe:fsm:{4242:1:1}".to_owned();
        #[cfg_attr(not(feature = "redis"), expect(unused_mut))]
        let mut errors = vec![
            crate::FsmError::LockTimeout {
                key: key(),
                waited: std::time::Duration::from_secs(5),
            },
            crate::FsmError::LeaseLost { key: key() },
            crate::FsmError::Fenced { key: key() },
            crate::FsmError::Contended { key: key() },
        ];
        // Redis answering an error (LOADING after a restart): the storage is
        // unavailable, whatever the client's error kind says.
        #[cfg(feature = "redis")]
        errors.push(crate::FsmError::storage(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
            "LOADING Redis is loading the dataset in memory",
        ))));
        for e in errors {
            let text = e.to_string();
            assert!(
                HandlerError::from(AppError::Fsm(e)).is_transient(),
                "{text}"
            );
        }
        let undecodable = rmp_serde::from_slice::<u32>(b"\xc1").unwrap_err();
        let e = AppError::Fsm(crate::FsmError::Decode {
            key: key(),
            type_name: "u32",
            source: undecodable,
        });
        assert!(!HandlerError::from(e).is_transient());
    }

    #[test]
    fn wrapped_permanent_errors_stay_permanent() {
        let e = AppError::Api(BotError::BadRequest("message text is empty".into()));
        assert!(!HandlerError::from(e).is_transient());
        let e = AppError::Api(BotError::Forbidden("bot was blocked by the user".into()));
        let e = HandlerError::from(e);
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert_eq!(
            e.forbidden_reason(),
            Some(crate::bot::ForbiddenReason::BlockedByUser)
        );
        assert!(!HandlerError::from(AppError::BadInput).is_transient());
    }

    /// Regression: `FsmError` wrote its storage error into its message and returned an
    /// `ErrorClass` from `source()`, so a chain (anyhow's, `{:#}`) ended in
    /// "transient: a later retry may succeed" and the cause could not be downcast.
    #[test]
    fn an_errors_cause_was_flattened_into_a_string() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = HandlerError::from(AppError::Fsm(crate::FsmError::storage(refused)));
        assert_eq!(
            format!("{e:#}"),
            "reading the form: FSM storage unavailable: refused"
        );
        let io = e
            .find::<std::io::Error>()
            .expect("the cause is in the chain");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(e.find::<ErrorClass>().is_none(), "{e:#}");
        assert_eq!(e.class(), ErrorClass::Transient);

        // anyhow sees the same chain.
        let any = anyhow::Error::from_boxed(e.into());
        let links: Vec<String> = any.chain().map(ToString::to_string).collect();
        assert_eq!(
            links,
            ["reading the form", "FSM storage unavailable", "refused"]
        );

        // A value that JSON cannot hold keeps serde_json's error as its cause.
        let map = std::collections::BTreeMap::from([((1, 2), 3)]);
        let json = serde_json::to_value(&map).unwrap_err();
        let e = crate::FsmError::Encode {
            type_name: "map",
            source: json.into(),
        };
        assert!(
            std::error::Error::source(&e)
                .is_some_and(|c| c.downcast_ref::<serde_json::Error>().is_some())
        );
    }

    /// Regression: a Bot API error's `source()` was its class (or a 403's reason), not
    /// a cause; the class is now its type's.
    #[test]
    fn a_bot_errors_source_was_its_class_instead_of_a_cause() {
        for e in [
            BotError::Server(502),
            BotError::BadRequest("x".into()),
            BotError::Forbidden("bot was blocked by the user".into()),
        ] {
            assert!(std::error::Error::source(&e).is_none(), "{e:?}");
            assert_eq!(HandlerError::from(e.clone()).class(), e.class());
        }
    }

    /// `transparent` forwards `source()` past the wrapped error, so its class is not in
    /// the chain: the enum says it for itself.
    #[test]
    fn a_transparent_wrapper_passes_the_class_on_when_it_says_it() {
        #[derive(Debug, thiserror::Error)]
        enum Transparent {
            #[error(transparent)]
            Api(#[from] BotError),
        }
        impl Transient for Transparent {
            fn is_transient(&self) -> bool {
                match self {
                    Transparent::Api(e) => e.is_transient(),
                }
            }
        }
        let mut e = HandlerError::from(Transparent::Api(BotError::Server(502)));
        assert_eq!(e.class(), ErrorClass::Permanent, "hidden from the chain");
        e.reclassify(&[classifier_of::<Transparent>()]);
        assert_eq!(e.class(), ErrorClass::Transient);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("payment provider: {0}")]
    struct ProviderError(&'static str, #[source] BotError);

    impl Transient for ProviderError {
        fn is_transient(&self) -> bool {
            self.0 == "busy"
        }
    }

    #[test]
    fn a_registered_transient_type_decides_for_itself_before_what_it_wraps() {
        let extra = [classifier_of::<ProviderError>()];
        // Wraps a permanent error but says it is transient.
        let mut e = HandlerError::from(ProviderError("busy", BotError::Unauthorized));
        assert!(!e.is_transient());
        e.reclassify(&extra);
        assert!(e.is_transient());
        // Wraps a transient one but says it is not.
        let mut e = HandlerError::from(ProviderError("declined", BotError::Server(502)));
        assert!(e.is_transient());
        e.reclassify(&extra);
        assert!(!e.is_transient());
        // Said outright: not reclassified.
        let mut e = HandlerError::permanent(ProviderError("busy", BotError::Unauthorized));
        e.reclassify(&extra);
        assert!(!e.is_transient());
    }

    #[test]
    fn find_and_retry_after_look_through_the_chain() {
        let e = HandlerError::from(AppError::Api(BotError::RetryAfter(
            std::time::Duration::from_secs(7),
        )));
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(7)));
        assert!(e.find::<BotError>().is_some());
        assert!(!e.is::<BotError>());
    }
}
