//! Which FSM record an update belongs to: [`FsmKey`], built by a [`KeyStrategy`].
//!
//! aiogram's strategies, with its conventions: `Chat` keys the whole chat (the chat id
//! stands in for the user), `GlobalUser` keys the user everywhere (the user id stands in
//! for the chat), the topic strategies add the forum thread.

use std::fmt;

use frankenstein::types::MaybeInaccessibleMessage;

use crate::update::{Event, Update};

/// The identity of one FSM record: one state and one data document.
///
/// Its Redis form is the hash tag `{<bot>:<chat>:<user>[:<thread>]}` (see
/// [`FsmKey::hash_tag`]), which keeps the state, the data and the lock of one key in one
/// Redis Cluster slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FsmKey {
    /// The bot.
    pub bot_id: u64,
    /// The chat (the user's id under [`KeyStrategy::GlobalUser`]).
    pub chat_id: i64,
    /// The user (the chat's id under [`KeyStrategy::Chat`] and [`KeyStrategy::ChatTopic`]).
    pub user_id: i64,
    /// The forum topic, under the topic strategies when the update has one.
    pub thread_id: Option<i64>,
    /// The business connection the update came through: a business account's chats are
    /// apart from the bot's own chat with the same user.
    pub business_connection_id: Option<String>,
    /// A second record beside the main one for the same key (scene history uses
    /// `scenes`); `None` for the FSM itself.
    pub destiny: Option<&'static str>,
}

impl FsmKey {
    /// A key for `user_id` in `chat_id` of bot `bot_id`.
    pub fn new(bot_id: u64, chat_id: i64, user_id: i64) -> FsmKey {
        FsmKey {
            bot_id,
            chat_id,
            user_id,
            thread_id: None,
            business_connection_id: None,
            destiny: None,
        }
    }

    /// The same key in a forum topic.
    pub fn with_thread(mut self, thread_id: i64) -> FsmKey {
        self.thread_id = Some(thread_id);
        self
    }

    /// The same key through a business connection.
    pub fn with_business_connection(mut self, id: impl Into<String>) -> FsmKey {
        self.business_connection_id = Some(id.into());
        self
    }

    /// The side record `destiny` of the same key (same hash tag, same lock).
    pub fn with_destiny(mut self, destiny: &'static str) -> FsmKey {
        self.destiny = Some(destiny);
        self
    }

    /// `{<bot>:<chat>:<user>[:<thread>]}`, with `:biz:<id>` before the closing brace
    /// for business connections.
    ///
    /// ```
    /// use tgpipe::fsm::FsmKey;
    ///
    /// assert_eq!(FsmKey::new(1, -100, 7).hash_tag(), "{1:-100:7}");
    /// assert_eq!(FsmKey::new(1, -100, 7).with_thread(3).hash_tag(), "{1:-100:7:3}");
    /// ```
    pub fn hash_tag(&self) -> String {
        use fmt::Write;
        let mut s = format!("{{{}:{}:{}", self.bot_id, self.chat_id, self.user_id);
        if let Some(t) = self.thread_id {
            let _ = write!(s, ":{t}");
        }
        if let Some(b) = &self.business_connection_id {
            let _ = write!(s, ":biz:{b}");
        }
        s.push('}');
        s
    }
}

impl fmt::Display for FsmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hash_tag())?;
        if let Some(d) = self.destiny {
            write!(f, ":{d}")?;
        }
        Ok(())
    }
}

/// How an update maps onto an [`FsmKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyStrategy {
    /// One record per user per chat (aiogram's default).
    #[default]
    UserInChat,
    /// One record per chat, shared by its members.
    Chat,
    /// One record per user, in every chat.
    GlobalUser,
    /// One record per user per forum topic.
    UserInTopic,
    /// One record per forum topic, shared by its members.
    ChatTopic,
}

impl KeyStrategy {
    /// Whether every update of a key is in one chat (so in one partition of a lane):
    /// everything but [`KeyStrategy::GlobalUser`].
    pub fn within_one_chat(self) -> bool {
        !matches!(self, KeyStrategy::GlobalUser)
    }

    /// The key of `update`, or `None` when it has neither a chat nor a user (polls,
    /// unknown kinds).
    ///
    /// As in aiogram, an update with a user and no chat (an inline query, a shipping
    /// query) is keyed as the user's private chat, under every strategy; and the topic
    /// strategies add the thread only for a topic message (`is_topic_message`), since in
    /// an ordinary supergroup a thread id is a reply thread.
    pub fn key(self, update: &Update) -> Option<FsmKey> {
        let bot = update.bot.0;
        let user = update.user_id;
        let chat = update.chat_id.or(user)?;
        let (chat, user) = match self {
            KeyStrategy::UserInChat | KeyStrategy::UserInTopic => (chat, user?),
            KeyStrategy::Chat | KeyStrategy::ChatTopic => (chat, chat),
            KeyStrategy::GlobalUser => (user?, user?),
        };
        let mut key = FsmKey::new(bot, chat, user);
        if matches!(self, KeyStrategy::UserInTopic | KeyStrategy::ChatTopic) {
            key.thread_id = topic_thread(update);
        }
        if self != KeyStrategy::GlobalUser {
            key.business_connection_id = update
                .event
                .message()
                .and_then(|m| m.business_connection_id.clone());
        }
        Some(key)
    }
}

/// The forum topic of an update: its thread, when its message (or the message of its
/// button) is a topic message.
fn topic_thread(update: &Update) -> Option<i64> {
    let message = match &update.event {
        Event::CallbackQuery(q) => match q.message.as_ref()? {
            MaybeInaccessibleMessage::Message(m) => m,
            MaybeInaccessibleMessage::InaccessibleMessage(_) => return None,
        },
        event => event.message()?,
    };
    match message.is_topic_message {
        Some(true) => update.thread_id,
        _ => None,
    }
}

impl fmt::Display for KeyStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyStrategy::UserInChat => "user-in-chat",
            KeyStrategy::Chat => "chat",
            KeyStrategy::GlobalUser => "global-user",
            KeyStrategy::UserInTopic => "user-in-topic",
            KeyStrategy::ChatTopic => "chat-topic",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_and_displays() {
        let k = FsmKey::new(1, -5, 7);
        assert_eq!(k.hash_tag(), "{1:-5:7}");
        let k = k.with_thread(3).with_business_connection("bc");
        assert_eq!(k.hash_tag(), "{1:-5:7:3:biz:bc}");
        assert_eq!(
            k.with_destiny("scenes").to_string(),
            "{1:-5:7:3:biz:bc}:scenes"
        );
    }
}
