//! [`BotError`]: what a Bot API call can come to, typed after Telegram's answers, and
//! whether retrying later could help.

use std::time::Duration;

/// A failed Bot API call.
///
/// Each variant knows its class ([`BotError::class`]): the worker runtime naks an
/// update whose handler failed transiently (it is retried later) and dead-letters one
/// that failed for good.
///
/// Its variants hold Telegram's answer (a code, a description), not another error, so
/// its `source()` is `None`. An application error that wraps it keeps its class only
/// while the `BotError` itself is in the chain: `#[error(transparent)]` hides it (see
/// `tgpipe::error::Transient`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BotError {
    /// 429: flood control; the whole bot must wait this long.
    RetryAfter(Duration),
    /// 400 with `migrate_to_chat_id`: the group became this supergroup.
    MigrateToChat(i64),
    /// 403: the bot was blocked, kicked, or may not write there (Telegram's
    /// description; [`BotError::forbidden_reason`] reads it).
    Forbidden(String),
    /// 400: the request was wrong (empty text, chat not found, ...).
    BadRequest(String),
    /// 401: the token was revoked or is wrong.
    Unauthorized,
    /// 404: no such method (or a bad token in the URL).
    NotFound,
    /// 409: a webhook is set while polling, or another poller is running.
    Conflict(String),
    /// 5xx: Telegram's side failed (the code).
    Server(u16),
    /// Another error code Telegram may answer with.
    Other {
        /// The `error_code`.
        code: u16,
        /// Telegram's description.
        description: String,
    },
    /// The request did not complete (connection refused or reset, timeout).
    Network(String),
    /// The answer was not Telegram's envelope (or not the expected result).
    InvalidResponse(String),
    /// The request could not be built (parameters that do not serialise, a file that
    /// cannot be read).
    InvalidRequest(String),
    /// A call that spends Stars or moves a gift ([`Replay::Costly`](crate::effects::Replay))
    /// failed after it may have reached Telegram (a timeout, a reset, a 5xx): whether it
    /// took effect is unknown, and it is not sent again. Permanent, so that the update is
    /// dead-lettered for a person to check. Holds the method and the failure.
    Unconfirmed(String),
}

impl std::fmt::Display for BotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BotError::RetryAfter(wait) => write!(f, "Bot API flood control: retry after {wait:?}"),
            BotError::MigrateToChat(chat) => {
                write!(f, "the group was upgraded to the supergroup {chat}")
            }
            BotError::Forbidden(d) => write!(f, "Bot API forbidden: {d}"),
            BotError::BadRequest(d) => write!(f, "Bot API bad request: {d}"),
            BotError::Unauthorized => f.write_str("Bot API unauthorized: the token is not valid"),
            BotError::NotFound => f.write_str("Bot API method not found"),
            BotError::Conflict(d) => write!(f, "Bot API conflict: {d}"),
            BotError::Server(code) => write!(f, "Bot API server error {code}"),
            BotError::Other { code, description } => {
                write!(f, "Bot API error {code}: {description}")
            }
            BotError::Network(d) => write!(f, "network error talking to the Bot API: {d}"),
            BotError::InvalidResponse(d) => write!(f, "unexpected answer from the Bot API: {d}"),
            BotError::InvalidRequest(d) => {
                write!(f, "the Bot API request could not be built: {d}")
            }
            BotError::Unconfirmed(d) => write!(
                f,
                "not sent again, it may have taken effect (check before replaying): {d}"
            ),
        }
    }
}

/// No `source()`: the variants hold Telegram's answer, not another error.
impl std::error::Error for BotError {}

impl BotError {
    /// Transient for flood control, server and network errors (a later retry may
    /// succeed); permanent for everything else.
    ///
    /// ```
    /// use tgpipe_bot::{BotError, ErrorClass};
    ///
    /// assert_eq!(BotError::Server(502).class(), ErrorClass::Transient);
    /// assert_eq!(BotError::Unauthorized.class(), ErrorClass::Permanent);
    /// ```
    pub fn class(&self) -> crate::ErrorClass {
        if self.is_transient() {
            crate::ErrorClass::Transient
        } else {
            crate::ErrorClass::Permanent
        }
    }

