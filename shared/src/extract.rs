//! Key extraction: the few facts routing needs, read from the raw update bytes in one
//! JSON pass without building an `Update`.
//!
//! The ingress must validate every body and find its `update_id`, kind, chat and user
//! to pick a subject and headers, and it must publish the bytes exactly as Telegram sent
//! them. Parsing a full typed `Update` would allocate the whole tree and fail on any field
//! the types do not know; instead a borrowing serde visitor walks the document once,
//! keeps a handful of integers, and skips everything else (`IgnoredAny` does not
//! allocate). The same pass validates that the body is one well-formed JSON object.
//!
//! Where the keys are found, for every kind (this is generic on purpose, so that a kind
//! added to the Bot API later is still sharded by its chat when it has one):
//!
//! | key | first of |
//! | --- | --- |
//! | chat | `<kind>.chat.id`, `<kind>.message.chat.id` (callback queries), `<kind>.user_chat_id` (business connections), `<kind>.voter_chat.id` (poll answers) |
//! | user | `<kind>.from.id`, `<kind>.user.id` |
//! | thread | `<kind>.message_thread_id`, `<kind>.message.message_thread_id` |
//! | business connection | `<kind>.business_connection_id` |
//!
//! Inner objects of an unexpected shape (a string where a chat was expected, a float id)
//! are not errors: the key is simply absent and the update is still carried. Only a body
//! that is not a JSON object, or has no integer `update_id`, is rejected.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};

use crate::UpdateKind;
use crate::kind::NO_KIND;

/// The routing facts of one update, borrowed from its bytes where possible.
///
/// ```
/// use tgpipe_shared::{extract_keys, OrderingKey, UpdateKind};
///
/// let body = br#"{"update_id":7,"message":{"message_id":1,"date":0,
///     "chat":{"id":-100,"type":"supergroup"},"from":{"id":42,"is_bot":false,"first_name":"A"},
///     "message_thread_id":3,"text":"hi"}}"#;
/// let keys = extract_keys(body).unwrap();
/// assert_eq!(keys.update_id, 7);
/// assert_eq!(keys.kind, UpdateKind::Message);
/// assert_eq!((keys.chat_id, keys.user_id, keys.thread_id), (Some(-100), Some(42), Some(3)));
/// assert_eq!(keys.ordering_key(), OrderingKey::Chat(-100));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateKeys<'a> {
    /// The update's `update_id` (Telegram's is a signed 32-bit number today; we keep i64).
    pub update_id: i64,
    /// The update's kind: its first field other than `update_id`.
    pub kind: UpdateKind,
    /// The chat the update belongs to, if any.
    pub chat_id: Option<i64>,
    /// The user who caused the update, if any.
    pub user_id: Option<i64>,
    /// The forum topic / message thread, if any.
    pub thread_id: Option<i64>,
    /// The business connection the update came through, if any.
    pub business_connection_id: Option<Cow<'a, str>>,
}

/// What orders updates: updates with the same key are handled one at a time, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderingKey {
    /// The update has a chat: its id.
    Chat(i64),
    /// No chat, but a user (inline queries, payments): the user's id.
    User(i64),
    /// Neither (polls, unknown kinds without a chat): no ordering, shard 0.
    None,
}

impl OrderingKey {
    /// The id this key orders by, if any.
    pub fn id(self) -> Option<i64> {
        match self {
            OrderingKey::Chat(id) | OrderingKey::User(id) => Some(id),
            OrderingKey::None => None,
        }
    }
}

impl UpdateKeys<'_> {
    /// The ordering key: the chat where the update has one, else the user, else none.
    pub fn ordering_key(&self) -> OrderingKey {
        match (self.chat_id, self.user_id) {
            (Some(chat), _) => OrderingKey::Chat(chat),
            (None, Some(user)) => OrderingKey::User(user),
            (None, None) => OrderingKey::None,
        }
    }
}

/// Why a body is not an update. Each maps to HTTP 400 at the ingress.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// Not JSON, or JSON that is not an object, or trailing bytes after it.
    #[error("body is not a JSON object: {0}")]
    Malformed(#[source] serde_json::Error),
    /// A JSON object without an `update_id` field.
    #[error("update has no `update_id`")]
    MissingUpdateId,
}

/// Reads the routing facts of one update from its raw bytes, in one pass.
///
/// Errors when `body` is not a single JSON object, or has no integer `update_id`
/// (a float, string, duplicate or out-of-range `update_id` is malformed).
pub fn extract_keys(body: &[u8]) -> Result<UpdateKeys<'_>, KeysError> {
    let raw: RawUpdate<'_> = serde_json::from_slice(body).map_err(KeysError::Malformed)?;
    let update_id = raw.update_id.ok_or(KeysError::MissingUpdateId)?;
    let payload = raw.payload.unwrap_or_default();
    Ok(UpdateKeys {
        update_id,
        kind: raw
            .kind
            .unwrap_or_else(|| UpdateKind::Unknown(NO_KIND.to_owned())),
        chat_id: payload.chat_id,
        user_id: payload.user_id,
        thread_id: payload.thread_id,
        business_connection_id: payload.business_connection_id,
    })
}

