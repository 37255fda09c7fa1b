//! Long polling (`getUpdates`): for local development, and for bots that cannot take
//! a webhook.
//!
//! [`poll`] asks Telegram for updates in a loop (long-poll `timeout`, `limit`,
//! `allowed_updates`), hands each to an [`UpdateSink`] and advances the offset past an
//! update only once the sink took it; Telegram forgets updates below the offset at the
//! next call. Two sinks: [`DispatchSink`] runs the dispatcher in process;
//! [`JetStreamSink`] publishes into the stream exactly as the ingress would (same
//! subject, headers and `Nats-Msg-Id`, so updates fetched twice collapse into one),
//! which lets the worker pods consume as in production. Errors back off exponentially
//! with jitter; a shutdown future stops the loop between batches, after confirming what
//! was delivered.
//!
//! ```no_run
//! # async fn demo(bot: tgpipe::Bot, dp: tgpipe::Dispatcher) -> Result<(), tgpipe_worker::poll::PollError> {
//! use tgpipe_worker::poll::{DispatchSink, PollConfig, poll};
//!
//! let config = PollConfig::new(&dp.used_update_kinds());
//! let sink = DispatchSink::new(dp);
//! let stats = poll(&bot, &sink, &config, tgpipe_shared::shutdown::signal()).await?;
//! println!("{} updates", stats.updates);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::num::NonZeroU16;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::value::RawValue;
use tgpipe_shared::publish::{PublishError, Publisher};
use tgpipe_shared::{Envelope, KeysError, UpdateKind, extract_keys};

use tgpipe::bot::{ApiRequest, Bot, BotError};
use tgpipe::dispatcher::Dispatcher;

/// `poll`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct PollArgs {
    /// Long-poll timeout in seconds (Telegram holds the request this long when there is
    /// nothing to deliver).
    #[arg(long, env = "TGPIPE_POLL_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub timeout: u32,
    /// Updates per call (1-100).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub limit: u32,
    /// The update kinds to receive, comma-separated; by default the kinds the bot's
    /// handlers use.
    #[arg(long, value_delimiter = ',')]
    pub allowed_updates: Option<Vec<String>>,
    /// Publish into JetStream as the ingress does (the worker pods consume them),
    /// instead of dispatching in this process.
    #[arg(long)]
    pub publish: bool,
    /// Delete the webhook first (`getUpdates` does not work while one is set).
    #[arg(long)]
    pub delete_webhook: bool,
}

impl PollArgs {
    /// The loop's configuration for a bot whose handlers use `used_kinds`.
    pub fn config(&self, used_kinds: &[UpdateKind]) -> PollConfig {
        PollConfig {
            timeout: Duration::from_secs(u64::from(self.timeout)),
            limit: self.limit,
            allowed_updates: crate::set_webhook::allowed_updates(
                used_kinds,
                self.allowed_updates.as_deref(),
            ),
            ..PollConfig::new(used_kinds)
        }
    }
}

/// How [`poll`] polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollConfig {
    /// The long-poll timeout.
    pub timeout: Duration,
    /// Updates per call.
    pub limit: u32,
    /// The kinds to receive.
    pub allowed_updates: Vec<String>,
    /// The offset to start from (`None`: whatever Telegram has not had confirmed).
    pub offset: Option<i64>,
    /// The first wait after an error; doubled per consecutive error, with jitter.
    pub backoff: Duration,
    /// The longest wait after errors.
    pub max_backoff: Duration,
}

