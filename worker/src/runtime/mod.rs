//! The worker runtime: turns a [`Dispatcher`] into a pod.
//!
//! [`run`] gives every bot binary the same command line (see [`Cli`]): `run` (the
//! default) consumes the lane's updates from JetStream, runs the dispatcher and
//! acknowledges; `dlq list|replay` inspects and re-publishes dead letters
//! ([`dlq_command`]); `bots ...` changes the bot registry ([`run_bots_command`]).
//! A program with its own `main` validates [`RunArgs`] into a [`WorkerConfig`] and
//! calls [`serve`].
//! Operations endpoints `/healthz`, `/readyz` and `/metrics` listen on `TGPIPE_LISTEN`.
//! See `docs/operations.md` for lanes, acknowledgement, dead letters and draining.

mod balance;
mod config;
mod consume;
mod deadlines;
mod dlq;
mod effects;
mod group;
mod lane;
mod metrics;
mod redis_probe;
mod registry;
mod seen;
mod timers;
mod webhook_watch;

// The runtime's public surface: the command line and its argument groups, the validated
// configuration `serve` takes, and the commands a program embedding the worker calls.
pub use self::config::{
    Balance, BotArgs, BotsArgs, Cli, Command, ConfigError, DlqArgs, DlqCommand, FsmArgs,
    PollCommandArgs, ProvisionArgs, RateLimitMode, RunArgs, WebhookArgs, WebhookWatchArgs,
    WorkerConfig,
};
pub use self::deadlines::Deadlines;
pub use self::dlq::{DeadLetter, DlqError, command as dlq_command};
pub use self::registry::{BotsCommand, BotsCommandError, RemovedPolicy, run_bots_command};

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tgpipe_shared::BoxError;
use tgpipe_shared::config::{EXIT_CONFIG, parse_or_exit};
use tgpipe_shared::ops::{Check, Readiness};
use tgpipe_shared::stream::{Changes as StreamChanges, provision_streams, provision_streams_with};

use self::consume::Consumer;
use self::lane::{Changes, ensure_consumers};
use crate::set_webhook::WebhookCommand;
use tgpipe::dispatcher::{Dispatcher, DispatcherBuilder};
use tgpipe::fsm::{Fsm, Isolation, RedisStorage};
use tgpipe_bot::RedisConnection;
use tgpipe_shared::publish::Publisher;

/// Why the runtime stopped with an error.
///
/// Its [`kind`](RunError::kind) says what failed; its `source()` is the error of the
/// setting's parser or of the peer's client, whole (its message is the error's).
#[derive(Debug)]
pub struct RunError {
    kind: RunErrorKind,
    source: BoxError,
}

/// What stopped the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunErrorKind {
    /// A setting is unusable (exit code 64).
    Config,
    /// A peer (NATS, Redis, the listener) failed (exit code 1).
    Peer,
}

impl RunError {
    /// What failed.
    pub fn kind(&self) -> RunErrorKind {
        self.kind
    }

    fn config(e: impl Into<BoxError>) -> RunError {
        RunError {
            kind: RunErrorKind::Config,
            source: e.into(),
        }
    }

