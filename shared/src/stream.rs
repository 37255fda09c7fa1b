//! JetStream stream configuration for `TG_UPDATES` and `TG_DLQ`, and their provisioning.
//!
//! Both the ingress (at start, unless `TGPIPE_PROVISION=false`) and the `provision`
//! commands create the streams from the same [`StreamSettings`], so the two cannot drift
//! apart. Provisioning never downgrades: an existing stream is changed only by a
//! `provision --apply`.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use clap::{Args, ValueEnum};

use crate::subject::{DLQ_SUBJECT_PREFIX, SUBJECT_PREFIX};
use crate::timer::TIMER_SUBJECT_PREFIX;

/// Default name of the update stream.
pub const DEFAULT_STREAM: &str = "TG_UPDATES";
/// Default name of the dead-letter stream.
pub const DEFAULT_DLQ_STREAM: &str = "TG_DLQ";

/// How long the update stream keeps a message (`TGPIPE_RETENTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Retention {
    /// Delete a message once a consumer acknowledged it; lanes must not overlap.
    #[value(name = "workqueue")]
    WorkQueue,
    /// Keep messages until age/size limits; several consumer groups may read them.
    Limits,
    /// Keep a message while any consumer still has interest in it.
    Interest,
}

impl From<Retention> for stream::RetentionPolicy {
    fn from(r: Retention) -> Self {
        match r {
            Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
        }
    }
}

/// Stream settings shared by every binary (each a flag and an environment variable).
#[derive(Debug, Clone, Args)]
pub struct StreamSettings {
    /// Name of the JetStream stream that stores updates.
    #[arg(long = "stream", env = "TGPIPE_STREAM", default_value = DEFAULT_STREAM)]
    pub name: String,
    /// Name of the dead-letter stream.
    #[arg(long = "dlq-stream", env = "TGPIPE_DLQ_STREAM", default_value = DEFAULT_DLQ_STREAM)]
    pub dlq_name: String,
    /// JetStream de-duplication window. Telegram retries a failed delivery within
    /// seconds to minutes; JetStream keeps every id of the window in memory, so it is
    /// short by default (older duplicates are caught by the worker's per-chat memory).
    #[arg(long, env = "TGPIPE_DEDUPE_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub dedupe_window: Duration,
    /// How long an unconsumed update is kept. Telegram itself gives up after 24 hours.
    #[arg(long, env = "TGPIPE_MAX_AGE", default_value = "24h", value_parser = parse_duration)]
    pub max_age: Duration,
    /// How long dead letters are kept.
    #[arg(long, env = "TGPIPE_DLQ_MAX_AGE", default_value = "14d", value_parser = parse_duration)]
    pub dlq_max_age: Duration,
    /// Retention policy of the update stream.
    #[arg(
        long,
        env = "TGPIPE_RETENTION",
        value_enum,
        default_value = "workqueue"
    )]
    pub retention: Retention,
    /// Stream replicas (1 for a single NATS server, 3 for a cluster).
    #[arg(long, env = "TGPIPE_STREAM_REPLICAS", default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
    /// Size limit of the update stream in bytes (-1: none). When full, new writes are
    /// refused (the ingress answers 503 and Telegram retries) rather than old updates dropped.
    #[arg(long, env = "TGPIPE_STREAM_MAX_BYTES", default_value_t = -1, allow_hyphen_values = true)]
    pub max_bytes: i64,
    /// Durable timers (nats-server 2.12+): the update stream keeps each timer until
    /// JetStream fires it into its chat's shard. Needs a stream without a size limit
    /// (`TGPIPE_STREAM_MAX_BYTES=-1`): message schedules cannot refuse writes when full.
    #[arg(long, env = "TGPIPE_TIMERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub timers: bool,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            name: DEFAULT_STREAM.to_owned(),
            dlq_name: DEFAULT_DLQ_STREAM.to_owned(),
            dedupe_window: Duration::from_secs(120),
            max_age: Duration::from_secs(24 * 3600),
            dlq_max_age: Duration::from_secs(14 * 24 * 3600),
            retention: Retention::WorkQueue,
            replicas: 1,
            max_bytes: -1,
            timers: true,
        }
    }
}

impl StreamSettings {
    /// Settings for a stream of the given name with every other value at its default
    /// (tests use a unique name per test).
    pub fn named(name: &str) -> StreamSettings {
        StreamSettings {
            name: name.to_owned(),
            dlq_name: format!("{name}_DLQ"),
            ..StreamSettings::default()
        }
    }

