//! The worker binary's command line: every setting is a flag and an environment variable
//! (what Kubernetes gives), validated at start-up with a clear message and exit code 64.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tgpipe_shared::config::{
    BotSecretsArgs, NatsArgs, RedisArgs, SecretString, ShardArgs, TelemetryArgs, split_list,
};
use tgpipe_shared::registry::RegistrySettings;
use tgpipe_shared::stream::{StreamSettings, parse_duration};
use tgpipe_shared::{BotId, UpdateKind};

use super::consume::{AckSettings, Limits};
use super::group::GroupSettings;
use super::lane::{ConsumerSettings, Lane, LaneError};
use super::registry::RemovedPolicy;
use tgpipe_bot::RedisConnection;

use tgpipe::bot::{Bot, DEFAULT_API_URL, Rate, RateLimits};

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
    /// Create the streams, the ownership bucket and this lane's partition consumers that
    /// are missing, then exit (a Helm hook or an init step, so that pods start against a
    /// ready stream). Existing ones with other settings are left as they are unless
    /// `--apply` is given.
    Provision(Box<ProvisionArgs>),
    /// Inspect and replay dead letters.
    Dlq(Box<DlqArgs>),
    /// Manage the bot's webhook at Telegram (`set`, `info`, `delete`).
    Webhook(Box<WebhookArgs>),
    /// Long-poll `getUpdates` (no HTTPS needed): handle updates in this process, or
    /// publish them into the stream as the ingress would (`--publish`).
    Poll(Box<PollCommandArgs>),
    /// Print a new random secret token for `webhook set` and the ingress.
    Secret,
    /// Manage the bot registry: `add`, `list`, `pause`, `resume`, `remove`,
    /// `rotate-secret`.
    Bots(Box<BotsArgs>),
}

/// `bots` settings.
#[derive(Debug, Args)]
pub struct BotsArgs {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Streams (their replicas are the bucket's, when it is created).
    #[command(flatten)]
    pub stream: StreamSettings,
    /// The registry.
    #[command(flatten)]
    pub registry: RegistrySettings,
    /// Base URL of the Bot API (`getMe`, `setWebhook`, `deleteWebhook`).
    #[arg(long = "api-url", env = "TGPIPE_API_URL", default_value = DEFAULT_API_URL, global = true)]
    pub api_url: String,
    /// What to do.
    #[command(subcommand)]
    pub command: super::registry::BotsCommand,
}

/// `provision` settings.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// Change existing streams and consumers to these settings (replicas, limits, ack
    /// wait, partition filters), and replace a lane consumer from before partitioned
    /// consumption. Without it nothing that exists is changed; differences are printed.
    #[arg(long)]
    pub apply: bool,
    /// Everything else, as for `run`.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `webhook` settings.
#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// Bots.
    #[command(flatten)]
    pub bots: BotArgs,
    /// Which bot of `TGPIPE_BOT_TOKENS` (needed when there are several).
    #[arg(long, env = "TGPIPE_BOT_ID", global = true)]
    pub bot_id: Option<u64>,
    /// The ingress's `<bot_id>:<secret>` list, where `webhook set` finds the bot's secret
    /// when `--secret` is not given; read as strictly as the ingress reads it.
    #[command(flatten)]
    pub ingress: BotSecretsArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: crate::set_webhook::WebhookCommand,
}

/// `poll` settings.
#[derive(Debug, Args)]
pub struct PollCommandArgs {
    /// Bots.
    #[command(flatten)]
    pub bots: BotArgs,
    /// Which bot of `TGPIPE_BOT_TOKENS` (needed when there are several; one poller per
    /// bot).
    #[arg(long, env = "TGPIPE_BOT_ID")]
    pub bot_id: Option<u64>,
    /// The polling loop.
    #[command(flatten)]
    pub poll: crate::poll::PollArgs,
    /// NATS (with `--publish`).
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Streams (with `--publish`).
    #[command(flatten)]
    pub stream: StreamSettings,
    /// Shards of the update subjects (with `--publish`; must match the workers).
    #[command(flatten)]
    pub shards: ShardArgs,
    /// Redis (the FSM, when handling in this process).
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The FSM, when handling in this process.
    #[command(flatten)]
    pub fsm: FsmArgs,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// The bots this process serves.
#[derive(Debug, Clone, Args)]
pub struct BotArgs {
    /// Bot tokens, comma separated (`123:ABC,456:DEF`); the bot id in a subject picks one.
    #[arg(long = "bot-tokens", env = "TGPIPE_BOT_TOKENS", hide_env_values = true)]
    pub tokens: Option<SecretString>,
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
    /// Outgoing rate limits: `telegram` (Telegram's published limits, shared by all pods
    /// through Redis, as are 429 pauses) or `off` (no limiter and nothing shared: only
    /// for a Bot API stand-in or a local Bot API server that does not limit).
    #[arg(
        long,
        env = "TGPIPE_RATE_LIMITS",
        value_enum,
        default_value = "telegram"
    )]
    pub rate_limits: RateLimitMode,
    /// Messages a second over all chats.
    #[arg(long, env = "TGPIPE_RATE_PER_BOT", default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_per_bot: u32,
    /// Messages a second with `allow_paid_broadcast`.
    #[arg(long, env = "TGPIPE_RATE_PAID", default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_paid: u32,
    /// Messages a second into one private chat.
    #[arg(long, env = "TGPIPE_RATE_PER_CHAT", default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_per_chat: u32,
    /// Messages a minute into one group or channel.
    #[arg(long, env = "TGPIPE_RATE_PER_GROUP", default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_per_group: u32,
    /// Pods sharing the bot: when Redis is unreachable, each keeps to this share of the
    /// bot-wide rate.
    #[arg(long, env = "TGPIPE_EXPECTED_PODS", default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub expected_pods: u32,
}

