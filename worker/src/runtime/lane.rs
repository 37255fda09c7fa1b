//! Lanes: a lane is a set of update kinds with its own deployment, replicas and
//! concurrency (messages, callbacks and payments scale apart). A lane's subjects are split
//! into *partitions* by shard (shard `s` belongs to partition `s % partitions`); each
//! partition has its own durable pull consumer, `tgpipe-lane-<lane>-p<NNN>`, with a
//! pinned-client priority group, so that exactly one pod at a time receives a partition's
//! updates (see [`super::group`]). Lanes must not overlap, or an update would be handled
//! twice (on a work-queue stream the server refuses it too).

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PriorityPolicy, pull};
use async_nats::jetstream::stream::Stream;
use futures::{StreamExt, TryStreamExt};
use tgpipe_shared::UpdateKind;
use tgpipe_shared::subject::{SUBJECT_PREFIX, kind_filter};

/// The prefix of every lane consumer's name; consumers without it are not ours.
pub(super) const CONSUMER_PREFIX: &str = "tgpipe-lane-";

/// The priority group every partition consumer pins one client in.
pub(super) const PRIORITY_GROUP: &str = "owner";

/// The consumer metadata that holds the partition count a consumer was laid out for.
pub(super) const LAYOUT_KEY: &str = "tgpipe.partitions";

/// The most partitions a lane may have (three digits in the consumer's name).
pub(super) const MAX_PARTITIONS: u16 = 256;

/// A lane's partition: an index below the lane's partition count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition(pub u16);

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p{:03}", self.0)
    }
}

/// How a lane's consumers are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerSettings {
    /// Shards of the update subjects (`TGPIPE_SHARDS`).
    pub shards: u16,
    /// Partitions of the lane (`TGPIPE_PARTITIONS`), at most `shards`.
    pub partitions: u16,
    /// Unacknowledged updates a partition consumer allows.
    pub max_ack_pending: i64,
    /// The server's ack wait.
    pub ack_wait: Duration,
    /// How long the server keeps a silent client pinned (a backstop: a new owner unpins
    /// the old one as soon as it holds the partition's lease).
    pub pin_timeout: Duration,
}

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
    /// A kind this version does not know, not marked as custom.
    #[error(
        "`{0}` in TGPIPE_LANE_KINDS (--lane-kinds) is not an update kind of the Bot API; a kind this version does not know is written `custom:{0}`"
    )]
    UnknownKind(String),
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

    /// The name of the single consumer that lanes had before partitions (removed by
    /// `provision --apply`).
    pub fn legacy_consumer_name(&self) -> String {
        format!("{CONSUMER_PREFIX}{}", self.name)
    }

    /// The durable consumer of one partition. The fixed-width suffix keeps names of
    /// different lanes apart (`a-p001`'s partitions never share a name with `a`'s).
    pub fn consumer_name(&self, partition: Partition) -> String {
        format!("{CONSUMER_PREFIX}{}-{partition}", self.name)
    }

    /// Whether `name` is one of this lane's partition consumers (of any count).
    pub(super) fn owns_partition_consumer(&self, name: &str) -> bool {
        name.strip_prefix(CONSUMER_PREFIX)
            .and_then(|rest| rest.strip_prefix(self.name.as_str()))
            .and_then(|rest| rest.strip_prefix("-p"))
            .is_some_and(|n| n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The lane's subjects, every partition together.
    pub fn filter_subjects(&self) -> Vec<String> {
        match &self.kinds {
            None => vec![format!("{SUBJECT_PREFIX}.>")],
            Some(kinds) => kinds.iter().map(kind_filter).collect(),
        }
    }

    /// The subjects of one partition: every shard `s` with `s % partitions == p`, for each
    /// of the lane's kinds (`*` for a lane of every kind).
    pub fn partition_subjects(
        &self,
        partition: Partition,
        settings: &ConsumerSettings,
    ) -> Vec<String> {
        let kinds: Vec<&str> = match &self.kinds {
            None => vec!["*"],
            Some(kinds) => kinds.iter().map(UpdateKind::as_str).collect(),
        };
        let mut subjects = Vec::new();
        for shard in (partition.0..settings.shards).step_by(usize::from(settings.partitions.max(1)))
        {
            for kind in &kinds {
                subjects.push(format!("{SUBJECT_PREFIX}.*.{kind}.{shard}"));
            }
        }
        subjects
    }

    /// Whether an update of `kind` belongs to this lane.
    pub fn takes(&self, kind: &UpdateKind) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(kind))
    }

    /// The configuration of one partition's consumer.
    pub fn consumer_config(
        &self,
        partition: Partition,
        settings: &ConsumerSettings,
    ) -> pull::Config {
        let name = self.consumer_name(partition);
        pull::Config {
            durable_name: Some(name.clone()),
            name: Some(name),
            description: Some(format!(
                "tgpipe lane `{}`, partition {} of {}",
                self.name, partition.0, settings.partitions
            )),
            filter_subjects: self.partition_subjects(partition, settings),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: settings.ack_wait,
            // Unlimited: the runtime dead-letters after TGPIPE_MAX_DELIVER itself. A server
            // limit would strand an update whose last delivery died with its pod.
            max_deliver: -1,
            max_ack_pending: settings.max_ack_pending,
            // One client at a time receives the partition: the owner. A zombie that lost
            // its lease but still pulls gets nothing once the new owner is pinned.
            priority_policy: PriorityPolicy::PinnedClient,
            priority_groups: vec![PRIORITY_GROUP.to_owned()],
            priority_timeout: settings.pin_timeout,
            metadata: [
                ("tgpipe.lane".to_owned(), self.name.clone()),
                ("tgpipe.partition".to_owned(), partition.0.to_string()),
                (LAYOUT_KEY.to_owned(), settings.partitions.to_string()),
            ]
            .into_iter()
            .collect(),
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

/// Why the lane's consumers could not be set up.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConsumerSetupError {
    /// Another lane overlaps.
    #[error(transparent)]
    Lane(#[from] LaneError),
    /// The lane's consumer from before partitions still exists.
    #[error(
        "consumer `{0}` (one consumer for the whole lane, from before partitioned consumption) still exists; run `provision --apply` once to replace it with the lane's partition consumers (its unacknowledged updates stay in the stream)"
    )]
    Legacy(String),
    /// JetStream refused.
    #[error("cannot set up the lane's consumers: {0}")]
    JetStream(#[source] tgpipe_shared::BoxError),
}

/// What [`ensure_consumers`] does to a consumer that exists with other settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Changes {
    /// Leave it and log the difference (every process at start).
    Keep,
    /// Update it (`provision --apply`), and delete the lane's pre-partition consumer.
    Apply,
}

