//! `tgpipe-bot`: the Bot API client of tgpipe.
//!
//! The [`Bot`] handle is a bot's identity and the one path every Bot API call takes; the
//! framework (`tgpipe`) hands it to handlers, and it can be used on its own.
//!
//! Every method, typed ([`frankenstein::AsyncTelegramApi`]) or by name ([`Bot::call`]),
//! becomes an [`ApiRequest`] and goes through [`Bot::execute`]: a tracing span, the
//! request middleware chain ([`middleware`]: metrics and logging built in, more can be
//! added), the rate limiter ([`limiter`]; with the `redis` feature and
//! `BotBuilder::redis_url`, in Redis so that all pods of a bot keep Telegram's limits
//! together, else in process), then HTTP with bounded retries: after a 429 the chat the
//! call went to (or, for a call to no chat, the whole bot) waits `retry_after` (every
//! pod: the pause is in Redis too), up to [`RetryPolicy::max_retry_after`]: a longer
//! pause is not waited out but returned as a transient [`BotError::RetryAfter`] with the
//! time left. 5xx and connection failures back off exponentially with jitter and send
//! again where that cannot repeat an effect ([`effects`]). Answers
//! become typed errors ([`BotError`]) that know whether they are transient.
//!
//! The token is part of the request URL only as Telegram requires; it is never logged,
//! and `Debug` prints the bot id alone.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tgpipe_bot::Bot;
//! use tgpipe_bot::{RateLimits, RetryPolicy};
//!
//! let bot = Bot::builder("123456:ABC-DEF")
//!     .api_url("http://127.0.0.1:8081")
//!     .limits(RateLimits { expected_pods: 4, ..RateLimits::default() })
//!     .retry(RetryPolicy { max_flood_retries: 2, ..RetryPolicy::default() })
//!     .build()?;
//! bot.send_text(5, "hello").await?;
//! # Ok(()) }
//! ```

mod builder;
pub mod chain;
mod class;
mod client;
pub mod effects;
mod error;
mod helpers;
pub mod idle;
mod input_file;
pub mod limiter;
pub mod middleware;
#[cfg(feature = "redis")]
mod redis_connection;
mod retry;

pub use builder::{BotBuilder, http_client};
pub use class::ErrorClass;
pub use client::Bot;
pub use error::{BotError, ForbiddenReason, InvalidToken};
pub use helpers::{CallbackQueryExt, ChatActionSender, MediaGroup, MessageExt};
pub use input_file::{FormPart, InputFile, Payload};
pub use limiter::{Rate, RateLimits, is_limited_method};
pub use middleware::{
    ApiNext, ApiRequest, ApiResult, LoggingMiddleware, MetricsMiddleware, RequestMiddleware,
};

#[cfg(feature = "redis")]
pub use redis_connection::RedisConnection;
pub use retry::RetryPolicy;

/// The default Bot API base URL.
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";