/// Outgoing rate limiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RateLimitMode {
    /// Telegram's limits (configurable with the `TGPIPE_RATE_*` settings).
    Telegram,
    /// No limits.
    Off,
}

/// How a lane's partitions are shared by its pods (`TGPIPE_BALANCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Balance {
    /// By waiting updates: partitions move from the busiest pod to the least busy one.
    Backlog,
    /// By partition count alone (rendezvous hashing).
    Count,
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
    /// `--bot-id` names a bot without a token.
    #[error("no token for bot {0} in TGPIPE_BOT_TOKENS")]
    NoSuchBot(BotId),
    /// Several tokens and no `--bot-id`.
    #[error("TGPIPE_BOT_TOKENS has several bots: say which with --bot-id (TGPIPE_BOT_ID)")]
    WhichBot,
    /// The API URL does not parse.
    #[error("TGPIPE_API_URL is not a URL: {0}")]
    ApiUrl(#[source] tgpipe_shared::BoxError),
}

impl BotArgs {
    /// The rate limits these settings describe.
    pub fn limits(&self) -> RateLimits {
        match self.rate_limits {
            RateLimitMode::Off => RateLimits::unlimited(),
            RateLimitMode::Telegram => RateLimits {
                per_bot: Rate::per_second(self.rate_per_bot),
                paid_broadcast: Rate::per_second(self.rate_paid),
                per_private_chat: Rate::per_second(self.rate_per_chat),
                per_group: Rate::per_minute(self.rate_per_group),
                expected_pods: self.expected_pods,
                ..RateLimits::default()
            },
        }
    }

    /// The one bot these settings name: `bot_id`'s, or the only one.
    pub fn bot(
        &self,
        bot_id: Option<u64>,
        redis: Option<&RedisConnection>,
    ) -> Result<Bot, BotsError> {
        let bots = self.bots(redis)?;
        match bot_id {
            Some(id) => bots
                .get(&BotId(id))
                .cloned()
                .ok_or(BotsError::NoSuchBot(BotId(id))),
            None if bots.len() == 1 => Ok(bots.into_values().next().expect("one bot")),
            None => Err(BotsError::WhichBot),
        }
    }

    /// The `Bot` handles by bot id, sharing rate limits and 429 pauses through `redis`
    /// when given.
    pub fn bots(&self, redis: Option<&RedisConnection>) -> Result<HashMap<BotId, Bot>, BotsError> {
        let settings = self.settings(self.tokens()?)?;
        Ok(settings.build_all(redis))
    }

    /// The tokens of `TGPIPE_BOT_TOKENS` / `TGPIPE_BOT_TOKENS_FILE`, each checked.
    pub fn tokens(&self) -> Result<BotTokens, BotsError> {
        let tokens = match (&self.tokens, &self.tokens_file) {
            (_, Some(path)) => tgpipe_shared::config::read_list_file(path)?,
            (Some(tokens), None) => tokens.expose().to_owned(),
            (None, None) => return Err(BotsError::Missing),
        };
        let mut checked = BTreeMap::new();
        for (i, token) in split_list(&tokens).into_iter().enumerate() {
            let id = BotId::from_token(token).ok_or(BotsError::Invalid(i + 1))?;
            if checked.insert(id, SecretString::from(token)).is_some() {
                return Err(BotsError::Duplicate(id));
            }
        }
        if checked.is_empty() {
            return Err(BotsError::Missing);
        }
        Ok(BotTokens(checked))
    }

    /// How the Bot API clients of `tokens` are built: the API URL (checked), the rate
    /// limits and whether they are shared.
    pub fn settings(&self, tokens: BotTokens) -> Result<BotSettings, BotsError> {
        reqwest::Url::parse(&self.api_url).map_err(|e| BotsError::ApiUrl(e.into()))?;
        Ok(BotSettings {
            tokens,
            api_url: self.api_url.clone(),
            limits: self.limits(),
            share_limits: self.rate_limits == RateLimitMode::Telegram,
            once_ttl: None,
            http: tgpipe::bot::http_client(),
        })
    }
}

/// Bot tokens, each `<bot_id>:<secret>`, no bot twice. `Debug` shows the bot ids only.
#[derive(Clone, Default)]
pub struct BotTokens(BTreeMap<BotId, SecretString>);

impl BotTokens {
    /// The bots, by id.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = BotId> + '_ {
        self.0.keys().copied()
    }
}

impl std::fmt::Debug for BotTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys().map(|id| id.0)).finish()
    }
}

/// The bots of a worker, checked: their tokens and how their Bot API clients are built.
#[derive(Debug, Clone)]
pub struct BotSettings {
    /// The static bots (`TGPIPE_BOT_TOKENS`); empty when all come from the registry.
    pub tokens: BotTokens,
    /// Base URL of the Bot API (a URL: checked).
    pub api_url: String,
    /// Outgoing rate limits.
    pub limits: RateLimits,
    /// Whether the limits and 429 pauses are shared between pods through Redis
    /// (`TGPIPE_RATE_LIMITS=telegram`).
    pub share_limits: bool,
    /// How long the record of an update's successful calls is kept in Redis, so that
    /// the update's next run does not make them again (`None`: no record,
    /// `TGPIPE_EFFECTS_ONCE=false`).
    pub once_ttl: Option<Duration>,
    /// The one HTTP client (and connection pool) of every bot of the worker.
    pub http: reqwest::Client,
}

impl BotSettings {
    /// A `Bot` for `token`, sharing its limits through `redis` when given and
    /// [`BotSettings::share_limits`]; `None` for a token that is not `<bot_id>:<secret>`.
    pub fn build(&self, token: &str, redis: Option<&RedisConnection>) -> Option<Bot> {
        let mut builder = Bot::builder(token)
            .http_client(self.http.clone())
            .api_url(&self.api_url)
            .limits(self.limits.clone());
        // With limits off there is nothing to share: no Redis round trip per call.
        if let (Some(redis), true) = (redis, self.share_limits) {
            builder = builder.redis(redis.clone());
        }
        if let (Some(redis), Some(ttl)) = (redis, self.once_ttl) {
            builder = builder.middleware(super::effects::OncePerUpdate::new(redis.clone(), ttl));
        }
        builder.build().ok()
    }

