//! What sending a call again can do, per Bot API method: the table the client's retries
//! (and a per-update record of calls, such as the worker runtime's) decide by.
//!
//! A failure is *ambiguous* when the request may have reached Telegram: a timeout or a
//! reset after sending, or a 5xx (Telegram's edge answers 502 when the server behind it
//! did not answer in time, after it may have acted). Only a refused connection or a 429
//! prove that nothing happened.

/// What sending a method's call again after an ambiguous failure can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Replay {
    /// Reads (`get*`) and calls whose repetition changes nothing (`edit*`, `set*`,
    /// `delete*`, `ban*`, `pin*`, `answerCallbackQuery`, ...): the client sends them again
    /// after any transient failure, within [`RetryPolicy`](crate::RetryPolicy).
    Idempotent,
    /// Calls that make something new each time (`send*`, `forward*`, `copy*`,
    /// `createForumTopic`, `createChatInviteLink`, `createInvoiceLink`, `postStory`, and
    /// any method this table does not know): sent again only when the failure proves
    /// they were not made. An ambiguous failure goes to the caller, still transient: the
    /// update's next attempt makes the call again, so it may be made twice, never more
    /// often per failure.
    Creates,
    /// Calls that spend the bot's Stars or move gifts (`sendGift`,
    /// `giftPremiumSubscription`, `transferGift`, `upgradeGift`, `convertGiftToStars`,
    /// `transferBusinessAccountStars`, `refundStarPayment`): never sent again after an
    /// ambiguous failure; it comes back as the permanent
    /// [`BotError::Unconfirmed`](crate::BotError::Unconfirmed), so that the update is
    /// dead-lettered for a person to check instead of paying twice.
    Costly,
}

/// Methods that spend money or move gifts (lowercase).
const COSTLY: &[&str] = &[
    "sendgift",
    "giftpremiumsubscription",
    "transfergift",
    "upgradegift",
    "convertgifttostars",
    "transferbusinessaccountstars",
    "refundstarpayment",
];

/// Prefixes of methods whose repetition changes nothing (lowercase).
const IDEMPOTENT_PREFIXES: &[&str] = &[
    "get",
    "edit",
    "set",
    "delete",
    "ban",
    "unban",
    "restrict",
    "promote",
    "pin",
    "unpin",
    "approve",
    "decline",
    "revoke",
    "close",
    "reopen",
    "hide",
    "unhide",
    "leave",
    "stop",
    "verify",
    "remove",
    "read",
    "answercallbackquery",
    "answerinlinequery",
    "answershippingquery",
    "answerprecheckoutquery",
    "sendchataction",
    "logout",
];

/// What sending a call of `method` again after an ambiguous failure can do. Methods the
/// table does not know are [`Replay::Creates`]: a new method is not sent twice on a guess.
///
/// ```
/// use tgpipe_bot::effects::{Replay, replay_of};
///
/// assert_eq!(replay_of("getChat"), Replay::Idempotent);
/// assert_eq!(replay_of("editMessageText"), Replay::Idempotent);
/// assert_eq!(replay_of("sendMessage"), Replay::Creates);
/// assert_eq!(replay_of("createForumTopic"), Replay::Creates);
/// assert_eq!(replay_of("postStory"), Replay::Creates);
/// assert_eq!(replay_of("sendGift"), Replay::Costly);
/// assert_eq!(replay_of("someFutureMethod"), Replay::Creates);
/// ```
pub fn replay_of(method: &str) -> Replay {
    let m = method.to_ascii_lowercase();
    if COSTLY.contains(&m.as_str()) {
        Replay::Costly
    } else if IDEMPOTENT_PREFIXES.iter().any(|p| m.starts_with(p)) {
        Replay::Idempotent
    } else {
        Replay::Creates
    }
}

/// Whether a call of `method` only reads (`get*`): it changes nothing, so a record of an
/// update's calls leaves it out and makes it afresh on every attempt.
///
/// ```
/// assert!(tgpipe_bot::effects::is_read("getChatMember"));
/// assert!(!tgpipe_bot::effects::is_read("sendMessage"));
/// ```
pub fn is_read(method: &str) -> bool {
    method
        .get(..3)
        .is_some_and(|p| p.eq_ignore_ascii_case("get"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_methods_the_issue_names_are_never_sent_twice_by_the_client() {
        for m in [
            "sendGift",
            "giftPremiumSubscription",
            "transferGift",
            "upgradeGift",
            "convertGiftToStars",
        ] {
            assert_eq!(replay_of(m), Replay::Costly, "{m}");
        }
        for m in [
            "sendMessage",
            "sendPhoto",
            "sendMediaGroup",
            "forwardMessage",
            "copyMessages",
            "createForumTopic",
            "createChatInviteLink",
            "createInvoiceLink",
            "postStory",
            "answerWebAppQuery",
            "sendInvoice",
        ] {
            assert_eq!(replay_of(m), Replay::Creates, "{m}");
        }
        for m in [
            "getMe",
            "getUpdates",
            "editMessageText",
            "deleteMessage",
            "setWebhook",
            "banChatMember",
            "answerCallbackQuery",
            "sendChatAction",
            "pinChatMessage",
        ] {
            assert_eq!(replay_of(m), Replay::Idempotent, "{m}");
        }
    }
}
