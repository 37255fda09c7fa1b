//! The update model: the raw bytes as stored, and the typed event parsed from them.
//!
//! An update is parsed per kind: the kind is already known (from the subject or the
//! field name), so only that field's payload is deserialised, into the matching
//! `frankenstein` type. If that fails (a field the types do not model yet, an enum
//! value Telegram added) or the kind is unknown, the event is [`Event::Raw`]: the update
//! still reaches the raw observer with its JSON, and is never lost. `update_id` is read
//! as `i64` by `tgpipe-shared`, not through frankenstein's `u32`.

use std::sync::Arc;

use bytes::Bytes;
use frankenstein::inline_mode::{ChosenInlineResult, InlineQuery};
use frankenstein::payments::PaidMediaPurchased;
use frankenstein::payments::{PreCheckoutQuery, ShippingQuery};
use frankenstein::types::{
    BusinessConnection, BusinessMessagesDeleted, CallbackQuery, ChatBoostRemoved, ChatBoostUpdated,
    ChatJoinRequest, ChatMemberUpdated, Message, MessageReactionCountUpdated,
    MessageReactionUpdated, Poll, PollAnswer,
};
use frankenstein::updates::UpdateContent;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tgpipe_shared::{BotId, UpdateKind, extract_keys};

/// Why a body cannot be fed to the dispatcher at all (it is not an update).
#[derive(Debug, thiserror::Error)]
#[error("not an update: {0}")]
pub struct NotAnUpdate(#[from] tgpipe_shared::ExtractError);

/// One update as received: which bot, its keys, its bytes, and its typed event.
#[derive(Debug, Clone)]
pub struct Update {
    /// The bot it is for.
    pub bot: BotId,
    /// Its `update_id`.
    pub update_id: i64,
    /// Its kind.
    pub kind: UpdateKind,
    /// The chat, where it has one.
    pub chat_id: Option<i64>,
    /// The user, where it has one.
    pub user_id: Option<i64>,
    /// The message thread (forum topic), where it has one.
    pub thread_id: Option<i64>,
    /// The bytes exactly as Telegram sent them.
    pub raw: Bytes,
    /// The typed event, or [`Event::Raw`].
    pub event: Event,
}

/// Why typed parsing fell back to [`Event::Raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawReason {
    /// The kind is not one this version knows.
    UnknownKind,
    /// The kind is known but its payload did not parse into the typed model.
    Unparsed(String),
}

macro_rules! events {
    ($($variant:ident($ty:ty) <= $content:ident,)+) => {
        /// The typed payload of an update, one variant per Bot API 10.3 kind, plus
        /// [`Event::Raw`] for anything that did not parse.
        #[derive(Debug, Clone)]
        #[non_exhaustive]
        pub enum Event {
            $(
                #[doc = concat!("A `", stringify!($variant), "` update.")]
                $variant(Arc<$ty>),
            )+
            /// An unknown kind, or a payload the typed model could not read.
            Raw(RawReason),
        }

        fn from_content(content: UpdateContent) -> Event {
            match content {
                $(UpdateContent::$content(v) => Event::$variant(Arc::new(unbox(v))),)+
            }
        }
    };
}

/// `Box<T>` and `T` both into `T` (frankenstein boxes its large variants).
fn unbox<T, B: Into<Unboxed<T>>>(v: B) -> T {
    v.into().0
}

struct Unboxed<T>(T);

impl<T> From<Box<T>> for Unboxed<T> {
    fn from(b: Box<T>) -> Self {
        Unboxed(*b)
    }
}

macro_rules! plain_unboxed {
    ($($ty:ty),+) => { $(impl From<$ty> for Unboxed<$ty> { fn from(v: $ty) -> Self { Unboxed(v) } })+ };
}

plain_unboxed!(
    BusinessConnection,
    BusinessMessagesDeleted,
    MessageReactionUpdated,
    MessageReactionCountUpdated,
    InlineQuery,
    ChosenInlineResult,
    ShippingQuery,
    PreCheckoutQuery,
    PollAnswer,
    ChatMemberUpdated,
    ChatJoinRequest,
    ChatBoostUpdated,
    ChatBoostRemoved,
    PaidMediaPurchased,
    frankenstein::types::ManagedBotUpdated,
    frankenstein::types::BotSubscriptionUpdated,
    frankenstein::types::MessageGenerationStopped
);