    /// The static bots' `Bot` handles by bot id.
    pub fn build_all(&self, redis: Option<&RedisConnection>) -> HashMap<BotId, Bot> {
        self.tokens
            .0
            .iter()
            // `BotArgs::tokens` checked every token the way `build` does.
            .filter_map(|(id, token)| Some((*id, self.build(token.expose(), redis)?)))
            .collect()
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
    /// The bot registry (bots added at runtime, next to TGPIPE_BOT_TOKENS).
    #[command(flatten)]
    pub registry: RegistrySettings,
    /// What happens to the updates still in the stream of a bot removed from the
    /// registry: `dead-letter` (with the reason; `dlq replay` brings them back) or
    /// `drain` (handled with its token as before).
    #[arg(
        long,
        env = "TGPIPE_REMOVED_POLICY",
        value_enum,
        default_value = "dead-letter"
    )]
    pub removed_policy: super::registry::RemovedPolicy,
    /// Name of this lane; pods of one lane share its durable consumer.
    #[arg(long, env = "TGPIPE_LANE", default_value = "default")]
    pub lane: String,
    /// Update kinds of this lane, comma separated (`message,edited_message`); `all`
    /// (the default) or an empty value takes every kind, including kinds this version does
    /// not know. A kind this version does not know is refused as a likely typo unless
    /// written `custom:<name>`.
    #[arg(long = "lane-kinds", env = "TGPIPE_LANE_KINDS", default_value = "all")]
    pub lane_kinds: String,
    /// Start even when this lane takes some but not all of the update kinds whose
    /// handlers use FSM state. FSM state is fenced per lane, so a conversation split over
    /// two lanes can have two of its updates handled at once.
    #[arg(long, env = "TGPIPE_ALLOW_FSM_SPLIT", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_fsm_split: bool,
    /// Handlers running at once in this pod (run slots; one update of a chat at a time).
    /// A slot is held only while a handler runs: retry waits, Telegram pauses and rate
    /// limits give it back. Bots with work waiting take turns.
    // 128: a chat's handler mostly waits on the Bot API, and held updates are capped
    // apart (TGPIPE_MAX_HELD); with the stand-in at 50 ms, 64 capped one pod at ~860
    // replies/s and 128 gave ~1260 (loadtest/bench/scale.sh).
    #[arg(long, env = "TGPIPE_CONCURRENCY", default_value_t = 128,
        value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Run slots one bot may hold at once; 0 (the default) means no cap beyond
    /// `TGPIPE_CONCURRENCY`. Bots share slots in turns either way.
    #[arg(long, env = "TGPIPE_MAX_RUNNING_PER_BOT", default_value_t = 0)]
    pub max_running_per_bot: u32,
    /// Updates held in memory in this pod, queued or running; more are parked (only their
    /// stream sequence kept, read again in their turn). Pulling never stops for it.
    #[arg(long, env = "TGPIPE_MAX_HELD", default_value_t = 8192,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_held: u32,
    /// Updates held in memory for one chat; more of that chat are parked, and its
    /// partition goes on serving the other chats.
    #[arg(long, env = "TGPIPE_MAX_HELD_PER_CHAT", default_value_t = 2048,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_held_per_chat: u32,
    /// Unacknowledged updates one partition's consumer allows; 0 means the larger of
    /// `TGPIPE_MAX_HELD` and 32768. Updates past a chat's or the pod's memory cap are
    /// parked (about 100 bytes each), so this, not memory, bounds how far one chat's
    /// flood can run ahead of its partition's other chats.
    #[arg(long, env = "TGPIPE_MAX_ACK_PENDING", default_value_t = 0)]
    pub max_ack_pending: u32,
    /// Partitions of the lane: the units of ownership that are balanced over its pods
    /// (shard `s` is in partition `s % partitions`). At most `TGPIPE_SHARDS` and 256;
    /// by default one per shard, so that any pod count up to the shard count gets an
    /// even share. A running lane moves to a new count once every pod asks for it.
    #[arg(long, env = "TGPIPE_PARTITIONS",
        value_parser = clap::value_parser!(u16).range(1..=i64::from(super::lane::MAX_PARTITIONS)))]
    pub partitions: Option<u16>,
    /// How the lane's partitions are shared by its pods. `backlog`: one pod moves
    /// partitions from the pod with the most waiting updates to the one with the fewest,
    /// so that every pod finishes its share together. `count`: every pod holds the same
    /// number of partitions, by hashing alone.
    #[arg(long, env = "TGPIPE_BALANCE", value_enum, default_value_t = Balance::Backlog)]
    pub balance: Balance,
    /// How long a pod that stopped heartbeating (killed, partitioned away) keeps its
    /// partitions; after it they move to the live pods.
    #[arg(long, env = "TGPIPE_LEASE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// The NATS KV bucket of lane members and partition leases.
    #[arg(long, env = "TGPIPE_GROUP_BUCKET", default_value = super::group::DEFAULT_BUCKET)]
    pub group_bucket: String,
    /// This pod's name in its lane's group (a random suffix is added); the host name
    /// (the pod's name in Kubernetes) by default.
    #[arg(long, env = "TGPIPE_MEMBER")]
    pub member: Option<String>,
    /// How long a transiently failing update is retried in place before it is
    /// dead-lettered (after at least `TGPIPE_MAX_DELIVER` attempts): an outage shorter
    /// than this costs latency, never an update.
    #[arg(long, env = "TGPIPE_RETRY_BUDGET", default_value = "10m", value_parser = parse_duration)]
    pub retry_budget: Duration,
    /// Longest dispatch of one update (middleware, filters, handler); past it the attempt
    /// fails transiently, so a handler stuck on an external call does not hold its chat
    /// forever.
    #[arg(long, env = "TGPIPE_HANDLER_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub handler_timeout: Duration,
    /// When an update is too old to run, per kind: one Telegram no longer takes an
    /// answer to (a callback query after 150 s, an inline query after 30 s, a
    /// pre-checkout query after 10 s, counted from its arrival at the ingress) is
    /// settled as expired instead. `kind=duration` pairs over these defaults, `kind=0`
    /// for none, or `none` for no deadlines at all.
    #[arg(long, env = "TGPIPE_DEADLINES", default_value = "", value_parser = super::Deadlines::parse, hide_default_value = true)]
    pub deadlines: super::Deadlines,
    /// The webhook watchdog.
    #[command(flatten)]
    pub webhook_watch: WebhookWatchArgs,
    /// Run the kinds that have a deadline (callback, inline and pre-checkout queries:
    /// someone is waiting for the answer) before the bot's other updates when both wait
    /// for a run slot. Each chat keeps its order either way.
    #[arg(long, env = "TGPIPE_INTERACTIVE_FIRST", default_value_t = false, action = clap::ArgAction::Set)]
    pub interactive_first: bool,
    /// How long an album (a media group) waits for its next part before its
    /// `media_group` handler runs with the parts it has; 0 turns collection off (the
    /// parts reach the message handlers one by one). Only for a bot with an album
    /// handler.
    #[arg(long, env = "TGPIPE_ALBUM_QUIET", default_value = "1s", value_parser = parse_duration)]
    pub album_quiet: Duration,
    /// Attempts at a failing update before it is dead-lettered (once the retry budget is
    /// spent too).
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
    /// Redis (FSM, recent-update memory).
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The FSM the runtime provides.
    #[command(flatten)]
    pub fsm: FsmArgs,
    /// Finished `update_id`s remembered per chat to skip duplicates older than the
    /// stream's dedupe window; 0 disables the memory.
    #[arg(long, env = "TGPIPE_SEEN_CAP", default_value_t = 64)]
    pub seen_cap: u32,
    /// How long a chat's memory of finished updates lives after its last update.
    #[arg(long, env = "TGPIPE_SEEN_TTL", default_value = "25h", value_parser = parse_duration)]
    pub seen_ttl: Duration,
    /// Keep a record of each update's successful Bot API calls in Redis, so that a
    /// retried or taken-over update answers them from the record instead of making them
    /// again (kept until the update is acknowledged, at most `TGPIPE_SEEN_TTL`).
    #[arg(long, env = "TGPIPE_EFFECTS_ONCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub effects_once: bool,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "TGPIPE_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,
    /// How long the drain after SIGTERM may take: running handlers finish, the rest goes
    /// back to the stream. At least `TGPIPE_HANDLER_TIMEOUT` + 5s, so that a handler is
    /// never cut off while its partition passes to another pod; by default that + 10s.
    #[arg(long, env = "TGPIPE_SHUTDOWN_GRACE", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Create or update the streams at start (`false` when an operator provisions them).
    #[arg(long, env = "TGPIPE_PROVISION", default_value_t = true, action = clap::ArgAction::Set)]
    pub provision: bool,
    /// Shards of the update subjects (must match the ingress).
    #[command(flatten)]
    pub shards: ShardArgs,
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
                // A kind this version does not know is a typo unless marked as custom.
                let (k, custom) = match k.strip_prefix("custom:") {
                    Some(k) => (k.trim(), true),
                    None => (k, false),
                };
                // Checked as given: `from_field` would make any string subject-safe.
                if !tgpipe_shared::kind::is_subject_token(k) {
                    return Err(LaneError::BadKind(k.to_owned()));
                }
                let kind = UpdateKind::from_field(k);
                // Fired durable timers are a kind of their own (`timer`).
                if !custom && !kind.is_known() && k != tgpipe_shared::timer::TIMER_KIND {
                    return Err(LaneError::UnknownKind(k.to_owned()));
                }
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

    /// The webhook watchdog's settings: the static bots' secrets read and checked.
    fn webhook_watch(&self) -> Result<super::webhook_watch::WatchSettings, ConfigError> {
        let w = &self.webhook_watch;
        let secrets = w
            .secrets
            .secrets()
            .map_err(ConfigError::WatchSecrets)?
            .iter()
            .map(|(id, secret)| (id, secret.expose().to_owned()))
            .collect();
        Ok(super::webhook_watch::WatchSettings {
            interval: w.interval,
            repair: w.repair,
            statics: super::webhook_watch::StaticHooks {
                url: w.url.clone(),
                secrets,
            },
            used_kinds: Vec::new(),
        })
    }

    /// The drain's limit: `TGPIPE_SHUTDOWN_GRACE`, or the handler timeout + 10s.
    pub fn shutdown_grace(&self) -> Result<Duration, ConfigError> {
        let least = self.handler_timeout + GRACE_OVER_HANDLER;
        match self.shutdown_grace {
            None => Ok(self.handler_timeout + 2 * GRACE_OVER_HANDLER),
            Some(grace) if grace >= least => Ok(grace),
            Some(grace) => Err(ConfigError::ShutdownGrace {
                grace,
                handler_timeout: self.handler_timeout,
                least,
            }),
        }
    }

    /// `max_ack_pending` of each partition's consumer.
    pub fn max_ack_pending(&self) -> i64 {
        if self.max_ack_pending == 0 {
            i64::from(self.max_held.max(DEFAULT_MAX_ACK_PENDING))
        } else {
            i64::from(self.max_ack_pending)
        }
    }

    /// The lane's partition count: `TGPIPE_PARTITIONS`, else one per shard.
    pub fn partitions(&self) -> u16 {
        self.partitions
            .unwrap_or_else(|| self.shards.count().get().min(super::lane::MAX_PARTITIONS))
    }

    /// How the lane's partition consumers are set up.
    pub fn consumer_settings(&self) -> Result<ConsumerSettings, ConfigError> {
        if self.partitions() > self.shards.count().get() {
            return Err(ConfigError::PartitionsOverShards {
                partitions: self.partitions(),
                shards: self.shards.count().get(),
            });
        }
        if self.lease_ttl < MIN_LEASE_TTL {
            return Err(ConfigError::LeaseTtl);
        }
        Ok(ConsumerSettings {
            shards: self.shards.count().get(),
            partitions: self.partitions(),
            max_ack_pending: self.max_ack_pending(),
            ack_wait: self.ack_wait,
            pin_timeout: self.lease_ttl,
        })
    }

    /// How the lane's pods share its partitions.
    pub fn group_settings(&self) -> GroupSettings {
        GroupSettings {
            bucket: self.group_bucket.clone(),
            lease_ttl: self.lease_ttl,
            replicas: usize::from(self.stream.replicas),
            partitions: self.partitions(),
            balance: self.balance == Balance::Backlog,
            balance_slack: u64::from(self.concurrency),
        }
    }

    /// Checks every setting of `run` and returns what [`super::serve`] runs; nothing
    /// connects before this passed, so a misconfigured pod stops at once with exit code
    /// 64 and the setting named, never halfway through its start.
    ///
    /// ```
    /// use clap::Parser;
    /// use tgpipe_worker::runtime::Cli;
    ///
    /// let cli = Cli::try_parse_from(["bot", "--bot-tokens", "123:ABC", "--partitions", "8"]).unwrap();
    /// let config = cli.run.validate().unwrap();
    /// assert_eq!(config.listen.port(), 9090); // TGPIPE_LISTEN's default
    /// let cli = Cli::try_parse_from(["bot", "--bot-tokens", "123:ABC", "--partitions", "128", "--shards", "64"]).unwrap();
    /// assert!(cli.run.validate().unwrap_err().to_string().starts_with("TGPIPE_PARTITIONS"));
    /// ```
    pub fn validate(self) -> Result<WorkerConfig, ConfigError> {
        let lane = self.lane()?;
        let shutdown_grace = self.shutdown_grace()?;
        if self.stream.retention == tgpipe_shared::stream::Retention::Limits {
            return Err(ConfigError::LimitsRetention {
                stream: self.stream.name.clone(),
            });
        }
        let consumers = self.consumer_settings()?;
        let webhook_watch = self.webhook_watch()?;
        let tokens = match self.bots.tokens() {
            Ok(tokens) => tokens,
            // With the registry, bots may all come from it.
            Err(BotsError::Missing) if self.registry.registry => BotTokens::default(),
            Err(e) => return Err(e.into()),
        };
        let mut bots = self.bots.settings(tokens)?;
        bots.once_ttl = self.effects_once.then_some(self.seen_ttl);
        // Parses the URL without connecting.
        redis::Client::open(self.redis.redis_url.as_str()).map_err(ConfigError::RedisUrl)?;
        Ok(WorkerConfig {
            group: self.group_settings(),
            limits: Limits {
                concurrency: self.concurrency as usize,
                max_running_per_bot: self.max_running_per_bot as usize,
                max_held: self.max_held as usize,
                max_held_per_chat: self.max_held_per_chat as usize,
            },
            acks: AckSettings {
                max_deliver: self.max_deliver,
                ack_wait: self.ack_wait,
                retry_delay: self.retry_delay,
                retry_max_delay: self.retry_max_delay,
                retry_budget: self.retry_budget,
                handler_timeout: self.handler_timeout,
                deadlines: self.deadlines,
                interactive_first: self.interactive_first,
                album_quiet: self.album_quiet,
            },
            webhook_watch,
            seen: (self.seen_cap > 0).then_some((self.seen_cap, self.seen_ttl)),
            allow_fsm_split: self.allow_fsm_split,
            lane,
            consumers,
            bots,
            listen: self.listen,
            nats: self.nats,
            stream: self.stream,
            telemetry: self.telemetry,
            registry: self.registry,
            removed_policy: self.removed_policy,
            member: self.member,
            redis: self.redis,
            fsm: self.fsm,
            shutdown_grace,
            provision: self.provision,
        })
    }
}