/// The settings of `config` that differ in `info`, as `name: has -> wants`.
fn consumer_differences(have: &consumer::Config, want: &pull::Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut have_subjects = have.filter_subjects.clone();
    if !have.filter_subject.is_empty() {
        have_subjects.push(have.filter_subject.clone());
    }
    let mut a = have_subjects.clone();
    let mut b = want.filter_subjects.clone();
    a.sort();
    b.sort();
    if a != b {
        out.push(format!(
            "filter_subjects: {have_subjects:?} -> {:?}",
            want.filter_subjects
        ));
    }
    if have.ack_wait != want.ack_wait {
        out.push(format!(
            "ack_wait: {:?} -> {:?}",
            have.ack_wait, want.ack_wait
        ));
    }
    if have.max_ack_pending != want.max_ack_pending {
        out.push(format!(
            "max_ack_pending: {} -> {}",
            have.max_ack_pending, want.max_ack_pending
        ));
    }
    if have.priority_policy != want.priority_policy || have.priority_groups != want.priority_groups
    {
        out.push(format!(
            "priority: {:?} {:?} -> {:?} {:?}",
            have.priority_policy, have.priority_groups, want.priority_policy, want.priority_groups
        ));
    }
    if have.priority_timeout != want.priority_timeout {
        out.push(format!(
            "priority_timeout: {:?} -> {:?}",
            have.priority_timeout, want.priority_timeout
        ));
    }
    out
}

