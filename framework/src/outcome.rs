//! [`Outcome`]: what an update came to, at every level that sees it.

/// What a handler, a middleware, a router or the dispatcher did with an update.
///
/// Every level returns [`crate::Result<Outcome>`](crate::Result): `Ok(Handled)`,
/// `Ok(Skipped)`, or `Err` when it failed. The one type carries the three answers
/// from a handler up to the worker, which acknowledges the first two and retries or
/// dead-letters the third.
///
/// `Skipped` gives control back: the dispatcher tries the next handler, then the
/// nested routers (aiogram's `SkipHandler` and `UNHANDLED`, dptree's
/// `ControlFlow::Continue`). A handler that returns `()` or `Ok(())` handled the
/// update.
///
/// ```
/// use tgpipe::prelude::*;
///
/// /// Takes only the messages it understands; others go to the next handler.
/// async fn numbers(message: Arc<Message>) -> Result<Outcome> {
///     let Ok(n) = message.text_or_caption().parse::<i64>() else {
///         return Ok(Outcome::Skipped);
///     };
///     message.answer(format!("{}", n * 2)).await?;
///     Ok(Outcome::Handled)
/// }
///
/// let mut router = Router::new("main");
/// router.message(numbers);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A handler took the update (or a middleware consumed it): the search stops.
    Handled,
    /// Not taken here: the next handler or router is tried; at the dispatcher,
    /// nothing took it (the runtime acknowledges it all the same).
    Skipped,
}

impl Outcome {
    /// Whether the update was handled.
    pub fn is_handled(self) -> bool {
        self == Outcome::Handled
    }
}
