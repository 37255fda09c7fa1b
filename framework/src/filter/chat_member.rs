//! Member status transitions of `chat_member` and `my_chat_member` updates, as in
//! aiogram: `ChatMemberUpdated::new(MemberGroup::IS_NOT_MEMBER >> MemberGroup::IS_MEMBER)`.
//!
//! The statuses are read from the update's JSON (`old_chat_member.status`,
//! `new_chat_member.status`, and `is_member` of a restricted member), so the filter does
//! not depend on how a typed model spells them.

use std::borrow::Cow;
use std::ops::{BitOr, Shr};

use serde_json::value::RawValue;

use super::Filter;
use crate::context::Context;
use crate::handler::BoxFuture;

/// A member status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberStatus {
    /// `creator`.
    Creator,
    /// `administrator`.
    Administrator,
    /// `member`.
    Member,
    /// `restricted` and still a member.
    RestrictedMember,
    /// `restricted` and not a member.
    RestrictedNotMember,
    /// `left`.
    Left,
    /// `kicked`.
    Kicked,
}

impl MemberStatus {
    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    fn of(m: &Member<'_>) -> Option<MemberStatus> {
        Some(match m.status.as_deref()? {
            "creator" => MemberStatus::Creator,
            "administrator" => MemberStatus::Administrator,
            "member" => MemberStatus::Member,
            "restricted"
                if m.is_member
                    .as_ref()
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false) =>
            {
                MemberStatus::RestrictedMember
            }
            "restricted" => MemberStatus::RestrictedNotMember,
            "left" => MemberStatus::Left,
            "kicked" => MemberStatus::Kicked,
            _ => return None,
        })
    }
}

/// The update's body as far as the filter reads it: the kind's object, left unparsed.
#[derive(serde::Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    chat_member: Option<&'a RawValue>,
    #[serde(borrow, default)]
    my_chat_member: Option<&'a RawValue>,
}

/// The kind's object: the two members' statuses; every other field is skipped.
#[derive(serde::Deserialize)]
struct Change<'a> {
    #[serde(borrow, default)]
    old_chat_member: Option<Member<'a>>,
    #[serde(borrow, default)]
    new_chat_member: Option<Member<'a>>,
}

#[derive(serde::Deserialize)]
struct Member<'a> {
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    /// Any JSON: only `true` makes a restricted member a member.
    #[serde(default)]
    is_member: Option<serde_json::Value>,
}

/// The (old, new) statuses of a member update's body; `None` for any other shape.
fn transition(raw: &[u8], kind: &str) -> Option<(MemberStatus, MemberStatus)> {
    let body: Body<'_> = serde_json::from_slice(raw).ok()?;
    let payload = match kind {
        "chat_member" => body.chat_member,
        "my_chat_member" => body.my_chat_member,
        _ => None,
    }?;
    let change: Change<'_> = serde_json::from_str(payload.get()).ok()?;
    Some((
        MemberStatus::of(change.old_chat_member.as_ref()?)?,
        MemberStatus::of(change.new_chat_member.as_ref()?)?,
    ))
}

/// A set of statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberGroup(u8);

impl MemberGroup {
    /// Creator, administrator, member, or restricted but still a member.
    pub const IS_MEMBER: MemberGroup = MemberGroup(0b0001111);
    /// Creator or administrator.
    pub const IS_ADMIN: MemberGroup = MemberGroup(0b0000011);
    /// Left, kicked, or restricted and not a member.
    pub const IS_NOT_MEMBER: MemberGroup = MemberGroup(0b1110000);
    /// Any status.
    pub const ANY: MemberGroup = MemberGroup(0b1111111);

    /// Exactly one status.
    pub fn of(status: MemberStatus) -> MemberGroup {
        MemberGroup(status.bit())
    }

    /// Whether `status` is in the set.
    pub fn contains(self, status: MemberStatus) -> bool {
        self.0 & status.bit() != 0
    }
}

impl BitOr for MemberGroup {
    type Output = MemberGroup;
    fn bitor(self, rhs: MemberGroup) -> MemberGroup {
        MemberGroup(self.0 | rhs.0)
    }
}

/// From one set of statuses to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The old status must be in this set.
    pub old: MemberGroup,
    /// The new status must be in this set.
    pub new: MemberGroup,
}

impl Shr for MemberGroup {
    type Output = Transition;
    fn shr(self, new: MemberGroup) -> Transition {
        Transition { old: self, new }
    }
}

