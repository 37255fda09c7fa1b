//! Settling an update: acknowledged, dead-lettered (then terminated), or returned to
//! the stream for the partition's next owner.

use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::{self, AckKind};
use tgpipe_shared::subject::dlq_subject;
use tgpipe_shared::{BotId, MsgId, UpdateKind, headers};

use super::{Job, Parked, Pod, Source, metrics};

impl Pod {
    /// Returns a held update of a stopped partition: a delivered one is nak'ed so the
    /// next owner gets it at once (it is in its takeover window too); a replayed one is
    /// still pending at the consumer, so there is nothing to do.
    /// An album's parts go back with it.
    pub(super) async fn give_back(&self, job: &Job) {
        for job in job.parts() {
            if let Some(reply) = job.src.reply()
                && !job.part.own.is_lost()
            {
                ack_subject(&self.me.client, reply, AckKind::Nak(None)).await;
            }
        }
    }

    /// Acknowledges the update (and its album's parts) as `kind`.
    async fn finish(&self, job: &Job, kind: AckKind) {
        for job in job.parts() {
            self.finish_one(job, kind).await;
        }
    }

    /// Acknowledges one update as `kind`: through the consumer when it was delivered;
    /// for a replayed one, its delivered copy now or when it arrives.
    async fn finish_one(&self, job: &Job, kind: AckKind) {
        match &job.src {
            Source::Delivered(m) => ack(m, kind).await,
            Source::Unparked(_, reply, _) => ack_subject(&self.me.client, reply, kind).await,
            Source::Replayed(m) => {
                let copy = {
                    let mut window = job.part.window.lock().unwrap_or_else(|p| p.into_inner());
                    let entry = window.entry(m.sequence).or_default();
                    match entry.copy.take() {
                        Some(copy) => {
                            window.remove(&m.sequence);
                            Some(copy)
                        }
                        None => {
                            entry.finished = Some(kind);
                            None
                        }
                    }
                };
                if let Some(copy) = copy {
                    ack_subject(&self.me.client, &copy, kind).await;
                }
            }
        }
    }

