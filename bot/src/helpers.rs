//! Shortcuts handlers use all the time: `answer` / `reply` on a message, `answer` on a
//! callback query, a chat action kept alive while work goes on, and a media group
//! builder.
//!
//! ```no_run
//! # async fn demo(bot: tgpipe_bot::Bot, msg: frankenstein::types::Message) -> Result<(), tgpipe_bot::BotError> {
//! use tgpipe_bot::{ChatActionSender, InputFile, MediaGroup, MessageExt};
//!
//! let typing = ChatActionSender::typing(&bot, msg.chat.id);
//! // ... something slow ...
//! typing.stop();
//! msg.reply(&bot, "done").await?;
//! MediaGroup::new()
//!     .photo(InputFile::path("a.jpg"), Some("first"))
//!     .photo(InputFile::file_id("AgACAgIAAxkB"), None)
//!     .send(&bot, msg.chat.id)
//!     .await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use frankenstein::types::{CallbackQuery, MaybeInaccessibleMessage, Message};
use serde_json::{Value, json};

use super::{Bot, BotError, InputFile};

/// Shortcuts on a received message.
#[async_trait::async_trait]
pub trait MessageExt {
    /// Sends `text` into the message's chat (and forum topic).
    async fn answer(&self, bot: &Bot, text: &str) -> Result<Message, BotError>;
    /// Sends `text` as a reply to the message.
    async fn reply(&self, bot: &Bot, text: &str) -> Result<Message, BotError>;
}

fn in_same_place(msg: &Message, text: &str) -> Value {
    let mut params = json!({"chat_id": msg.chat.id, "text": text});
    if msg.is_topic_message == Some(true)
        && let Some(thread) = msg.message_thread_id
    {
        params["message_thread_id"] = json!(thread);
    }
    params
}

#[async_trait::async_trait]
impl MessageExt for Message {
    async fn answer(&self, bot: &Bot, text: &str) -> Result<Message, BotError> {
        bot.call("sendMessage", &in_same_place(self, text)).await
    }

    async fn reply(&self, bot: &Bot, text: &str) -> Result<Message, BotError> {
        let mut params = in_same_place(self, text);
        params["reply_parameters"] = json!({"message_id": self.message_id});
        bot.call("sendMessage", &params).await
    }
}

/// Shortcuts on a callback query.
#[async_trait::async_trait]
pub trait CallbackQueryExt {
    /// Answers the query without a notification (stops the button's spinner).
    async fn answer(&self, bot: &Bot) -> Result<(), BotError>;
    /// Answers with a notification (`show_alert`: a dialog instead of a toast).
    async fn answer_text(&self, bot: &Bot, text: &str, show_alert: bool) -> Result<(), BotError>;
    /// Sends `text` into the chat of the message the button was on.
    async fn answer_in_chat(&self, bot: &Bot, text: &str) -> Result<Message, BotError>;
}

#[async_trait::async_trait]
impl CallbackQueryExt for CallbackQuery {
    async fn answer(&self, bot: &Bot) -> Result<(), BotError> {
        bot.call::<_, bool>(
            "answerCallbackQuery",
            &json!({"callback_query_id": self.id}),
        )
        .await
        .map(drop)
    }

    async fn answer_text(&self, bot: &Bot, text: &str, show_alert: bool) -> Result<(), BotError> {
        bot.call::<_, bool>(
            "answerCallbackQuery",
            &json!({"callback_query_id": self.id, "text": text, "show_alert": show_alert}),
        )
        .await
        .map(drop)
    }

    async fn answer_in_chat(&self, bot: &Bot, text: &str) -> Result<Message, BotError> {
        let chat = match &self.message {
            Some(MaybeInaccessibleMessage::Message(m)) => m.chat.id,
            Some(MaybeInaccessibleMessage::InaccessibleMessage(m)) => m.chat.id,
            None => {
                return Err(BotError::InvalidRequest(
                    "the callback query has no message (an inline message's button)".into(),
                ));
            }
        };
        bot.send_text(chat, text).await
    }
}

/// Keeps a chat action ("typing…", "uploading photo…") showing while work goes on.
///
/// Telegram shows an action for 5 seconds or until the bot's next message, so it is sent
/// again every 4.5 seconds until the sender is stopped or dropped. Failures to send it
/// are ignored (it is cosmetic) and logged at `debug`.
#[derive(Debug)]
pub struct ChatActionSender {
    task: tokio::task::JoinHandle<()>,
}

