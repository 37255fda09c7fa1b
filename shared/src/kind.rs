//! Update kinds: the field name that says what an `Update` carries.
//!
//! Telegram sends every update as `{"update_id": N, "<kind>": {...}}`. The kind is
//! the NATS subject token, the `Tg-Update-Type` header and the dispatcher's observer
//! key, so it lives here in the wire contract. Bot API 10.3 has 27 kinds; a field we
//! do not know yet is carried as [`UpdateKind::Unknown`] under its own name, never
//! dropped, so a bot keeps working when Telegram adds a kind before we do.

use std::fmt;
use std::str::FromStr;

macro_rules! update_kinds {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)+) => {
        /// What an update carries: one variant per Bot API 10.3 `Update` field, plus
        /// [`UpdateKind::Unknown`] for fields this version does not know.
        ///
        /// ```
        /// use tgpipe_shared::UpdateKind;
        ///
        /// assert_eq!(UpdateKind::from_field("callback_query"), UpdateKind::CallbackQuery);
        /// assert_eq!(UpdateKind::CallbackQuery.as_str(), "callback_query");
        /// let future = UpdateKind::from_field("hologram");
        /// assert_eq!(future.as_str(), "hologram");
        /// assert!(!future.is_known());
        /// ```
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum UpdateKind {
            $($(#[$doc])* $variant,)+
            /// A field name this version does not know (already made subject-safe, see
            /// [`UpdateKind::from_field`]).
            Unknown(String),
        }

        impl UpdateKind {
            /// Every kind of Bot API 10.3, in the order of the `Update` object's fields.
            pub const ALL: &'static [UpdateKind] = &[$(UpdateKind::$variant,)+];

            /// The kind for a known field name, or `None`.
            pub fn known(field: &str) -> Option<UpdateKind> {
                match field {
                    $($name => Some(UpdateKind::$variant),)+
                    _ => None,
                }
            }

            /// The field name, which is also the subject token and header value.
            pub fn as_str(&self) -> &str {
                match self {
                    $(UpdateKind::$variant => $name,)+
                    UpdateKind::Unknown(name) => name,
                }
            }
        }
    };
}

update_kinds! {
    /// `message`: a new incoming message of any kind.
    Message => "message",
    /// `edited_message`: a new version of a known message.
    EditedMessage => "edited_message",
    /// `channel_post`: a new channel post.
    ChannelPost => "channel_post",
    /// `edited_channel_post`: a new version of a channel post.
    EditedChannelPost => "edited_channel_post",
    /// `business_connection`: the bot was connected to or disconnected from a business account.
    BusinessConnection => "business_connection",
    /// `business_message`: a message from a connected business account.
    BusinessMessage => "business_message",
    /// `edited_business_message`: a new version of a business message.
    EditedBusinessMessage => "edited_business_message",
    /// `deleted_business_messages`: messages deleted from a business account.
    DeletedBusinessMessages => "deleted_business_messages",
    /// `message_reaction`: a user changed a reaction on a message.
    MessageReaction => "message_reaction",
    /// `message_reaction_count`: anonymous reaction counts changed.
    MessageReactionCount => "message_reaction_count",
    /// `inline_query`: an incoming inline query.
    InlineQuery => "inline_query",
    /// `chosen_inline_result`: a user chose an inline result.
    ChosenInlineResult => "chosen_inline_result",
    /// `callback_query`: an incoming callback query (an inline keyboard button press).
    CallbackQuery => "callback_query",
    /// `shipping_query`: an incoming shipping query (flexible-price invoices).
    ShippingQuery => "shipping_query",
    /// `pre_checkout_query`: an incoming pre-checkout query.
    PreCheckoutQuery => "pre_checkout_query",
    /// `purchased_paid_media`: a user purchased paid media.
    PurchasedPaidMedia => "purchased_paid_media",
    /// `poll`: new poll state.
    Poll => "poll",
    /// `poll_answer`: a user changed their answer in a non-anonymous poll.
    PollAnswer => "poll_answer",
    /// `my_chat_member`: the bot's own member status changed in a chat.
    MyChatMember => "my_chat_member",
    /// `chat_member`: a member's status changed in a chat.
    ChatMember => "chat_member",
    /// `chat_join_request`: a request to join a chat.
    ChatJoinRequest => "chat_join_request",
    /// `chat_boost`: a chat boost was added or changed.
    ChatBoost => "chat_boost",
    /// `removed_chat_boost`: a boost was removed from a chat.
    RemovedChatBoost => "removed_chat_boost",
    /// `managed_bot`: a bot managed by this bot changed.
    ManagedBot => "managed_bot",
    /// `guest_message`: a message from a guest in a chat the bot serves.
    GuestMessage => "guest_message",
    /// `stopped_message_generation`: a user stopped a streamed (draft) answer.
    StoppedMessageGeneration => "stopped_message_generation",
    /// `subscription`: a user's paid subscription changed state.
    Subscription => "subscription",
}

/// Subject token used for an update that carries no field besides `update_id`.
pub const NO_KIND: &str = "_none";
/// Subject token used for a field name that cannot be a NATS subject token
/// (empty, too long, or with characters outside `[A-Za-z0-9_-]`).
pub const INVALID_KIND: &str = "_invalid";
/// Longest field name carried under its own name.
pub const MAX_KIND_LEN: usize = 64;

impl UpdateKind {
    /// The kind for an `Update` field name. Known names map to their variant; other
    /// names that are safe as a NATS subject token (`[A-Za-z0-9_-]`, 1 to 64 bytes) are
    /// carried as [`UpdateKind::Unknown`] with that name; anything else (a hostile name
    /// such as `"a.b"`, `"*"` or one with spaces) becomes `Unknown("_invalid")`, so it is
    /// still carried, under a token that cannot break subject routing.
    pub fn from_field(field: &str) -> UpdateKind {
        if let Some(kind) = UpdateKind::known(field) {
            return kind;
        }
        if is_subject_token(field) {
            UpdateKind::Unknown(field.to_owned())
        } else {
            UpdateKind::Unknown(INVALID_KIND.to_owned())
        }
    }

    /// Whether this is one of the Bot API 10.3 kinds.
    pub fn is_known(&self) -> bool {
        !matches!(self, UpdateKind::Unknown(_))
    }
}

/// Whether `s` can be used as one NATS subject token by tgpipe: 1 to 64 bytes of
/// `[A-Za-z0-9_-]` (stricter than NATS itself, which also allows most punctuation).
pub fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_KIND_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for UpdateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error from parsing a configured list of kinds (for example a lane's `TGPIPE_LANE_KINDS`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a Bot API update kind (expected one of: message, callback_query, ...)")]
pub struct UnknownKindError(pub String);

impl FromStr for UpdateKind {
    type Err = UnknownKindError;

    /// Strict parsing for configuration: only the 27 known kinds are accepted, so a
    /// typo in a lane's kind list fails at start-up instead of matching nothing.
    /// Use [`UpdateKind::from_field`] for data that came over the wire.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UpdateKind::known(s.trim()).ok_or_else(|| UnknownKindError(s.trim().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_27_known_kinds_with_distinct_names() {
        assert_eq!(UpdateKind::ALL.len(), 27);
        let mut names: Vec<&str> = UpdateKind::ALL.iter().map(UpdateKind::as_str).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 27);
        for kind in UpdateKind::ALL {
            assert_eq!(&UpdateKind::from_field(kind.as_str()), kind);
            assert!(is_subject_token(kind.as_str()));
        }
    }

    #[test]
    fn unknown_fields_are_carried_under_their_own_name() {
        assert_eq!(
            UpdateKind::from_field("key"),
            UpdateKind::Unknown("key".into())
        );
        assert_eq!(
            UpdateKind::from_field("new-kind_2"),
            UpdateKind::Unknown("new-kind_2".into())
        );
    }

    #[test]
    fn hostile_field_names_cannot_break_subjects() {
        for hostile in ["", "a.b", "*", ">", "a b", "tg.\n", "ü", &"x".repeat(65)] {
            assert_eq!(
                UpdateKind::from_field(hostile).as_str(),
                INVALID_KIND,
                "{hostile:?}"
            );
        }
    }

    #[test]
    fn config_parsing_is_strict() {
        assert_eq!(" message ".parse::<UpdateKind>(), Ok(UpdateKind::Message));
        assert!("mesage".parse::<UpdateKind>().is_err());
    }
}