/// Checks that no other lane overlaps, then creates the lane's partition consumers that
/// are missing. One that exists with other settings is left as it is (and the difference
/// logged) unless `changes` is [`Changes::Apply`]: a pod started with other defaults
/// never silently reconfigures what an operator set up.
pub(super) async fn ensure_consumers(
    stream: &Stream,
    lane: &Lane,
    settings: &ConsumerSettings,
    changes: Changes,
) -> Result<Vec<consumer::Consumer<pull::Config>>, ConsumerSetupError> {
    fn jserr(e: impl Into<tgpipe_shared::BoxError>) -> ConsumerSetupError {
        ConsumerSetupError::JetStream(e.into())
    }
    let ours_prefix = format!("{CONSUMER_PREFIX}{}-p", lane.name);
    let legacy = lane.legacy_consumer_name();
    let mut existing = std::collections::HashMap::new();
    let mut consumers = stream.consumers();
    while let Some(info) = consumers.try_next().await.map_err(jserr)? {
        if info.name == legacy {
            if changes == Changes::Apply {
                stream.delete_consumer(&legacy).await.map_err(jserr)?;
                tracing::info!(consumer = %legacy, "deleted the lane's pre-partition consumer");
                continue;
            }
            return Err(ConsumerSetupError::Legacy(legacy));
        }
        if let Some(rest) = info.name.strip_prefix(&ours_prefix)
            && rest.len() == 3
            && rest.bytes().all(|b| b.is_ascii_digit())
        {
            existing.insert(info.name.clone(), info.config.clone());
            continue;
        }
        let Some(theirs) = info.name.strip_prefix(CONSUMER_PREFIX) else {
            continue;
        };
        let theirs = info
            .config
            .metadata
            .get("tgpipe.lane")
            .map_or(theirs, String::as_str);
        if theirs == lane.name {
            continue;
        }
        let mut subjects = info.config.filter_subjects.clone();
        if !info.config.filter_subject.is_empty() {
            subjects.push(info.config.filter_subject.clone());
        }
        let subjects: Vec<String> = subjects.iter().map(|s| kind_of_filter(s)).collect();
        if let Some(e) = lane.overlap_with(theirs, &subjects) {
            return Err(e.into());
        }
    }
    // Several at a time: each is a Raft group of its own on a replicated stream.
    let existing = &existing;
    futures::stream::iter(0..settings.partitions)
        .map(|p| async move {
            let partition = Partition(p);
            let config = lane.consumer_config(partition, settings);
            let name = lane.consumer_name(partition);
            Ok(match existing.get(&name) {
                None => stream.create_consumer(config).await.map_err(jserr)?,
                Some(have) => {
                    let diff = consumer_differences(have, &config);
                    if diff.is_empty() {
                        stream.get_consumer(&name).await.map_err(jserr)?
                    } else if changes == Changes::Apply {
                        tracing::info!(consumer = %name, changes = ?diff, "updating consumer");
                        stream.update_consumer(config).await.map_err(jserr)?
                    } else {
                        tracing::warn!(
                            consumer = %name,
                            differences = ?diff,
                            "consumer exists with other settings; left as it is (`provision --apply` changes it)"
                        );
                        stream.get_consumer(&name).await.map_err(jserr)?
                    }
                }
            })
        })
        .buffered(32)
        .try_collect()
        .await
}

/// The partition count a lane's consumers are laid out for: what the stream holds, not
/// what a pod was started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// The lane has no partition consumers yet.
    Empty,
    /// Every partition consumer of one count exists, and no other.
    Complete(u16),
    /// A change of the count is under way (or was interrupted): consumers of several
    /// counts, or some missing.
    Changing,
}

/// The partition count of one of the lane's consumers: its `tgpipe.partitions` metadata,
/// or, for consumers made before it existed, the count at the end of its description
/// ("partition 3 of 16").
fn layout_of(config: &consumer::Config) -> Option<u16> {
    if let Some(n) = config.metadata.get(LAYOUT_KEY) {
        return n.parse().ok();
    }
    config
        .description
        .as_deref()?
        .rsplit_once(" of ")
        .and_then(|(_, n)| n.trim().parse().ok())
}

/// Reads the layout of `lane`'s partition consumers from the stream.
pub(super) async fn layout_in_force(
    stream: &Stream,
    lane: &Lane,
) -> Result<Layout, ConsumerSetupError> {
    let mut counts: std::collections::BTreeMap<Option<u16>, usize> = Default::default();
    let mut consumers = stream.consumers();
    while let Some(info) = consumers
        .try_next()
        .await
        .map_err(|e| ConsumerSetupError::JetStream(e.into()))?
    {
        if lane.owns_partition_consumer(&info.name) {
            *counts.entry(layout_of(&info.config)).or_default() += 1;
        }
    }
    Ok(match counts.len() {
        0 => Layout::Empty,
        1 => match counts.into_iter().next() {
            Some((Some(n), have)) if have == usize::from(n) => Layout::Complete(n),
            _ => Layout::Changing,
        },
        _ => Layout::Changing,
    })
}

