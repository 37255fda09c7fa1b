//! Bot API calls bound to the event a handler got: `message.answer(text)`,
//! `query.answer().text("saved")`, with the bot taken from the update being handled.
//!
//! Each call is a builder: options are methods, and `.await` sends it. Awaiting gives
//! what a handler returns ([`Result`](crate::Result)), so a call can end a handler;
//! `.send().await` gives the Bot API's answer (the sent `Message`) and a typed
//! [`BotError`]. The dispatcher makes the update's bot current while it runs the chain,
//! so a handler needs `Bot` only for calls unrelated to its event. Outside a dispatch
//! (a spawned task), give the bot with `.bot(&bot)`.
//!
//! ```
//! use tgpipe::prelude::*;
//!
//! async fn menu(message: Arc<Message>) -> Result {
//!     let keyboard = InlineKeyboardBuilder::new().button("Yes", "yes").as_markup()?;
//!     message.answer("Sure?").reply_markup(keyboard).await
//! }
//!
//! async fn pressed(query: Arc<CallbackQuery>) -> Result {
//!     query.answer().text("Noted").show_alert().await?;
//!     query.edit_text("You said yes.").await
//! }
//! ```

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;

use frankenstein::types::{
    CallbackQuery, ChatMember, ChatMemberUpdated, ForceReply, InlineKeyboardMarkup,
    MaybeInaccessibleMessage, Message, ReplyKeyboardMarkup, ReplyKeyboardRemove, ReplyMarkup, User,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::bot::{Bot, BotError};
use crate::handler::BoxFuture;

tokio::task_local! {
    /// The bot of the update being dispatched.
    static CURRENT_BOT: Bot;
}

/// Runs `fut` with `bot` as the bot of bound calls.
pub(crate) fn with_bot<F: Future>(bot: Bot, fut: F) -> impl Future<Output = F::Output> {
    CURRENT_BOT.scope(bot, fut)
}

/// The bot of the update being dispatched, if this runs inside a dispatch.
///
/// ```
/// assert!(tgpipe::calls::current_bot().is_none());
/// ```
pub fn current_bot() -> Option<Bot> {
    CURRENT_BOT.try_with(Bot::clone).ok()
}

/// A markup a message can carry: an inline keyboard, a reply keyboard, its removal, or a
/// forced reply.
pub trait IntoReplyMarkup {
    /// The markup as the Bot API's union.
    fn into_reply_markup(self) -> ReplyMarkup;
}

impl IntoReplyMarkup for ReplyMarkup {
    fn into_reply_markup(self) -> ReplyMarkup {
        self
    }
}

impl IntoReplyMarkup for InlineKeyboardMarkup {
    fn into_reply_markup(self) -> ReplyMarkup {
        ReplyMarkup::InlineKeyboardMarkup(self)
    }
}

impl IntoReplyMarkup for ReplyKeyboardMarkup {
    fn into_reply_markup(self) -> ReplyMarkup {
        ReplyMarkup::ReplyKeyboardMarkup(self)
    }
}

impl IntoReplyMarkup for ReplyKeyboardRemove {
    fn into_reply_markup(self) -> ReplyMarkup {
        ReplyMarkup::ReplyKeyboardRemove(self)
    }
}

impl IntoReplyMarkup for ForceReply {
    fn into_reply_markup(self) -> ReplyMarkup {
        ReplyMarkup::ForceReply(self)
    }
}

/// One Bot API call being built: the method, its parameters, and the bot if given.
#[derive(Debug, Clone)]
struct Request {
    method: &'static str,
    params: Value,
    bot: Option<Bot>,
    /// Why the call cannot be made (found while it was built): returned by `.await`.
    refused: Option<String>,
}

impl Request {
    fn new(method: &'static str, params: Value) -> Request {
        Request {
            method,
            params,
            bot: None,
            refused: None,
        }
    }

    fn set(&mut self, name: &str, value: Value) {
        self.params[name] = value;
    }

    fn send<R: DeserializeOwned + Send + 'static>(self) -> BoxFuture<'static, Result<R, BotError>> {
        let bot = self.bot.or_else(current_bot);
        Box::pin(async move {
            if let Some(why) = self.refused {
                return Err(BotError::InvalidRequest(why));
            }
            let Some(bot) = bot else {
                return Err(BotError::InvalidRequest(format!(
                    "`{}` has no bot: it runs outside a dispatch (give one with `.bot(&bot)`)",
                    self.method
                )));
            };
            let answer = bot.call(self.method, &self.params).await?;
            if self.method == "answerCallbackQuery" {
                crate::callback_answer::mark_answered();
            }
            Ok(answer)
        })
    }
}

macro_rules! call_builder {
    ($(#[$meta:meta])* $name:ident -> $out:ty) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        #[must_use = "a call is sent only when awaited"]
        pub struct $name {
            request: Request,
            _out: PhantomData<fn() -> $out>,
        }

        impl $name {
            fn from_request(request: Request) -> $name {
                $name { request, _out: PhantomData }
            }

            /// Sends the call with this bot rather than the update's.
            pub fn bot(mut self, bot: &Bot) -> $name {
                self.request.bot = Some(bot.clone());
                self
            }

            /// The parameters as they will be sent (JSON).
            pub fn params(&self) -> &Value {
                &self.request.params
            }

            /// Sets any parameter the Bot API method takes, by its name.
            pub fn param(mut self, name: &str, value: impl serde::Serialize) -> $name {
                match serde_json::to_value(value) {
                    Ok(v) => self.request.set(name, v),
                    Err(e) => self.request.refused = Some(format!("parameter `{name}`: {e}")),
                }
                self
            }
        }

        impl $name {
            /// Sends the call and gives the Bot API's answer, or its typed error.
            pub fn send(self) -> BoxFuture<'static, Result<$out, BotError>> {
                self.request.send()
            }
        }

        /// Awaiting a call gives what a handler returns, so a call can end a handler;
        /// [`send`](Self::send) gives the Bot API's answer.
        impl IntoFuture for $name {
            type Output = crate::Result;
            type IntoFuture = BoxFuture<'static, crate::Result>;

            fn into_future(self) -> Self::IntoFuture {
                let sent = self.request.send::<$out>();
                Box::pin(async move {
                    sent.await?;
                    Ok(())
                })
            }
        }
    };
}

call_builder! {
    /// `sendMessage`, made by [`MessageCalls::answer`] and [`MessageCalls::reply`].
    SendMessage -> Message
}

call_builder! {
    /// `editMessageText` of a message or an inline message, made by
    /// [`MessageCalls::edit_text`] and [`CallbackQueryCalls::edit_text`].
    EditMessageText -> Value
}

call_builder! {
    /// `answerCallbackQuery`, made by [`CallbackQueryCalls::answer`].
    AnswerCallbackQuery -> bool
}

/// Options of calls that carry a message text.
macro_rules! text_options {
    ($name:ident) => {
        impl $name {
            /// Attaches a keyboard (inline or reply), its removal, or a forced reply.
            pub fn reply_markup(mut self, markup: impl IntoReplyMarkup) -> $name {
                match serde_json::to_value(markup.into_reply_markup()) {
                    Ok(v) => self.request.set("reply_markup", v),
                    Err(e) => self.request.refused = Some(format!("reply markup: {e}")),
                }
                self
            }

            /// Reads the text as `HTML`, `MarkdownV2` or `Markdown`.
            pub fn parse_mode(mut self, mode: frankenstein::ParseMode) -> $name {
                self.request.set("parse_mode", json!(mode));
                self
            }
        }
    };
}

text_options!(SendMessage);
text_options!(EditMessageText);

impl SendMessage {
    /// Sends it without a sound.
    pub fn disable_notification(mut self) -> SendMessage {
        self.request.set("disable_notification", json!(true));
        self
    }

    /// Sends it as a reply to message `message_id` of the same chat.
    pub fn reply_to(mut self, message_id: i32) -> SendMessage {
        self.request
            .set("reply_parameters", json!({ "message_id": message_id }));
        self
    }
}

impl AnswerCallbackQuery {
    /// The notification's text (a toast at the top of the chat).
    pub fn text(mut self, text: impl Into<String>) -> AnswerCallbackQuery {
        self.request.set("text", json!(text.into()));
        self
    }

    /// Shows the text as an alert the user must dismiss, not as a toast.
    pub fn show_alert(mut self) -> AnswerCallbackQuery {
        self.request.set("show_alert", json!(true));
        self
    }

    /// Opens `url` (a game, or `t.me/<bot>?start=...`).
    pub fn url(mut self, url: impl Into<String>) -> AnswerCallbackQuery {
        self.request.set("url", json!(url.into()));
        self
    }

    /// How long clients may cache the answer, in seconds.
    pub fn cache_time(mut self, seconds: u32) -> AnswerCallbackQuery {
        self.request.set("cache_time", json!(seconds));
        self
    }
}

/// `sendMessage` into `chat_id`, in the same forum topic and business connection as
/// `like` when it has them.
pub(crate) fn send_message(chat_id: i64, like: Option<&Message>, text: String) -> SendMessage {
    let mut params = json!({ "chat_id": chat_id, "text": text });
    if let Some(m) = like {
        // Only a topic message has a topic: in an ordinary group the thread id is a reply
        // thread, and an answer belongs in the chat itself.
        if m.is_topic_message == Some(true)
            && let Some(thread) = m.message_thread_id
        {
            params["message_thread_id"] = json!(thread);
        }
        if let Some(bc) = &m.business_connection_id {
            params["business_connection_id"] = json!(bc);
        }
    }
    SendMessage::from_request(Request::new("sendMessage", params))
}

/// Calls and helpers on a received message (aiogram's `message.answer`, `message.reply`).
pub trait MessageCalls {
    /// Sends `text` into the message's chat (and forum topic).
    fn answer(&self, text: impl Into<String>) -> SendMessage;
    /// Sends `text` as a reply to the message.
    fn reply(&self, text: impl Into<String>) -> SendMessage;
    /// Replaces the message's text (a message the bot sent).
    fn edit_text(&self, text: impl Into<String>) -> EditMessageText;
    /// The text, else the caption, else `""`.
    fn text_or_caption(&self) -> &str;
    /// The sender's first name, or `""` when there is no sender (a channel post).
    fn first_name(&self) -> &str;
}

impl MessageCalls for Message {
    fn answer(&self, text: impl Into<String>) -> SendMessage {
        send_message(self.chat.id, Some(self), text.into())
    }

    fn reply(&self, text: impl Into<String>) -> SendMessage {
        self.answer(text).reply_to(self.message_id)
    }

    fn edit_text(&self, text: impl Into<String>) -> EditMessageText {
        EditMessageText::from_request(Request::new(
            "editMessageText",
            json!({ "chat_id": self.chat.id, "message_id": self.message_id, "text": text.into() }),
        ))
    }

    fn text_or_caption(&self) -> &str {
        self.text
            .as_deref()
            .or(self.caption.as_deref())
            .unwrap_or_default()
    }

    fn first_name(&self) -> &str {
        self.from.as_ref().map_or("", |u| u.first_name.as_str())
    }
}

/// The chat and id of the message a button was on, accessible or not.
fn button_message(query: &CallbackQuery) -> Option<(i64, i32)> {
    match query.message.as_ref()? {
        MaybeInaccessibleMessage::Message(m) => Some((m.chat.id, m.message_id)),
        MaybeInaccessibleMessage::InaccessibleMessage(m) => Some((m.chat.id, m.message_id)),
    }
}

/// Calls and helpers on a callback query (aiogram's `query.answer`,
/// `query.message.edit_text`).
pub trait CallbackQueryCalls {
    /// Answers the query (stops the button's spinner); add `.text(..)` for a toast.
    fn answer(&self) -> AnswerCallbackQuery;
    /// Replaces the text of the message the button was on (an inline message too).
    fn edit_text(&self, text: impl Into<String>) -> EditMessageText;
    /// Sends `text` into the chat of the message the button was on.
    fn answer_in_chat(&self, text: impl Into<String>) -> SendMessage;
    /// The message the button was on, when the bot can still read it (aiogram's
    /// `query.message` when it is a `Message`).
    fn accessible_message(&self) -> Option<&Message>;
    /// The chat of the message the button was on (`None` for an inline message).
    fn chat_id(&self) -> Option<i64>;
}

impl CallbackQueryCalls for CallbackQuery {
    fn answer(&self) -> AnswerCallbackQuery {
        AnswerCallbackQuery::from_request(Request::new(
            "answerCallbackQuery",
            json!({ "callback_query_id": self.id }),
        ))
    }

    fn edit_text(&self, text: impl Into<String>) -> EditMessageText {
        let text = text.into();
        let request = match (button_message(self), &self.inline_message_id) {
            (Some((chat, id)), _) => Request::new(
                "editMessageText",
                json!({ "chat_id": chat, "message_id": id, "text": text }),
            ),
            (None, Some(inline)) => Request::new(
                "editMessageText",
                json!({ "inline_message_id": inline, "text": text }),
            ),
            (None, None) => Request {
                refused: Some(
                    "the callback query has neither a message nor an inline message".into(),
                ),
                ..Request::new("editMessageText", json!({ "text": text }))
            },
        };
        EditMessageText::from_request(request)
    }

    fn answer_in_chat(&self, text: impl Into<String>) -> SendMessage {
        match (button_message(self), self.accessible_message()) {
            (Some((chat, _)), like) => send_message(chat, like, text.into()),
            (None, _) => {
                let mut call = send_message(0, None, text.into());
                call.request.refused =
                    Some("the callback query has no message (an inline message's button)".into());
                call
            }
        }
    }

    fn accessible_message(&self) -> Option<&Message> {
        match self.message.as_ref()? {
            MaybeInaccessibleMessage::Message(m) => Some(m),
            MaybeInaccessibleMessage::InaccessibleMessage(_) => None,
        }
    }

    fn chat_id(&self) -> Option<i64> {
        button_message(self).map(|(chat, _)| chat)
    }
}

/// Calls and helpers on a chat member update (aiogram's `event.answer`,
/// `event.new_chat_member.user`).
pub trait ChatMemberUpdatedCalls {
    /// Sends `text` into the chat.
    fn answer(&self, text: impl Into<String>) -> SendMessage;
    /// The user whose membership changed.
    fn member(&self) -> &User;
}

impl ChatMemberUpdatedCalls for ChatMemberUpdated {
    fn answer(&self, text: impl Into<String>) -> SendMessage {
        send_message(self.chat.id, None, text.into())
    }

    fn member(&self) -> &User {
        self.new_chat_member.user()
    }
}

/// The user of any of a chat member's six variants.
pub trait ChatMemberUser {
    /// The member's user.
    fn user(&self) -> &User;
}

impl ChatMemberUser for ChatMember {
    fn user(&self) -> &User {
        match self {
            ChatMember::Creator(m) => &m.user,
            ChatMember::Administrator(m) => &m.user,
            ChatMember::Member(m) => &m.user,
            ChatMember::Restricted(m) => &m.user,
            ChatMember::Left(m) => &m.user,
            ChatMember::Kicked(m) => &m.user,
        }
    }
}
