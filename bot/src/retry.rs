//! How a call is retried: [`RetryPolicy`], and the loop after the middleware that takes
//! the limiter's permit, sends, and decides from the failure whether to wait and send
//! again (a 429, a 5xx or a network failure where resending cannot repeat an effect, a
//! migrated chat) or to return the error.

use std::time::Duration;

use bytes::Bytes;

use crate::{ApiRequest, Bot, BotError, effects, idle, is_limited_method, limiter, middleware};

/// How calls are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times a call is sent again after a 429 (each after the pause).
    pub max_flood_retries: u32,
    /// A 429 asking for a longer wait than this is not waited out here: the error goes
    /// to the handler (transient, so the runtime redelivers the update later) instead of
    /// holding the handler that long. The pause is set all the same, and a later call
    /// that would wait longer than this for a pause is refused at once with
    /// `BotError::RetryAfter(time left)`, without being sent.
    pub max_retry_after: Duration,
    /// How many times a call is sent again after a 5xx or a connection failure.
    pub max_server_retries: u32,
    /// The first backoff; each retry doubles it, up to `max_backoff`, with full jitter.
    pub backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// After `migrate_to_chat_id`, send the same call once more to the new supergroup
    /// (the error is returned when this is off, or when the retry fails too).
    pub follow_migration: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_flood_retries: 3,
            max_retry_after: Duration::from_secs(30),
            max_server_retries: 3,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            follow_migration: false,
        }
    }
}

impl RetryPolicy {
    /// No retries at all: every error goes straight to the caller.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_flood_retries: 0,
            max_server_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry number `attempt` (0-based): full jitter over an
    /// exponentially growing window, so that pods that failed together do not retry
    /// together.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let window = self
            .backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_backoff);
        window.mul_f64(rand::random::<f64>())
    }
}

impl Bot {
    /// After the middleware: the limiter, HTTP, and the retries.
    pub(crate) async fn transport(&self, mut request: ApiRequest) -> Result<Bytes, BotError> {
        let policy = &self.0.retry;
        // The method's class and the chat it addresses, read once for the whole call.
        let limited = is_limited_method(&request.method);
        let mut target = if limited { request.target() } else { None };
        let (mut flood_retries, mut server_retries, mut migrated) = (0, 0, false);
        loop {
            if let Err(left) = self
                .0
                .limiter
                .acquire(limited, target, policy.max_retry_after)
                .await
            {
                // Paused for longer than a call may wait: refused here, with the time
                // left, so the update goes back to the stream instead of holding on.
                retried_not(&request.method);
                return Err(BotError::RetryAfter(left));
            }
            let failed = match self.send_once(&request).await {
                Ok(body) => return Ok(body),
                Err(f) => f,
            };
            match failed.error {
                BotError::RetryAfter(wait) => {
                    // Pause the scope Telegram refused (the chat the call went to, else
                    // the bot) in every pod, whether or not this call is sent again.
                    let chat = limiter::chat_of(target.or_else(|| request.target()));
                    self.0.limiter.pause(chat, wait).await;
                    if flood_retries >= policy.max_flood_retries || wait > policy.max_retry_after {
                        return Err(failed.error);
                    }
                    flood_retries += 1;
                    retried(&request.method, "429");
                    // The next `acquire` waits the pause out.
                }
                // Sent again only where that cannot repeat an effect: the failure
                // proves the call was not made (a refused connection), or the method
                // changes nothing when repeated (`effects::replay_of`).
                BotError::Server(_) | BotError::Network(_)
                    if server_retries < policy.max_server_retries
                        && (failed.not_sent
                            || effects::replay_of(&request.method)
                                == effects::Replay::Idempotent) =>
                {
                    idle::idle(tokio::time::sleep(policy.backoff(server_retries))).await;
                    server_retries += 1;
                    retried(&request.method, failed.error.status_label());
                }
                BotError::MigrateToChat(chat)
                    if policy.follow_migration && !migrated && request.retarget(chat) =>
                {
                    migrated = true;
                    target = target.map(|t| middleware::Target {
                        chat: Some(middleware::ChatRef::Id(chat)),
                        ..t
                    });
                    retried(&request.method, "migrate");
                }
                // Money or a gift, and Telegram may have acted: never sent again.
                error @ (BotError::Server(_) | BotError::Network(_))
                    if !failed.not_sent
                        && effects::replay_of(&request.method) == effects::Replay::Costly =>
                {
                    return Err(BotError::Unconfirmed(format!(
                        "{}: {error}",
                        request.method
                    )));
                }
                error => return Err(error),
            }
        }
    }
}

/// A call refused before it was sent, because a pause outlasts `max_retry_after`.
pub(crate) fn retried_not(method: &str) {
    metrics::counter!("tgpipe_bot_api_paused_refusals_total", "method" => method.to_owned())
        .increment(1);
}

pub(crate) fn retried(method: &str, reason: &'static str) {
    metrics::counter!("tgpipe_bot_api_retries_total", "method" => method.to_owned(), "reason" => reason)
        .increment(1);
}
