//! Lanes: a lane is a set of update kinds with its own deployment, replicas and
//! concurrency (messages, callbacks and payments scale apart). Each lane has one durable
//! pull consumer on the update stream, shared by the lane's pods; lanes must not overlap,
//! or an update would be handled twice (on a work-queue stream the server refuses it too).

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream;
use futures::TryStreamExt;
use tgpipe_shared::UpdateKind;
use tgpipe_shared::subject::{SUBJECT_PREFIX, kind_filter};

/// The prefix of every lane consumer's name; consumers without it are not ours.
pub const CONSUMER_PREFIX: &str = "tgpipe-lane-";

/// A lane: a name and the update kinds it takes (`None`: every kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    name: String,
    kinds: Option<Vec<UpdateKind>>,
}

/// Why a lane cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LaneError {
    /// The name is not usable in a consumer name.
    #[error("lane name `{0}` must be 1 to 64 characters of A-Z, a-z, 0-9, `-` and `_`")]
    BadName(String),
    /// A kind is not a subject token.
    #[error("`{0}` in TGPIPE_LANE_KINDS is not an update kind (a field name such as `message`)")]
    BadKind(String),
    /// `TGPIPE_LANE_KINDS` lists nothing.
    #[error("TGPIPE_LANE_KINDS lists no kind (use `all` for every kind)")]
    NoKinds,
    /// Another lane takes some of the same kinds.
    #[error(
        "lane `{ours}` overlaps lane `{theirs}` on {what}: each update kind belongs to one lane (a lane of `all` kinds must be the only one)"
    )]
    Overlap {
        /// This lane.
        ours: String,
        /// The other lane.
        theirs: String,
        /// The kinds both take.
        what: String,
    },
}

impl Lane {
    /// A lane; `kinds: None` takes every kind, known or not.
    pub fn new(name: &str, kinds: Option<Vec<UpdateKind>>) -> Result<Lane, LaneError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(LaneError::BadName(name.to_owned()));
        }
        if kinds.as_ref().is_some_and(Vec::is_empty) {
            return Err(LaneError::NoKinds);
        }
        Ok(Lane {
            name: name.to_owned(),
            kinds,
        })
    }

    /// The lane's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kinds it takes (`None`: all).
    pub fn kinds(&self) -> Option<&[UpdateKind]> {
        self.kinds.as_deref()
    }

    /// The durable consumer's name.
    pub fn consumer_name(&self) -> String {
        format!("{CONSUMER_PREFIX}{}", self.name)
    }

    /// The consumer's filter subjects.
    pub fn filter_subjects(&self) -> Vec<String> {
        match &self.kinds {
            None => vec![format!("{SUBJECT_PREFIX}.>")],
            Some(kinds) => kinds.iter().map(kind_filter).collect(),
        }
    }

    /// The consumer's configuration.
    pub fn consumer_config(&self, max_ack_pending: i64, ack_wait: Duration) -> pull::Config {
        let name = self.consumer_name();
        pull::Config {
            durable_name: Some(name.clone()),
            name: Some(name),
            description: Some(format!("tgpipe lane `{}`", self.name)),
            filter_subjects: self.filter_subjects(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait,
            // Unlimited: the runtime dead-letters after TGPIPE_MAX_DELIVER itself. A server
            // limit would strand an update whose last delivery died with its pod.
            max_deliver: -1,
            max_ack_pending,
            ..Default::default()
        }
    }

    /// The first overlap with another lane's filter subjects, if any.
    pub fn overlap_with(&self, theirs_name: &str, theirs: &[String]) -> Option<LaneError> {
        let all = format!("{SUBJECT_PREFIX}.>");
        let ours = self.filter_subjects();
        let theirs_all = theirs.is_empty() || theirs.contains(&all);
        let what = if theirs_all || ours.contains(&all) {
            Some("every kind".to_owned())
        } else {
            let common: Vec<&str> = ours
                .iter()
                .filter(|s| theirs.contains(s))
                .map(|s| s.split('.').nth(2).unwrap_or(s))
                .collect();
            (!common.is_empty()).then(|| common.join(", "))
        };
        what.map(|what| LaneError::Overlap {
            ours: self.name.clone(),
            theirs: theirs_name.to_owned(),
            what,
        })
    }
}

/// Why the lane's consumer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerSetupError {
    /// Another lane overlaps.
    #[error(transparent)]
    Lane(#[from] LaneError),
    /// JetStream refused.
    #[error("cannot set up the lane's consumer: {0}")]
    JetStream(String),
}

/// Checks that no other lane overlaps, then creates the lane's durable consumer or
/// updates it to the current settings.
pub async fn ensure_consumer(
    stream: &Stream,
    lane: &Lane,
    max_ack_pending: i64,
    ack_wait: Duration,
) -> Result<consumer::Consumer<pull::Config>, ConsumerSetupError> {
    let ours = lane.consumer_name();
    let mut consumers = stream.consumers();
    while let Some(info) = consumers
        .try_next()
        .await
        .map_err(|e| ConsumerSetupError::JetStream(e.to_string()))?
    {
        let Some(theirs) = info.name.strip_prefix(CONSUMER_PREFIX) else {
            continue;
        };
        if info.name == ours {
            continue;
        }
        let mut subjects = info.config.filter_subjects.clone();
        if !info.config.filter_subject.is_empty() {
            subjects.push(info.config.filter_subject.clone());
        }
        if let Some(e) = lane.overlap_with(theirs, &subjects) {
            return Err(e.into());
        }
    }
    stream
        .create_consumer(lane.consumer_config(max_ack_pending, ack_wait))
        .await
        .map_err(|e| ConsumerSetupError::JetStream(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(name: &str, kinds: &[&str]) -> Lane {
        Lane::new(
            name,
            Some(kinds.iter().map(|k| UpdateKind::from_field(k)).collect()),
        )
        .unwrap()
    }

    #[test]
    fn filter_subjects_per_kind_or_everything() {
        assert_eq!(
            lane("chat", &["message", "edited_message"]).filter_subjects(),
            ["tg.*.message.*", "tg.*.edited_message.*"]
        );
        assert_eq!(Lane::new("all", None).unwrap().filter_subjects(), ["tg.>"]);
    }

    #[test]
    fn names_are_checked() {
        assert!(Lane::new("pay-1_x", None).is_ok());
        for bad in ["", "a.b", "a b", "*", &"x".repeat(65)] {
            assert_eq!(
                Lane::new(bad, None),
                Err(LaneError::BadName(bad.to_owned()))
            );
        }
        assert_eq!(Lane::new("x", Some(vec![])), Err(LaneError::NoKinds));
    }

    #[test]
    fn overlaps_are_found() {
        let chat = lane("chat", &["message", "edited_message"]);
        let cb = vec!["tg.*.callback_query.*".to_owned()];
        assert!(chat.overlap_with("callbacks", &cb).is_none());
        let e = chat
            .overlap_with("other", &["tg.*.message.*".to_owned()])
            .unwrap();
        assert_eq!(
            e.to_string(),
            "lane `chat` overlaps lane `other` on message: each update kind belongs to one lane (a lane of `all` kinds must be the only one)"
        );
        assert!(chat.overlap_with("all", &["tg.>".to_owned()]).is_some());
        assert!(chat.overlap_with("legacy", &[]).is_some());
        assert!(
            Lane::new("all", None)
                .unwrap()
                .overlap_with("cb", &cb)
                .is_some()
        );
    }
}