events! {
    Message(Message) <= Message,
    EditedMessage(Message) <= EditedMessage,
    ChannelPost(Message) <= ChannelPost,
    EditedChannelPost(Message) <= EditedChannelPost,
    BusinessConnection(BusinessConnection) <= BusinessConnection,
    BusinessMessage(Message) <= BusinessMessage,
    EditedBusinessMessage(Message) <= EditedBusinessMessage,
    DeletedBusinessMessages(BusinessMessagesDeleted) <= DeletedBusinessMessages,
    GuestMessage(Message) <= GuestMessage,
    MessageReaction(MessageReactionUpdated) <= MessageReaction,
    MessageReactionCount(MessageReactionCountUpdated) <= MessageReactionCount,
    InlineQuery(InlineQuery) <= InlineQuery,
    ChosenInlineResult(ChosenInlineResult) <= ChosenInlineResult,
    CallbackQuery(CallbackQuery) <= CallbackQuery,
    ShippingQuery(ShippingQuery) <= ShippingQuery,
    PreCheckoutQuery(PreCheckoutQuery) <= PreCheckoutQuery,
    Poll(Poll) <= Poll,
    PollAnswer(PollAnswer) <= PollAnswer,
    MyChatMember(ChatMemberUpdated) <= MyChatMember,
    ChatMember(ChatMemberUpdated) <= ChatMember,
    ChatJoinRequest(ChatJoinRequest) <= ChatJoinRequest,
    ChatBoost(ChatBoostUpdated) <= ChatBoost,
    RemovedChatBoost(ChatBoostRemoved) <= RemovedChatBoost,
    PurchasedPaidMedia(PaidMediaPurchased) <= PurchasedPaidMedia,
    ManagedBot(frankenstein::types::ManagedBotUpdated) <= ManagedBot,
    Subscription(frankenstein::types::BotSubscriptionUpdated) <= Subscription,
    StoppedMessageGeneration(frankenstein::types::MessageGenerationStopped) <= StoppedMessageGeneration,
}

impl Event {
    /// The message carried by message-like events (`message`, `edited_message`,
    /// channel posts, business and guest messages).
    pub fn message(&self) -> Option<&Message> {
        match self {
            Event::Message(m)
            | Event::EditedMessage(m)
            | Event::ChannelPost(m)
            | Event::EditedChannelPost(m)
            | Event::BusinessMessage(m)
            | Event::EditedBusinessMessage(m)
            | Event::GuestMessage(m) => Some(m),
            _ => None,
        }
    }
}

/// Parses the payload of `kind` only (the field is found without building the rest).
fn parse_event(kind: &UpdateKind, raw: &[u8]) -> Event {
    if !kind.is_known() {
        return Event::Raw(RawReason::UnknownKind);
    }
    let fields: Result<std::collections::HashMap<&str, &RawValue>, _> = serde_json::from_slice(raw);
    let payload = match fields {
        Ok(f) => match f.get(kind.as_str()) {
            Some(p) => *p,
            None => return Event::Raw(RawReason::Unparsed(format!("no `{kind}` field"))),
        },
        Err(e) => return Event::Raw(RawReason::Unparsed(e.to_string())),
    };
    // frankenstein's `Update` is externally tagged by field name: build that shape from
    // the one payload, so each kind uses frankenstein's own mapping.
    let tagged = format!("{{\"{}\":{}}}", kind.as_str(), payload.get());
    match serde_json::from_str::<UpdateContent>(&tagged) {
        Ok(content) => from_content(content),
        Err(e) => {
            // Only on failure, so well-formed updates pay nothing for it.
            let repaired = serde_json::from_str::<serde_json::Value>(&tagged)
                .ok()
                .and_then(|mut v| repair_upstream_enums(&mut v).then_some(v))
                .and_then(|v| serde_json::from_value::<UpdateContent>(v).ok());
            match repaired {
                Some(content) => from_content(content),
                None => Event::Raw(RawReason::Unparsed(e.to_string())),
            }
        }
    }
}