    fn exit_code(&self) -> ExitCode {
        match self.kind {
            RunErrorKind::Config => ExitCode::from(EXIT_CONFIG as u8),
            RunErrorKind::Peer => ExitCode::FAILURE,
        }
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

fn peer(e: impl Into<BoxError>) -> RunError {
    RunError {
        kind: RunErrorKind::Peer,
        source: e.into(),
    }
}

/// The whole bot process: parses the command line and environment, then runs the
/// command. `main` is one line:
///
/// ```no_run
/// # use tgpipe::{Dispatcher, Router};
/// #[tokio::main]
/// async fn main() -> std::process::ExitCode {
///     tgpipe_worker::run(Dispatcher::builder(Router::new("main"))).await
/// }
/// ```
///
/// When a handler or filter needs the FSM and the builder was given none, the runtime
/// adds a Redis FSM from `REDIS_URL`, `TGPIPE_FSM_TTL` and `TGPIPE_FSM_ISOLATION`. A
/// dispatcher that does not build (a missing dependency) stops the process with exit
/// code 64 and the reason.
pub async fn run(dispatcher: DispatcherBuilder) -> ExitCode {
    let cli: Cli = parse_or_exit();
    let result = match cli.command {
        None => run_worker(cli.run, dispatcher).await,
        Some(Command::Run(args)) => run_worker(*args, dispatcher).await,
        Some(Command::Dlq(args)) => run_dlq(*args).await,
        Some(Command::Provision(args)) => provision(&args).await,
        Some(Command::Webhook(args)) => webhook(*args, &dispatcher).await,
        Some(Command::Poll(args)) => poll(*args, dispatcher).await,
        Some(Command::Secret) => {
            println!("{}", crate::set_webhook::new_secret_token());
            Ok(())
        }
        Some(Command::Bots(args)) => run_bots(*args, &dispatcher).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

fn config_error(e: impl Into<BoxError>) -> RunError {
    RunError::config(e)
}

async fn run_worker(args: RunArgs, dispatcher: DispatcherBuilder) -> Result<(), RunError> {
    let config = args.validate().map_err(config_error)?;
    let _telemetry =
        tgpipe_shared::telemetry::init("tgpipe-worker", &config.telemetry).map_err(config_error)?;
    let ops = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| RunError::config(format!("cannot listen on {}: {e}", config.listen)))?;
    serve(config, dispatcher, ops, tgpipe_shared::shutdown::signal()).await
}

async fn provision(provision: &ProvisionArgs) -> Result<(), RunError> {
    // Not `validate`: provisioning needs no bot tokens, only the lane and its consumers.
    let args = &provision.run;
    let lane = args.lane().map_err(config_error)?;
    let settings = args.consumer_settings().map_err(config_error)?;
    let client = args
        .nats
        .connect("tgpipe-worker provision")
        .await
        .map_err(peer)?;
    let js = jetstream::new(client);
    let (streams, consumers) = if provision.apply {
        (StreamChanges::Apply, Changes::Apply)
    } else {
        (StreamChanges::Keep, Changes::Keep)
    };
    provision_streams_with(&js, &args.stream, streams)
        .await
        .map_err(peer)?;
    group::bucket(&js, &args.group_settings())
        .await
        .map_err(group_error)?;
    if args.registry.registry {
        // Both buckets, and the webhooks bucket brought up to date with the main one.
        tgpipe_shared::registry::Registry::provision(
            &js,
            &args.registry,
            usize::from(args.stream.replicas),
        )
        .await
        .map_err(peer)?;
    }
    let stream = js.get_stream(&args.stream.name).await.map_err(peer)?;
    // A lane laid out for another partition count keeps it: its running pods change it
    // when every one of them asks for the new count, keeping each chat's order.
    let runs = match lane::layout_in_force(&stream, &lane)
        .await
        .map_err(setup_error)?
    {
        lane::Layout::Complete(n) => Some(n),
        lane::Layout::Empty => Some(settings.partitions),
        lane::Layout::Changing => None,
    };
    if let Some(runs) = runs {
        let in_force = lane::ConsumerSettings {
            partitions: runs,
            ..settings
        };
        ensure_consumers(&stream, &lane, &in_force, consumers)
            .await
            .map_err(setup_error)?;
    }
    println!(
        "streams `{}` and `{}` ready; lane `{}` consumes {} in {} partitions ({}-p000 ...)",
        args.stream.name,
        args.stream.dlq_name,
        lane.name(),
        lane.filter_subjects().join(", "),
        runs.map_or_else(|| "changing".to_owned(), |n| n.to_string()),
        lane::CONSUMER_PREFIX.to_owned() + lane.name(),
    );
    if runs.is_some_and(|n| n != settings.partitions) || runs.is_none() {
        println!(
            "lane `{}` moves to {} partitions once every pod of it runs with TGPIPE_PARTITIONS={}",
            lane.name(),
            settings.partitions,
            settings.partitions,
        );
    }
    Ok(())
}

fn group_error(e: group::GroupError) -> RunError {
    match e {
        e @ group::GroupError::Ttl { .. } => RunError::config(e),
        e => peer(e),
    }
}

fn setup_error(e: lane::ConsumerSetupError) -> RunError {
    match e {
        lane::ConsumerSetupError::Lane(e) => RunError::config(e),
        e @ lane::ConsumerSetupError::Legacy(_) => RunError::config(e),
        e => peer(e),
    }
}

async fn webhook(args: WebhookArgs, dispatcher: &DispatcherBuilder) -> Result<(), RunError> {
    let bot = args.bots.bot(args.bot_id, None).map_err(config_error)?;
    // Read as strictly as the ingress reads it, whether `set` needs it or not: a list
    // the ingress would refuse is a configuration error here too.
    let ingress = args.ingress.secrets().map_err(config_error)?;
    let mut command = args.command.clone();
    if let WebhookCommand::Set(set) = &mut command
        && set.secret.is_none()
    {
        set.secret = ingress.get(bot.id()).map(|s| s.expose().to_owned());
    }
    let mut out = std::io::stdout();
    crate::set_webhook::run_webhook_command(
        &bot,
        &dispatcher.used_update_kinds(),
        command,
        &mut out,
    )
    .await
    .map_err(|e| match e {
        crate::set_webhook::WebhookCommandError::NoSecret
        | crate::set_webhook::WebhookCommandError::BadSecret
        | crate::set_webhook::WebhookCommandError::BadPort { .. } => RunError::config(e),
        e => peer(e),
    })
}

async fn poll(args: PollCommandArgs, dispatcher: DispatcherBuilder) -> Result<(), RunError> {
    let _telemetry = tgpipe_shared::telemetry::init("tgpipe-worker poll", &args.telemetry)
        .map_err(RunError::config)?;
    let bot = args.bots.bot(args.bot_id, None).map_err(RunError::config)?;
    let config = args.poll.config(&dispatcher.used_update_kinds());
    if args.poll.delete_webhook {
        crate::poll::delete_webhook(&bot).await.map_err(peer)?;
    }
    let shutdown = tgpipe_shared::shutdown::signal();
    let stats = if args.poll.publish {
        // The workers run the handlers; here they only say which kinds to ask for.
        let client = args
            .nats
            .connect("tgpipe-worker poll")
            .await
            .map_err(peer)?;
        provision_streams(&jetstream::new(client.clone()), &args.stream)
            .await
            .map_err(peer)?;
        let publisher = Publisher::new(client, Duration::from_secs(5));
        let sink = crate::poll::JetStreamSink::new(publisher, args.shards.count());
        crate::poll::poll(&bot, &sink, &config, shutdown).await
    } else {
        let redis = connect_redis(&args.redis.redis_url).await?;
        let timers = timers::NatsTimers::unavailable(
            "polling straight into the handlers keeps no timers: poll with --publish and run workers",
        );
        let dispatcher = prepare(dispatcher, &redis, &args.fsm, timers)?;
        let sink = crate::poll::DispatchSink::new(dispatcher);
        crate::poll::poll(&bot, &sink, &config, shutdown).await
    }
    .map_err(peer)?;
    tracing::info!(?stats, "polling stopped");
    Ok(())
}

/// The pod's one Redis connection: reconnected when dropped, and replaced when Redis
/// stops answering without a word (see [`RedisConnection`]).
async fn connect_redis(url: &str) -> Result<RedisConnection, RunError> {
    let client = redis::Client::open(redis_connection(url)?)
        .map_err(|e| RunError::config(format!("REDIS_URL: {e}")))?;
    RedisConnection::connect(client, redis_timeouts())
        .await
        .map_err(|e| peer(format!("cannot connect to Redis: {e}")))
}

/// `url` with the socket settings that notice a Redis gone without a word (a pod moved,
/// a host down: no RST ever comes): keepalive probes on an idle connection, and
/// `TCP_USER_TIMEOUT` on a busy one, whose sent commands go unacknowledged. Either
/// closes the socket, and the connection manager reconnects. A peer whose kernel still
/// ACKs (a black-holing proxy, a frozen server) is caught by [`RedisConnection`] instead.
fn redis_connection(url: &str) -> Result<redis::ConnectionInfo, RunError> {
    use redis::IntoConnectionInfo;
    use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};

    let info = url
        .into_connection_info()
        .map_err(|e| RunError::config(format!("REDIS_URL: {e}")))?;
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    let tcp = TcpSettings::default()
        .set_keepalive(keepalive)
        .set_user_timeout(Duration::from_secs(5));
    Ok(info.set_tcp_settings(tcp))
}

/// Every Redis call of the pod is bounded: 500 ms for an answer (the hot path waits for
/// it: the duplicate memory, FSM state, the calls' record), 500 ms to connect, and one
/// reconnection attempt per failure (the default six, doubling from 100 ms, held every
/// call for about 6 s while Redis refused connections).
fn redis_timeouts() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(REDIS_PATIENCE))
        .set_connection_timeout(Some(REDIS_PATIENCE))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// How long any one Redis call of the worker may take.
const REDIS_PATIENCE: Duration = Duration::from_millis(500);

/// Gives a dispatcher that needs the FSM and has none a Redis FSM, gives it the
/// worker's durable timers, and builds it.
fn prepare(
    dispatcher: DispatcherBuilder,
    redis: &RedisConnection,
    fsm: &FsmArgs,
    timers: tgpipe::timer::TimerService,
) -> Result<Dispatcher, RunError> {
    let dispatcher = dispatcher.state(timers);
    let dispatcher = if !dispatcher.has_fsm() && dispatcher.needs_fsm() {
        let ttl = (!fsm.fsm_ttl.is_zero()).then_some(fsm.fsm_ttl);
        let storage = RedisStorage::new(redis.clone()).ttl(ttl);
        let isolation = if fsm.fsm_isolation {
            Isolation::default()
        } else {
            Isolation::disabled()
        };
        dispatcher.fsm(Fsm::new(storage).isolation(isolation))
    } else {
        dispatcher
    };
    dispatcher.build().map_err(RunError::config)
}

async fn run_bots(args: config::BotsArgs, dispatcher: &DispatcherBuilder) -> Result<(), RunError> {
    reqwest::Url::parse(&args.api_url)
        .map_err(|e| RunError::config(format!("TGPIPE_API_URL is not a URL: {e}")))?;
    let client = args
        .nats
        .connect("tgpipe-worker bots")
        .await
        .map_err(peer)?;
    let js = jetstream::new(client.clone());
    let kv = tgpipe_shared::registry::Registry::open(
        &js,
        &args.registry,
        usize::from(args.stream.replicas),
        true,
    )
    .await
    .map_err(peer)?;
    let mut out = std::io::stdout();
    let result = registry::run_bots_command(
        &kv,
        &args.api_url,
        &dispatcher.used_update_kinds(),
        args.command,
        &mut out,
    )
    .await;
    // The registry writes are acknowledged; flushing is for good measure.
    let _ = client.flush().await;
    result.map_err(|e| match e {
        registry::BotsCommandError::BadToken
        | registry::BotsCommandError::NoToken(_)
        | registry::BotsCommandError::NoUrl(_) => RunError::config(e),
        e => peer(e),
    })
}

async fn run_dlq(args: config::DlqArgs) -> Result<(), RunError> {
    let client = args.nats.connect("tgpipe-worker dlq").await.map_err(peer)?;
    let js = jetstream::new(client);
    let mut out = std::io::stdout();
    dlq::command(
        &js,
        &args.stream.dlq_name,
        args.shards.count(),
        &args.command,
        &mut out,
    )
    .await
    .map_err(peer)
}

/// Runs a worker with a checked `config` ([`RunArgs::validate`]) until `shutdown`
/// resolves, serving `/healthz`, `/readyz` and `/metrics` on `ops`
/// ([`tgpipe_shared::ops`]); then drains (stops pulling, lets in-flight handlers finish
/// within the grace period) and returns. This is `run` without the command line, for
/// tests and for programs that embed the worker.
pub async fn serve(
    config: WorkerConfig,
    dispatcher: DispatcherBuilder,
    ops: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let lane = &config.lane;
    // Before anything connects: a lane that splits an FSM conversation is a setting error.
    config::check_fsm_split(lane, &dispatcher.fsm_observers(), config.allow_fsm_split)
        .map_err(config_error)?;
    let redis = connect_redis(&config.redis.redis_url).await?;
    let statics = config.bots.build_all(Some(&redis));
    let make_bot: registry::MakeBot = {
        let (settings, redis) = (config.bots.clone(), redis.clone());
        Box::new(move |token: &str| settings.build(token, Some(&redis)))
    };
    let bots = Arc::new(registry::BotDirectory::new(statics, make_bot));
    let timers = timers::NatsTimers::new(
        std::num::NonZeroU16::new(config.consumers.shards).unwrap_or(std::num::NonZeroU16::MIN),
    );
    let dispatcher = prepare(dispatcher, &redis, &config.fsm, timers.service())?;
    let checks = LaneChecks {
        nats: Check::new("NATS disconnected"),
        consumers: Check::new("the lane's consumers do not answer"),
    };
    let ready = Arc::new(Readiness::new([
        checks.nats.clone(),
        checks.consumers.clone(),
    ]));
    let ops_addr = ops.local_addr().map_err(peer)?;
    let ops_task = tokio::spawn(tgpipe_shared::ops::serve(
        ops,
        tgpipe_shared::ops::router(Arc::clone(&ready), metrics::install()),
    ));

    let client = config.nats.connect("tgpipe-worker").await.map_err(peer)?;
    let js = jetstream::new(client.clone());
    if config.provision {
        provision_streams(&js, &config.stream).await.map_err(peer)?;
    }
    timers.start(&js, &config.stream).await;
    let registry_watch =
        config.registry.registry.then(|| {
            let (js, settings, create) = (js.clone(), config.registry.clone(), config.provision);
            let replicas = usize::from(config.stream.replicas);
            let directory = Arc::clone(&bots);
            tgpipe_shared::registry::watch(
                move || {
                    let (js, settings) = (js.clone(), settings.clone());
                    async move {
                        tgpipe_shared::registry::bucket(&js, &settings, replicas, create).await
                    }
                },
                move |records| directory.update(records),
            )
        });
    let bucket = group::bucket(&js, &config.group)
        .await
        .map_err(group_error)?;
    let stream = js.get_stream(&config.stream.name).await.map_err(peer)?;
    // Acknowledged updates stay in a stream with limits retention, and a takeover's
    // window (the ack floor to the last delivery) would run them again.
    if stream.cached_info().config.retention == jetstream::stream::RetentionPolicy::Limits {
        return Err(RunError::config(ConfigError::LimitsRetention {
            stream: config.stream.name.clone(),
        }));
    }
    // The lane runs with the partition count its consumers are laid out for; a pod
    // started with another count asks for it (see `group`).
    let (runs, consumers) = match lane::layout_in_force(&stream, lane)
        .await
        .map_err(setup_error)?
    {
        lane::Layout::Changing => (0, Vec::new()),
        layout => {
            let runs = match layout {
                lane::Layout::Complete(n) => n,
                _ => config.consumers.partitions,
            };
            let settings = lane::ConsumerSettings {
                partitions: runs,
                ..config.consumers
            };
            let consumers = ensure_consumers(&stream, lane, &settings, Changes::Keep)
                .await
                .map_err(setup_error)?;
            (runs, consumers)
        }
    };
    if runs != 0 && runs != config.consumers.partitions {
        tracing::warn!(
            lane = %lane.name(),
            runs,
            wants = config.consumers.partitions,
            "the lane's consumers are laid out for another partition count: running with it until every pod of the lane asks for the new one"
        );
    }
    let base = config.member.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "worker".to_owned())
    });
    let member = group::member_id(&base);
    // One pod of the deployment watches the bots' webhooks.
    let watch_task = (!config.webhook_watch.interval.is_zero()).then(|| {
        let mut settings = config.webhook_watch.clone();
        settings.used_kinds = webhook_watch::kind_names(&dispatcher.used_update_kinds());
        tokio::spawn(
            webhook_watch::WebhookWatch {
                settings,
                group: bucket.clone(),
                lease_ttl: config.group.lease_ttl,
                member: member.clone(),
                bots: Arc::clone(&bots),
                js: js.clone(),
                registry: config
                    .registry
                    .registry
                    .then(|| (config.registry.clone(), usize::from(config.stream.replicas))),
            }
            .run(),
        )
    });
    let backlog = Arc::new(balance::Backlog::new(config.group.balance_slack));
    let group = group::Group::new(
        bucket,
        js.clone(),
        &config.stream.name,
        group::Consumers {
            stream: stream.clone(),
            lane: lane.clone(),
            settings: config.consumers,
            backlog: Arc::clone(&backlog),
        },
        runs,
        member.clone(),
        config.group.clone(),
    );
    let seen = config
        .seen
        .map(|(cap, ttl)| seen::Seen::new(redis.clone(), cap, ttl));
    tracing::info!(
        lane = %lane.name(),
        kinds = ?lane.kinds().map(|k| k.iter().map(|k| k.as_str().to_owned()).collect::<Vec<_>>()),
        concurrency = config.limits.concurrency,
        partitions = runs,
        wants = config.consumers.partitions,
        %member,
        static_bots = bots.statics().count(),
        registry = config.registry.registry,
        ops = %ops_addr,
        "consuming"
    );
    // Each bot learns its username once, so `/cmd@our_bot` matches from the first update
    // (a failure is logged; the first command with a mention asks again).
    for bot in bots.statics() {
        let bot = bot.clone();
        tokio::spawn(async move {
            if let Err(e) = bot.me().await {
                tracing::warn!(bot = %bot.id(), error = %e, "getMe failed; commands with a mention will ask again");
            }
        });
    }
    let owned = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let lane_consumers = Arc::new(std::sync::Mutex::new(consumers.clone()));
    let lag_task = tokio::spawn(watch_lag(
        Arc::clone(&lane_consumers),
        Arc::clone(&owned),
        (stream.clone(), backlog),
        client.clone(),
        lane.name().to_owned(),
        checks,
    ));
    let worker = Arc::new(Consumer {
        dispatcher: Arc::new(dispatcher),
        bots,
        removed_policy: config.removed_policy,
        js,
        client: client.clone(),
        owned,
        limits: config.limits,
        acks: config.acks.clone(),
        seen,
        redis: redis_probe::RedisProbe::new(redis.clone()),
        lane: lane.name().to_owned(),
        lane_consumers,
    });
    // The registry first (bounded by its grace): an update of a registry bot pulled
    // before the bot is known fails for want of its token and waits out retry delays.
    if let Some(registry) = &registry_watch {
        registry.ready().await;
    }
    let draining = Arc::clone(&ready);
    let shutdown = async move {
        shutdown.await;
        // Out of the Service's endpoints first, so no new work is routed here.
        draining.start_draining();
        tracing::info!("shutdown requested");
    };
    worker
        .run(stream, consumers, group, config.shutdown_grace, shutdown)
        .await;
    let flush_within = consume::FLUSH_RESERVE;
    lag_task.abort();
    // Its lease expires with the pod; the webhooks stay as they are.
    if let Some(t) = watch_task {
        t.abort();
    }
    // Acks are fire-and-forget publishes: flush them before the connection closes.
    // Nothing can be flushed without a connection: the server redelivers what was not
    // acknowledged.
    let connected = client.connection_state() == async_nats::connection::State::Connected;
    if connected && let Err(e) = tokio::time::timeout(flush_within, client.flush()).await {
        tracing::warn!(error = %e, "flush at shutdown timed out");
    }
    ops_task.abort();
    tracing::info!("stopped");
    Ok(())
}

