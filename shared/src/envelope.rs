//! [`Envelope`]: one update on the wire, the body as Telegram sent it and the facts
//! routing needs, computed once where the update enters (the ingress, a poller) and
//! read back once, typed, where it is consumed (the worker, the DLQ, a replay).
//!
//! The facts travel in the message's headers (see [`crate::headers`]); the subject is
//! `tg.<bot>.<kind>.<shard>`. A message that carries [`headers::ENVELOPE`] has every key
//! in its headers, so a consumer reads no byte of the body to route it; one without
//! (published by an earlier version, or by hand) is read from its body instead.

use std::fmt;
use std::num::NonZeroU16;
use std::str::FromStr;

#[cfg(feature = "nats")]
use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;

#[cfg(feature = "nats")]
use crate::headers;
#[cfg(feature = "nats")]
use crate::subject::UpdateSubject;
use crate::subject::{SubjectError, update_subject};
use crate::{BotId, KeysError, OrderingKey, Shard, UpdateKind, extract_keys};

/// The envelope version this code writes (the value of [`headers::ENVELOPE`]).
pub const VERSION: &str = "1";

/// One update with its routing facts.
///
/// ```
/// use std::num::NonZeroU16;
/// use tgpipe_shared::envelope::{Envelope, MsgId};
/// use tgpipe_shared::{BotId, UpdateKind};
///
/// let body = br#"{"update_id":9,"message":{"message_id":1,"date":0,"chat":{"id":-5,"type":"supergroup"},"from":{"id":7,"is_bot":false,"first_name":"A"},"message_thread_id":3}}"#;
/// let env = Envelope::from_body(BotId(42), body.as_slice().into(), NonZeroU16::new(64).unwrap(), 1_700_000_000_000).unwrap();
/// assert_eq!(env.msg_id(), MsgId::Update { bot: BotId(42), update_id: 9 });
/// assert_eq!(env.subject(), format!("tg.42.message.{}", env.shard));
/// assert_eq!((env.kind, env.chat_id, env.user_id, env.thread_id), (UpdateKind::Message, Some(-5), Some(7), Some(3)));
/// ```
///
/// With the `nats` feature it is also read from and written into a NATS message
/// ([`Envelope::from_message`], [`Envelope::into_message`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The bot it was sent to.
    pub bot: BotId,
    /// Telegram's `update_id`.
    pub update_id: i64,
    /// Its kind (the field name).
    pub kind: UpdateKind,
    /// The chat, where it has one.
    pub chat_id: Option<i64>,
    /// The user, where it has one.
    pub user_id: Option<i64>,
    /// The forum topic, where it has one.
    pub thread_id: Option<i64>,
    /// Its shard (of the ordering key).
    pub shard: Shard,
    /// When it entered, unix milliseconds (0 when unknown).
    pub received_at_ms: u64,
    /// The body, as Telegram sent it.
    pub body: Bytes,
}

