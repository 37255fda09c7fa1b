//! Albums: the messages Telegram sends as one media group, handled in one call.
//!
//! A handler registered with [`Router::media_group`](crate::Router::media_group) takes
//! an [`Album`]: every part, in album order. The runtime collects the parts (see
//! `docs/framework.md`, "Albums"); [`Dispatcher::feed_album`](crate::Dispatcher::feed_album)
//! dispatches them.

use std::sync::Arc;

use frankenstein::types::Message;

use crate::context::Context;
use crate::extract::{ExtractError, FromContext, Requirement};
use crate::update::{Event, Update};

/// The parts of one album (one `media_group_id`), sorted by `message_id`: a
/// [`Router::media_group`](crate::Router::media_group) handler's argument.
///
/// Cloning it costs a few reference counts.
///
/// ```
/// use tgpipe::prelude::*;
///
/// async fn album(album: Album, message: Arc<Message>) -> Result {
///     // `message` is the album's first part.
///     message.answer(format!("album of {} parts", album.len())).await
/// }
///
/// let mut router = Router::new("main");
/// router.media_group(album);
/// ```
#[derive(Debug, Clone)]
pub struct Album {
    media_group_id: Arc<str>,
    messages: Arc<[Arc<Message>]>,
    updates: Arc<[Arc<Update>]>,
}

impl Album {
    /// The album of `parts`, sorted by `message_id` (stable); `None` when a part is not a
    /// message of an album, or the parts are of different albums.
    pub fn new(parts: Vec<Update>) -> Option<Album> {
        let mut parts: Vec<(Arc<Message>, Arc<Update>)> = parts
            .into_iter()
            .map(|u| Some((Arc::clone(message_of(&u)?), Arc::new(u))))
            .collect::<Option<_>>()?;
        parts.sort_by_key(|(m, _)| m.message_id);
        let id = parts.first()?.0.media_group_id.clone()?;
        if parts
            .iter()
            .any(|(m, _)| m.media_group_id.as_deref() != Some(&id))
        {
            return None;
        }
        let (messages, updates): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
        Some(Album {
            media_group_id: id.into(),
            messages: messages.into(),
            updates: updates.into(),
        })
    }

    /// The album's `media_group_id`.
    pub fn media_group_id(&self) -> &str {
        &self.media_group_id
    }

    /// Its messages in album order (by `message_id`).
    pub fn messages(&self) -> &[Arc<Message>] {
        &self.messages
    }

    /// Their updates, in the same order.
    pub fn updates(&self) -> &[Arc<Update>] {
        &self.updates
    }

    /// The number of parts (1 to 10).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the album has no part (never, for one a handler gets).
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The messages, in album order.
    pub fn iter(&self) -> std::slice::Iter<'_, Arc<Message>> {
        self.messages.iter()
    }

    /// The first part's update: the one the album's context carries.
    pub(crate) fn first(&self) -> Arc<Update> {
        Arc::clone(&self.updates[0])
    }
}

impl<'a> IntoIterator for &'a Album {
    type Item = &'a Arc<Message>;
    type IntoIter = std::slice::Iter<'a, Arc<Message>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The message of an update of a kind albums come in.
fn message_of(update: &Update) -> Option<&Arc<Message>> {
    match &update.event {
        Event::Message(m) | Event::ChannelPost(m) | Event::BusinessMessage(m) => Some(m),
        _ => None,
    }
}

/// Only a `media_group` handler gets an album: taking one elsewhere fails when the
/// dispatcher is built (take `Option<Album>` in a handler that may get either).
impl FromContext for Album {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        cx.get::<Album>()
            .cloned()
            .ok_or(ExtractError::Missing(std::any::type_name::<Album>()))
    }

    fn requirement() -> Option<Requirement> {
        Some(Requirement::of::<Album>())
    }
}