/// The least `max_ack_pending` of a partition's consumer by default: a chat's flood
/// parks within it while the partition's other chats are still delivered.
const DEFAULT_MAX_ACK_PENDING: u32 = 32_768;

/// What the drain needs beyond the handler timeout: settling the last updates, handing
/// the leases over and flushing the acknowledgements.
const GRACE_OVER_HANDLER: Duration = Duration::from_secs(5);

/// Shortest `TGPIPE_LEASE_TTL` (a pod renews its membership and leases every third of
/// it).
const MIN_LEASE_TTL: Duration = Duration::from_secs(2);

/// A checked configuration of `run` ([`RunArgs::validate`]): what [`super::serve`]
/// runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics` (`TGPIPE_LISTEN`).
    pub listen: SocketAddr,
    /// NATS connection.
    pub(crate) nats: NatsArgs,
    /// Streams.
    pub(crate) stream: StreamSettings,
    /// Logs and traces.
    pub(crate) telemetry: TelemetryArgs,
    /// Redis (FSM, rate limits, recent-update memory); the URL parses.
    pub(crate) redis: RedisArgs,
    /// The FSM the runtime provides.
    pub(crate) fsm: FsmArgs,
    /// The static bots and how Bot API clients are built.
    pub(crate) bots: BotSettings,
    /// The bot registry.
    pub(crate) registry: RegistrySettings,
    /// What happens to the updates of a bot removed from the registry.
    pub(crate) removed_policy: RemovedPolicy,
    /// The lane this process serves.
    pub(crate) lane: Lane,
    /// Whether the lane may split the kinds that share FSM state (`TGPIPE_ALLOW_FSM_SPLIT`).
    pub(crate) allow_fsm_split: bool,
    /// How the lane's partition consumers are set up.
    pub(crate) consumers: ConsumerSettings,
    /// How the lane's pods share its partitions.
    pub(crate) group: GroupSettings,
    /// How much the pod holds and runs.
    pub(crate) limits: Limits,
    /// How updates are acknowledged and retried.
    pub(crate) acks: AckSettings,
    /// The webhook watchdog (the handlers' kinds are filled in by `serve`).
    pub(crate) webhook_watch: super::webhook_watch::WatchSettings,
    /// This pod's name in its lane's group (the host name when `None`).
    pub(crate) member: Option<String>,
    /// The memory of finished updates per chat: how many, and for how long (`None`:
    /// off).
    pub(crate) seen: Option<(u32, Duration)>,
    /// How long in-flight handlers may finish after SIGTERM.
    pub(crate) shutdown_grace: Duration,
    /// Whether to create the streams that are missing at start.
    pub(crate) provision: bool,
}

