//! Handlers: plain `async fn`s whose arguments are extractors.

use std::future::Future;
use std::sync::Arc;

use crate::context::Context;
use crate::error::HandlerError;
use crate::extract::{ExtractError, FromContext, Requirement};
use crate::outcome::Outcome;

/// A boxed, sendable future: the one of the middleware chains (`tgpipe_bot::chain`).
pub use tgpipe_bot::chain::BoxFuture;

/// What a handler may return: `()`, an [`Outcome`], or a `Result` of either with any
/// error that converts into [`HandlerError`].
///
/// Any other return type does not compile, and the error says what a handler returns:
///
/// ```compile_fail,E0277
/// use std::sync::Arc;
/// use tgpipe::frankenstein::types::Message;
/// use tgpipe::Router;
///
/// async fn greet(message: Arc<Message>) -> String {
///     "hello".to_owned()
/// }
///
/// let mut router = Router::new("main");
/// router.message(greet);
/// ```
///
/// ```text
/// error[E0277]: `std::string::String` cannot be what a handler returns
///  = note: a handler returns `()`, `Outcome`, or `Result<(), E>`/`Result<Outcome, E>` with `E: Into<HandlerError>` ...
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be what a handler returns",
    label = "the handler's return type",
    note = "a handler returns `()`, `Outcome`, or `Result<(), E>`/`Result<Outcome, E>` with `E: Into<HandlerError>` (any `std::error::Error + Send + Sync + 'static` is)"
)]
pub trait IntoOutcome: Send {
    /// The result as the dispatcher sees it.
    fn into_outcome(self) -> Result<Outcome, HandlerError>;
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Result<Outcome, HandlerError> {
        Ok(Outcome::Handled)
    }
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Result<Outcome, HandlerError> {
        Ok(self)
    }
}

impl<T: IntoOutcome, E: Into<HandlerError> + Send> IntoOutcome for Result<T, E> {
    fn into_outcome(self) -> Result<Outcome, HandlerError> {
        self.map_err(Into::into).and_then(IntoOutcome::into_outcome)
    }
}

/// An `async fn` usable as a handler: a [`HandlerFn`] whose arguments are
/// [`HandlerArgs`] (each one a [`FromContext`]) and whose output is an [`IntoOutcome`].
///
/// It is one blanket implementation over those two traits rather than one per number
/// of arguments, so that the compiler settles the argument types from the function's
/// arity first and then names the argument that is not an extractor (see
/// [`FromContext`]), instead of calling the whole function "not a handler".
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler",
    label = "not an `async fn` of at most 8 extractor arguments",
    note = "a handler is an `async fn` (or a closure returning a future) of up to 8 arguments that implement `FromContext`, returning `()`, `Outcome`, or `Result<(), E>`/`Result<Outcome, E>` with `E: Into<HandlerError>`"
)]
pub trait Handler<Args>: Clone + Send + Sync + 'static {
    /// Runs the handler on the context.
    fn call(&self, cx: Context) -> BoxFuture<'static, Result<Outcome, HandlerError>>;
    /// What its arguments need provided.
    fn requirements() -> Vec<Requirement>;
}

impl<F, Args> Handler<Args> for F
where
    F: HandlerFn<Args>,
    Args: HandlerArgs,
    <F::Future as Future>::Output: IntoOutcome,
{
    fn call(&self, cx: Context) -> BoxFuture<'static, Result<Outcome, HandlerError>> {
        let args = match Args::from_context(&cx) {
            Ok(args) => args,
            Err(e) => return Box::pin(std::future::ready(Err(HandlerError::from(e)))),
        };
        let fut = self.call_with(args);
        Box::pin(async move { fut.await.into_outcome() })
    }

    fn requirements() -> Vec<Requirement> {
        Args::requirements()
    }
}

/// A function or closure of up to 8 arguments, whatever their types, returning a
/// future: what a [`Handler`] is made of.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler",
    label = "not an `async fn` of at most 8 arguments",
    note = "a handler is an `async fn` (or a closure returning a future) of up to 8 arguments that implement `FromContext`"
)]
pub trait HandlerFn<Args>: Clone + Send + Sync + 'static {
    /// The future a call returns.
    type Future: Future + Send + 'static;
    /// Calls it with its arguments.
    fn call_with(&self, args: Args) -> Self::Future;
}

/// A handler's arguments: a tuple of up to 8 [`FromContext`] types, extracted in order.
pub trait HandlerArgs: Sized + Send + 'static {
    /// Extracts every argument; the first that fails fails the call.
    fn from_context(cx: &Context) -> Result<Self, ExtractError>;
    /// What the arguments need provided.
    fn requirements() -> Vec<Requirement>;
}

macro_rules! impl_handler {
    ($($arg:ident),*) => {
        impl<F, Fut, $($arg,)*> HandlerFn<($($arg,)*)> for F
        where
            F: Fn($($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future + Send + 'static,
        {
            type Future = Fut;

            #[allow(non_snake_case)]
            fn call_with(&self, ($($arg,)*): ($($arg,)*)) -> Fut {
                (self)($($arg),*)
            }
        }

        impl<$($arg: FromContext,)*> HandlerArgs for ($($arg,)*) {
            #[allow(unused_variables)]
            fn from_context(cx: &Context) -> Result<Self, ExtractError> {
                Ok(($($arg::from_context(cx)?,)*))
            }

            fn requirements() -> Vec<Requirement> {
                let all: [Option<Requirement>; _] = [$($arg::requirement()),*];
                all.into_iter().flatten().collect()
            }
        }
    };
}

impl_handler!();
impl_handler!(A1);
impl_handler!(A1, A2);
impl_handler!(A1, A2, A3);
impl_handler!(A1, A2, A3, A4);
impl_handler!(A1, A2, A3, A4, A5);
impl_handler!(A1, A2, A3, A4, A5, A6);
impl_handler!(A1, A2, A3, A4, A5, A6, A7);
impl_handler!(A1, A2, A3, A4, A5, A6, A7, A8);

/// A handler with its argument types erased, as routers store them.
#[derive(Clone)]
pub(crate) struct ErasedHandler {
    call: Arc<dyn Fn(Context) -> BoxFuture<'static, Result<Outcome, HandlerError>> + Send + Sync>,
    pub(crate) requirements: Vec<Requirement>,
}

impl ErasedHandler {
    pub(crate) fn new<H: Handler<A>, A: 'static>(h: H) -> ErasedHandler {
        ErasedHandler {
            requirements: H::requirements(),
            call: Arc::new(move |cx| h.call(cx)),
        }
    }

    pub(crate) fn call(&self, cx: Context) -> BoxFuture<'static, Result<Outcome, HandlerError>> {
        (self.call)(cx)
    }
}
