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
pub use tgpipe_bot::chain;

/// What a middleware chain or router returns: whether the update was handled.
pub type MiddlewareResult = Result<Handled, HandlerError>;

/// Whether an update was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// A handler took it (or a middleware consumed it).
    Yes,
    /// Nothing took it.
    No,
}

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
///             return Box::pin(async { Ok(tgpipe::Handled::Yes) });
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
