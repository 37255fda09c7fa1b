//! The worker binary's command line: every setting is a flag and an environment variable
//! (what Kubernetes gives), validated at start-up with a clear message and exit code 64.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tgpipe_shared::config::{NatsArgs, TelemetryArgs, split_list};
use tgpipe_shared::stream::{StreamSettings, parse_duration};
use tgpipe_shared::{BotId, UpdateKind};

use super::lane::{Lane, LaneError};
use crate::bot::{Bot, DEFAULT_API_URL};

/// `tgpipe-worker`-style command line shared by every bot binary built on the library.
#[derive(Debug, Parser)]
#[command(
    about = "A tgpipe worker: consumes Telegram updates from JetStream and runs the bot's handlers.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings of `run`, when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The commands of a worker binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the lane's updates and handle them (the default).
    Run(Box<RunArgs>),
    /// Create or update the streams and this lane's consumer, then exit (a Helm hook or
    /// an init step, so that pods start against a ready stream).
    Provision(Box<RunArgs>),
    /// Inspect and replay dead letters.
    Dlq(Box<DlqArgs>),
}

/// The bots this process serves.
#[derive(Debug, Clone, Args)]
pub struct BotArgs {
    /// Bot tokens, comma separated (`123:ABC,456:DEF`); the bot id in a subject picks one.
    #[arg(long = "bot-tokens", env = "TGPIPE_BOT_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,
    /// A file with the tokens in the same format (comma or newline separated), as
    /// mounted from a Kubernetes Secret.
    #[arg(
        long = "bot-tokens-file",
        env = "TGPIPE_BOT_TOKENS_FILE",
        conflicts_with = "tokens"
    )]
    pub tokens_file: Option<std::path::PathBuf>,
    /// Base URL of the Bot API (a local Bot API server or a stand-in in tests).
    #[arg(long = "api-url", env = "TGPIPE_API_URL", default_value = DEFAULT_API_URL)]
    pub api_url: String,
}

/// Why the bot settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum BotsError {
    /// No token was given.
    #[error(
        "TGPIPE_BOT_TOKENS (or TGPIPE_BOT_TOKENS_FILE) is required: the tokens of the bots this worker answers for"
    )]
    Missing,
    /// The token file cannot be read.
    #[error(transparent)]
    File(#[from] tgpipe_shared::config::ListFileError),
    /// A token is malformed (its position is given, never its value).
    #[error("token #{0} of TGPIPE_BOT_TOKENS is not `<bot_id>:<secret>`")]
    Invalid(usize),
    /// Two tokens of one bot.
    #[error("TGPIPE_BOT_TOKENS names bot {0} twice")]
    Duplicate(BotId),
    /// The API URL does not parse.
    #[error("TGPIPE_API_URL is not a URL: {0}")]
    ApiUrl(String),
}

impl BotArgs {
    /// The `Bot` handles by bot id.
    pub fn bots(&self) -> Result<HashMap<BotId, Bot>, BotsError> {
        let tokens = match (&self.tokens, &self.tokens_file) {
            (_, Some(path)) => tgpipe_shared::config::read_list_file(path)?,
            (Some(tokens), None) => tokens.clone(),
            (None, None) => return Err(BotsError::Missing),
        };
        reqwest::Url::parse(&self.api_url).map_err(|e| BotsError::ApiUrl(e.to_string()))?;
        let mut bots = HashMap::new();
        for (i, token) in split_list(&tokens).into_iter().enumerate() {
            let bot =
                Bot::with_api_url(token, &self.api_url).map_err(|_| BotsError::Invalid(i + 1))?;
            if bots.insert(bot.id(), bot.clone()).is_some() {
                return Err(BotsError::Duplicate(bot.id()));
            }
        }
        if bots.is_empty() {
            return Err(BotsError::Missing);
        }
        Ok(bots)
    }
}

