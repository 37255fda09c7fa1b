//! The update model: the raw bytes as stored, and the typed event parsed from them.
//!
//! An update is parsed per kind: the kind is already known (from the subject or the
//! field name), so only that field's payload is deserialised, into the matching
//! `frankenstein` type.
//!
//! Telegram adds enum values and changes fields before the types crate follows. When a
//! known kind's payload does not parse, it is **repaired** rather than given up on: the
//! field that failed (found from the parser's error position) is removed if the model
//! can do without it, or an unknown enum value (a chat `type`, a member `status`, ...)
//! is replaced by the first value the model accepts there; then it is parsed again. Typed
//! handlers get their update; each repair is listed in [`Update::repairs`] (the bytes in
//! [`Update::raw`] are unchanged, with Telegram's real values), logged at WARN naming
//! the field, and counted in `tgpipe_update_repairs_total{kind,field}`. Only a payload
//! that no repair makes readable, or a kind this version does not know, is
//! [`Event::Raw`]: it reaches the `raw` observer with its JSON; an unreadable payload is
//! logged at WARN and counted (`tgpipe_updates_unparsed_total{kind}`), and if no `raw`
//! handler takes it the dispatch fails (permanently: it is dead-lettered, to be replayed
//! once the types know it) instead of being acknowledged unseen. `update_id` is read as
//! `i64` by `tgpipe-shared`, not through frankenstein's `u32`.
//!
//! The model is here; `de` reads a payload in one pass, and `repair` fits a payload
//! the types cannot read yet.

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
use tgpipe_shared::{BotId, Envelope, UpdateKind, extract_keys};

/// Why a body cannot be fed to the dispatcher at all (it is not an update); its
/// `source()` says what is missing or wrong.
#[derive(Debug, thiserror::Error)]
#[error("not an update")]
pub struct NotAnUpdate(#[from] tgpipe_shared::KeysError);

/// A known kind's payload that no repair fitted to the typed model, and that no `raw`
/// handler took: the dispatch fails with it (permanently, so the update is
/// dead-lettered and can be replayed once the types know it), rather than the update
/// being acknowledged unseen.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "a `{kind}` update the typed model cannot read, even repaired, and no `raw` handler took it: {why}"
)]
pub struct UnreadableUpdate {
    /// The update's kind.
    pub kind: UpdateKind,
    /// The parser's error.
    pub why: String,
}

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
    /// What was repaired so that the payload fit the typed model (usually nothing).
    pub repairs: Vec<Repair>,
}

/// A field of a known kind's payload that did not fit the typed model, and what the
/// typed event has instead (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// Where, from the update's top: `message.chat.type`, `message.entities[2]`.
    pub path: String,
    /// What Telegram sent there, as JSON (cut at 200 bytes).
    pub original: String,
    /// What the typed event has there instead, as JSON; `None` if the field was left out.
    pub replacement: Option<String>,
}

impl Repair {
    /// The path with array positions left out (`message.entities[]`): a bounded label.
    pub fn field(&self) -> String {
        let mut out = String::with_capacity(self.path.len());
        let mut in_index = false;
        for c in self.path.chars() {
            match c {
                '[' => {
                    in_index = true;
                    out.push_str("[]");
                }
                ']' => in_index = false,
                c if !in_index => out.push(c),
                _ => {}
            }
        }
        out
    }
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
            /// A durable timer that fired (see [`crate::timer`]).
            Timer(Arc<crate::timer::Timer>),
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

mod de;
mod repair;

use de::parse_event;

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
        Ok(Update::typed(
            bot, update_id, kind, chat_id, user_id, thread_id, raw,
        ))
    }

    /// An update from its envelope, as the runtime reads it from the stream: the keys
    /// come from the envelope, so the body is parsed once, into the typed event.
    pub fn from_envelope(env: &Envelope) -> Update {
        Update::typed(
            env.bot,
            env.update_id,
            env.kind.clone(),
            env.chat_id,
            env.user_id,
            env.thread_id,
            env.body.clone(),
        )
    }

    fn typed(
        bot: BotId,
        update_id: i64,
        kind: UpdateKind,
        chat_id: Option<i64>,
        user_id: Option<i64>,
        thread_id: Option<i64>,
        raw: Bytes,
    ) -> Update {
        let (event, repairs) = if kind.as_str() == tgpipe_shared::timer::TIMER_KIND {
            match crate::timer::Timer::from_body(&raw) {
                Ok(timer) => (Event::Timer(Arc::new(timer)), Vec::new()),
                Err(e) => (Event::Raw(RawReason::Unparsed(e.to_string())), Vec::new()),
            }
        } else {
            parse_event(&kind, &raw)
        };
        if !repairs.is_empty() {
            for r in &repairs {
                metrics::counter!("tgpipe_update_repairs_total", "kind" => kind.to_string(), "field" => r.field())
                    .increment(1);
            }
            let fields: Vec<String> = repairs
                .iter()
                .map(|r| match &r.replacement {
                    Some(with) => format!("{}: {} read as {with}", r.path, r.original),
                    None => format!("{}: {} left out", r.path, r.original),
                })
                .collect();
            tracing::warn!(
                %bot, update_id, %kind, fields = %fields.join("; "),
                "update fields do not fit the typed model (Telegram sends something newer); typed handlers get it repaired, the raw bytes are unchanged"
            );
        }
        if let Event::Raw(RawReason::Unparsed(why)) = &event {
            metrics::counter!("tgpipe_updates_unparsed_total", "kind" => kind.to_string())
                .increment(1);
            tracing::warn!(%bot, update_id, %kind, error = %why, "update of a known kind does not fit the typed model, even repaired: only `raw` handlers can take it");
        }
        Update {
            bot,
            update_id,
            kind,
            chat_id,
            user_id,
            thread_id,
            raw,
            event,
            repairs,
        }
    }

    /// Whether the field at `path` (`message.chat.type`) was repaired for the typed model
    /// (see [`Update::repairs`]): a filter reading it should not trust the typed value.
    pub fn was_repaired(&self, path: &str) -> bool {
        self.repairs.iter().any(|r| r.path == path)
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
