//! Durable timers on the wire: where a timer waits, where it fires, and what it carries.
//!
//! A timer is a message in the update stream that JetStream itself fires at its time
//! (message schedules, nats-server 2.12+). It waits on its own subject
//! `tgtimer.at.<bot_id>.<shard>.<slot>`, which no lane consumes: the slot is a hash of
//! the chat, user, thread and the timer's name, so scheduling a timer of the same name
//! again replaces the waiting one (the schedule's subject keeps only its last message).
//! At its time the server publishes it to `tg.<bot_id>.timer.<shard>`: from there a
//! fired timer is an update of the kind `timer` in its chat's shard, run by the
//! partition's owner in the chat's order, deduplicated like any update.
//!
//! The body is an update of kind `timer`, so the keys are found where they are for any
//! kind (`timer.chat.id`, `timer.from.id`, `timer.message_thread_id`):
//!
//! ```json
//! {"update_id":-5120384,"timer":{"name":"remind","chat":{"id":42},"from":{"id":42},
//!  "due_at":1765000000000,"scheduled_at":1764999990000,"payload":"tea"}}
//! ```
//!
//! The `update_id` is negative (Telegram's are positive) and random per scheduling: a
//! timer that fires twice (a stream leader lost at its time) is one update to the
//! duplicate memory.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::subject::{BotId, SUBJECT_PREFIX, Shard, fnv1a64};

/// Prefix of every timer subject.
pub const TIMER_SUBJECT_PREFIX: &str = "tgtimer";
/// The update kind of a fired timer, in its subject and body.
pub const TIMER_KIND: &str = "timer";

/// The subject a timer waits on: `tgtimer.at.<bot_id>.<shard>.<slot>`.
///
/// ```
/// use tgpipe_shared::{timer, BotId, Shard};
///
/// let s = timer::schedule_subject(BotId(42), Shard(7), 0xabc);
/// assert_eq!(s, "tgtimer.at.42.7.0000000000000abc");
/// ```
pub fn schedule_subject(bot: BotId, shard: Shard, slot: u64) -> String {
    let mut s = String::with_capacity(48);
    let _ = write!(s, "{TIMER_SUBJECT_PREFIX}.at.{bot}.{shard}.{slot:016x}");
    s
}

/// The update subject a timer fires to: `tg.<bot_id>.timer.<shard>`.
pub fn fired_subject(bot: BotId, shard: Shard) -> String {
    format!("{SUBJECT_PREFIX}.{bot}.{TIMER_KIND}.{shard}")
}

/// Where a timer belongs: its bot, chat (else user), user and thread, as the update
/// that scheduled it had them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerScope {
    /// The bot.
    pub bot: BotId,
    /// The chat, if the update had one.
    pub chat_id: Option<i64>,
    /// The user, if the update had one.
    pub user_id: Option<i64>,
    /// The forum topic, if any.
    pub thread_id: Option<i64>,
}

impl TimerScope {
    /// The slot of the timer named `name` in this scope: one waiting timer per slot.
    pub fn slot(&self, name: &str) -> u64 {
        let mut bytes = Vec::with_capacity(40 + name.len());
        for part in [self.chat_id, self.user_id, self.thread_id] {
            match part {
                Some(v) => {
                    bytes.push(1);
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                None => bytes.push(0),
            }
        }
        bytes.extend_from_slice(name.as_bytes());
        fnv1a64(&bytes)
    }
}

/// An id: `{"id": 42}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRef {
    /// The id.
    pub id: i64,
}

/// What a timer carries, under the body's `timer` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerFields {
    /// The name it was scheduled under.
    pub name: String,
    /// The chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<IdRef>,
    /// The user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<IdRef>,
    /// The forum topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_thread_id: Option<i64>,
    /// When it is due, unix milliseconds.
    pub due_at: u64,
    /// When it was scheduled, unix milliseconds.
    pub scheduled_at: u64,
    /// The application's payload.
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// A timer's body: an update of kind `timer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerBody {
    /// Negative and random per scheduling.
    pub update_id: i64,
    /// The timer.
    pub timer: TimerFields,
}

impl TimerBody {
    /// A body for a timer of `scope` named `name`, due at `due_at` (unix ms). `update_id`
    /// is negative and random per scheduling ([`is_timer_id`]).
    pub fn new(
        update_id: i64,
        scope: &TimerScope,
        name: &str,
        due_at: u64,
        scheduled_at: u64,
        payload: serde_json::Value,
    ) -> TimerBody {
        TimerBody {
            update_id,
            timer: TimerFields {
                name: name.to_owned(),
                chat: scope.chat_id.map(|id| IdRef { id }),
                from: scope.user_id.map(|id| IdRef { id }),
                message_thread_id: scope.thread_id,
                due_at,
                scheduled_at,
                payload,
            },
        }
    }
}

/// Whether `id` can be a timer's `update_id`: negative, and of at most 52 bits so that
/// it is exact wherever ids pass through a double.
pub fn is_timer_id(id: i64) -> bool {
    id < 0 && id > -(1i64 << 52)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OrderingKey, extract_keys};

    #[test]
    fn a_timer_body_is_an_update_keyed_by_its_chat() {
        let scope = TimerScope {
            bot: BotId(1),
            chat_id: Some(-100),
            user_id: Some(7),
            thread_id: Some(3),
        };
        let body = TimerBody::new(
            -77,
            &scope,
            "remind",
            2_000,
            1_000,
            serde_json::json!("tea"),
        );
        let bytes = serde_json::to_vec(&body).unwrap();
        let keys = extract_keys(&bytes).unwrap();
        assert!(keys.update_id < 0);
        assert_eq!(keys.kind.as_str(), TIMER_KIND);
        assert_eq!(
            (keys.chat_id, keys.user_id, keys.thread_id),
            (Some(-100), Some(7), Some(3))
        );
        assert_eq!(keys.ordering_key(), OrderingKey::Chat(-100));
        let back: TimerBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn slots_differ_by_name_chat_user_and_thread_only() {
        let a = TimerScope {
            bot: BotId(1),
            chat_id: Some(5),
            user_id: Some(5),
            thread_id: None,
        };
        assert_eq!(a.slot("x"), a.slot("x"));
        assert_ne!(a.slot("x"), a.slot("y"));
        assert_ne!(a.slot("x"), TimerScope { user_id: None, ..a }.slot("x"));
        assert_ne!(
            a.slot("x"),
            TimerScope {
                thread_id: Some(0),
                ..a
            }
            .slot("x")
        );
        assert_ne!(
            a.slot("x"),
            TimerScope {
                chat_id: Some(6),
                ..a
            }
            .slot("x")
        );
    }

    #[test]
    fn timer_ids_are_negative_and_exact_as_doubles() {
        assert!(is_timer_id(-1) && is_timer_id(-(1i64 << 52) + 1));
        assert!(!is_timer_id(0) && !is_timer_id(5) && !is_timer_id(-(1i64 << 52)));
    }
}