/// Settings of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Streams.
    #[command(flatten)]
    pub stream: StreamSettings,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Bots.
    #[command(flatten)]
    pub bots: BotArgs,
    /// Name of this lane; pods of one lane share its durable consumer.
    #[arg(long, env = "TGPIPE_LANE", default_value = "default")]
    pub lane: String,
    /// Update kinds of this lane, comma separated (`message,edited_message`); `all`
    /// (the default) or an empty value takes every kind, including kinds this version does
    /// not know.
    #[arg(long = "lane-kinds", env = "TGPIPE_LANE_KINDS", default_value = "all")]
    pub lane_kinds: String,
    /// Handlers running at once in this pod.
    #[arg(long, env = "TGPIPE_CONCURRENCY", default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Unacknowledged updates the lane's consumer allows across all its pods; 0 means
    /// `concurrency` x 16 (room for 16 pods before the server holds deliveries back).
    #[arg(long, env = "TGPIPE_MAX_ACK_PENDING", default_value_t = 0)]
    pub max_ack_pending: u32,
    /// Deliveries of an update before it is dead-lettered.
    #[arg(long, env = "TGPIPE_MAX_DELIVER", default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_deliver: u32,
    /// How long the server waits for an acknowledgement before redelivering; handlers
    /// that run longer keep their update with in-progress acknowledgements.
    #[arg(long, env = "TGPIPE_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// First delay of a retried (nak'ed) update; it doubles with every delivery.
    #[arg(long, env = "TGPIPE_RETRY_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub retry_delay: Duration,
    /// Longest delay of a retried update.
    #[arg(long, env = "TGPIPE_RETRY_MAX_DELAY", default_value = "5m", value_parser = parse_duration)]
    pub retry_max_delay: Duration,
    /// Redis URL (FSM, recent-update memory).
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Lifetime of FSM state and data after their last write (`3600`, `7d`); none by
    /// default. Used when the runtime gives the dispatcher its Redis FSM.
    #[arg(long, env = "TGPIPE_FSM_TTL", value_parser = parse_duration)]
    pub fsm_ttl: Option<Duration>,
    /// Whether updates of one FSM key are handled one at a time across all pods (a Redis
    /// lease per key). On by default; turning it off saves a round trip per update and
    /// gives up that guarantee.
    #[arg(long, env = "TGPIPE_FSM_ISOLATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub fsm_isolation: bool,
    /// Finished `update_id`s remembered per chat to skip duplicates older than the
    /// stream's dedupe window; 0 disables the memory.
    #[arg(long, env = "TGPIPE_SEEN_CAP", default_value_t = 64)]
    pub seen_cap: u32,
    /// How long a chat's memory of finished updates lives after its last update.
    #[arg(long, env = "TGPIPE_SEEN_TTL", default_value = "25h", value_parser = parse_duration)]
    pub seen_ttl: Duration,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "TGPIPE_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,
    /// How long in-flight handlers may finish after SIGTERM.
    #[arg(long, env = "TGPIPE_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Create or update the streams at start (`false` when an operator provisions them).
    #[arg(long, env = "TGPIPE_PROVISION", default_value_t = true, action = clap::ArgAction::Set)]
    pub provision: bool,
    /// Shards of the update subjects (must match the ingress).
    #[arg(long, env = "TGPIPE_SHARDS", default_value = "64")]
    pub shards: NonZeroU16,
}

