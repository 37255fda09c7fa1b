//! The takeover window: what the previous owner of a partition had taken but not
//! finished runs before anything newer of the same chat.
//!
//! The window is the stream's messages between the consumer's ack floor and its last
//! delivery, read by sequence in stream order (one cursor per filter subject, merged),
//! and held like delivered updates (parked past the caps, so memory stays bounded). When
//! the server redelivers them later, they are acknowledged without running again. A read
//! that fails is retried until it succeeds or the partition stops: pulling never starts
//! without the window, or a chat's newer update could overtake an older one.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;
use std::sync::Arc;

use super::{Owned, Pod, Source, WindowEntry};

/// Longest pause between two tries of a failed window read.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Pod {
    /// Reads the partition's unacknowledged window and holds it, in stream order, before
    /// anything new. `Some(n)`: `n` updates replayed; `None`: the partition stopped first.
    pub(super) async fn replay_window(
        self: &Arc<Self>,
        part: &Arc<Owned>,
        consumer: &mut PullConsumer,
    ) -> Option<usize> {
        let mut backoff = Duration::from_millis(100);
        let info = loop {
            if part.stopped() {
                return None;
            }
            match consumer.info().await {
                Ok(info) => break info.clone(),
                Err(e) => {
                    tracing::warn!(error = %e, partition = %part.own.partition, "consumer info for the takeover window; will retry");
                    self.pause(part, &mut backoff).await;
                }
            }
        };
        let floor = info.ack_floor.stream_sequence;
        let top = info.delivered.stream_sequence;
        if top <= floor || info.num_ack_pending == 0 {
            return Some(0);
        }
        let subjects = info.config.filter_subjects.clone();
        let subjects = if subjects.is_empty() {
            vec![info.config.filter_subject.clone()]
        } else {
            subjects
        };
        // One cursor per subject; the smallest sequence is held next.
        let mut heads: Vec<Option<StreamMessage>> = Vec::with_capacity(subjects.len());
        for subject in &subjects {
            heads.push(
                self.next_in(part, subject, floor + 1, top, &mut backoff)
                    .await?,
            );
        }
        let mut n = 0;
        while let Some(i) = heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|m| (m.sequence, i)))
            .min()
            .map(|(_, i)| i)
        {
            let Some(m) = heads[i].take() else { break };
            let after = m.sequence + 1;
            part.window
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(m.sequence, WindowEntry::default());
            self.hold(part, Source::Replayed(m), Instant::now());
            n += 1;
            heads[i] = self
                .next_in(part, &subjects[i], after, top, &mut backoff)
                .await?;
        }
        Some(n)
    }

    /// The first message of `subject` from sequence `from` up to `top`, read again until
    /// the read succeeds. `None` (outer): the partition stopped.
    async fn next_in(
        &self,
        part: &Owned,
        subject: &str,
        from: u64,
        top: u64,
        backoff: &mut Duration,
    ) -> Option<Option<StreamMessage>> {
        if from > top {
            return Some(None);
        }
        loop {
            if part.stopped() {
                return None;
            }
            let next = self
                .stream
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(subject.to_owned())
                .send()
                .await;
            match next {
                Ok(m) if m.sequence <= top => return Some(Some(m)),
                Ok(_) => return Some(None),
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Some(None),
                Err(e) => {
                    tracing::warn!(error = %e, partition = %part.own.partition, "reading the takeover window; will retry");
                    self.pause(part, backoff).await;
                }
            }
        }
    }

    /// Waits `backoff` (doubled for next time, up to a cap) or until the partition stops.
    async fn pause(&self, part: &Owned, backoff: &mut Duration) {
        tokio::select! {
            () = tokio::time::sleep(*backoff) => {}
            () = part.own.released() => {}
        }
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
    }
}