/// Visitor arms for every JSON value other than an object: skip it and yield `$default`.
/// The payload of a kind, or a chat inside it, may have any shape; only an object can
/// carry keys, and anything else must be skipped without failing the whole update.
macro_rules! skip_non_objects {
    ($default:expr) => {
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($default)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($default)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($default)
        }
    };
}

struct RawUpdate<'a> {
    update_id: Option<i64>,
    kind: Option<UpdateKind>,
    payload: Option<Payload<'a>>,
}

impl<'de> Deserialize<'de> for RawUpdate<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawUpdate<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an Update object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut raw = RawUpdate {
                    update_id: None,
                    kind: None,
                    payload: None,
                };
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "update_id" {
                        if raw.update_id.is_some() {
                            return Err(de::Error::duplicate_field("update_id"));
                        }
                        raw.update_id = Some(map.next_value::<i64>()?);
                    } else if raw.kind.is_none() {
                        raw.kind = Some(UpdateKind::from_field(&key));
                        raw.payload = Some(map.next_value::<Payload<'de>>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(raw)
            }
        }
        d.deserialize_map(V)
    }
}

/// The keys found in the kind's object. Any JSON value deserialises into it: a
/// non-object payload simply has no keys.
#[derive(Default)]
struct Payload<'a> {
    chat_id: Option<i64>,
    user_id: Option<i64>,
    thread_id: Option<i64>,
    business_connection_id: Option<Cow<'a, str>>,
}

impl<'de> Deserialize<'de> for Payload<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Payload<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut p = Payload::default();
                // Candidates in priority order; the first present one wins (see the table
                // in the module docs), whatever order the fields arrive in.
                let (mut chat, mut nested_chat, mut user_chat, mut voter_chat) =
                    (None, None, None, None);
                let (mut from, mut user) = (None, None);
                let (mut thread, mut nested_thread) = (None, None);
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "chat" => chat = map.next_value::<IdOf>()?.0,
                        "message" => {
                            let m = map.next_value::<NestedMessage>()?;
                            nested_chat = m.chat_id;
                            nested_thread = m.thread_id;
                        }
                        "user_chat_id" => user_chat = map.next_value::<LenientI64>()?.0,
                        "voter_chat" => voter_chat = map.next_value::<IdOf>()?.0,
                        "from" => from = map.next_value::<IdOf>()?.0,
                        "user" => user = map.next_value::<IdOf>()?.0,
                        "message_thread_id" => thread = map.next_value::<LenientI64>()?.0,
                        "business_connection_id" => {
                            p.business_connection_id = map.next_value::<LenientStr<'de>>()?.0
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                p.chat_id = chat.or(nested_chat).or(user_chat).or(voter_chat);
                p.user_id = from.or(user);
                p.thread_id = thread.or(nested_thread);
                Ok(p)
            }
            skip_non_objects!(Payload::default());
        }
        d.deserialize_any(V)
    }
}

/// `{"chat": {...}, "message_thread_id": N}` inside a callback query's `message`.
#[derive(Default)]
struct NestedMessage {
    chat_id: Option<i64>,
    thread_id: Option<i64>,
}

impl<'de> Deserialize<'de> for NestedMessage {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NestedMessage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut m = NestedMessage::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "chat" => m.chat_id = map.next_value::<IdOf>()?.0,
                        "message_thread_id" => m.thread_id = map.next_value::<LenientI64>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(m)
            }
            skip_non_objects!(NestedMessage::default());
        }
        d.deserialize_any(V)
    }
}

/// The integer `id` of an object such as a chat or user; `None` for any other shape.
struct IdOf(Option<i64>);

impl<'de> Deserialize<'de> for IdOf {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IdOf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut id = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "id" && id.is_none() {
                        id = map.next_value::<LenientI64>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(IdOf(id))
            }
            skip_non_objects!(IdOf(None));
        }
        d.deserialize_any(V)
    }
}

/// An integer that fits in i64; `None` for any other value (the update is still carried).
struct LenientI64(Option<i64>);

