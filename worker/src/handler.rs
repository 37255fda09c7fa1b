//! Handlers: plain `async fn`s whose arguments are extractors.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::context::Context;
use crate::error::HandlerError;
use crate::extract::{FromContext, Requirement};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a handler says about an update it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// It handled the update; the search stops.
    Handled,
    /// It declines: the search goes on with the next handler (aiogram's `SkipHandler`).
    Skip,
}

/// What a handler may return: `()`, [`Flow`], or a `Result` of either with any error
/// that converts into [`HandlerError`].
pub trait IntoFlow: Send {
    /// The result as the dispatcher sees it.
    fn into_flow(self) -> Result<Flow, HandlerError>;
}

impl IntoFlow for () {
    fn into_flow(self) -> Result<Flow, HandlerError> {
        Ok(Flow::Handled)
    }
}

impl IntoFlow for Flow {
    fn into_flow(self) -> Result<Flow, HandlerError> {
        Ok(self)
    }
}

impl<T: IntoFlow, E: Into<HandlerError> + Send> IntoFlow for Result<T, E> {
    fn into_flow(self) -> Result<Flow, HandlerError> {
        self.map_err(Into::into).and_then(IntoFlow::into_flow)
    }
}

/// An `async fn` usable as a handler. Implemented for functions and closures of up to
/// 8 extractor arguments returning an [`IntoFlow`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler",
    note = "a handler is an `async fn` whose arguments implement `FromContext` and whose return type is `()`, `Flow`, or `Result<(), E>`/`Result<Flow, E>` with `E: Into<HandlerError>`"
)]
pub trait Handler<Args>: Clone + Send + Sync + 'static {
    /// Runs the handler on the context.
    fn call(&self, cx: Context) -> BoxFuture<'static, Result<Flow, HandlerError>>;
    /// What its arguments need provided.
    fn requirements() -> Vec<Requirement>;
}

macro_rules! impl_handler {
    ($($arg:ident),*) => {
        #[allow(non_snake_case, unused_variables)]
        impl<F, Fut, R, $($arg,)*> Handler<($($arg,)*)> for F
        where
            F: Fn($($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoFlow,
            $($arg: FromContext,)*
        {
            fn call(&self, cx: Context) -> BoxFuture<'static, Result<Flow, HandlerError>> {
                $(let $arg = match $arg::from_context(&cx) {
                    Ok(v) => v,
                    Err(e) => return Box::pin(std::future::ready(Err(HandlerError::from(e)))),
                };)*
                let fut = (self)($($arg),*);
                Box::pin(async move { fut.await.into_flow() })
            }

            fn requirements() -> Vec<Requirement> {
                let all: Vec<Option<Requirement>> = vec![$($arg::requirement()),*];
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
    call: Arc<dyn Fn(Context) -> BoxFuture<'static, Result<Flow, HandlerError>> + Send + Sync>,
    pub(crate) requirements: Vec<Requirement>,
}

impl ErasedHandler {
    pub(crate) fn new<H: Handler<A>, A: 'static>(h: H) -> ErasedHandler {
        ErasedHandler {
            requirements: H::requirements(),
            call: Arc::new(move |cx| h.call(cx)),
        }
    }

    pub(crate) fn call(&self, cx: Context) -> BoxFuture<'static, Result<Flow, HandlerError>> {
        (self.call)(cx)
    }
}