/// Why a message is not an update envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The subject is not `tg.<bot>.<kind>.<shard>`.
    #[error(transparent)]
    Subject(#[from] SubjectError),
    /// A header of the envelope does not read (a number that is not one).
    #[error("header {name} is {value:?}, not what the envelope writes")]
    Header {
        /// The header.
        name: &'static str,
        /// Its value, cut to 64 bytes.
        value: String,
    },
    /// The headers and the subject disagree about the bot or the kind.
    #[error("header {name} says {header:?}, the subject {subject:?}")]
    Mismatch {
        /// The header.
        name: &'static str,
        /// The header's value.
        header: String,
        /// The subject's.
        subject: String,
    },
    /// Without an envelope in the headers, the body had to be read, and it is not an
    /// update.
    #[error(transparent)]
    Body(#[from] KeysError),
}

impl Envelope {
    /// The envelope of a body that enters the pipeline: validates it as an update and
    /// computes its keys and shard in one pass over the bytes.
    pub fn from_body(
        bot: BotId,
        body: Bytes,
        shards: NonZeroU16,
        received_at_ms: u64,
    ) -> Result<Envelope, KeysError> {
        let keys = extract_keys(&body)?;
        let shard = Shard::of(keys.ordering_key(), shards);
        let (update_id, kind, chat_id, user_id, thread_id) = (
            keys.update_id,
            keys.kind,
            keys.chat_id,
            keys.user_id,
            keys.thread_id,
        );
        Ok(Envelope {
            bot,
            update_id,
            kind,
            chat_id,
            user_id,
            thread_id,
            shard,
            received_at_ms,
            body,
        })
    }

    /// Reads a stored message back: its facts from the subject and the headers when it
    /// carries an envelope, else from its body (one pass).
    ///
    /// ```
    /// use std::num::NonZeroU16;
    /// use tgpipe_shared::{BotId, Envelope, UpdateKind};
    ///
    /// let body = br#"{"update_id":9,"message":{"message_id":1,"date":0,"chat":{"id":-5,"type":"supergroup"},"from":{"id":7,"is_bot":false,"first_name":"A"},"message_thread_id":3}}"#;
    /// let env = Envelope::from_body(BotId(42), body.as_slice().into(), NonZeroU16::new(64).unwrap(), 1_700_000_000_000).unwrap();
    /// let (subject, headers) = (env.subject(), env.headers());
    ///
    /// // What a consumer reads back, without parsing the body.
    /// let read = Envelope::from_message(&subject, Some(&headers), env.body.clone()).unwrap();
    /// assert_eq!(read, env);
    /// assert_eq!((read.kind, read.chat_id, read.user_id, read.thread_id), (UpdateKind::Message, Some(-5), Some(7), Some(3)));
    /// ```
    #[cfg(feature = "nats")]
    pub fn from_message(
        subject: &str,
        headers: Option<&HeaderMap>,
        body: Bytes,
    ) -> Result<Envelope, EnvelopeError> {
        let at = UpdateSubject::parse(subject)?;
        let h = HeaderReader(headers);
        if h.str(headers::ENVELOPE) != Some(VERSION) {
            // Not written by an envelope: read the body, as the ingress would have.
            let keys = extract_keys(&body)?;
            let (update_id, chat_id, user_id, thread_id) =
                (keys.update_id, keys.chat_id, keys.user_id, keys.thread_id);
            return Ok(Envelope {
                bot: at.bot,
                update_id,
                kind: at.kind,
                chat_id,
                user_id,
                thread_id,
                shard: at.shard,
                received_at_ms: h.u64(headers::RECEIVED_AT).ok().flatten().unwrap_or(0),
                body,
            });
        }
        let update_id = match h.str(headers::MSG_ID).map(MsgId::from_str) {
            Some(Ok(id)) => match id.origin() {
                MsgId::Update { bot, update_id } if *bot == at.bot => *update_id,
                _ => return Err(h.bad(headers::MSG_ID)),
            },
            _ => return Err(h.bad(headers::MSG_ID)),
        };
        if let Some(kind) = h.str(headers::UPDATE_TYPE)
            && kind != at.kind.as_str()
        {
            return Err(EnvelopeError::Mismatch {
                name: headers::UPDATE_TYPE,
                header: cut(kind),
                subject: at.kind.as_str().to_owned(),
            });
        }
        Ok(Envelope {
            bot: at.bot,
            update_id,
            kind: at.kind,
            chat_id: h.i64(headers::CHAT_ID)?,
            user_id: h.i64(headers::USER_ID)?,
            thread_id: h.i64(headers::THREAD_ID)?,
            shard: at.shard,
            received_at_ms: h.u64(headers::RECEIVED_AT)?.unwrap_or(0),
            body,
        })
    }

    /// What orders it: its chat, else its user, else nothing.
    pub fn ordering_key(&self) -> OrderingKey {
        match (self.chat_id, self.user_id) {
            (Some(chat), _) => OrderingKey::Chat(chat),
            (None, Some(user)) => OrderingKey::User(user),
            (None, None) => OrderingKey::None,
        }
    }

    /// `tg.<bot>.<kind>.<shard>`.
    pub fn subject(&self) -> String {
        update_subject(self.bot, &self.kind, self.shard)
    }

    /// Its de-duplication id.
    pub fn msg_id(&self) -> MsgId {
        MsgId::Update {
            bot: self.bot,
            update_id: self.update_id,
        }
    }

    /// What is published: the subject, the headers (trace context is the publisher's
    /// to add) and the body. The ingress and a poller both publish this, through
    /// [`crate::publish::Publisher::publish`], so a consumer cannot tell them apart.
    #[cfg(feature = "nats")]
    pub fn into_message(self) -> (String, HeaderMap, Bytes) {
        (self.subject(), self.headers(), self.body)
    }

    /// The headers it is published with (trace context is the publisher's to add).
    ///
    /// Names are static (no allocation); the values are formatted with `itoa`, the
    /// message id straight into its value.
    #[cfg(feature = "nats")]
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        let mut buf = itoa::Buffer::new();
        let mut id = String::with_capacity(24);
        id.push_str(buf.format(self.bot.0));
        id.push(':');
        id.push_str(buf.format(self.update_id));
        h.insert(HeaderName::from_static(headers::MSG_ID), id);
        h.insert(
            HeaderName::from_static(headers::BOT_ID),
            buf.format(self.bot.0),
        );
        h.insert(
            HeaderName::from_static(headers::UPDATE_TYPE),
            self.kind.as_str(),
        );
        for (name, value) in [
            (headers::CHAT_ID, self.chat_id),
            (headers::USER_ID, self.user_id),
            (headers::THREAD_ID, self.thread_id),
        ] {
            if let Some(v) = value {
                h.insert(HeaderName::from_static(name), buf.format(v));
            }
        }
        h.insert(
            HeaderName::from_static(headers::RECEIVED_AT),
            buf.format(self.received_at_ms),
        );
        h.insert(HeaderName::from_static(headers::ENVELOPE), VERSION);
        h
    }
}

