//! `tgpipe-worker`: the process around a [`tgpipe::Dispatcher`].
//!
//! [`run`] is a bot's `main`: it parses the command line and runs one of the worker's
//! commands: `run` (the partitioned JetStream consumer, with the ops server on
//! `TGPIPE_LISTEN`: `/healthz`, `/readyz`, `/metrics`), `poll` (long polling into the
//! same streams), `webhook` (register the ingress with Telegram), and `dlq` (list and
//! replay dead letters). The framework itself is the `tgpipe` crate; the wire contract
//! both tiers share is `tgpipe-shared`.
//!
//! ```no_run
//! use std::process::ExitCode;
//! use tgpipe::prelude::*;
//!
//! async fn ping(bot: Bot, message: Arc<Message>) -> Result<(), HandlerError> {
//!     bot.send_text(message.chat.id, "pong").await?;
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> ExitCode {
//!     let mut router = Router::new("ping");
//!     router.message(ping).filter(Command::new(["ping"]));
//!     tgpipe_worker::run(Dispatcher::builder(router)).await
//! }
//! ```

pub mod poll;
pub mod runtime;
pub mod set_webhook;

pub use runtime::run;

/// The guide `docs/framework.md`, whose examples are compiled as doc tests (they show
/// `run`, `RedisStorage` and the webhook commands).
#[doc = include_str!("../../docs/framework.md")]
#[cfg(doctest)]
pub struct FrameworkGuide;

/// The guide `docs/fsm.md`, whose examples are compiled as doc tests.
#[doc = include_str!("../../docs/fsm.md")]
#[cfg(doctest)]
pub struct FsmGuide;

/// The guide `docs/webhooks.md`, whose examples are compiled as doc tests.
#[doc = include_str!("../../docs/webhooks.md")]
#[cfg(doctest)]
pub struct WebhooksGuide;