/// What the lane watch reports into the pod's [`Readiness`].
struct LaneChecks {
    /// The NATS connection is up.
    nats: Check,
    /// The lane's consumers answer.
    consumers: Check,
}

/// Reports the lag of the partitions this pod owns (summed over the pods, the lane's
/// lag) and keeps readiness: NATS connected and the lane's consumers answering. While
/// this pod plans the lane, it reads every partition's backlog, every second, for the
/// plan; when the whole stream holds no more than the slack, one read of the stream
/// says there is nothing to balance.
async fn watch_lag(
    consumers: Arc<std::sync::Mutex<Vec<jetstream::consumer::PullConsumer>>>,
    owned: Arc<std::sync::Mutex<std::collections::BTreeSet<u16>>>,
    (mut stream, backlog): (jetstream::stream::Stream, Arc<balance::Backlog>),
    client: async_nats::Client,
    lane: String,
    checks: LaneChecks,
) {
    use futures::StreamExt;
    loop {
        let started = std::time::Instant::now();
        let mine = owned.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let all: Vec<jetstream::consumer::PullConsumer> =
            consumers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let planning = backlog.every_partition();
        let mut every = planning;
        if every
            && let Ok(info) = stream.info().await
            && info.state.messages <= backlog.slack()
        {
            // The stream's messages (every lane's, and timers waiting) bound the backlog.
            backlog.record(started, vec![0; all.len()]);
            every = false;
        }
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        checks.nats.set(connected);
        let mut ok = connected;
        let (mut pending, mut ack_pending) = (0u64, 0usize);
        if ok
            && mine.is_empty()
            && !every
            && let Some(mut c) = all.first().cloned()
            && let Err(e) = c.info().await
        {
            // Owning nothing (more pods than partitions, or before the first
            // assignment) is ready; the first consumer says whether the lane exists.
            tracing::warn!(error = %e, "consumer info");
            ok = false;
        }
        let read: Vec<(u16, Option<(u64, usize)>)> = futures::stream::iter(
            all.into_iter()
                .enumerate()
                .filter_map(|(p, c)| Some((u16::try_from(p).ok()?, c)))
                .filter(|(p, _)| every || mine.contains(p)),
        )
        .map(|(p, mut c)| async move {
            match c.info().await {
                Ok(info) => (p, Some((info.num_pending, info.num_ack_pending))),
                Err(e) => {
                    tracing::warn!(error = %e, partition = p, "consumer info");
                    (p, None)
                }
            }
        })
        .buffered(8)
        .collect()
        .await;
        let mut loads = Vec::with_capacity(read.len());
        for (p, info) in read {
            let Some((undelivered, unacked)) = info else {
                if mine.contains(&p) || (mine.is_empty() && p == 0) {
                    ok = false;
                }
                loads.push(None);
                continue;
            };
            if mine.contains(&p) {
                pending += undelivered;
                ack_pending += unacked;
            }
            loads.push(Some(undelivered + unacked as u64));
        }
        if every && let Some(loads) = loads.into_iter().collect::<Option<Vec<u64>>>() {
            backlog.record(started, loads);
        }
        metrics::lag(&lane, pending, ack_pending);
        checks.consumers.set(ok);
        let pause = if planning {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(2)
        };
        tokio::time::sleep(pause).await;
    }
}