/// frankenstein models `SuggestedPostInfo.state` and `SuggestedPostRefunded.reason` as
/// enums tagged by `type`, while Telegram sends plain strings (`"pending"`,
/// `"post_deleted"`). Rewrites those strings, wherever they are nested, into the tagged
/// form; returns whether anything changed.
fn repair_upstream_enums(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    let mut changed = false;
    match v {
        Value::Object(map) => {
            for (parent, field) in [
                ("suggested_post_info", "state"),
                ("suggested_post_refunded", "reason"),
            ] {
                if let Some(Value::Object(inner)) = map.get_mut(parent)
                    && let Some(Value::String(s)) = inner.get(field)
                {
                    let tagged = serde_json::json!({ "type": s });
                    inner.insert(field.to_owned(), tagged);
                    changed = true;
                }
            }
            for child in map.values_mut() {
                changed |= repair_upstream_enums(child);
            }
        }
        Value::Array(items) => {
            for child in items {
                changed |= repair_upstream_enums(child);
            }
        }
        _ => {}
    }
    changed
}

impl Update {
    /// An update from its raw bytes. The kind is read from the body (the runtime may
    /// already know it from the subject; both agree by construction).
    pub fn parse(bot: BotId, raw: Bytes) -> Result<Update, NotAnUpdate> {
        let keys = extract_keys(&raw)?;
        let (update_id, kind, chat_id, user_id, thread_id) = (
            keys.update_id,
            keys.kind.clone(),
            keys.chat_id,
            keys.user_id,
            keys.thread_id,
        );
        drop(keys);
        let event = parse_event(&kind, &raw);
        Ok(Update {
            bot,
            update_id,
            kind,
            chat_id,
            user_id,
            thread_id,
            raw,
            event,
        })
    }

    /// The raw JSON deserialised into any type (for kinds the typed model lacks).
    pub fn raw_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Update {
        Update::parse(BotId(1), Bytes::from(s.to_owned())).expect("an update")
    }

    #[test]
    fn a_message_is_typed() {
        let u = parse(
            r#"{"update_id":9,"message":{"message_id":1,"date":0,"chat":{"id":5,"type":"private","first_name":"A"},"text":"hi"}}"#,
        );
        let Event::Message(m) = &u.event else {
            panic!("{:?}", u.event)
        };
        assert_eq!(m.text.as_deref(), Some("hi"));
        assert_eq!((u.update_id, u.chat_id), (9, Some(5)));
    }

    #[test]
    fn unknown_kinds_and_bad_payloads_are_raw() {
        let u = parse(r#"{"update_id":1,"key":"value"}"#);
        assert!(matches!(u.event, Event::Raw(RawReason::UnknownKind)));
        let u = parse(r#"{"update_id":1,"message":{"message_id":"not a number"}}"#);
        assert!(matches!(u.event, Event::Raw(RawReason::Unparsed(_))));
    }

    #[test]
    fn telegrams_plain_string_states_are_read_despite_the_tagged_upstream_enums() {
        let u = parse(
            r#"{"update_id":1,"message":{"message_id":1,"date":0,"chat":{"id":5,"type":"private"},"suggested_post_info":{"state":"pending"}}}"#,
        );
        let Event::Message(m) = &u.event else {
            panic!("{:?}", u.event)
        };
        assert!(m.suggested_post_info.is_some());
        let u = parse(
            r#"{"update_id":1,"message":{"message_id":1,"date":0,"chat":{"id":5,"type":"private"},"suggested_post_refunded":{"reason":"post_deleted"}}}"#,
        );
        assert!(matches!(u.event, Event::Message(_)), "{:?}", u.event);
    }

    #[test]
    fn update_ids_beyond_u32_are_fine() {
        let u = parse(r#"{"update_id":99999999999,"poll":{"id":"p"}}"#);
        assert_eq!(u.update_id, 99_999_999_999);
    }
}