impl RunArgs {
    /// The lane this process serves.
    pub fn lane(&self) -> Result<Lane, LaneError> {
        let given = self.lane_kinds.trim();
        // Empty is what the chart renders for a catch-all lane.
        let kinds = if given.is_empty() || given.eq_ignore_ascii_case("all") {
            None
        } else {
            let mut kinds = Vec::new();
            for k in split_list(&self.lane_kinds) {
                // Checked as given: `from_field` would make any string subject-safe.
                if !tgpipe_shared::kind::is_subject_token(k) {
                    return Err(LaneError::BadKind(k.to_owned()));
                }
                let kind = UpdateKind::from_field(k);
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
            if kinds.is_empty() {
                return Err(LaneError::NoKinds);
            }
            Some(kinds)
        };
        Lane::new(&self.lane, kinds)
    }

    /// `max_ack_pending` of the lane's consumer.
    pub fn max_ack_pending(&self) -> i64 {
        if self.max_ack_pending == 0 {
            i64::from(self.concurrency) * 16
        } else {
            i64::from(self.max_ack_pending)
        }
    }
}

/// `dlq` commands.
#[derive(Debug, Args)]
pub struct DlqArgs {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Streams.
    #[command(flatten)]
    pub stream: StreamSettings,
    /// Shards of the update subjects (must match the ingress).
    #[arg(long, env = "TGPIPE_SHARDS", default_value = "64", global = true)]
    pub shards: NonZeroU16,
    /// What to do.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// What to do with dead letters.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters: sequence, bot, kind, update id, deliveries and error.
    List {
        /// Only this bot's.
        #[arg(long)]
        bot: Option<u64>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Publish dead letters back into the update stream and remove them from the DLQ.
    Replay {
        /// Sequences to replay (as `dlq list` shows them).
        #[arg(long = "seq", value_delimiter = ',', required_unless_present = "all")]
        seqs: Vec<u64>,
        /// Replay every dead letter (of `--bot`, if given).
        #[arg(long, conflicts_with = "seqs")]
        all: bool,
        /// Only this bot's.
        #[arg(long)]
        bot: Option<u64>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(flags: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["worker"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).map(|c| c.run)
    }

    #[test]
    fn lane_kinds_all_empty_or_listed() {
        for all in ["all", "ALL", "", "  "] {
            let lane = run_args(&["--lane-kinds", all]).unwrap().lane().unwrap();
            assert_eq!(lane.kinds(), None, "{all:?}");
        }
        let lane = run_args(&[
            "--lane",
            "pay",
            "--lane-kinds",
            "pre_checkout_query, shipping_query,pre_checkout_query",
        ])
        .unwrap()
        .lane()
        .unwrap();
        assert_eq!(
            lane.kinds().unwrap(),
            [UpdateKind::PreCheckoutQuery, UpdateKind::ShippingQuery]
        );
        // A kind this version does not know is still a lane kind: it is carried, not refused.
        let lane = run_args(&["--lane-kinds", "hologram"])
            .unwrap()
            .lane()
            .unwrap();
        assert_eq!(lane.kinds().unwrap()[0].as_str(), "hologram");
        let e = run_args(&["--lane-kinds", "message,tg.>"])
            .unwrap()
            .lane()
            .unwrap_err();
        assert_eq!(e, LaneError::BadKind("tg.>".into()));
        let e = run_args(&["--lane-kinds", ",,"])
            .unwrap()
            .lane()
            .unwrap_err();
        assert_eq!(e, LaneError::NoKinds);
    }

    #[test]
    fn bot_tokens_from_flag_or_file_are_checked() {
        let bots = run_args(&["--bot-tokens", "12:AAA, 34:BBB"])
            .unwrap()
            .bots
            .bots()
            .unwrap();
        assert_eq!(bots.len(), 2);
        assert!(bots.contains_key(&BotId(12)) && bots.contains_key(&BotId(34)));
        let e = run_args(&["--bot-tokens", "12:AAA,nonsense"])
            .unwrap()
            .bots
            .bots()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "token #2 of TGPIPE_BOT_TOKENS is not `<bot_id>:<secret>`"
        );
        assert!(
            !e.to_string().contains("AAA"),
            "tokens never appear in errors"
        );
        let e = run_args(&["--bot-tokens", "12:AAA,12:BBB"])
            .unwrap()
            .bots
            .bots()
            .unwrap_err();
        assert!(matches!(e, BotsError::Duplicate(BotId(12))));
        assert!(matches!(
            run_args(&[]).unwrap().bots.bots(),
            Err(BotsError::Missing)
        ));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# tokens\n56:CCC\n78:DDD\n").unwrap();
        let path = file.to_str().unwrap();
        let bots = run_args(&["--bot-tokens-file", path])
            .unwrap()
            .bots
            .bots()
            .unwrap();
        assert_eq!(bots.len(), 2);
        let missing = dir.path().join("absent");
        let e = run_args(&["--bot-tokens-file", missing.to_str().unwrap()])
            .unwrap()
            .bots
            .bots()
            .unwrap_err();
        assert!(e.to_string().contains("absent"), "{e}");
    }

    #[test]
    fn numbers_and_durations_are_validated() {
        assert!(run_args(&["--concurrency", "0"]).is_err());
        assert!(run_args(&["--max-deliver", "0"]).is_err());
        assert!(run_args(&["--ack-wait", "soon"]).is_err());
        let a = run_args(&["--concurrency", "10", "--shutdown-grace", "25s"]).unwrap();
        assert_eq!(a.max_ack_pending(), 160);
        assert_eq!(a.shutdown_grace, Duration::from_secs(25));
    }
}