impl<'de> Deserialize<'de> for LenientI64 {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientI64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(LenientI64(Some(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(LenientI64(i64::try_from(v).ok()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LenientI64(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LenientI64(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LenientI64(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientI64(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LenientI64(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(LenientI64(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string, borrowed when it has no escapes; `None` for any other value.
struct LenientStr<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for LenientStr<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LenientStr(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LenientStr(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(body: &str) -> UpdateKeys<'_> {
        extract_keys(body.as_bytes()).expect("valid update")
    }

    #[test]
    fn message_keys() {
        let k = keys(
            r#"{"update_id":1,"message":{"message_id":1,"chat":{"id":-5,"type":"group"},"from":{"id":9},"message_thread_id":4}}"#,
        );
        assert_eq!(
            (k.update_id, k.kind, k.chat_id, k.user_id, k.thread_id),
            (1, UpdateKind::Message, Some(-5), Some(9), Some(4))
        );
    }

    #[test]
    fn field_order_does_not_matter() {
        let k =
            keys(r#"{"message":{"from":{"id":9},"chat":{"type":"private","id":9}},"update_id":3}"#);
        assert_eq!((k.update_id, k.chat_id, k.user_id), (3, Some(9), Some(9)));
    }

    #[test]
    fn callback_query_takes_the_chat_of_its_message() {
        let k = keys(
            r#"{"update_id":2,"callback_query":{"id":"q","from":{"id":7},"message":{"message_id":1,"chat":{"id":70},"message_thread_id":8},"data":"x"}}"#,
        );
        assert_eq!(
            (k.chat_id, k.user_id, k.thread_id),
            (Some(70), Some(7), Some(8))
        );
        assert_eq!(k.ordering_key(), OrderingKey::Chat(70));
    }

    #[test]
    fn inline_query_orders_by_user() {
        let k = keys(r#"{"update_id":2,"inline_query":{"id":"q","from":{"id":7},"query":"a"}}"#);
        assert_eq!(k.ordering_key(), OrderingKey::User(7));
    }

    #[test]
    fn business_connection_and_poll_answer_chats() {
        let k = keys(
            r#"{"update_id":1,"business_connection":{"id":"b","user":{"id":3},"user_chat_id":2}}"#,
        );
        assert_eq!((k.chat_id, k.user_id), (Some(2), Some(3)));
        let k = keys(r#"{"update_id":1,"poll_answer":{"poll_id":"p","voter_chat":{"id":-9}}}"#);
        assert_eq!(k.chat_id, Some(-9));
        let k = keys(
            r#"{"update_id":1,"business_message":{"business_connection_id":"bc\"1","chat":{"id":1}}}"#,
        );
        assert_eq!(k.business_connection_id.as_deref(), Some("bc\"1"));
    }

    #[test]
    fn poll_has_no_ordering_key() {
        let k = keys(r#"{"update_id":1,"poll":{"id":"p","question":"q"}}"#);
        assert_eq!(k.ordering_key(), OrderingKey::None);
    }

    #[test]
    fn unknown_kind_with_scalar_payload_is_carried() {
        let k = keys(r#"{"update_id":1,"key":"value"}"#);
        assert_eq!(k.kind, UpdateKind::Unknown("key".into()));
        assert_eq!(k.ordering_key(), OrderingKey::None);
    }

    #[test]
    fn update_without_a_kind_is_carried_as_none() {
        assert_eq!(keys(r#"{"update_id":1}"#).kind.as_str(), NO_KIND);
    }

    #[test]
    fn odd_inner_shapes_are_not_errors() {
        let k = keys(
            r#"{"update_id":1,"message":{"chat":"x","from":{"id":1.5},"message_thread_id":"7","user_chat_id":[1]}}"#,
        );
        assert_eq!((k.chat_id, k.user_id, k.thread_id), (None, None, None));
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        for bad in [
            "",
            "[]",
            "1",
            "\"s\"",
            "null",
            "{",
            "{\"update_id\":1",
            "{\"update_id\":1}x",
            "{\"update_id\":1.0}",
            "{\"update_id\":\"1\"}",
            "{\"update_id\":null}",
            "{\"update_id\":1,\"update_id\":2}",
            "{\"update_id\":99999999999999999999}",
            "{\"update_id\":1,\"message\":{\"chat\":{\"id\":1}}",
        ] {
            assert!(
                matches!(extract_keys(bad.as_bytes()), Err(KeysError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            extract_keys(b"{}"),
            Err(KeysError::MissingUpdateId)
        ));
        assert!(matches!(
            extract_keys(br#"{"message":{}}"#),
            Err(KeysError::MissingUpdateId)
        ));
    }

    #[test]
    fn deep_nesting_is_carried_without_overflowing_the_stack() {
        // Valid JSON however deep: skipped iteratively, so it cannot exhaust the stack,
        // and carried like any other update (the body limit bounds its size).
        for inner in ["x", "message_thread_id", "chat"] {
            let deep = format!(
                "{{\"update_id\":1,\"message\":{{\"{inner}\":{}{}}}}}",
                "[".repeat(100_000),
                "]".repeat(100_000)
            );
            let k = extract_keys(deep.as_bytes()).expect("carried");
            assert_eq!((k.update_id, k.chat_id, k.thread_id), (1, None, None));
        }
    }

    #[test]
    fn second_kind_field_is_ignored() {
        let k = keys(r#"{"update_id":1,"poll":{"id":"p"},"message":{"chat":{"id":5}}}"#);
        assert_eq!((k.kind, k.chat_id), (UpdateKind::Poll, None));
    }
}
