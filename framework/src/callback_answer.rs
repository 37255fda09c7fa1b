//! [`CallbackAnswer`]: answers every callback query its handler left unanswered, so a
//! button's spinner always stops (aiogram's `CallbackAnswerMiddleware`).
//!
//! ```
//! use tgpipe::callback_answer::CallbackAnswer;
//! use tgpipe::prelude::*;
//!
//! async fn pressed(query: Arc<CallbackQuery>) {
//!     // no query.answer(): the middleware answers after the handler
//! }
//!
//! let mut router = Router::new("main");
//! router.callback_query(pressed);
//! router.callback_query(|| async {}).flag("callback_answer", "off");
//! router.inner_middleware(UpdateKind::CallbackQuery, CallbackAnswer::new());
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::calls::CallbackQueryCalls;
use crate::context::Context;
use crate::flags::Flags;
use crate::handler::BoxFuture;
use crate::middleware::{MiddlewareResult, Next, chain};
use crate::update::Event;

tokio::task_local! {
    /// Set once the query of the update being handled was answered.
    static ANSWERED: Arc<AtomicBool>;
}

/// Notes that the callback query being handled was answered (by `query.answer()`).
pub(crate) fn mark_answered() {
    let _ = ANSWERED.try_with(|a| a.store(true, Ordering::Relaxed));
}

/// Inner middleware for callback queries: after the handler, answers the query unless
/// the handler did (through `query.answer()`) or its `callback_answer` flag is `off`.
/// A transient failure is not answered: the update is retried, and the retry answers.
#[derive(Debug, Clone, Default)]
pub struct CallbackAnswer {
    text: Option<String>,
}

impl CallbackAnswer {
    /// Answers without a notification.
    pub fn new() -> CallbackAnswer {
        CallbackAnswer::default()
    }

    /// Answers with this toast.
    pub fn text(mut self, text: impl Into<String>) -> CallbackAnswer {
        self.text = Some(text.into());
        self
    }
}

impl chain::Middleware<Context, MiddlewareResult> for CallbackAnswer {
    fn call(&self, cx: Context, next: Next) -> BoxFuture<'static, MiddlewareResult> {
        let Event::CallbackQuery(query) = cx.event() else {
            return next.run(cx);
        };
        if Flags::of(&cx).get("callback_answer") == Some("off") {
            return next.run(cx);
        }
        let query = Arc::clone(query);
        let bot = cx.bot().clone();
        let text = self.text.clone();
        let answered = Arc::new(AtomicBool::new(false));
        Box::pin(async move {
            let handled = ANSWERED.scope(Arc::clone(&answered), next.run(cx)).await;
            let retried = matches!(&handled, Err(e) if e.is_transient());
            if !answered.load(Ordering::Relaxed) && !retried {
                let mut answer = query.answer().bot(&bot);
                if let Some(text) = text {
                    answer = answer.text(text);
                }
                // The answer is cosmetic: its failure does not fail the update.
                if let Err(e) = answer.send().await {
                    tracing::debug!(error = %e, "callback query not answered");
                }
            }
            handled
        })
    }
}
