//! `dlq list` and `dlq replay`: inspect dead letters and publish them back.
//!
//! A dead letter is the update's body and headers as the ingress stored them, plus
//! `Tg-Error` (why it failed, one line) and `Tg-Deliveries`, on `tgdlq.<bot>.<kind>`.
//! Replay publishes the body to `tg.<bot>.<kind>.<shard>` with the original headers (a
//! fresh `Nats-Msg-Id`, so the dedupe window does not swallow it), waits for the
//! stream's acknowledgement, and only then removes the dead letter: a replay interrupted
//! half-way loses nothing.

use std::io::Write;
use std::num::NonZeroU16;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::StreamMessage};
use tgpipe_shared::kind::INVALID_KIND;
use tgpipe_shared::subject::{DLQ_SUBJECT_PREFIX, Shard, update_subject};
use tgpipe_shared::{BotId, MsgId, UpdateKind, extract_keys, headers};

use super::config::DlqCommand;

/// Why a `dlq` command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// JetStream refused or did not answer.
    #[error("JetStream: {0}")]
    JetStream(#[source] tgpipe_shared::BoxError),
    /// Writing the listing failed.
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
    /// A sequence named for replay is not a dead letter.
    #[error("no dead letter with sequence {0}")]
    NotFound(u64),
    /// The letter's update was not on an update subject (listed under bot 0): there is
    /// no subject to put it back on. Inspect it, then delete it from the stream.
    #[error(
        "dead letter {0} was not published on an update subject (bot 0); it cannot be replayed"
    )]
    NotReplayable(u64),
}

fn js_err(e: impl std::error::Error + Send + Sync + 'static) -> DlqError {
    DlqError::JetStream(e.into())
}

/// One dead letter as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream.
    pub seq: u64,
    /// The bot.
    pub bot: BotId,
    /// The update kind.
    pub kind: UpdateKind,
    /// The update's id, when the body has one.
    pub update_id: Option<i64>,
    /// Deliveries before it was dead-lettered.
    pub deliveries: u32,
    /// Why.
    pub error: String,
}

impl DeadLetter {
    /// Every message of the stream is a letter: one whose update had no bot (it was not
    /// on an update subject) is listed under bot 0, kind `_invalid`.
    fn from_message(m: &StreamMessage) -> DeadLetter {
        let mut parts = m.subject.split('.');
        let (bot, kind) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(DLQ_SUBJECT_PREFIX), Some(bot), Some(kind), None) => (
                BotId::parse(bot).unwrap_or(BotId(0)),
                UpdateKind::from_field(kind),
            ),
            _ => (BotId(0), UpdateKind::from_field(INVALID_KIND)),
        };
        let h = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
        DeadLetter {
            seq: m.sequence,
            bot,
            kind,
            update_id: extract_keys(&m.payload).ok().map(|k| k.update_id),
            deliveries: h(headers::DELIVERIES)
                .and_then(|d| d.parse().ok())
                .unwrap_or(0),
            error: h(headers::ERROR).unwrap_or_default(),
        }
    }

    /// Whether replaying can put it back on an update subject.
    pub fn replayable(&self) -> bool {
        self.bot != BotId(0) && self.kind.as_str() != INVALID_KIND
    }
}

/// The dead letters, oldest first, optionally of one bot, at most `limit`.
pub(super) async fn list(
    dlq: &jetstream::stream::Stream,
    bot: Option<BotId>,
    limit: usize,
) -> Result<Vec<(DeadLetter, StreamMessage)>, DlqError> {
    let info = dlq.get_info().await.map_err(js_err)?;
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return Ok(out);
    }
    let mut seq = info.state.first_sequence;
    while seq <= info.state.last_sequence && out.len() < limit {
        // Deleted sequences (replayed letters) leave gaps; ask for the next one present.
        let next = dlq
            .direct_get_next_for_subject(format!("{DLQ_SUBJECT_PREFIX}.>"), Some(seq))
            .await;
        let m = match next {
            Ok(m) => m,
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => break,
            Err(e) => return Err(js_err(e)),
        };
        seq = m.sequence + 1;
        let letter = DeadLetter::from_message(&m);
        if bot.is_none_or(|b| b == letter.bot) {
            out.push((letter, m));
        }
    }
    Ok(out)
}

