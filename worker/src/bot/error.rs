//! [`BotError`]: what a Bot API call can come to, typed after Telegram's answers, and
//! whether retrying later could help.

use std::time::Duration;

/// A failed Bot API call.
///
/// Each variant knows whether it is transient ([`BotError::is_transient`]): the worker
/// runtime naks an update whose handler failed transiently (it is retried later) and
/// dead-letters one that failed for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BotError {
    /// 429: flood control; the whole bot must wait this long.
    #[error("Bot API flood control: retry after {0:?}")]
    RetryAfter(Duration),
    /// 400 with `migrate_to_chat_id`: the group became this supergroup.
    #[error("the group was upgraded to the supergroup {0}")]
    MigrateToChat(i64),
    /// 403: the bot was blocked, kicked, or may not write there.
    #[error("Bot API forbidden: {0}")]
    Forbidden(String),
    /// 400: the request was wrong (empty text, chat not found, ...).
    #[error("Bot API bad request: {0}")]
    BadRequest(String),
    /// 401: the token was revoked or is wrong.
    #[error("Bot API unauthorized: the token is not valid")]
    Unauthorized,
    /// 404: no such method (or a bad token in the URL).
    #[error("Bot API method not found")]
    NotFound,
    /// 409: a webhook is set while polling, or another poller is running.
    #[error("Bot API conflict: {0}")]
    Conflict(String),
    /// 5xx: Telegram's side failed (the code).
    #[error("Bot API server error {0}")]
    Server(u16),
    /// Another error code Telegram may answer with.
    #[error("Bot API error {code}: {description}")]
    Other {
        /// The `error_code`.
        code: u16,
        /// Telegram's description.
        description: String,
    },
    /// The request did not complete (connection refused or reset, timeout).
    #[error("network error talking to the Bot API: {0}")]
    Network(String),
    /// The answer was not Telegram's envelope (or not the expected result).
    #[error("unexpected answer from the Bot API: {0}")]
    InvalidResponse(String),
    /// The request could not be built (parameters that do not serialise, a file that
    /// cannot be read).
    #[error("the Bot API request could not be built: {0}")]
    InvalidRequest(String),
}

impl BotError {
    /// Whether retrying later could succeed: flood control, server errors and network
    /// errors. Everything else would fail the same way again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tgpipe_worker::BotError;
    ///
    /// assert!(BotError::RetryAfter(Duration::from_secs(3)).is_transient());
    /// assert!(BotError::Server(502).is_transient());
    /// assert!(!BotError::Forbidden("bot was blocked by the user".into()).is_transient());
    /// assert!(!BotError::MigrateToChat(-1001).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BotError::RetryAfter(_) | BotError::Server(_) | BotError::Network(_)
        )
    }

    /// The HTTP-like code Telegram answered with, if it answered.
    pub fn code(&self) -> Option<u16> {
        Some(match self {
            BotError::RetryAfter(_) => 429,
            BotError::MigrateToChat(_) | BotError::BadRequest(_) => 400,
            BotError::Forbidden(_) => 403,
            BotError::Unauthorized => 401,
            BotError::NotFound => 404,
            BotError::Conflict(_) => 409,
            BotError::Server(code) | BotError::Other { code, .. } => *code,
            BotError::Network(_) | BotError::InvalidResponse(_) | BotError::InvalidRequest(_) => {
                return None;
            }
        })
    }

    /// A short, bounded label for metrics and spans: the code, or the failure's kind.
    pub fn status_label(&self) -> &'static str {
        match self {
            BotError::RetryAfter(_) => "429",
            BotError::MigrateToChat(_) => "400_migrate",
            BotError::BadRequest(_) => "400",
            BotError::Forbidden(_) => "403",
            BotError::Unauthorized => "401",
            BotError::NotFound => "404",
            BotError::Conflict(_) => "409",
            BotError::Server(_) => "5xx",
            BotError::Other { .. } => "other",
            BotError::Network(_) => "network",
            BotError::InvalidResponse(_) => "invalid_response",
            BotError::InvalidRequest(_) => "invalid_request",
        }
    }

    /// The error an `ok: false` answer stands for.
    pub fn from_answer(
        code: u16,
        description: String,
        retry_after: Option<u64>,
        migrate_to_chat_id: Option<i64>,
    ) -> BotError {
        if let Some(chat) = migrate_to_chat_id {
            return BotError::MigrateToChat(chat);
        }
        match code {
            429 => BotError::RetryAfter(Duration::from_secs(retry_after.unwrap_or(1))),
            400 => BotError::BadRequest(description),
            401 => BotError::Unauthorized,
            403 => BotError::Forbidden(description),
            404 => BotError::NotFound,
            409 => BotError::Conflict(description),
            500..=599 => BotError::Server(code),
            _ => BotError::Other { code, description },
        }
    }
}

/// A token that is not `<bot_id>:<secret>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a bot token looks like `123456:ABC-DEF...`")]
pub struct InvalidToken;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_variants() {
        assert_eq!(
            BotError::from_answer(429, "x".into(), Some(7), None),
            BotError::RetryAfter(Duration::from_secs(7))
        );
        assert_eq!(
            BotError::from_answer(400, "x".into(), None, Some(-1005)),
            BotError::MigrateToChat(-1005)
        );
        assert_eq!(
            BotError::from_answer(404, "x".into(), None, None),
            BotError::NotFound
        );
        assert_eq!(
            BotError::from_answer(502, "x".into(), None, None),
            BotError::Server(502)
        );
        assert!(matches!(
            BotError::from_answer(418, "x".into(), None, None),
            BotError::Other { code: 418, .. }
        ));
    }

    #[test]
    fn transient_or_permanent() {
        assert!(BotError::Network("reset".into()).is_transient());
        for e in [
            BotError::BadRequest(String::new()),
            BotError::Unauthorized,
            BotError::NotFound,
            BotError::Conflict(String::new()),
            BotError::InvalidResponse(String::new()),
            BotError::InvalidRequest(String::new()),
        ] {
            assert!(!e.is_transient(), "{e:?}");
        }
    }
}
