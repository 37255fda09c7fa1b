//! Content type and chat type filters.

use frankenstein::types::{ChatType, Message};

use super::Filter;
use crate::context::Context;

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContentType {
    /// Text.
    Text,
    /// A photo.
    Photo,
    /// A video.
    Video,
    /// An animation (GIF).
    Animation,
    /// A document.
    Document,
    /// An audio file.
    Audio,
    /// A voice note.
    Voice,
    /// A round video note.
    VideoNote,
    /// A sticker.
    Sticker,
    /// A location.
    Location,
    /// A venue.
    Venue,
    /// A contact.
    Contact,
    /// A poll.
    Poll,
    /// A dice.
    Dice,
    /// New members joined.
    NewChatMembers,
    /// A member left.
    LeftChatMember,
    /// Anything else (service messages, new kinds).
    Other,
}

impl ContentType {
    /// The content type of a message.
    pub fn of(m: &Message) -> ContentType {
        if m.text.is_some() {
            ContentType::Text
        } else if m.photo.is_some() {
            ContentType::Photo
        } else if m.animation.is_some() {
            ContentType::Animation
        } else if m.video.is_some() {
            ContentType::Video
        } else if m.document.is_some() {
            ContentType::Document
        } else if m.audio.is_some() {
            ContentType::Audio
        } else if m.voice.is_some() {
            ContentType::Voice
        } else if m.video_note.is_some() {
            ContentType::VideoNote
        } else if m.sticker.is_some() {
            ContentType::Sticker
        } else if m.venue.is_some() {
            ContentType::Venue
        } else if m.location.is_some() {
            ContentType::Location
        } else if m.contact.is_some() {
            ContentType::Contact
        } else if m.poll.is_some() {
            ContentType::Poll
        } else if m.dice.is_some() {
            ContentType::Dice
        } else if m.new_chat_members.is_some() {
            ContentType::NewChatMembers
        } else if m.left_chat_member.is_some() {
            ContentType::LeftChatMember
        } else {
            ContentType::Other
        }
    }
}

/// Passes messages of any of these content types.
pub fn content_type(types: &[ContentType]) -> impl Filter {
    let types = types.to_vec();
    move |cx: &Context| {
        cx.event()
            .message()
            .is_some_and(|m| types.contains(&ContentType::of(m)))
    }
}

/// Passes updates whose chat is of any of these types (`message`-like events and
/// callback queries with their message). A chat type Telegram sent that the typed model
/// does not know (repaired, see [`crate::update`]) matches none.
pub fn chat_type(types: &[ChatType]) -> impl Filter {
    let types = types.to_vec();
    move |cx: &Context| {
        let update = cx.update();
        let path = match cx.event() {
            crate::Event::CallbackQuery(_) => "callback_query.message.chat.type".to_owned(),
            _ => format!("{}.chat.type", update.kind),
        };
        if update.was_repaired(&path) {
            return false;
        }
        let chat = match cx.event() {
            crate::Event::CallbackQuery(q) => match q.message.as_ref() {
                Some(frankenstein::types::MaybeInaccessibleMessage::Message(m)) => {
                    Some(m.chat.type_field)
                }
                Some(frankenstein::types::MaybeInaccessibleMessage::InaccessibleMessage(m)) => {
                    Some(m.chat.type_field)
                }
                None => None,
            },
            e => e.message().map(|m| m.chat.type_field),
        };
        chat.is_some_and(|t| types.contains(&t))
    }
}