    /// Whether retrying later could succeed: flood control, server errors and network
    /// errors. Everything else would fail the same way again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tgpipe_bot::BotError;
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
            BotError::Network(_)
            | BotError::InvalidResponse(_)
            | BotError::InvalidRequest(_)
            | BotError::Unconfirmed(_) => {
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
            BotError::Unconfirmed(_) => "unconfirmed",
        }
    }

    /// Why Telegram refused a 403, read from its description; `None` for other errors.
    ///
    /// ```
    /// use tgpipe_bot::BotError;
    /// use tgpipe_bot::ForbiddenReason;
    ///
    /// let e = BotError::Forbidden("Forbidden: bot was blocked by the user".into());
    /// assert_eq!(e.forbidden_reason(), Some(ForbiddenReason::BlockedByUser));
    /// assert!(ForbiddenReason::BlockedByUser.recipient_gone());
    /// ```
    pub fn forbidden_reason(&self) -> Option<ForbiddenReason> {
        match self {
            BotError::Forbidden(description) => Some(ForbiddenReason::of(description)),
            _ => None,
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

/// Why a call was forbidden (403), from Telegram's description.
///
/// The first four are the everyday events of a bot with many users: the recipient is
/// gone, or never was there (they blocked the bot, deleted their account, removed it
/// from the group, never started it). [`ForbiddenReason::recipient_gone`] is true for
/// them, and the dispatcher's default error policy treats a handler failing with one as
/// handled (counted in `tgpipe_bot_api_forbidden_total{reason}`, logged at INFO), rather
/// than dead-lettering the update. [`ForbiddenReason::Other`] (missing rights, say) is a
/// problem of the bot's own and fails the update as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForbiddenReason {
    /// "bot was blocked by the user".
    BlockedByUser,
    /// "user is deactivated" (the account was deleted).
    UserDeactivated,
    /// "bot was kicked from the group / supergroup / channel chat", or "bot is not a
    /// member of the ... chat".
    Kicked,
    /// "bot can't initiate conversation with a user" (they never started the bot), or
    /// "bot can't send messages to bots".
    CannotInitiate,
    /// Any other refusal (missing rights, ...).
    Other,
}

impl ForbiddenReason {
    /// The reason Telegram's `description` gives.
    pub fn of(description: &str) -> ForbiddenReason {
        let d = description.to_ascii_lowercase();
        if d.contains("blocked by the user") {
            ForbiddenReason::BlockedByUser
        } else if d.contains("user is deactivated") {
            ForbiddenReason::UserDeactivated
        } else if d.contains("was kicked") || d.contains("is not a member") {
            ForbiddenReason::Kicked
        } else if d.contains("can't initiate conversation")
            || d.contains("can't send messages to bots")
        {
            ForbiddenReason::CannotInitiate
        } else {
            ForbiddenReason::Other
        }
    }

    /// Whether the refusal means the recipient is gone (everything but `Other`).
    pub fn recipient_gone(self) -> bool {
        !matches!(self, ForbiddenReason::Other)
    }

    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            ForbiddenReason::BlockedByUser => "blocked",
            ForbiddenReason::UserDeactivated => "deactivated",
            ForbiddenReason::Kicked => "kicked",
            ForbiddenReason::CannotInitiate => "cannot_initiate",
            ForbiddenReason::Other => "other",
        }
    }
}

impl std::fmt::Display for ForbiddenReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ForbiddenReason::BlockedByUser => "the user blocked the bot",
            ForbiddenReason::UserDeactivated => "the user's account is deactivated",
            ForbiddenReason::Kicked => "the bot is no longer a member of the chat",
            ForbiddenReason::CannotInitiate => "the bot may not start a conversation with the user",
            ForbiddenReason::Other => "the bot may not do this",
        })
    }
}

/// An error of its own, for an application that fails with the reason.
impl std::error::Error for ForbiddenReason {}

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
    fn forbidden_descriptions_map_to_reasons() {
        for (d, r) in [
            (
                "Forbidden: bot was blocked by the user",
                ForbiddenReason::BlockedByUser,
            ),
            (
                "Forbidden: user is deactivated",
                ForbiddenReason::UserDeactivated,
            ),
            (
                "Forbidden: bot was kicked from the supergroup chat",
                ForbiddenReason::Kicked,
            ),
            (
                "Forbidden: bot was kicked from the group chat",
                ForbiddenReason::Kicked,
            ),
            (
                "Forbidden: bot is not a member of the channel chat",
                ForbiddenReason::Kicked,
            ),
            (
                "Forbidden: bot can't initiate conversation with a user",
                ForbiddenReason::CannotInitiate,
            ),
            (
                "Forbidden: not enough rights to send text messages to the chat",
                ForbiddenReason::Other,
            ),
        ] {
            assert_eq!(ForbiddenReason::of(d), r, "{d}");
            assert_eq!(r.recipient_gone(), r != ForbiddenReason::Other);
        }
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
            BotError::Unconfirmed(String::new()),
        ] {
            assert!(!e.is_transient(), "{e:?}");
        }
    }
}