/// The webhook watchdog's settings (one pod of the deployment asks Telegram about every
/// bot's webhook).
#[derive(Debug, Clone, Args)]
pub struct WebhookWatchArgs {
    /// How often the watching pod asks `getWebhookInfo` of every active bot and exports
    /// what Telegram says (`tgpipe_webhook_*`); `0` turns the watch off.
    #[arg(id = "webhook_check_interval", long = "webhook-check-interval", env = "TGPIPE_WEBHOOK_CHECK_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Set a webhook again when its URL or update kinds drifted: a registry bot's by
    /// rotating its secret, a static bot's with its secret from `TGPIPE_BOTS`.
    #[arg(id = "webhook_repair", long = "webhook-repair", env = "TGPIPE_WEBHOOK_REPAIR", default_value_t = true, action = clap::ArgAction::Set)]
    pub repair: bool,
    /// The static bots' webhook URL: the ingress's public base URL (`/webhook/<bot_id>`
    /// is added) or a URL with `{bot_id}`. Without it static bots are reported, not
    /// checked for drift (registry bots carry their own).
    #[arg(id = "webhook_url", long = "webhook-url", env = "TGPIPE_WEBHOOK_URL")]
    pub url: Option<String>,
    /// The static bots' secrets, as the ingress has them: needed to set a static bot's
    /// webhook again.
    #[command(flatten)]
    pub secrets: BotSecretsArgs,
}

