//! "typing…" while a handler works: [`ChatActionMiddleware`] shows the chat action a
//! handler's `chat_action` flag names (aiogram's `ChatActionMiddleware`), and
//! [`ChatActionSender`] does it by hand.
//!
//! ```
//! use tgpipe::chat_action::ChatActionMiddleware;
//! use tgpipe::prelude::*;
//!
//! async fn report(message: Arc<Message>) -> Result {
//!     // ... something slow ...
//!     message.answer("Here is your report.").await
//! }
//!
//! let mut router = Router::new("main");
//! router.message(report).flag("chat_action", "typing");
//! router.inner_middleware(UpdateKind::Message, ChatActionMiddleware);
//! ```

pub use crate::bot::ChatActionSender;

use crate::context::Context;
use crate::flags::Flags;
use crate::handler::BoxFuture;
use crate::middleware::{MiddlewareResult, Next, chain};

/// Inner middleware: while a handler flagged `chat_action` (`typing`, `upload_photo`,
/// ...) runs, its chat shows that action, sent again every 4.5 s. Handlers without the
/// flag, and updates without a chat, pass untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatActionMiddleware;

impl chain::Middleware<Context, MiddlewareResult> for ChatActionMiddleware {
    fn call(&self, cx: Context, next: Next) -> BoxFuture<'static, MiddlewareResult> {
        let action = Flags::of(&cx).get("chat_action");
        let (Some(action), Some(chat)) = (action, cx.update().chat_id) else {
            return next.run(cx);
        };
        let sender = ChatActionSender::start(cx.bot(), chat, action);
        Box::pin(async move {
            let handled = next.run(cx).await;
            sender.stop();
            handled
        })
    }
}