/// Publishes one dead letter back into the update stream, then deletes it.
pub(super) async fn replay(
    js: &jetstream::Context,
    dlq: &jetstream::stream::Stream,
    letter: &DeadLetter,
    message: &StreamMessage,
    shards: NonZeroU16,
) -> Result<String, DlqError> {
    if !letter.replayable() {
        return Err(DlqError::NotReplayable(letter.seq));
    }
    let keys = extract_keys(&message.payload).ok();
    let shard = keys
        .as_ref()
        .map_or(Shard(0), |k| Shard::of(k.ordering_key(), shards));
    let subject = update_subject(letter.bot, &letter.kind, shard);
    let mut h = HeaderMap::new();
    for (name, values) in message.headers.iter() {
        let name: &str = name.as_ref();
        if [headers::ERROR, headers::DELIVERIES, headers::MSG_ID]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        for v in values {
            h.append(name, v.as_str());
        }
    }
    // The letter's own id names the update; a letter without one (written by hand)
    // is named by its sequence.
    let of = message
        .headers
        .get(headers::MSG_ID)
        .and_then(|v| v.as_str().parse::<MsgId>().ok())
        .unwrap_or(MsgId::Sequence {
            bot: letter.bot,
            seq: letter.seq,
        });
    let id = MsgId::Replay {
        of: Box::new(of),
        seq: letter.seq,
    };
    h.insert(headers::MSG_ID, id.to_string());
    let ack = js
        .publish_with_headers(subject.clone(), h, message.payload.clone())
        .await
        .map_err(js_err)?;
    tokio::time::timeout(Duration::from_secs(10), ack)
        .await
        .map_err(|_| DlqError::JetStream("no acknowledgement from the update stream".into()))?
        .map_err(js_err)?;
    dlq.delete_message(letter.seq).await.map_err(js_err)?;
    Ok(subject)
}

/// Runs a `dlq` command, writing a legible report to `out`.
pub async fn command(
    js: &jetstream::Context,
    dlq_stream: &str,
    shards: NonZeroU16,
    cmd: &DlqCommand,
    out: &mut (impl Write + Send),
) -> Result<(), DlqError> {
    let dlq = js.get_stream(dlq_stream).await.map_err(js_err)?;
    match cmd {
        DlqCommand::List { bot, limit } => {
            let letters = list(&dlq, bot.map(BotId), *limit).await?;
            if letters.is_empty() {
                writeln!(out, "no dead letters")?;
            }
            for (l, m) in &letters {
                writeln!(
                    out,
                    "seq={} bot={} kind={} update_id={} deliveries={} at={} error={}",
                    l.seq,
                    l.bot,
                    l.kind,
                    l.update_id.map_or("-".to_owned(), |u| u.to_string()),
                    l.deliveries,
                    m.time,
                    l.error
                )?;
            }
        }
        DlqCommand::Replay { seqs, all, bot } => {
            let letters = list(&dlq, bot.map(BotId), usize::MAX).await?;
            let chosen: Vec<&(DeadLetter, StreamMessage)> = if *all {
                let (ok, skipped): (Vec<_>, Vec<_>) =
                    letters.iter().partition(|(l, _)| l.replayable());
                for (l, _) in skipped {
                    writeln!(
                        out,
                        "skipped seq={}: {}",
                        l.seq,
                        DlqError::NotReplayable(l.seq)
                    )?;
                }
                ok
            } else {
                let mut chosen = Vec::new();
                for seq in seqs {
                    let found = letters
                        .iter()
                        .find(|(l, _)| l.seq == *seq)
                        .ok_or(DlqError::NotFound(*seq))?;
                    chosen.push(found);
                }
                chosen
            };
            for (letter, message) in &chosen {
                let subject = replay(js, &dlq, letter, message, shards).await?;
                writeln!(out, "replayed seq={} to {subject}", letter.seq)?;
            }
            writeln!(out, "{} replayed", chosen.len())?;
        }
    }
    Ok(())
}