/// Why the settings of `run` are unusable. Each message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `TGPIPE_LANE` / `TGPIPE_LANE_KINDS`.
    #[error(transparent)]
    Lane(#[from] LaneError),
    /// More partitions than shards.
    #[error(
        "TGPIPE_PARTITIONS (--partitions) is {partitions} but there are only {shards} shards (TGPIPE_SHARDS)"
    )]
    PartitionsOverShards {
        /// `TGPIPE_PARTITIONS`.
        partitions: u16,
        /// `TGPIPE_SHARDS`.
        shards: u16,
    },
    /// A lease too short to hold.
    #[error("TGPIPE_LEASE_TTL (--lease-ttl) must be at least 2s")]
    LeaseTtl,
    /// A drain shorter than a handler may run.
    #[error(
        "TGPIPE_SHUTDOWN_GRACE (--shutdown-grace) is {grace:?} but must be at least TGPIPE_HANDLER_TIMEOUT ({handler_timeout:?}) + 5s = {least:?}: a handler cut off at shutdown would run again on the partition's next owner"
    )]
    ShutdownGrace {
        /// `TGPIPE_SHUTDOWN_GRACE`.
        grace: Duration,
        /// `TGPIPE_HANDLER_TIMEOUT`.
        handler_timeout: Duration,
        /// The least grace allowed.
        least: Duration,
    },
    /// The update stream keeps acknowledged updates.
    #[error(
        "the update stream `{stream}` has limits retention (TGPIPE_RETENTION=limits): it keeps acknowledged updates, and a partition's takeover would run them again; use workqueue (the default) or interest"
    )]
    LimitsRetention {
        /// The stream.
        stream: String,
    },
    /// The bot tokens or the Bot API URL.
    #[error(transparent)]
    Bots(#[from] BotsError),
    /// `TGPIPE_BOTS` / `TGPIPE_BOTS_FILE` given to the webhook watchdog.
    #[error("the webhook watchdog's secrets: {0}")]
    WatchSecrets(#[source] tgpipe_shared::config::BotSecretsError),
    /// `REDIS_URL` does not parse.
    #[error("REDIS_URL (--redis-url): {0}")]
    RedisUrl(#[source] redis::RedisError),
    /// The lane takes some but not all of the kinds whose handlers share FSM state.
    #[error(
        "lane `{lane}` (TGPIPE_LANE_KINDS) takes {taken} but not {left}, whose handlers share FSM state ({observers}): FSM state is fenced per lane, so keep these kinds in one lane, or set TGPIPE_ALLOW_FSM_SPLIT=true to split them on purpose"
    )]
    FsmSplit {
        /// The lane.
        lane: String,
        /// The FSM kinds it takes, comma separated.
        taken: String,
        /// The FSM kinds it leaves to other lanes, comma separated.
        left: String,
        /// The observers that use FSM state, as `router/kind`.
        observers: String,
    },
}

