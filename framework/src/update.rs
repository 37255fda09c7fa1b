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
use tgpipe_shared::{BotId, Envelope, UpdateKind, extract_keys};

/// Why a body cannot be fed to the dispatcher at all (it is not an update).
#[derive(Debug, thiserror::Error)]
#[error("not an update: {0}")]
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
fn parse_event(kind: &UpdateKind, raw: &[u8]) -> (Event, Vec<Repair>) {
    if !kind.is_known() {
        return (Event::Raw(RawReason::UnknownKind), Vec::new());
    }
    // One pass over the body: the kind's field straight into its typed variant, the
    // other fields skipped unread.
    let mut de = serde_json::Deserializer::from_slice(raw);
    let first = single::content(kind.as_str(), &mut de).and_then(|c| de.end().map(|()| c));
    match first {
        Ok(Some(content)) => (from_content(content), Vec::new()),
        Ok(None) => {
            let why = format!("no `{kind}` field");
            (Event::Raw(RawReason::Unparsed(why)), Vec::new())
        }
        // Only on failure, so well-formed updates pay nothing for the repairs.
        Err(e) => repaired(kind, raw, e),
    }
}

/// The typed model did not read the payload: try again with the payload's values that
/// do not fit repaired (see [`lenient`]).
fn repaired(kind: &UpdateKind, raw: &[u8], first: serde_json::Error) -> (Event, Vec<Repair>) {
    let fields: std::collections::HashMap<&str, &RawValue> = match serde_json::from_slice(raw) {
        Ok(f) => f,
        Err(e) => return (Event::Raw(RawReason::Unparsed(e.to_string())), Vec::new()),
    };
    let Some(payload) = fields.get(kind.as_str()) else {
        return (
            Event::Raw(RawReason::Unparsed(first.to_string())),
            Vec::new(),
        );
    };
    // frankenstein's `UpdateContent` is externally tagged by field name.
    let tagged = format!("{{\"{}\":{}}}", kind.as_str(), payload.get());
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&tagged) else {
        return (
            Event::Raw(RawReason::Unparsed(first.to_string())),
            Vec::new(),
        );
    };
    repair_upstream_enums(&mut v);
    match lenient::parse(v) {
        Ok((content, repairs)) => (from_content(content), repairs),
        Err(e) => (Event::Raw(RawReason::Unparsed(e)), Vec::new()),
    }
}

/// Reads one field of an update object as frankenstein's externally tagged
/// `UpdateContent`, in the pass that walks the object: the field's value is handed to
/// the variant's deserializer as if it were `{"<kind>": value}`.
mod single {
    use std::fmt;

    use frankenstein::updates::UpdateContent;
    use serde::de::{
        self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, IntoDeserializer, MapAccess,
        VariantAccess, Visitor,
    };

    /// The `kind` field of the object `de` holds, typed; `None` when it has none.
    pub(super) fn content<'de, D: Deserializer<'de>>(
        kind: &str,
        de: D,
    ) -> Result<Option<UpdateContent>, D::Error> {
        de.deserialize_map(Fields { kind })
    }

    struct Fields<'k> {
        kind: &'k str,
    }

    impl<'de> Visitor<'de> for Fields<'_> {
        type Value = Option<UpdateContent>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an update object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if found.is_none() && key == self.kind {
                    found = Some(map.next_value_seed(Tag { kind: self.kind })?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }

    /// Deserializes a value as the `kind` variant of `UpdateContent`.
    struct Tag<'k> {
        kind: &'k str,
    }

    impl<'de> DeserializeSeed<'de> for Tag<'_> {
        type Value = UpdateContent;

        fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<UpdateContent, D::Error> {
            serde::Deserialize::deserialize(Tagged {
                kind: self.kind,
                value: de,
            })
        }
    }

    /// `{"<kind>": value}` without building it.
    struct Tagged<'k, D> {
        kind: &'k str,
        value: D,
    }

    impl<'de, D: Deserializer<'de>> Deserializer<'de> for Tagged<'_, D> {
        type Error = D::Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            visitor.visit_enum(self)
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, D::Error> {
            visitor.visit_enum(self)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            struct identifier ignored_any
        }
    }

    impl<'de, D: Deserializer<'de>> EnumAccess<'de> for Tagged<'_, D> {
        type Error = D::Error;
        type Variant = Value<D>;

        fn variant_seed<S: DeserializeSeed<'de>>(
            self,
            seed: S,
        ) -> Result<(S::Value, Value<D>), D::Error> {
            let tag: de::value::StrDeserializer<'_, D::Error> = self.kind.into_deserializer();
            Ok((seed.deserialize(tag)?, Value(self.value)))
        }
    }

    struct Value<D>(D);

    impl<'de, D: Deserializer<'de>> VariantAccess<'de> for Value<D> {
        type Error = D::Error;

        fn unit_variant(self) -> Result<(), D::Error> {
            serde::Deserialize::deserialize(self.0)
        }

        fn newtype_variant_seed<S: DeserializeSeed<'de>>(
            self,
            seed: S,
        ) -> Result<S::Value, D::Error> {
            seed.deserialize(self.0)
        }

        fn tuple_variant<V: Visitor<'de>>(
            self,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, D::Error> {
            self.0.deserialize_tuple(len, visitor)
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, D::Error> {
            self.0.deserialize_struct("", fields, visitor)
        }
    }
}