impl Transition {
    /// Someone joined: not a member before, a member after.
    pub const JOIN: Transition = Transition {
        old: MemberGroup::IS_NOT_MEMBER,
        new: MemberGroup::IS_MEMBER,
    };
    /// Someone left or was removed.
    pub const LEAVE: Transition = Transition {
        old: MemberGroup::IS_MEMBER,
        new: MemberGroup::IS_NOT_MEMBER,
    };
    /// Someone became an administrator: aiogram's `PROMOTED_TRANSITION`,
    /// `(MEMBER | RESTRICTED | LEFT | KICKED) >> ADMINISTRATOR`. Becoming the creator (an
    /// ownership transfer) is not a promotion.
    pub const PROMOTED: Transition = Transition {
        old: MemberGroup(
            MemberGroup::IS_MEMBER.0 & !MemberGroup::IS_ADMIN.0 | MemberGroup::IS_NOT_MEMBER.0,
        ),
        new: MemberGroup(1 << MemberStatus::Administrator as u8),
    };
}

/// Passes `chat_member` / `my_chat_member` updates whose status change matches.
#[derive(Debug, Clone, Copy)]
pub struct ChatMemberUpdated(pub Transition);

impl ChatMemberUpdated {
    /// The filter for `transition`.
    pub fn new(transition: Transition) -> ChatMemberUpdated {
        ChatMemberUpdated(transition)
    }
}

impl Filter for ChatMemberUpdated {
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, super::FilterOutcome> {
        let update = cx.update();
        let kind = update.kind.as_str();
        // Only the two statuses are read (the rest of the body is skipped, not built
        // into a JSON tree).
        let ok = transition(&update.raw, kind)
            .is_some_and(|(old, new)| self.0.old.contains(old) && self.0.new.contains(new));
        Box::pin(std::future::ready(if ok {
            Some(crate::context::Extensions::new())
        } else {
            None
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kind: &str, old: &str, new: &str) -> Vec<u8> {
        format!(
            r#"{{"update_id":1,"{kind}":{{"chat":{{"id":-1,"type":"group"}},"date":0,
            "from":{{"id":2,"is_bot":false,"first_name":"A"}},
            "old_chat_member":{old},"new_chat_member":{new},"extra":[1,{{"x":null}}]}}}}"#
        )
        .into_bytes()
    }

    const USER: &str = r#""user":{"id":2,"is_bot":false,"first_name":"A"}"#;

    #[test]
    fn member_statuses_are_read_from_either_kind() {
        let left = format!(r#"{{"status":"left",{USER}}}"#);
        let member = format!(r#"{{"status":"member",{USER}}}"#);
        for kind in ["chat_member", "my_chat_member"] {
            assert_eq!(
                transition(&body(kind, &left, &member), kind),
                Some((MemberStatus::Left, MemberStatus::Member))
            );
        }
        // The kind asked for is the one read.
        assert_eq!(
            transition(&body("chat_member", &left, &member), "my_chat_member"),
            None
        );
    }

    #[test]
    fn a_restricted_member_is_a_member_only_when_is_member_is_true() {
        let kicked = r#"{"status":"kicked"}"#;
        for (is_member, status) in [
            ("true", MemberStatus::RestrictedMember),
            ("false", MemberStatus::RestrictedNotMember),
            ("\"yes\"", MemberStatus::RestrictedNotMember),
            ("null", MemberStatus::RestrictedNotMember),
        ] {
            let new = format!(r#"{{"status":"restricted","is_member":{is_member}}}"#);
            assert_eq!(
                transition(&body("chat_member", kicked, &new), "chat_member"),
                Some((MemberStatus::Kicked, status)),
                "is_member: {is_member}"
            );
        }
    }

    #[test]
    fn unknown_or_malformed_statuses_match_nothing() {
        let member = r#"{"status":"member"}"#;
        for old in [
            r#"{"status":"owner"}"#,
            r#"{"status":7}"#,
            r#""left""#,
            "null",
            "{}",
        ] {
            assert_eq!(
                transition(&body("chat_member", old, member), "chat_member"),
                None,
                "{old}"
            );
        }
        assert_eq!(transition(b"not json", "chat_member"), None);
        assert_eq!(
            transition(br#"{"update_id":1,"chat_member":[]}"#, "chat_member"),
            None
        );
        assert_eq!(transition(br#"{"update_id":1}"#, "chat_member"), None);
    }
}