    /// The JetStream configuration of the update stream.
    pub fn updates_config(&self) -> stream::Config {
        let mut config = stream::Config {
            name: self.name.clone(),
            description: Some(
                "tgpipe: raw Telegram updates, tg.<bot_id>.<update_type>.<shard>; durable timers, tgtimer.at.<bot_id>.<shard>.<slot>".into(),
            ),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            retention: self.retention.into(),
            storage: stream::StorageType::File,
            duplicate_window: self.dedupe_window,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            num_replicas: usize::from(self.replicas),
            // When the stream is full, refuse new writes: the ingress answers 503 and
            // Telegram retries later, instead of silently dropping the oldest updates.
            // Without a size limit nothing is ever discarded, and message schedules
            // (which refuse `new`) can be allowed.
            discard: if self.timers_in_stream() {
                stream::DiscardPolicy::Old
            } else {
                stream::DiscardPolicy::New
            },
            allow_message_schedules: self.timers_in_stream(),
            // A waiting timer replaced by one of the same name rolls the old one up.
            allow_rollup: self.timers_in_stream(),
            ..Default::default()
        };
        if self.timers_in_stream() {
            config.subjects.push(format!("{TIMER_SUBJECT_PREFIX}.>"));
        }
        config
    }

    /// Whether the update stream keeps durable timers: they are on and the stream has no
    /// size limit.
    pub fn timers_in_stream(&self) -> bool {
        self.timers && self.max_bytes < 0
    }

    /// The JetStream configuration of the dead-letter stream.
    pub fn dlq_config(&self) -> stream::Config {
        stream::Config {
            name: self.dlq_name.clone(),
            description: Some("tgpipe: dead letters, tgdlq.<bot_id>.<update_type>".into()),
            subjects: vec![format!("{DLQ_SUBJECT_PREFIX}.>")],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            duplicate_window: self.dedupe_window,
            max_age: self.dlq_max_age,
            max_bytes: -1,
            num_replicas: usize::from(self.replicas),
            // `dlq list` reads letters by sequence with direct gets.
            allow_direct: true,
            ..Default::default()
        }
    }
}

/// Why provisioning a stream failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot create or update stream `{stream}`: {source}")]
pub struct ProvisionError {
    /// The stream's name.
    pub stream: String,
    /// What JetStream answered.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// What [`provision_streams_with`] does to a stream that exists with other settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changes {
    /// Leave it as it is and log the difference: what every process does at start, so a
    /// pod started with other defaults never reconfigures (say, downgrades the replicas
    /// of) a stream an operator set up.
    Keep,
    /// Update it to the settings: the `provision --apply` commands.
    Apply,
}

/// The settings of `want` that `have` does not match, as `name: have -> want`.
pub fn stream_differences(have: &stream::Config, want: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! cmp {
        ($($field:ident),*) => {$(
            if have.$field != want.$field {
                out.push(format!(
                    concat!(stringify!($field), ": {:?} -> {:?}"),
                    have.$field, want.$field
                ));
            }
        )*};
    }
    cmp!(
        subjects,
        retention,
        num_replicas,
        max_age,
        max_bytes,
        duplicate_window,
        discard,
        allow_direct
    );
    // Schedules cannot be turned off again: a stream that has them and is not asked for
    // them is no difference.
    if want.allow_message_schedules && !have.allow_message_schedules {
        out.push("allow_message_schedules: false -> true".to_owned());
    }
    out
}

/// Creates the update and dead-letter streams that are missing. An existing stream
/// with other settings is left as it is, and the difference logged at WARN.
pub async fn provision_streams(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<(), ProvisionError> {
    provision_streams_with(js, settings, Changes::Keep).await
}

/// Creates the streams that are missing and, with [`Changes::Apply`], updates existing
/// ones to `settings`.
///
/// Some settings cannot change on an existing stream (for example the retention policy);
/// JetStream's refusal is returned as is, naming the stream.
pub async fn provision_streams_with(
    js: &jetstream::Context,
    settings: &StreamSettings,
    changes: Changes,
) -> Result<(), ProvisionError> {
    for config in [settings.updates_config(), settings.dlq_config()] {
        let name = config.name.clone();
        let err = |e: Box<dyn std::error::Error + Send + Sync>| ProvisionError {
            stream: name.clone(),
            source: e,
        };
        match js.get_stream(&name).await {
            Ok(existing) => {
                let diff = stream_differences(&existing.cached_info().config, &config);
                if diff.is_empty() {
                    continue;
                }
                match changes {
                    Changes::Apply => {
                        tracing::info!(stream = %name, changes = ?diff, "updating stream");
                        js.update_stream(config)
                            .await
                            .map_err(|e| err(Box::new(e)))?;
                    }
                    Changes::Keep => tracing::warn!(
                        stream = %name,
                        differences = ?diff,
                        "stream exists with other settings; left as it is (`provision --apply` changes it)"
                    ),
                }
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref je)
                    if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                js.create_stream(config)
                    .await
                    .map_err(|e| err(Box::new(e)))?;
            }
            Err(e) => return Err(err(Box::new(e))),
        }
    }
    Ok(())
}

/// Parses durations such as `500ms`, `30s`, `2m`, `24h`, `14d` (a bare number is seconds).
///
/// ```
/// use std::time::Duration;
/// use tgpipe_shared::stream::parse_duration;
///
/// assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert!(parse_duration("2 weeks").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s, 2m, 24h"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{s}` is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!("`{s}` has an unknown unit (use ms, s, m, h or d)")),
    }
}
