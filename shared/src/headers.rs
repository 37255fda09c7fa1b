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
/// The forum topic (`message_thread_id`), where the update has one.
pub const THREAD_ID: &str = "Tg-Thread-Id";
/// The envelope version (`1`): present, the headers carry every routing key, so a
/// consumer need not read the body ([`crate::Envelope::from_message`]).
pub const ENVELOPE: &str = "Tg-Envelope";
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
