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

use std::future::Future;
use std::sync::Arc;

use crate::context::Context;
use crate::error::HandlerError;
use crate::handler::BoxFuture;

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

/// A middleware. Any `Fn(Context, Next) -> impl Future<Output = MiddlewareResult>` is one.
pub trait Middleware: Send + Sync + 'static {
    /// Runs around the rest of the chain.
    fn call(&self, cx: Context, next: Next) -> BoxFuture<'static, MiddlewareResult>;
}

impl<F, Fut> Middleware for F
where
    F: Fn(Context, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = MiddlewareResult> + Send + 'static,
{
    fn call(&self, cx: Context, next: Next) -> BoxFuture<'static, MiddlewareResult> {
        Box::pin(self(cx, next))
    }
}

/// What a chain runs at its end.
pub(crate) type Endpoint =
    Arc<dyn Fn(Context) -> BoxFuture<'static, MiddlewareResult> + Send + Sync>;

/// The rest of the chain.
#[derive(Clone)]
pub struct Next {
    chain: Arc<[Arc<dyn Middleware>]>,
    index: usize,
    endpoint: Endpoint,
}

impl Next {
    pub(crate) fn new(chain: Arc<[Arc<dyn Middleware>]>, endpoint: Endpoint) -> Next {
        Next {
            chain,
            index: 0,
            endpoint,
        }
    }

    /// Runs the rest of the chain with `cx`.
    pub fn run(self, cx: Context) -> BoxFuture<'static, MiddlewareResult> {
        match self.chain.get(self.index) {
            Some(mw) => {
                let mw = Arc::clone(mw);
                let next = Next {
                    index: self.index + 1,
                    ..self
                };
                mw.call(cx, next)
            }
            None => (self.endpoint)(cx),
        }
    }
}