/// Reads the envelope's headers: present and well formed, absent, or an error naming
/// the header.
#[cfg(feature = "nats")]
struct HeaderReader<'a>(Option<&'a HeaderMap>);

#[cfg(feature = "nats")]
impl HeaderReader<'_> {
    fn str(&self, name: &str) -> Option<&str> {
        self.0?.get(name).map(|v| v.as_str())
    }

    fn bad(&self, name: &'static str) -> EnvelopeError {
        EnvelopeError::Header {
            name,
            value: cut(self.str(name).unwrap_or("")),
        }
    }

    fn i64(&self, name: &'static str) -> Result<Option<i64>, EnvelopeError> {
        self.str(name)
            .map(|v| v.parse().map_err(|_| self.bad(name)))
            .transpose()
    }

    fn u64(&self, name: &'static str) -> Result<Option<u64>, EnvelopeError> {
        self.str(name)
            .map(|v| v.parse().map_err(|_| self.bad(name)))
            .transpose()
    }
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// A message's `Nats-Msg-Id`: what JetStream de-duplicates on, one variant per way a
/// message is written.
///
/// ```
/// use tgpipe_shared::BotId;
/// use tgpipe_shared::envelope::MsgId;
///
/// let id: MsgId = "42:9:dlq:17:replay:3".parse().unwrap();
/// assert_eq!(id.origin(), &MsgId::Update { bot: BotId(42), update_id: 9 });
/// assert_eq!(id.to_string(), "42:9:dlq:17:replay:3");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MsgId {
    /// An update as it entered: `<bot>:<update_id>`, so Telegram's retries collapse.
    Update {
        /// The bot.
        bot: BotId,
        /// Telegram's id.
        update_id: i64,
    },
    /// A message without an update id (not an update): `<bot>:seq<stream_seq>`.
    Sequence {
        /// The bot (0 when the subject named none).
        bot: BotId,
        /// Its sequence in the update stream.
        seq: u64,
    },
    /// The dead letter of the message at `seq` of the update stream: `<of>:dlq:<seq>`,
    /// one letter per stored message however often dead-lettering is retried.
    DeadLetter {
        /// The message's own id.
        of: Box<MsgId>,
        /// Its sequence in the update stream.
        seq: u64,
    },
    /// A dead letter put back into the update stream: `<of>:replay:<dlq_seq>`.
    Replay {
        /// The letter's id.
        of: Box<MsgId>,
        /// The letter's sequence in the dead-letter stream.
        seq: u64,
    },
}

impl MsgId {
    /// The id of the update this message carries, whatever happened to it since.
    pub fn origin(&self) -> &MsgId {
        match self {
            MsgId::DeadLetter { of, .. } | MsgId::Replay { of, .. } => of.origin(),
            other => other,
        }
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsgId::Update { bot, update_id } => write!(f, "{bot}:{update_id}"),
            MsgId::Sequence { bot, seq } => write!(f, "{bot}:seq{seq}"),
            MsgId::DeadLetter { of, seq } => write!(f, "{of}:dlq:{seq}"),
            MsgId::Replay { of, seq } => write!(f, "{of}:replay:{seq}"),
        }
    }
}

/// A `Nats-Msg-Id` that none of the writers produces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a tgpipe message id: {0:?}")]
pub struct BadMsgId(String);

impl FromStr for MsgId {
    type Err = BadMsgId;