impl ChatActionSender {
    /// Telegram keeps an action visible for 5 s; resend a little before it fades.
    pub const INTERVAL: Duration = Duration::from_millis(4500);

    /// Starts sending `action` (`typing`, `upload_photo`, `record_voice`, ...) to a
    /// chat now and every [`ChatActionSender::INTERVAL`].
    pub fn start(bot: &Bot, chat_id: i64, action: &str) -> ChatActionSender {
        ChatActionSender::with_interval(bot, chat_id, action, ChatActionSender::INTERVAL)
    }

    /// "typing…".
    pub fn typing(bot: &Bot, chat_id: i64) -> ChatActionSender {
        ChatActionSender::start(bot, chat_id, "typing")
    }

    /// Like [`ChatActionSender::start`] with another interval.
    pub fn with_interval(
        bot: &Bot,
        chat_id: i64,
        action: &str,
        interval: Duration,
    ) -> ChatActionSender {
        let bot = bot.clone();
        let params = json!({"chat_id": chat_id, "action": action});
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(e) = bot.call::<_, bool>("sendChatAction", &params).await {
                    tracing::debug!(error = %e, "chat action not sent");
                }
            }
        });
        ChatActionSender { task }
    }

    /// Stops sending (the same as dropping it).
    pub fn stop(self) {}
}

impl Drop for ChatActionSender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Builds a `sendMediaGroup` call: 2 to 10 photos, videos, documents or audios, each a
/// file to upload (sent as `attach://` parts) or one Telegram has (URL, `file_id`).
#[derive(Debug, Default, Clone)]
pub struct MediaGroup {
    media: Vec<Value>,
    files: Vec<(String, InputFile)>,
}

impl MediaGroup {
    /// An empty group.
    pub fn new() -> MediaGroup {
        MediaGroup::default()
    }

    /// Adds an item of `kind` (`photo`, `video`, `document`, `audio`).
    pub fn item(mut self, kind: &str, file: InputFile, caption: Option<&str>) -> MediaGroup {
        let media = match file.as_reference() {
            Some(r) => r.to_owned(),
            None => {
                let name = format!("file{}", self.files.len());
                let reference = format!("attach://{name}");
                self.files.push((name, file));
                reference
            }
        };
        let mut item = json!({"type": kind, "media": media});
        if let Some(c) = caption {
            item["caption"] = json!(c);
        }
        self.media.push(item);
        self
    }

    /// Adds a photo.
    pub fn photo(self, file: InputFile, caption: Option<&str>) -> MediaGroup {
        self.item("photo", file, caption)
    }

    /// Adds a video.
    pub fn video(self, file: InputFile, caption: Option<&str>) -> MediaGroup {
        self.item("video", file, caption)
    }

    /// Adds a document.
    pub fn document(self, file: InputFile, caption: Option<&str>) -> MediaGroup {
        self.item("document", file, caption)
    }

    /// Adds an audio.
    pub fn audio(self, file: InputFile, caption: Option<&str>) -> MediaGroup {
        self.item("audio", file, caption)
    }

    /// How many items it has.
    pub fn len(&self) -> usize {
        self.media.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.media.is_empty()
    }

    /// The `media` parameter and the files to upload with it.
    pub fn into_parts(self) -> (Value, Vec<(String, InputFile)>) {
        (Value::Array(self.media), self.files)
    }

    /// Sends the group to a chat.
    pub async fn send(self, bot: &Bot, chat_id: i64) -> Result<Vec<Message>, BotError> {
        if !(2..=10).contains(&self.len()) {
            return Err(BotError::InvalidRequest(format!(
                "a media group has 2 to 10 items, not {}",
                self.len()
            )));
        }
        let (media, files) = self.into_parts();
        bot.call_with_files(
            "sendMediaGroup",
            &json!({"chat_id": chat_id, "media": media}),
            files,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_attached_and_references_inline() {
        let g = MediaGroup::new()
            .photo(InputFile::bytes("a.jpg", vec![1]), Some("a"))
            .video(InputFile::url("https://example.com/v.mp4"), None);
        let (media, files) = g.into_parts();
        assert_eq!(
            media,
            json!([
                {"type": "photo", "media": "attach://file0", "caption": "a"},
                {"type": "video", "media": "https://example.com/v.mp4"}
            ])
        );
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "file0");
    }
}