impl PollConfig {
    /// 30-second long polls of 100 updates of the kinds the handlers use.
    pub fn new(used_kinds: &[UpdateKind]) -> PollConfig {
        PollConfig {
            timeout: Duration::from_secs(30),
            limit: 100,
            allowed_updates: crate::set_webhook::allowed_updates(used_kinds, None),
            offset: None,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Where polled updates go.
#[async_trait::async_trait]
pub trait UpdateSink: Send + Sync {
    /// Takes one update (its bytes as Telegram sent them). An error leaves the update
    /// unconfirmed: it is fetched again after a backoff.
    async fn deliver(&self, bot: &Bot, raw: Bytes) -> Result<(), DeliverError>;
}

/// Why a sink did not take an update.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The stream did not store it.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// It is not an update (skipped: fetching it again would not help).
    #[error(transparent)]
    Malformed(#[from] KeysError),
}

/// Runs the dispatcher in process. Failed handlers are logged; the update counts as
/// delivered (there is no redelivery in process).
#[derive(Debug, Clone)]
pub struct DispatchSink {
    dispatcher: Dispatcher,
}

impl DispatchSink {
    /// A sink feeding `dispatcher`.
    pub fn new(dispatcher: Dispatcher) -> DispatchSink {
        DispatchSink { dispatcher }
    }
}

#[async_trait::async_trait]
impl UpdateSink for DispatchSink {
    async fn deliver(&self, bot: &Bot, raw: Bytes) -> Result<(), DeliverError> {
        if let Err(e) = self.dispatcher.feed_raw(bot, raw).await {
            tracing::warn!(
                error = format!("{e:#}"),
                transient = e.is_transient(),
                "polled update failed"
            );
        }
        Ok(())
    }
}

/// Publishes into JetStream exactly as the ingress does.
#[derive(Debug, Clone)]
pub struct JetStreamSink {
    publisher: Publisher,
    shards: NonZeroU16,
}

impl JetStreamSink {
    /// A sink publishing through `publisher` with `shards` shards (`TGPIPE_SHARDS`:
    /// must be the ingress's).
    pub fn new(publisher: Publisher, shards: NonZeroU16) -> JetStreamSink {
        JetStreamSink { publisher, shards }
    }
}

#[async_trait::async_trait]
impl UpdateSink for JetStreamSink {
    async fn deliver(&self, bot: &Bot, raw: Bytes) -> Result<(), DeliverError> {
        let received_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let env = Envelope::from_body(bot.id(), raw, self.shards, received_at)?;
        let (subject, mut h, body) = env.into_message();
        tgpipe_shared::telemetry::inject_current(&mut h);
        self.publisher.publish(subject, h, body).await?;
        Ok(())
    }
}

/// Why polling stopped.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Telegram refused for good (bad token, a webhook is set, ...).
    #[error("getUpdates failed: {0}")]
    Bot(#[from] BotError),
    /// `--publish` without a connection to publish through.
    #[error("publishing into JetStream needs a NATS connection")]
    NoPublisher,
}

/// What a polling run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollStats {
    /// `getUpdates` calls that answered.
    pub polls: u64,
    /// Updates delivered to the sink.
    pub updates: u64,
    /// Errors backed off from (failed calls and failed deliveries).
    pub errors: u64,
    /// The offset reached (the next update to ask for).
    pub offset: Option<i64>,
}

/// Polls until `shutdown` completes or Telegram refuses for good.
pub async fn poll<S: UpdateSink + ?Sized>(
    bot: &Bot,
    sink: &S,
    config: &PollConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<PollStats, PollError> {
    tokio::pin!(shutdown);
    let mut stats = PollStats {
        offset: config.offset,
        ..PollStats::default()
    };
    let mut failures = 0u32;
    loop {
        let batch = tokio::select! {
            biased;
            () = &mut shutdown => break,
            batch = get_updates(bot, config, stats.offset, config.timeout) => batch,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) if stops_polling(&e) => return Err(PollError::Bot(e)),
            Err(e) => {
                stats.errors += 1;
                tracing::warn!(error = %e, "getUpdates failed; backing off");
                if back_off(config, &mut failures, &mut shutdown).await {
                    break;
                }
                continue;
            }
        };
        stats.polls += 1;
        if batch.is_empty() && config.timeout.is_zero() {
            // Short polling: without a pause between empty answers this would be a
            // busy loop against Telegram.
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep(config.backoff) => {}
            }
            continue;
        }
        let mut failed = false;
        for raw in batch {
            let raw = Bytes::copy_from_slice(raw.get().as_bytes());
            let id = match extract_keys(&raw) {
                Ok(keys) => keys.update_id,
                Err(e) => {
                    // Without an update_id it cannot be confirmed; Telegram never sends one.
                    tracing::warn!(error = %e, "getUpdates returned something that is not an update");
                    continue;
                }
            };
            match sink.deliver(bot, raw).await {
                Ok(()) | Err(DeliverError::Malformed(_)) => {
                    stats.updates += 1;
                    stats.offset = Some(id + 1);
                }
                Err(e) => {
                    stats.errors += 1;
                    tracing::warn!(error = %e, update_id = id, "update not delivered; fetching it again after a backoff");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            if back_off(config, &mut failures, &mut shutdown).await {
                break;
            }
        } else {
            failures = 0;
        }
    }
    // Confirm what was delivered: Telegram drops updates below the offset only when it
    // sees the offset, and the next poller would get them again otherwise.
    if let Some(offset) = stats.offset
        && let Err(e) = confirm(bot, offset).await
    {
        tracing::warn!(error = %e, "could not confirm the last offset; the next poll may see updates again");
    }
    Ok(stats)
}

/// Errors that polling again cannot cure: a bad token, a refused request, a webhook.
/// Everything else (the network, 5xx, a garbled answer from a proxy) is backed off.
fn stops_polling(e: &BotError) -> bool {
    match e {
        // "terminated by other getUpdates request": another poller; back off, it may be
        // a pod that is going away. A webhook, though, stays until someone deletes it.
        BotError::Conflict(d) => d.contains("webhook"),
        BotError::Unauthorized
        | BotError::NotFound
        | BotError::BadRequest(_)
        | BotError::Forbidden(_)
        | BotError::InvalidRequest(_) => true,
        _ => false,
    }
}

/// Waits out a backoff; `true` if shutdown came first.
async fn back_off<F: Future<Output = ()>>(
    config: &PollConfig,
    failures: &mut u32,
    shutdown: &mut std::pin::Pin<&mut F>,
) -> bool {
    let window = config
        .backoff
        .saturating_mul(1 << (*failures).min(16))
        .min(config.max_backoff);
    *failures += 1;
    // Half fixed, half jitter: never a busy loop, never in step with other pollers.
    let wait = window / 2 + (window / 2).mul_f64(rand::random::<f64>());
    tokio::select! {
        biased;
        () = shutdown.as_mut() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

async fn get_updates(
    bot: &Bot,
    config: &PollConfig,
    offset: Option<i64>,
    timeout: Duration,
) -> Result<Vec<Box<RawValue>>, BotError> {
    let mut params = serde_json::json!({
        "timeout": timeout.as_secs(),
        "limit": config.limit,
        "allowed_updates": config.allowed_updates,
    });
    if let Some(o) = offset {
        params["offset"] = o.into();
    }
    // The HTTP request must outlive the long poll.
    let request =
        ApiRequest::json("getUpdates", &params)?.with_timeout(timeout + Duration::from_secs(10));
    let body = bot.execute(request).await?;
    #[derive(serde::Deserialize)]
    struct Answer {
        result: Vec<Box<RawValue>>,
    }
    serde_json::from_slice::<Answer>(&body)
        .map(|a| a.result)
        .map_err(|e| BotError::InvalidResponse(e.to_string()))
}

/// A last `getUpdates` that only confirms `offset` (it asks for nothing new).
async fn confirm(bot: &Bot, offset: i64) -> Result<(), BotError> {
    let request = ApiRequest::json(
        "getUpdates",
        &serde_json::json!({"offset": offset, "limit": 1, "timeout": 0}),
    )?
    .with_timeout(Duration::from_secs(10));
    bot.execute(request).await.map(drop)
}

/// The `poll` command: deletes the webhook if asked, then polls into the dispatcher,
/// or into JetStream with `--publish` (through `publisher`, with the ingress's shard
/// count).
pub async fn run_poll(
    bot: &Bot,
    dispatcher: Dispatcher,
    args: &PollArgs,
    publisher: Option<(Publisher, NonZeroU16)>,
    shutdown: impl Future<Output = ()>,
) -> Result<PollStats, PollError> {
    let config = args.config(&dispatcher.used_update_kinds());
    if args.delete_webhook {
        delete_webhook(bot).await?;
    }
    if args.publish {
        let (publisher, shards) = publisher.ok_or(PollError::NoPublisher)?;
        poll(
            bot,
            &JetStreamSink::new(publisher, shards),
            &config,
            shutdown,
        )
        .await
    } else {
        poll(bot, &DispatchSink::new(dispatcher), &config, shutdown).await
    }
}

/// Deletes the webhook so that `getUpdates` works (for `poll --delete-webhook`).
pub async fn delete_webhook(bot: &Bot) -> Result<(), BotError> {
    bot.call::<_, bool>("deleteWebhook", &serde_json::json!({}))
        .await
        .map(drop)
}
