//! NATS header names of the wire contract.
//!
//! Every published update carries these so that consumers can route, dedupe and trace
//! without parsing the body. Values are ASCII: decimal integers, kind names and W3C trace
//! context; never a secret or token.

/// JetStream's de-duplication id: `<bot_id>:<update_id>`, so Telegram's retries of one
/// update collapse into one stored message within the stream's duplicate window.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The bot's numeric id.
pub const BOT_ID: &str = "Tg-Bot-Id";
/// The update's kind (its field name, subject-safe).
pub const UPDATE_TYPE: &str = "Tg-Update-Type";
/// The chat id, where the update has a chat.
pub const CHAT_ID: &str = "Tg-Chat-Id";
/// The user id, where the update has a user.
pub const USER_ID: &str = "Tg-User-Id";
/// When the ingress received the update, in unix milliseconds.
pub const RECEIVED_AT: &str = "Tg-Received-At";
/// W3C trace context: the trace and parent span.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace context: vendor state.
pub const TRACESTATE: &str = "tracestate";
/// Dead letters: why the update was given up on.
pub const ERROR: &str = "Tg-Error";
/// Dead letters: how many times it was delivered before that.
pub const DELIVERIES: &str = "Tg-Deliveries";

/// The de-duplication id `<bot_id>:<update_id>`.
///
/// ```
/// assert_eq!(tgpipe_shared::headers::msg_id(tgpipe_shared::BotId(5), -3), "5:-3");
/// ```
pub fn msg_id(bot: crate::BotId, update_id: i64) -> String {
    format!("{bot}:{update_id}")
}

/// The headers every published update carries, from its keys: the de-duplication id,
/// the bot, the kind, the chat and user where present, and the receive time (unix ms).
/// Trace context is the publisher's to add. The ingress and `getUpdates` polling both
/// publish with these, so a consumer cannot tell the two routes apart.
///
/// ```
/// use tgpipe_shared::{BotId, extract_keys, headers};
///
/// let body = br#"{"update_id":9,"message":{"message_id":1,"date":0,"chat":{"id":-5,"type":"group"},"from":{"id":7,"is_bot":false,"first_name":"A"}}}"#;
/// let keys = extract_keys(body).unwrap();
/// let h = headers::update_headers(BotId(42), &keys, 1_700_000_000_000);
/// assert_eq!(h.get(headers::MSG_ID).unwrap().as_str(), "42:9");
/// assert_eq!(h.get(headers::CHAT_ID).unwrap().as_str(), "-5");
/// assert_eq!(h.get(headers::USER_ID).unwrap().as_str(), "7");
/// assert_eq!(h.get(headers::UPDATE_TYPE).unwrap().as_str(), "message");
/// ```
pub fn update_headers(
    bot: crate::BotId,
    keys: &crate::UpdateKeys<'_>,
    received_at_ms: u128,
) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert(MSG_ID, msg_id(bot, keys.update_id).as_str());
    h.insert(BOT_ID, bot.to_string().as_str());
    h.insert(UPDATE_TYPE, keys.kind.as_str());
    if let Some(chat) = keys.chat_id {
        h.insert(CHAT_ID, chat.to_string().as_str());
    }
    if let Some(user) = keys.user_id {
        h.insert(USER_ID, user.to_string().as_str());
    }
    h.insert(RECEIVED_AT, received_at_ms.to_string().as_str());
    h
}
