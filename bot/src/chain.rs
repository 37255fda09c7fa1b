//! The one middleware model of tgpipe: `async fn(request, next) -> response`, over a
//! chain composed once.
//!
//! Updates and Bot API calls go through the same shape. The framework's update chain is
//! `Middleware<Context, MiddlewareResult>` (`tgpipe::middleware`); a Bot API call's is
//! `Middleware<ApiRequest, ApiResult>` ([`crate::middleware`]). A middleware gets the
//! request and the rest of the chain ([`Next`]); it may change the request, answer
//! without calling on, or act on the answer. Any
//! `Fn(Req, Next<Req, Res>) -> impl Future<Output = Res>` is one; a type implements
//! [`Middleware::call`] and returns a boxed future.
//!
//! ```
//! use tgpipe_bot::chain::{Middleware, Next};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let double = |n: u32, next: Next<u32, u32>| async move { next.run(n * 2).await };
//! let chain: Vec<std::sync::Arc<dyn Middleware<u32, u32>>> = vec![std::sync::Arc::new(double)];
//! let next = Next::new(chain.into(), std::sync::Arc::new(|n| Box::pin(async move { n + 1 })));
//! assert_eq!(next.run(20).await, 41);
//! # });
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A middleware of requests `Req` answered with `Res`.
pub trait Middleware<Req, Res>: Send + Sync + 'static {
    /// Runs around the rest of the chain.
    fn call(&self, request: Req, next: Next<Req, Res>) -> BoxFuture<'static, Res>;
}

impl<F, Fut, Req, Res> Middleware<Req, Res> for F
where
    F: Fn(Req, Next<Req, Res>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Res> + Send + 'static,
{
    fn call(&self, request: Req, next: Next<Req, Res>) -> BoxFuture<'static, Res> {
        Box::pin(self(request, next))
    }
}

/// What a chain runs at its end.
pub type Endpoint<Req, Res> = Arc<dyn Fn(Req) -> BoxFuture<'static, Res> + Send + Sync>;

/// The rest of a chain: the middleware after this one, then the endpoint.
pub struct Next<Req, Res> {
    chain: Arc<[Arc<dyn Middleware<Req, Res>>]>,
    index: usize,
    endpoint: Endpoint<Req, Res>,
}

impl<Req, Res> Clone for Next<Req, Res> {
    fn clone(&self) -> Self {
        Next {
            chain: Arc::clone(&self.chain),
            index: self.index,
            endpoint: Arc::clone(&self.endpoint),
        }
    }
}

impl<Req, Res> std::fmt::Debug for Next<Req, Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("remaining", &(self.chain.len() - self.index))
            .finish_non_exhaustive()
    }
}

impl<Req: 'static, Res: 'static> Next<Req, Res> {
    /// A whole chain: `chain` in order, then `endpoint`.
    pub fn new(chain: Arc<[Arc<dyn Middleware<Req, Res>>]>, endpoint: Endpoint<Req, Res>) -> Self {
        Next {
            chain,
            index: 0,
            endpoint,
        }
    }

    /// Runs the rest of the chain with `request`.
    pub fn run(self, request: Req) -> BoxFuture<'static, Res> {
        match self.chain.get(self.index) {
            Some(mw) => {
                let mw = Arc::clone(mw);
                let next = Next {
                    index: self.index + 1,
                    ..self
                };
                mw.call(request, next)
            }
            None => (self.endpoint)(request),
        }
    }
}