/// The consumers of `lane`'s `partitions` partitions, which exist (read by name, 16 at
/// a time, without listing the stream's consumers).
pub(super) async fn partition_consumers(
    stream: &Stream,
    lane: &Lane,
    partitions: u16,
) -> Result<Vec<consumer::Consumer<pull::Config>>, ConsumerSetupError> {
    futures::stream::iter(0..partitions)
        .map(|p| async move {
            stream
                .get_consumer(&lane.consumer_name(Partition(p)))
                .await
                .map_err(ConsumerSetupError::JetStream)
        })
        .buffered(16)
        .try_collect()
        .await
}

/// Lays `lane` out for `settings.partitions`: deletes its partition consumers of any other
/// count, then creates the missing ones. The unacknowledged updates of a deleted
/// consumer stay in the work-queue stream, and the new consumers deliver them from the
/// start, in stream order. Only safe while no pod consumes the lane; repeating it is
/// harmless.
pub(super) async fn change_layout(
    stream: &Stream,
    lane: &Lane,
    settings: &ConsumerSettings,
) -> Result<Vec<consumer::Consumer<pull::Config>>, ConsumerSetupError> {
    let mut old = Vec::new();
    let mut consumers = stream.consumers();
    while let Some(info) = consumers
        .try_next()
        .await
        .map_err(|e| ConsumerSetupError::JetStream(e.into()))?
    {
        if lane.owns_partition_consumer(&info.name)
            && layout_of(&info.config) != Some(settings.partitions)
        {
            old.push(info.name.clone());
        }
    }
    let deleted =
        futures::future::join_all(old.iter().map(|name| stream.delete_consumer(name))).await;
    for (name, result) in old.iter().zip(deleted) {
        match result {
            Ok(_) => {
                tracing::info!(consumer = %name, "deleted a consumer of the lane's previous partition count")
            }
            // Deleted by another pod meanwhile.
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::stream::ConsumerErrorKind::JetStream(ref j)
                        if j.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND
                ) => {}
            Err(e) => return Err(ConsumerSetupError::JetStream(e.into())),
        }
    }
    ensure_consumers(stream, lane, settings, Changes::Keep).await
}

/// A partition filter `tg.*.<kind>.<shard>` as the lane filter `tg.*.<kind>.*` it is part
/// of (`tg.*.*.<shard>`: every kind), so overlaps are found between partitioned lanes.
fn kind_of_filter(subject: &str) -> String {
    let parts: Vec<&str> = subject.split('.').collect();
    match parts.as_slice() {
        [prefix, "*", "*", _] if *prefix == SUBJECT_PREFIX => format!("{SUBJECT_PREFIX}.>"),
        [prefix, "*", kind, _] if *prefix == SUBJECT_PREFIX => {
            format!("{SUBJECT_PREFIX}.*.{kind}.*")
        }
        _ => subject.to_owned(),
    }
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
    fn a_consumer_says_its_partition_count_in_metadata_or_description() {
        let settings = ConsumerSettings {
            shards: 64,
            partitions: 32,
            max_ack_pending: 100,
            ack_wait: Duration::from_secs(30),
            pin_timeout: Duration::from_secs(5),
        };
        let l = Lane::new("all", None).unwrap();
        let made = l.consumer_config(Partition(3), &settings);
        let config = consumer::Config {
            metadata: made.metadata.clone(),
            description: made.description.clone(),
            ..Default::default()
        };
        assert_eq!(layout_of(&config), Some(32));
        // Consumers from before the metadata: the description's count.
        let old = consumer::Config {
            description: Some("tgpipe lane `all`, partition 3 of 16".into()),
            ..Default::default()
        };
        assert_eq!(layout_of(&old), Some(16));
        assert_eq!(layout_of(&consumer::Config::default()), None);
        assert!(l.owns_partition_consumer("tgpipe-lane-all-p003"));
        assert!(!l.owns_partition_consumer("tgpipe-lane-all"));
        assert!(!l.owns_partition_consumer("tgpipe-lane-allx-p003"));
        assert!(!l.owns_partition_consumer("tgpipe-lane-all-p03"));
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