    /// Acknowledges or dead-letters the update as the dispatch decided.
    pub(super) async fn settle(&self, job: &Job, action: Action, at: Settle<'_>) {
        let Settle {
            bot_id,
            kind,
            label,
            chat,
            stream_seq,
            delivered,
            record,
        } = at;
        let span = tracing::Span::current();
        span.record(
            "outcome",
            match &action {
                Action::Ack(outcome) => *outcome,
                Action::Duplicate => "duplicate",
                Action::GiveBack | Action::Retry(..) => "given_back",
                Action::DeadLetter(_) => "dead_lettered",
            },
        );
        if let Action::DeadLetter(error) = &action {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", error.as_str());
        }
        if let Some(album) = &job.album {
            let outcome = match &action {
                Action::Ack(outcome) => outcome,
                Action::Duplicate => "duplicate",
                Action::GiveBack | Action::Retry(..) => "given_back",
                Action::DeadLetter(_) => "dead_lettered",
            };
            let parts = album.len() + 1;
            metrics::album(outcome, parts);
            tracing::info!(parts, outcome, "album settled");
        }
        match action {
            Action::Ack(outcome) => {
                // Remembered before the ack: an update whose ack is lost (a leader
                // election) and that a new owner replays must be found finished, or it
                // would run again after the chat's later updates.
                // Every part of an album: a redelivered one is a duplicate.
                // The first part's record of Bot API calls goes with it.
                if let (Some(seen), Some((chat, _))) = (&self.me.seen, chat) {
                    for (i, env) in job.parts().filter_map(|j| j.env.as_ref().ok()).enumerate() {
                        let record = record.filter(|_| i == 0);
                        match seen
                            .insert(bot_id, chat, env.update_id, Some(&job.part.fence), record)
                            .await
                        {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!(
                                "the partition has a newer owner; its memory of finished updates wins"
                            ),
                            // The update is done; a lost memory only weakens duplicate
                            // detection.
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot remember the finished update");
                                metrics::seen_unavailable();
                                self.me.redis.failed();
                            }
                        }
                    }
                }
                for _ in job.parts() {
                    metrics::outcome(label, outcome);
                }
                self.finish(job, AckKind::Ack).await;
            }
            Action::Duplicate => {
                tracing::info!(
                    "skipped: finished before (a duplicate older than the dedupe window)"
                );
                for _ in job.parts() {
                    metrics::outcome(label, "duplicate");
                }
                self.finish(job, AckKind::Ack).await;
            }
            Action::GiveBack | Action::Retry(..) => self.give_back(job).await,
            Action::DeadLetter(error) => {
                let mut attempt = 1;
                loop {
                    // Each part of an album with the same error; a retry writes again
                    // the ones written (the dead-letter stream's dedupe collapses them).
                    let mut written = Ok(());
                    for part in job.parts() {
                        let seq = if std::ptr::eq(part, job) {
                            stream_seq
                        } else {
                            part.src.position().0
                        };
                        written = self
                            .dead_letter(&part.src, bot_id, kind, seq, delivered, &error)
                            .await;
                        if written.is_err() {
                            break;
                        }
                    }
                    match written {
                        Ok(()) => {
                            tracing::error!(%error, "dead-lettered");
                            for _ in job.parts() {
                                metrics::outcome(label, "dead_lettered");
                                metrics::dead_letter(label);
                            }
                            self.finish(job, AckKind::Term).await;
                            return;
                        }
                        Err(e) => {
                            // Retried in place, like a failing handler: the chat waits.
                            let delay = self.me.acks.retry_delay(attempt);
                            tracing::error!(%error, dlq_error = %e, ?delay, "cannot dead-letter; will retry");
                            let stopped = self
                                .keep_in_progress(job, async {
                                    tokio::select! {
                                        () = tokio::time::sleep(delay) => false,
                                        () = job.part.own.released() => true,
                                    }
                                })
                                .await;
                            if stopped {
                                self.give_back(job).await;
                                return;
                            }
                            attempt += 1;
                        }
                    }
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        src: &Source,
        bot: BotId,
        kind: &UpdateKind,
        stream_seq: u64,
        delivered: u32,
        error: &str,
    ) -> Result<(), String> {
        let mut h = src.headers().cloned().unwrap_or_default();
        // A message id none of ours wrote (published by hand) is kept as its sequence.
        let original = h
            .get(headers::MSG_ID)
            .and_then(|v| v.as_str().parse::<MsgId>().ok())
            .unwrap_or(MsgId::Sequence {
                bot,
                seq: stream_seq,
            });
        // One id per stream message: a dead-lettering retried after a lost PubAck, or by
        // a new owner, collapses in the DLQ's dedupe window; an update replayed from the
        // DLQ has a new stream sequence, so failing again makes a new letter.
        let id = MsgId::DeadLetter {
            of: Box::new(original),
            seq: stream_seq,
        };
        h.insert(headers::MSG_ID, id.to_string());
        h.insert(headers::ERROR, header_safe(error));
        h.insert(headers::DELIVERIES, delivered.to_string());
        let ack = self
            .me
            .js
            .publish_with_headers(dlq_subject(bot, kind), h, src.payload().clone())
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .map_err(|_| "no acknowledgement from the dead-letter stream".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// What `settle` needs to know about the update.
pub(super) struct Settle<'a> {
    pub(super) bot_id: BotId,
    pub(super) kind: &'a UpdateKind,
    pub(super) label: &'static str,
    pub(super) chat: Option<(i64, i64)>,
    pub(super) stream_seq: u64,
    pub(super) delivered: u32,
    /// The key of the update's record of Bot API calls, when it wrote one.
    pub(super) record: Option<&'a str>,
}

/// What an attempt decided.
pub(super) enum Action {
    Ack(&'static str),
    Duplicate,
    /// A transient failure, and the wait the Bot API asked for, if it did.
    Retry(String, Option<Duration>),
    /// The partition stopped while the update waited to be retried.
    GiveBack,
    DeadLetter(String),
}

/// What a panic carried, when it is text.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not text)")
}

pub(super) async fn ack(msg: &jetstream::Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        // The server redelivers after the ack wait; the seen memory catches the repeat.
        tracing::warn!(error = %e, ?kind, "acknowledgement not sent");
    }
}

/// Acknowledges a delivery by its subject (an update whose message is not kept).
pub(super) async fn ack_subject(client: &async_nats::Client, reply: &Subject, kind: AckKind) {
    if let Err(e) = client.publish(reply.clone(), kind.into()).await {
        tracing::warn!(error = %e, ?kind, "acknowledgement not sent");
    }
}

/// Returns a parked update of a stopped partition to the stream (nak'ed, so the next
/// owner gets it at once); one replayed from the window is still pending there.
pub(super) async fn give_back_parked(client: &async_nats::Client, parked: &Parked) {
    if let Some(reply) = &parked.reply
        && !parked.part.own.is_lost()
    {
        ack_subject(client, reply, AckKind::Nak(None)).await;
    }
}

/// A header value: one line, at most 1 KiB (errors may quote user input).
pub(crate) fn header_safe(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > 1024 {
        let mut end = 1024;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_one_bounded_line() {
        assert_eq!(header_safe("a\r\nb"), "a  b");
        let long = "é".repeat(1000);
        let safe = header_safe(&long);
        assert!(safe.len() <= 1024 && safe.chars().all(|c| c == 'é'));
    }
}