/// Refuses a lane that takes some but not all of the kinds whose observers use FSM
/// state (`fsm_observers`: `(router, kind)`, from the dispatcher), unless `allow`.
pub(crate) fn check_fsm_split(
    lane: &Lane,
    fsm_observers: &[(String, UpdateKind)],
    allow: bool,
) -> Result<(), ConfigError> {
    let mut kinds: Vec<&UpdateKind> = fsm_observers.iter().map(|(_, k)| k).collect();
    kinds.sort();
    kinds.dedup();
    let (taken, left): (Vec<&UpdateKind>, Vec<&UpdateKind>) =
        kinds.into_iter().partition(|k| lane.takes(k));
    if taken.is_empty() || left.is_empty() {
        return Ok(());
    }
    let list = |kinds: &[&UpdateKind]| {
        let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        names.join(", ")
    };
    let observers: Vec<String> = fsm_observers
        .iter()
        .map(|(router, kind)| format!("{router}/{kind}"))
        .collect();
    let e = ConfigError::FsmSplit {
        lane: lane.name().to_owned(),
        taken: list(&taken),
        left: list(&left),
        observers: observers.join(", "),
    };
    if allow {
        tracing::warn!("TGPIPE_ALLOW_FSM_SPLIT=true: {e}");
        return Ok(());
    }
    Err(e)
}

/// The Redis FSM the runtime gives a dispatcher that needs one and has none.
#[derive(Debug, Clone, Args)]
pub struct FsmArgs {
    /// Lifetime of FSM state and data after their last write (`3600`, `7d`); `0`: they
    /// never expire. 30 days by default, so that Redis grows with the users active in
    /// that time, not with every user ever seen.
    #[arg(long, env = "TGPIPE_FSM_TTL", default_value = "30d", value_parser = parse_duration)]
    pub fsm_ttl: Duration,
    /// Whether updates of one FSM key are handled one at a time across all pods (a Redis
    /// lease per key). On by default; turning it off saves a round trip per update and
    /// gives up that guarantee.
    #[arg(long, env = "TGPIPE_FSM_ISOLATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub fsm_isolation: bool,
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
    #[command(flatten)]
    pub shards: ShardArgs,
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

