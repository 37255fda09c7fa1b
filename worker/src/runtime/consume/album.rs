//! Album collection: a chat's task gathers the parts of one media group before its
//! album handler runs.
//!
//! Only for a dispatcher with a `media_group` handler, and `TGPIPE_ALBUM_QUIET` above 0.
//! When a chat's next update is a part of an album, the task takes the chat's following
//! updates of the same album; the album is complete after the quiet time without a new
//! part, when the chat's next update is not a part (it runs after the album), or at 10
//! parts. The parts stay unacknowledged (in-progress acks) until the album is settled,
//! and settle together.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use serde::Deserialize;
use tgpipe_shared::UpdateKind;

use super::schedule::Next;
use super::{Job, OrderKey, Pod, metrics};

/// The most parts Telegram puts in one album.
pub(super) const MAX_PARTS: usize = 10;

/// What makes updates parts of one album: their kind and `media_group_id`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct MediaGroup {
    kind: UpdateKind,
    id: String,
}

fn update_id(job: &Job) -> Option<i64> {
    job.env.as_ref().ok().map(|env| env.update_id)
}

/// The album `job` is a part of, if it is one (see [`media_group_in`]).
pub(super) fn media_group_of(job: &Job) -> Option<MediaGroup> {
    let env = job.env.as_ref().ok()?;
    media_group_in(&env.kind, job.src.payload())
}

/// The album an update of `kind` with this body is a part of: a message, channel post
/// or business message whose body names a `media_group_id`. Other bodies cost one byte
/// search; only a body that names one is parsed.
fn media_group_in(kind: &UpdateKind, body: &[u8]) -> Option<MediaGroup> {
    if !matches!(
        kind,
        UpdateKind::Message | UpdateKind::ChannelPost | UpdateKind::BusinessMessage
    ) {
        return None;
    }
    const NEEDLE: &[u8] = b"\"media_group_id\"";
    if !body.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
        return None;
    }
    #[derive(Deserialize)]
    struct Part<'a> {
        #[serde(borrow)]
        media_group_id: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        message: Option<Part<'a>>,
        #[serde(borrow)]
        channel_post: Option<Part<'a>>,
        #[serde(borrow)]
        business_message: Option<Part<'a>>,
    }
    let parsed: Body<'_> = serde_json::from_slice(body).ok()?;
    let part = match kind {
        UpdateKind::Message => parsed.message,
        UpdateKind::ChannelPost => parsed.channel_post,
        _ => parsed.business_message,
    };
    Some(MediaGroup {
        kind: kind.clone(),
        id: part?.media_group_id?.into_owned(),
    })
}

impl Pod {
    /// Collects the album `first` begins: the chat's following updates of the same
    /// album join it (as `first.album`). Returns the album and the chat's next update
    /// when it was taken and is not a part (it runs after the album).
    pub(super) async fn collect_album(
        &self,
        key: OrderKey,
        mut first: Job,
        group: MediaGroup,
    ) -> (Job, Option<Job>) {
        let quiet = self.me.acks.album_quiet;
        let every = (self.me.acks.ack_wait / 3).max(Duration::from_millis(100));
        let wake = self.scheduler.watch(key);
        let mut parts: Vec<Job> = Vec::new();
        // Distinct parts: a copy of one delivered again settles with the album, once.
        let mut ids = vec![update_id(&first)];
        tracing::debug!(media_group_id = %group.id, chat = key.1, "collecting an album");
        metrics::album_part_collected();
        let mut quiet_until = tokio::time::Instant::now() + quiet;
        let mut progress_at = tokio::time::Instant::now() + every;
        let mut after = None;
        while ids.len() < MAX_PARTS && !first.part.stopped() {
            let next = match self.scheduler.take(key) {
                Some(Next::Job(job)) => Some(job),
                Some(Next::Parked(parked)) => match self.unpark(parked).await {
                    Some(job) => Some(job),
                    // Its partition stopped: the loop ends.
                    None => continue,
                },
                Some(Next::Done) | None => None,
            };
            if let Some(job) = next {
                if Arc::ptr_eq(&job.part, &first.part)
                    && media_group_of(&job).as_ref() == Some(&group)
                {
                    let id = update_id(&job);
                    parts.push(job);
                    if !ids.contains(&id) {
                        ids.push(id);
                        metrics::album_part_collected();
                        quiet_until = tokio::time::Instant::now() + quiet;
                    }
                    continue;
                }
                after = Some(job);
                break;
            }
            tokio::select! {
                biased;
                () = first.part.own.released() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep_until(quiet_until) => break,
                // The parts taken out of the queue are no longer in the pod's
                // in-progress acks: they get their own.
                () = tokio::time::sleep_until(progress_at) => {
                    self.progress(std::iter::once(&first).chain(&parts)).await;
                    progress_at += every;
                }
            }
        }
        self.scheduler.unwatch(key);
        first.album = Some(parts);
        (first, after)
    }

    /// An in-progress ack for each of `jobs` that was delivered.
    pub(super) async fn progress(&self, jobs: impl Iterator<Item = &Job>) {
        for reply in jobs.filter_map(|j| j.src.reply()) {
            if let Err(e) = self
                .me
                .client
                .publish(reply.clone(), AckKind::Progress.into())
                .await
            {
                tracing::debug!(error = %e, "in-progress ack");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(kind: UpdateKind, id: &str) -> Option<MediaGroup> {
        Some(MediaGroup {
            kind,
            id: id.to_owned(),
        })
    }

    #[test]
    fn the_parts_of_albums_are_found_by_their_kind_and_media_group_id() {
        let photo =
            br#"{"update_id":1,"message":{"message_id":1,"media_group_id":"g\u00e9","photo":[]}}"#;
        assert_eq!(
            media_group_in(&UpdateKind::Message, photo),
            group(UpdateKind::Message, "g\u{e9}")
        );
        let post = br#"{"update_id":2,"channel_post":{"message_id":2,"media_group_id":"c1"}}"#;
        assert_eq!(
            media_group_in(&UpdateKind::ChannelPost, post),
            group(UpdateKind::ChannelPost, "c1")
        );
        let business =
            br#"{"update_id":3,"business_message":{"message_id":3,"media_group_id":"b1"}}"#;
        assert_eq!(
            media_group_in(&UpdateKind::BusinessMessage, business),
            group(UpdateKind::BusinessMessage, "b1")
        );
    }

    #[test]
    fn other_updates_are_not_parts() {
        // A text that only mentions the field.
        let text =
            br#"{"update_id":1,"message":{"message_id":1,"text":"what is \"media_group_id\"?"}}"#;
        assert_eq!(media_group_in(&UpdateKind::Message, text), None);
        // An edited part of an album is an edit, not a part.
        let edit = br#"{"update_id":2,"edited_message":{"message_id":1,"media_group_id":"g1"}}"#;
        assert_eq!(media_group_in(&UpdateKind::EditedMessage, edit), None);
        // Not JSON after all.
        assert_eq!(
            media_group_in(&UpdateKind::Message, br#"{"media_group_id": "#),
            None
        );
    }
}
