//! Subjects `tg.<bot_id>.<update_type>.<shard>` and the shard function.
//!
//! The subject is how updates are routed: lanes filter on the update type, and the shard
//! spreads chats across the keyspace while keeping every update of one chat on one
//! shard. The shard function is part of the wire contract: it must give the same answer
//! on every version, platform and pod, so it is spelled out here instead of using
//! `std`'s `Hash` (which is randomly seeded and unstable across releases).
//!
//! **Shard hash**: 64-bit FNV-1a over the 8 little-endian bytes of the ordering key's
//! `i64` id, reduced modulo the shard count. An update without an ordering key goes
//! to shard 0. Private chats and their user share an id, so a user's private messages and
//! inline queries land on the same shard.

use std::fmt::{self, Write as _};
use std::num::NonZeroU16;

use crate::OrderingKey;
use crate::kind::{UpdateKind, is_subject_token};

/// Prefix of every update subject.
pub const SUBJECT_PREFIX: &str = "tg";
/// Prefix of every dead-letter subject.
pub const DLQ_SUBJECT_PREFIX: &str = "tgdlq";
/// Default number of shards (`TGPIPE_SHARDS`).
pub const DEFAULT_SHARDS: u16 = 64;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

/// A shard number, `0 .. shards`.
///
/// ```
/// use std::num::NonZeroU16;
/// use tgpipe_shared::{OrderingKey, Shard};
///
/// let shards = NonZeroU16::new(64).unwrap();
/// let a = Shard::of(OrderingKey::Chat(-1001234567890), shards);
/// assert_eq!(a, Shard::of(OrderingKey::Chat(-1001234567890), shards));
/// assert_eq!(Shard::of(OrderingKey::None, shards), Shard(0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard(pub u16);