    fn from_str(s: &str) -> Result<MsgId, BadMsgId> {
        let bad = || BadMsgId(cut(s));
        if s.len() > 256 {
            return Err(bad());
        }
        // The suffixes nest outward: `<inner>:dlq:<n>`, `<inner>:replay:<n>`.
        if let Some((inner, seq)) = s.rsplit_once(':')
            && let Some((inner, what)) = inner.rsplit_once(':')
            && (what == "dlq" || what == "replay")
        {
            let seq = seq.parse().map_err(|_| bad())?;
            let of = Box::new(inner.parse()?);
            return Ok(match what {
                "dlq" => MsgId::DeadLetter { of, seq },
                _ => MsgId::Replay { of, seq },
            });
        }
        let (bot, rest) = s.split_once(':').ok_or_else(bad)?;
        let bot = match bot {
            "0" => BotId(0),
            b => BotId::parse(b).ok_or_else(bad)?,
        };
        match rest.strip_prefix("seq") {
            Some(seq) => Ok(MsgId::Sequence {
                bot,
                seq: seq.parse().map_err(|_| bad())?,
            }),
            None => Ok(MsgId::Update {
                bot,
                update_id: rest.parse().map_err(|_| bad())?,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards() -> NonZeroU16 {
        NonZeroU16::new(64).unwrap()
    }

    const BODY: &[u8] = br#"{"update_id":9,"message":{"message_id":1,"date":0,"chat":{"id":-5,"type":"supergroup"},"from":{"id":7,"is_bot":false,"first_name":"A"},"message_thread_id":3,"text":"hi"}}"#;

    #[test]
    fn a_message_reads_back_without_its_body() {
        let env = Envelope::from_body(BotId(42), Bytes::from_static(BODY), shards(), 5).unwrap();
        let h = env.headers();
        assert_eq!(
            h.get(headers::MSG_ID).map(|v| v.as_str()),
            Some(env.msg_id().to_string().as_str())
        );
        // A body that does not parse shows that the headers alone were read.
        let read =
            Envelope::from_message(&env.subject(), Some(&h), Bytes::from_static(b"x")).unwrap();
        assert_eq!(
            (
                read.bot,
                read.update_id,
                read.chat_id,
                read.user_id,
                read.thread_id
            ),
            (BotId(42), 9, Some(-5), Some(7), Some(3))
        );
        assert_eq!((read.shard, read.received_at_ms), (env.shard, 5));
    }

    #[test]
    fn a_message_without_an_envelope_is_read_from_its_body() {
        let env = Envelope::from_body(BotId(42), Bytes::from_static(BODY), shards(), 5).unwrap();
        // As an earlier version wrote it: no envelope marker, no thread.
        let mut h = HeaderMap::new();
        for (name, values) in env.headers().iter() {
            let name: &str = name.as_ref();
            if name != headers::ENVELOPE && name != headers::THREAD_ID {
                for v in values {
                    h.append(name, v.as_str());
                }
            }
        }
        let read = Envelope::from_message(&env.subject(), Some(&h), env.body.clone()).unwrap();
        assert_eq!(read.thread_id, Some(3), "from the body");
        let read = Envelope::from_message(&env.subject(), None, env.body.clone()).unwrap();
        assert_eq!(
            read,
            Envelope {
                received_at_ms: 0,
                ..env.clone()
            }
        );
        let e = Envelope::from_message(&env.subject(), None, Bytes::from_static(b"[]"));
        assert!(matches!(e, Err(EnvelopeError::Body(_))), "{e:?}");
    }

    #[test]
    fn hostile_headers_are_refused_with_their_name() {
        let env = Envelope::from_body(BotId(42), Bytes::from_static(BODY), shards(), 5).unwrap();
        for (name, value) in [
            (headers::MSG_ID, "42:nine"),
            (headers::MSG_ID, "43:9"),
            (headers::MSG_ID, ""),
            (headers::CHAT_ID, "-5.0"),
            (headers::USER_ID, "99999999999999999999999"),
            (headers::THREAD_ID, "three"),
            (headers::RECEIVED_AT, "-1"),
        ] {
            let mut h = env.headers();
            h.insert(name, value);
            let e = Envelope::from_message(&env.subject(), Some(&h), env.body.clone())
                .expect_err(value);
            assert!(e.to_string().contains(name), "{e}");
        }
        let mut h = env.headers();
        h.insert(headers::UPDATE_TYPE, "callback_query");
        let e = Envelope::from_message(&env.subject(), Some(&h), env.body.clone()).unwrap_err();
        assert!(matches!(e, EnvelopeError::Mismatch { .. }), "{e}");
        let e = Envelope::from_message("tg.x.message.1", Some(&h), env.body.clone()).unwrap_err();
        assert!(matches!(e, EnvelopeError::Subject(_)), "{e}");
    }

    #[test]
    fn message_ids_round_trip_and_nest() {
        for s in [
            "42:9",
            "42:-9",
            "42:seq17",
            "0:seq17",
            "42:9:dlq:17",
            "42:seq3:dlq:17",
            "42:9:dlq:17:replay:2",
            "42:9:dlq:17:replay:2:dlq:40",
        ] {
            let id: MsgId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
        }
        let id: MsgId = "42:9:dlq:17:replay:2:dlq:40".parse().unwrap();
        assert_eq!(
            id.origin(),
            &MsgId::Update {
                bot: BotId(42),
                update_id: 9
            }
        );
        for bad in [
            "",
            "42",
            ":9",
            "x:9",
            "42:nine",
            "42:seqx",
            "42:9:dlq:x",
            "42:9:other:1",
        ] {
            assert!(bad.parse::<MsgId>().is_err(), "{bad}");
        }
        assert!("1:".repeat(200).parse::<MsgId>().is_err(), "oversized");
    }
}
