//! Middleware: code around handling, as `async fn(cx, next)`.
//!
//! Not calling `next` drops the update; code after `next.run(cx).await` runs after the
//! handler (post-processing). Outer middleware of an observer runs for every update of
//! its kind that reaches the router, before any filter; inner middleware runs only once a
//! handler's filters matched, around that handler:
//!
//! ```text
//! update ─> FSM ─> errors stage ─> update-wide outer ─> router: observer outer ─> filters ─┬─> inner ─> handler
//!                                                                                          └─> (no match) nested routers
//! ```
//!
//! The FSM ([`Fsm`](crate::Fsm) is a [`Middleware`]) and the errors stage are the first
//! update-wide links when the dispatcher has them; the chains are composed once, when
//! the dispatcher is built.

use crate::context::Context;
use crate::error::HandlerError;
use crate::handler::BoxFuture;
pub use crate::outcome::Outcome;
pub use tgpipe_bot::chain;

/// What a middleware chain or router returns: `Result<Outcome, HandlerError>`, the
/// type every level returns (see [`Outcome`]).
pub type MiddlewareResult = Result<Outcome, HandlerError>;

/// An update middleware: a [`chain::Middleware`] of [`Context`]s, the model Bot API
/// calls use too. Any `Fn(Context, Next) -> impl Future<Output = MiddlewareResult>` is
/// one; a type implements `chain::Middleware<Context, MiddlewareResult>`:
///
/// ```
/// use tgpipe::middleware::{chain, MiddlewareResult, Next};
/// use tgpipe::handler::BoxFuture;
/// use tgpipe::Context;
///
/// /// Drops the updates of one chat.
/// struct Mute(i64);
///
/// impl chain::Middleware<Context, MiddlewareResult> for Mute {
///     fn call(&self, cx: Context, next: Next) -> BoxFuture<'static, MiddlewareResult> {
///         if cx.update().chat_id == Some(self.0) {
///             return Box::pin(async { Ok(tgpipe::Outcome::Handled) });
///         }
///         next.run(cx)
///     }
/// }
///
/// let mut router = tgpipe::Router::new("r");
/// router.outer_middleware(tgpipe::UpdateKind::Message, Mute(13));
/// ```
pub trait Middleware: chain::Middleware<Context, MiddlewareResult> {}

impl<M: chain::Middleware<Context, MiddlewareResult>> Middleware for M {}

/// A middleware in a chain (what the dispatcher stores).
pub(crate) type DynMiddleware = dyn chain::Middleware<Context, MiddlewareResult>;

/// What a chain runs at its end.
pub(crate) type Endpoint = chain::Endpoint<Context, MiddlewareResult>;

/// The rest of the chain.
pub type Next = chain::Next<Context, MiddlewareResult>;

/// A middleware whose first arguments are extractors, as handlers take them (axum's
/// `middleware::from_fn`): `async fn(args.., Context, Next) -> MiddlewareResult`.
///
/// An update its arguments cannot be extracted from (a `Arc<Message>` argument on a
/// callback query) passes it by: the middleware does not apply to that update.
///
/// ```
/// use tgpipe::middleware::from_fn;
/// use tgpipe::prelude::*;
///
/// #[derive(Clone)]
/// struct Admins(Vec<i64>);
///
/// async fn admins_only(
///     message: Arc<Message>,
///     Dep(admins): Dep<Admins>,
///     cx: Context,
///     next: Next,
/// ) -> MiddlewareResult {
///     let from = message.from.as_ref().map(|u| u.id as i64);
///     if from.is_some_and(|id| admins.0.contains(&id)) {
///         return next.run(cx).await;
///     }
///     Ok(Outcome::Handled) // dropped
/// }
///
/// let mut router = Router::new("admin");
/// router.outer_middleware(UpdateKind::Message, from_fn(admins_only));
/// ```
pub fn from_fn<F, Args>(f: F) -> FromFn<F, Args>
where
    F: MiddlewareFn<Args>,
{
    FromFn(f, std::marker::PhantomData)
}

/// See [`from_fn`].
pub struct FromFn<F, Args>(F, std::marker::PhantomData<fn() -> Args>);

/// An `async fn(args.., Context, Next)` whose arguments are extractors: what [`from_fn`]
/// takes.
pub trait MiddlewareFn<Args>: Send + Sync + 'static {
    /// Extracts the arguments and runs, or passes the update on when they cannot be
    /// extracted.
    fn call(&self, cx: Context, next: Next) -> BoxFuture<'static, MiddlewareResult>;
}

macro_rules! impl_middleware_fn {
    ($($arg:ident),*) => {
        impl<F, Fut, $($arg,)*> MiddlewareFn<($($arg,)*)> for F
        where
            F: Fn($($arg,)* Context, Next) -> Fut + Send + Sync + 'static,
            Fut: std::future::Future<Output = MiddlewareResult> + Send + 'static,
            $($arg: crate::extract::FromContext,)*
        {
            #[allow(non_snake_case)]
            fn call(&self, cx: Context, next: Next) -> BoxFuture<'static, MiddlewareResult> {
                $(
                    let Ok($arg) = $arg::from_context(&cx) else {
                        return next.run(cx);
                    };
                )*
                Box::pin((self)($($arg,)* cx, next))
            }
        }
    };
}

impl_middleware_fn!(A1);
impl_middleware_fn!(A1, A2);
impl_middleware_fn!(A1, A2, A3);
impl_middleware_fn!(A1, A2, A3, A4);

impl<F, Args> chain::Middleware<Context, MiddlewareResult> for FromFn<F, Args>
where
    F: MiddlewareFn<Args>,
    Args: 'static,
{
    fn call(&self, cx: Context, next: Next) -> BoxFuture<'static, MiddlewareResult> {
        self.0.call(cx, next)
    }
}