impl Shard {
    /// The shard of an ordering key among `shards` shards.
    pub fn of(key: OrderingKey, shards: NonZeroU16) -> Shard {
        match key.id() {
            None => Shard(0),
            Some(id) => {
                let h = fnv1a64(&id.to_le_bytes());
                // The remainder is < shards <= u16::MAX, so it fits.
                Shard((h % u64::from(shards.get())) as u16)
            }
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Telegram bot's numeric id (the part of its token before the colon).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct BotId(pub u64);

impl BotId {
    /// Parses a bot id as it appears in a URL path or subject: 1 to 20 ASCII digits,
    /// no sign, no leading `+`, not zero.
    pub fn parse(s: &str) -> Option<BotId> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok().filter(|id| *id != 0).map(BotId)
    }

    /// The bot id of a token `123456:ABC...`, without keeping the secret part.
    pub fn from_token(token: &str) -> Option<BotId> {
        let (id, secret) = token.split_once(':')?;
        if secret.is_empty() {
            return None;
        }
        BotId::parse(id)
    }
}

impl fmt::Display for BotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Writes the update subject `tg.<bot_id>.<kind>.<shard>`.
///
/// ```
/// use tgpipe_shared::{subject, BotId, Shard, UpdateKind};
///
/// let s = subject::update_subject(BotId(42), &UpdateKind::Message, Shard(7));
/// assert_eq!(s, "tg.42.message.7");
/// ```
pub fn update_subject(bot: BotId, kind: &UpdateKind, shard: Shard) -> String {
    let mut s = String::with_capacity(SUBJECT_PREFIX.len() + 24 + kind.as_str().len() + 6);
    // Writing to a String cannot fail.
    let _ = write!(s, "{SUBJECT_PREFIX}.{bot}.{kind}.{shard}");
    s
}

/// The dead-letter subject `tgdlq.<bot_id>.<kind>`.
pub fn dlq_subject(bot: BotId, kind: &UpdateKind) -> String {
    format!("{DLQ_SUBJECT_PREFIX}.{bot}.{kind}")
}

/// The subject filter a lane consumer uses for one kind: `tg.*.<kind>.*`.
pub fn kind_filter(kind: &UpdateKind) -> String {
    format!("{SUBJECT_PREFIX}.*.{kind}.*")
}

/// An update subject, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateSubject {
    /// The bot the update is for.
    pub bot: BotId,
    /// The update's kind.
    pub kind: UpdateKind,
    /// The shard of its ordering key.
    pub shard: Shard,
}

/// Why a subject is not an update subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an update subject `tg.<bot_id>.<update_type>.<shard>`")]
pub struct SubjectError(pub String);

impl UpdateSubject {
    /// Parses `tg.<bot_id>.<update_type>.<shard>`.
    ///
    /// ```
    /// use tgpipe_shared::{subject::UpdateSubject, BotId, Shard, UpdateKind};
    ///
    /// let s = UpdateSubject::parse("tg.42.callback_query.3").unwrap();
    /// assert_eq!((s.bot, s.kind, s.shard), (BotId(42), UpdateKind::CallbackQuery, Shard(3)));
    /// assert!(UpdateSubject::parse("tg.42.message").is_err());
    /// ```
    pub fn parse(subject: &str) -> Result<UpdateSubject, SubjectError> {
        let err = || SubjectError(subject.to_owned());
        let mut parts = subject.split('.');
        let (Some(SUBJECT_PREFIX), Some(bot), Some(kind), Some(shard), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(err());
        };
        if !is_subject_token(kind) {
            return Err(err());
        }
        Ok(UpdateSubject {
            bot: BotId::parse(bot).ok_or_else(err)?,
            kind: UpdateKind::from_field(kind),
            shard: Shard(shard.parse().map_err(|_| err())?),
        })
    }
}

impl fmt::Display for UpdateSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SUBJECT_PREFIX}.{}.{}.{}",
            self.bot, self.kind, self.shard
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: u16) -> NonZeroU16 {
        NonZeroU16::new(s).expect("non-zero")
    }

    /// Pinned values: changing the shard function moves every chat to another shard
    /// on upgrade, so these must never change. Computed independently with
    /// Python's `fnv1a64(struct.pack('<q', id)) % 64`.
    #[test]
    fn shard_function_is_pinned() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let cases: &[(i64, u16)] = &[
            (0, 5),
            (1, 36),
            (-1, 61),
            (42, 47),
            (123_456_789, 25),
            (-1_001_234_567_890, 6),
            (i64::MAX, 61),
            (i64::MIN, 5),
        ];
        for (id, shard) in cases {
            assert_eq!(
                Shard::of(OrderingKey::Chat(*id), n(64)),
                Shard(*shard),
                "id {id}"
            );
            assert_eq!(
                Shard::of(OrderingKey::User(*id), n(64)),
                Shard(*shard),
                "id {id}"
            );
        }
        assert_eq!(Shard::of(OrderingKey::Chat(12345), n(1)), Shard(0));
    }

    #[test]
    fn shards_spread_chats() {
        let mut seen = [0u32; 64];
        for chat in 0..6400i64 {
            seen[usize::from(Shard::of(OrderingKey::Chat(chat), n(64)).0)] += 1;
        }
        assert!(seen.iter().all(|c| (50..=150).contains(c)), "{seen:?}");
    }

    #[test]
    fn subject_round_trip() {
        for kind in UpdateKind::ALL {
            let s = update_subject(BotId(123), kind, Shard(63));
            let parsed = UpdateSubject::parse(&s).expect("parses");
            assert_eq!(
                (parsed.bot, &parsed.kind, parsed.shard),
                (BotId(123), kind, Shard(63))
            );
            assert_eq!(parsed.to_string(), s);
        }
        let unknown = UpdateSubject::parse("tg.1.key.0").expect("parses");
        assert_eq!(unknown.kind, UpdateKind::Unknown("key".into()));
    }

    #[test]
    fn bad_subjects() {
        for bad in [
            "",
            "tg",
            "tg.1.message",
            "tg.1.message.0.x",
            "xx.1.message.0",
            "tg.a.message.0",
            "tg.1.message.-1",
            "tg.1.*.0",
            "tg.0.message.0",
            "tg.1..0",
        ] {
            assert!(UpdateSubject::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bot_ids() {
        assert_eq!(BotId::parse("123"), Some(BotId(123)));
        for bad in ["", "0", "-1", "+1", "1a", "123456789012345678901", " 1"] {
            assert_eq!(BotId::parse(bad), None, "{bad:?}");
        }
        assert_eq!(BotId::from_token("123:ABC"), Some(BotId(123)));
        assert_eq!(BotId::from_token("123:"), None);
        assert_eq!(BotId::from_token("123"), None);
    }
}