    /// Each bot used to build its own HTTP client: 10,000 bots, 10,000 connection pools
    /// and at least as many connections to the Bot API.
    #[tokio::test]
    async fn the_bots_of_a_worker_share_one_connection_pool() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let sink = tgpipe_testkit::sink::Sink::start(Default::default())
            .await
            .unwrap();
        // A proxy in front of the stand-in that counts the connections it is given.
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let (connections, upstream) = (Arc::new(AtomicUsize::new(0)), sink.addr());
        let counted = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = proxy.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        let tokens: Vec<String> = (1..=50).map(|id| format!("{id}:secret")).collect();
        let args = run_args(&[
            "--bot-tokens",
            &tokens.join(","),
            "--api-url",
            &format!("http://{proxy_addr}"),
            "--rate-limits",
            "off",
        ])
        .unwrap();
        let settings = args.bots.settings(args.bots.tokens().unwrap()).unwrap();
        let bots = settings.build_all(None);
        assert_eq!(bots.len(), 50);
        for bot in bots.values() {
            bot.send_text(5, "hi").await.unwrap();
        }
        assert_eq!(sink.calls().len(), 50);
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "50 bots, one after the other, over one kept-alive connection"
        );
    }

    #[test]
    fn the_command_line_is_well_formed_with_the_shared_argument_groups() {
        use clap::CommandFactory;
        // Duplicate ids (a flattened group declared twice in one command) panic here.
        Cli::command().debug_assert();
        assert_eq!(
            run_args(&["--shards", "8"]).unwrap().shards.count().get(),
            8
        );
        assert!(run_args(&["--shards", "0"]).is_err());
    }

    /// A worker whose lane split `message` from `callback_query`, both handled with FSM
    /// state, started without a word; it now refuses, naming the observers and kinds.
    #[test]
    fn a_lane_splitting_kinds_that_share_fsm_state_started_without_a_word() {
        use std::sync::Arc;
        use tgpipe::frankenstein::inline_mode::InlineQuery;
        use tgpipe::frankenstein::types::{CallbackQuery, Message};
        use tgpipe::{Dispatcher, FsmContext, Router};

        async fn ask(_m: Arc<Message>, _fsm: FsmContext) {}
        async fn press(_q: Arc<CallbackQuery>, _fsm: FsmContext) {}
        async fn inline(_q: Arc<InlineQuery>) {}
        let mut form = Router::new("form");
        form.message(ask);
        let mut buttons = Router::new("buttons");
        buttons.callback_query(press);
        buttons.inline_query(inline);
        form.include_router(buttons);
        let observers = Dispatcher::builder(form).fsm_observers();
        assert_eq!(
            observers,
            [
                ("form".to_owned(), UpdateKind::Message),
                ("buttons".to_owned(), UpdateKind::CallbackQuery)
            ]
        );
        let lane = |kinds: &str| run_args(&["--lane", "l", "--lane-kinds", kinds]);
        let e = check_fsm_split(&lane("message").unwrap().lane().unwrap(), &observers, false)
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("lane `l`"), "{msg}");
        assert!(
            msg.contains("takes message but not callback_query"),
            "{msg}"
        );
        assert!(
            msg.contains("form/message, buttons/callback_query"),
            "{msg}"
        );
        assert!(msg.contains("TGPIPE_ALLOW_FSM_SPLIT"), "{msg}");
        // All of them, none of them, or on purpose: it starts.
        for kinds in ["message,callback_query", "all", "inline_query"] {
            let lane = lane(kinds).unwrap().lane().unwrap();
            check_fsm_split(&lane, &observers, false).unwrap();
        }
        let split = run_args(&[
            "--lane-kinds",
            "callback_query",
            "--allow-fsm-split",
            "true",
        ])
        .unwrap();
        assert!(split.allow_fsm_split);
        check_fsm_split(&split.lane().unwrap(), &observers, split.allow_fsm_split).unwrap();
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
        // A kind this version does not know is a lane kind when marked as custom ...
        let lane = run_args(&["--lane-kinds", "custom:hologram"])
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
    fn lane_kind_typo_is_refused() {
        // ... and a typo otherwise.
        let e = run_args(&["--lane-kinds", "message,bogus"])
            .unwrap()
            .lane()
            .unwrap_err();
        assert_eq!(e, LaneError::UnknownKind("bogus".into()));
        assert!(e.to_string().contains("custom:bogus"), "{e}");
    }

    #[test]
    fn bot_tokens_from_flag_or_file_are_checked() {
        let bots = run_args(&["--bot-tokens", "12:AAA, 34:BBB"])
            .unwrap()
            .bots
            .bots(None)
            .unwrap();
        assert_eq!(bots.len(), 2);
        assert!(bots.contains_key(&BotId(12)) && bots.contains_key(&BotId(34)));
        let e = run_args(&["--bot-tokens", "12:AAA,nonsense"])
            .unwrap()
            .bots
            .bots(None)
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
            .bots(None)
            .unwrap_err();
        assert!(matches!(e, BotsError::Duplicate(BotId(12))));
        assert!(matches!(
            run_args(&[]).unwrap().bots.bots(None),
            Err(BotsError::Missing)
        ));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# tokens\n56:CCC\n78:DDD\n").unwrap();
        let path = file.to_str().unwrap();
        let bots = run_args(&["--bot-tokens-file", path])
            .unwrap()
            .bots
            .bots(None)
            .unwrap();
        assert_eq!(bots.len(), 2);
        let missing = dir.path().join("absent");
        let e = run_args(&["--bot-tokens-file", missing.to_str().unwrap()])
            .unwrap()
            .bots
            .bots(None)
            .unwrap_err();
        assert!(e.to_string().contains("absent"), "{e}");
    }

    #[test]
    fn debug_of_the_settings_redacts_tokens_and_secrets() {
        let cli = Cli::try_parse_from([
            "worker",
            "--bot-tokens",
            "12:SECRET-TOKEN-A,34:SECRET-TOKEN-B",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("SECRET-TOKEN"), "{shown}");
        let cli = Cli::try_parse_from(["worker", "webhook", "--bots", "12:hunter2-secret", "info"])
            .unwrap();
        assert!(!format!("{cli:?}").contains("hunter2"));
        let config = run_args(&[
            "--bot-tokens",
            "12:SECRET-TOKEN-A",
            "--redis-url",
            "redis://:redis-password@redis:6379",
        ])
        .unwrap()
        .validate()
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("SECRET-TOKEN"), "{shown}");
        assert!(!shown.contains("redis-password"), "{shown}");
        assert!(shown.contains("tokens: {12}"), "{shown}");
    }

    #[test]
    fn run_is_validated_into_a_config_before_anything_connects() {
        let config = run_args(&["--bot-tokens", "12:AAA", "--seen-cap", "0"])
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(config.bots.tokens.ids().collect::<Vec<_>>(), [BotId(12)]);
        assert_eq!(config.consumers.partitions, 64);
        let by_shard = run_args(&["--bot-tokens", "12:AAA", "--shards", "16"])
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(by_shard.consumers.partitions, 16, "one per shard");
        assert_eq!(config.limits.concurrency, 128);
        assert_eq!(config.seen, None);
        assert!(config.bots.share_limits);
        // With the registry (the default) the static bots may be none; without, not.
        let config = run_args(&[]).unwrap().validate().unwrap();
        assert_eq!(config.bots.tokens.ids().len(), 0);
        let e = run_args(&["--registry", "false"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(matches!(e, ConfigError::Bots(BotsError::Missing)), "{e}");
        for (flags, names) in [
            (&["--lane-kinds", "bogus"][..], "TGPIPE_LANE_KINDS"),
            (&["--partitions", "65"], "TGPIPE_PARTITIONS"),
            (&["--lease-ttl", "1s"], "TGPIPE_LEASE_TTL"),
            (&["--bot-tokens", "nonsense"], "TGPIPE_BOT_TOKENS"),
            (&["--api-url", "not a url"], "TGPIPE_API_URL"),
            (&["--redis-url", "http://redis:6379"], "REDIS_URL"),
        ] {
            let e = run_args(flags).unwrap().validate().unwrap_err();
            assert!(e.to_string().contains(names), "{flags:?}: {e}");
        }
    }

    #[test]
    fn bots_add_never_shows_the_token() {
        let cli = Cli::try_parse_from([
            "worker",
            "bots",
            "add",
            "--token",
            "77:SECRET-TOKEN-C",
            "--url",
            "https://hooks.example.com",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("SECRET-TOKEN"), "{shown}");
        assert!(shown.contains("hooks.example.com"), "{shown}");
        let cli = Cli::try_parse_from(["worker", "bots", "rotate-secret", "77"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Bots(_))));
    }

    #[test]
    fn numbers_and_durations_are_validated() {
        assert!(run_args(&["--concurrency", "0"]).is_err());
        assert!(run_args(&["--max-deliver", "0"]).is_err());
        assert!(run_args(&["--ack-wait", "soon"]).is_err());
        let a = run_args(&["--max-held", "1000", "--shutdown-grace", "25s"]).unwrap();
        assert!(matches!(
            a.shutdown_grace(),
            Err(ConfigError::ShutdownGrace { .. })
        ));
        let b = run_args(&["--handler-timeout", "20s", "--shutdown-grace", "25s"]).unwrap();
        assert_eq!(b.shutdown_grace().unwrap(), Duration::from_secs(25));
        let c = run_args(&["--handler-timeout", "40s"]).unwrap();
        assert_eq!(c.shutdown_grace().unwrap(), Duration::from_secs(50));
        assert_eq!(a.max_ack_pending(), 32_768);
        let big = run_args(&["--max-held", "50000"]).unwrap();
        assert_eq!(big.max_ack_pending(), 50_000);
        let set = run_args(&["--max-ack-pending", "1000"]).unwrap();
        assert_eq!(set.max_ack_pending(), 1000);
        assert!(
            run_args(&["--partitions", "65"])
                .unwrap()
                .consumer_settings()
                .is_err()
        );
        assert!(run_args(&["--partitions", "0"]).is_err());
        assert_eq!(a.shutdown_grace, Some(Duration::from_secs(25)));
    }
}