/// The repairs of a payload that does not fit the typed model (see the module docs).
mod lenient {
    use frankenstein::updates::UpdateContent;
    use serde_json::Value;

    use super::Repair;

    /// At most this many repairs per update, and this many parse attempts: a payload
    /// that needs more is not one the model can be said to read.
    const MAX_REPAIRS: usize = 16;
    const MAX_ATTEMPTS: usize = 128;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seg {
        Key(String),
        Index(usize),
    }

    fn len(v: &Value) -> usize {
        serde_json::to_string(v).map_or(0, |s| s.len())
    }

    fn key_len(k: &str) -> usize {
        serde_json::to_string(k).map_or(0, |s| s.len())
    }

    /// The children of a container with the byte offset each starts at, in the compact
    /// serialisation, when the container starts at `start`.
    fn children(v: &Value, start: usize) -> Vec<(Seg, &Value, usize)> {
        let mut out = Vec::new();
        let mut pos = start + 1;
        match v {
            Value::Object(map) => {
                for (i, (k, child)) in map.iter().enumerate() {
                    pos += usize::from(i > 0) + key_len(k) + 1;
                    out.push((Seg::Key(k.clone()), child, pos));
                    pos += len(child);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    pos += usize::from(i > 0);
                    out.push((Seg::Index(i), child, pos));
                    pos += len(child);
                }
            }
            _ => {}
        }
        out
    }

    /// The innermost value whose serialisation spans byte `at` (from its first byte to
    /// just after its last): where the parser was when it failed (serde_json reports the
    /// column just after the last byte it read, or of a value it peeked at and refused,
    /// and the text is one line).
    fn locate(v: &Value, at: usize) -> Vec<Seg> {
        let mut path = Vec::new();
        let (mut cur, mut start) = (v, 0);
        loop {
            let next = children(cur, start)
                .into_iter()
                .find(|(_, child, pos)| at >= *pos && at <= pos + len(child));
            match next {
                Some((seg, child, pos)) => {
                    path.push(seg);
                    cur = child;
                    start = pos;
                }
                None => return path,
            }
        }
    }

    fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
        path.iter().try_fold(v, |cur, seg| match seg {
            Seg::Key(k) => cur.get_mut(k.as_str()),
            Seg::Index(i) => cur.get_mut(*i),
        })
    }

    fn get<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
        path.iter().try_fold(v, |cur, seg| match seg {
            Seg::Key(k) => cur.get(k.as_str()),
            Seg::Index(i) => cur.get(*i),
        })
    }

    /// Takes the value at `path` out of its object or array.
    fn remove(v: &mut Value, path: &[Seg]) -> Option<Value> {
        let (last, parent) = path.split_last()?;
        match (get_mut(v, parent)?, last) {
            (Value::Object(map), Seg::Key(k)) => map.remove(k),
            (Value::Array(items), Seg::Index(i)) if *i < items.len() => Some(items.remove(*i)),
            _ => None,
        }
    }

    fn path_string(path: &[Seg]) -> String {
        let mut out = String::new();
        for seg in path {
            match seg {
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Seg::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    fn short(v: &Value) -> String {
        let mut s = v.to_string();
        if s.len() > 200 {
            let mut cut = 200;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        s
    }

    /// The value serde named in "unknown variant `x`, expected one of `a`, `b`", and
    /// the ones it expected.
    fn unknown_variant(msg: &str) -> Option<(String, Vec<String>)> {
        let rest = msg.strip_prefix("unknown variant `")?;
        let (value, rest) = rest.split_once('`')?;
        let expected = rest.split_once("expected")?.1;
        let expected = expected.split(" at line ").next().unwrap_or(expected);
        let candidates = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        Some((value.to_owned(), candidates))
    }

    struct Attempts(usize);

    impl Attempts {
        fn parse(&mut self, v: &Value) -> Option<Result<UpdateContent, serde_json::Error>> {
            if self.0 >= MAX_ATTEMPTS {
                return None;
            }
            self.0 += 1;
            let text = serde_json::to_string(v).ok()?;
            Some(serde_json::from_str::<UpdateContent>(&text))
        }
    }

    /// Whether leaving out the field at `path` got the parser past it (it did not
    /// just complain that the field is required).
    fn removal_helps(r: &Result<UpdateContent, serde_json::Error>, path: &[Seg]) -> bool {
        match (r, path.last()) {
            (Ok(_), _) => true,
            (Err(e), Some(Seg::Key(k))) => {
                !e.to_string().starts_with(&format!("missing field `{k}`"))
            }
            (Err(_), _) => true,
        }
    }

    /// Objects below the payload that look like messages (`message_id`, `date`, `chat`).
    fn message_like(v: &Value, at: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        match v {
            Value::Object(map) => {
                if at.len() > 1
                    && ["message_id", "date", "chat"]
                        .iter()
                        .all(|k| map.contains_key(*k))
                {
                    out.push(at.clone());
                }
                for (k, child) in map {
                    at.push(Seg::Key(k.clone()));
                    message_like(child, at, out);
                    at.pop();
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    at.push(Seg::Index(i));
                    message_like(child, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }

    /// Parses `v`, repairing it until it fits (or giving up with the first error).
    pub(super) fn parse(v: Value) -> Result<(UpdateContent, Vec<Repair>), String> {
        parse_value(v, &mut Attempts(0)).map(|(content, repairs, _)| (content, repairs))
    }

    /// [`parse`], also giving back the repaired value.
    fn parse_value(
        mut v: Value,
        attempts: &mut Attempts,
    ) -> Result<(UpdateContent, Vec<Repair>, Value), String> {
        let mut repairs = Vec::new();
        let mut first_error = None;
        loop {
            let err = match attempts.parse(&v) {
                Some(Ok(content)) => return Ok((content, repairs, v)),
                Some(Err(e)) => e,
                None => return Err(first_error.unwrap_or_else(|| "too many repairs".into())),
            };
            let msg = err.to_string();
            let first = first_error.get_or_insert(msg.clone()).clone();
            if repairs.len() >= MAX_REPAIRS {
                return Err(first);
            }
            match repair_once(&mut v, &err, attempts) {
                Some(r) => repairs.push(r),
                None => return Err(first),
            }
        }
    }

    fn repair_once(
        v: &mut Value,
        err: &serde_json::Error,
        attempts: &mut Attempts,
    ) -> Option<Repair> {
        let at = locate(v, err.column());
        let msg = err.to_string();
        if let Some((unknown, candidates)) = unknown_variant(&msg) {
            // The value itself, or (an internally tagged enum, reported at the end of
            // its object) the object's field holding it.
            let target: Vec<Seg> = match get(v, &at)? {
                Value::String(s) if *s == unknown => at.clone(),
                Value::Object(map) => {
                    let key = map
                        .iter()
                        .find(|(_, x)| x.as_str() == Some(unknown.as_str()))?
                        .0;
                    let mut t = at.clone();
                    t.push(Seg::Key(key.clone()));
                    t
                }
                _ => return None,
            };
            let original = short(get(v, &target)?);
            let repaired = |v: &mut Value, path: &[Seg], with: Value, replacement| {
                *v = with;
                Some(Repair {
                    path: path_string(path),
                    original: original.clone(),
                    replacement,
                })
            };
            // Left out, where the model can do without it: `None` says less than a
            // made-up value.
            let mut without = v.clone();
            remove(&mut without, &target)?;
            if removal_helps(&attempts.parse(&without)?, &target) {
                return repaired(v, &target, without, None);
            }
            // A list element of an unknown kind (a reaction, say) is left out of its
            // list (lists have no required elements).
            let holder = &target[..target.len() - 1];
            if let Some(Seg::Index(_)) = holder.last() {
                let mut without = v.clone();
                let original = short(get(v, holder)?);
                remove(&mut without, holder)?;
                *v = without;
                return Some(Repair {
                    path: path_string(holder),
                    original,
                    replacement: None,
                });
            }
            // Else the first value the model accepts there. serde_json places errors of a
            // tagged variant's fields, and of list elements, where the enclosing value
            // ends, so a value is judged by what the next error says, not where: not a
            // field the variant lacks, not this value again.
            let mut errors = Vec::new();
            for c in &candidates {
                let mut tried = v.clone();
                *get_mut(&mut tried, &target)? = Value::String(c.clone());
                // Without the position, which moves with the value's length.
                let error = attempts.parse(&tried)?.err().map(|e| {
                    let m = e.to_string();
                    m.split(" at line ").next().unwrap_or_default().to_owned()
                });
                let passed = error.as_deref().is_none_or(|m| {
                    !m.starts_with("missing field")
                        && !m.contains("did not match any variant")
                        && !m.starts_with(&format!("unknown variant `{c}`"))
                });
                if passed {
                    let replacement = Some(Value::String(c.clone()).to_string());
                    return repaired(v, &target, tried, replacement);
                }
                errors.push(error);
            }
            // Every value gives the same error: it does not come from this value (another
            // field fails further on), so the first value will do, and that one is next.
            if candidates.len() > 1 && errors.windows(2).all(|w| w[0] == w[1]) {
                let c = candidates.first()?;
                let mut tried = v.clone();
                *get_mut(&mut tried, &target)? = Value::String(c.clone());
                let replacement = Some(Value::String(c.clone()).to_string());
                return repaired(v, &target, tried, replacement);
            }
        }
        // An untagged enum (a message that may be inaccessible) says only that nothing
        // matched: repair the messages inside as messages of their own.
        if msg.contains("did not match any variant of untagged enum") {
            let mut messages = Vec::new();
            message_like(v, &mut Vec::new(), &mut messages);
            // Deepest first: a message inside another is repaired before its holder.
            messages.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for path in messages {
                let inner = get(v, &path)?.clone();
                let wrapped = serde_json::json!({ "message": inner });
                let Ok((_, repairs, repaired)) = parse_value(wrapped, attempts) else {
                    continue;
                };
                if repairs.is_empty() {
                    continue;
                }
                *get_mut(v, &path)? = repaired.get("message")?.clone();
                let prefix = path_string(&path);
                let mut repairs = repairs.into_iter().map(|r| Repair {
                    path: r.path.replacen("message", &prefix, 1),
                    ..r
                });
                // One at a time (the caller counts them); the rest are found again.
                return repairs.next();
            }
        }
        // Anything else (a value of another type, a required field missing from an
        // object the model could do without): leave out the innermost value that
        // failed, or the one holding it, up to the payload itself.
        let mut path = at;
        while path.len() > 1 {
            let mut without = v.clone();
            let original = short(get(v, &path)?);
            remove(&mut without, &path)?;
            if removal_helps(&attempts.parse(&without)?, &path) {
                *v = without;
                return Some(Repair {
                    path: path_string(&path),
                    original,
                    replacement: None,
                });
            }
            path.pop();
        }
        None
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn locate_finds_the_value_the_parser_stopped_after() {
            let v: Value = serde_json::from_str(r#"{"a":{"b":"xy","c":[1,{"d":true}]}}"#).unwrap();
            let text = v.to_string();
            let end_of_xy = text.find(r#""xy""#).unwrap() + 4;
            assert_eq!(
                locate(&v, end_of_xy),
                [Seg::Key("a".into()), Seg::Key("b".into())]
            );
            let end_of_d = text.find("true").unwrap() + 4;
            assert_eq!(
                locate(&v, end_of_d),
                [
                    Seg::Key("a".into()),
                    Seg::Key("c".into()),
                    Seg::Index(1),
                    Seg::Key("d".into())
                ]
            );
            // The closing brace of `c[1]`.
            assert_eq!(
                locate(&v, end_of_d + 1),
                [Seg::Key("a".into()), Seg::Key("c".into()), Seg::Index(1)]
            );
        }

        #[test]
        fn serdes_unknown_variant_message_is_read() {
            let (v, c) = unknown_variant(
                "unknown variant `guest`, expected one of `private`, `group` at line 1 column 9",
            )
            .unwrap();
            assert_eq!(v, "guest");
            assert_eq!(c, ["private", "group"]);
            let (_, c) = unknown_variant("unknown variant `x`, expected `a` or `b`").unwrap();
            assert_eq!(c, ["a", "b"]);
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
        let (event, repairs) = parse_event(&kind, &raw);
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
