//! Member status transitions of `chat_member` and `my_chat_member` updates, as in
//! aiogram: `ChatMemberUpdated::new(MemberGroup::IS_NOT_MEMBER >> MemberGroup::IS_MEMBER)`.
//!
//! The statuses are read from the update's JSON (`old_chat_member.status`,
//! `new_chat_member.status`, and `is_member` of a restricted member), so the filter does
//! not depend on how a typed model spells them.

use std::ops::{BitOr, Shr};

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

    fn from_json(m: &serde_json::Value) -> Option<MemberStatus> {
        Some(match m.get("status")?.as_str()? {
            "creator" => MemberStatus::Creator,
            "administrator" => MemberStatus::Administrator,
            "member" => MemberStatus::Member,
            "restricted"
                if m.get("is_member")
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
    /// Someone became an administrator.
    pub const PROMOTED: Transition = Transition {
        old: MemberGroup(
            MemberGroup::IS_MEMBER.0 & !MemberGroup::IS_ADMIN.0 | MemberGroup::IS_NOT_MEMBER.0,
        ),
        new: MemberGroup::IS_ADMIN,
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
        let ok = (kind == "chat_member" || kind == "my_chat_member")
            && serde_json::from_slice::<serde_json::Value>(&update.raw).ok().is_some_and(|v| {
                let payload = &v[kind];
                let old = MemberStatus::from_json(&payload["old_chat_member"]);
                let new = MemberStatus::from_json(&payload["new_chat_member"]);
                matches!((old, new), (Some(o), Some(n)) if self.0.old.contains(o) && self.0.new.contains(n))
            });
        Box::pin(std::future::ready(if ok {
            Some(crate::context::Extensions::new())
        } else {
            None
        }))
    }
}
