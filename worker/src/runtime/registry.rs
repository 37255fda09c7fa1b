//! The bots a worker answers for, and the `bots` commands that manage the registry.
//!
//! [`BotDirectory`] merges the static tokens (`TGPIPE_BOT_TOKENS`, read once) with the
//! bot registry (`tgpipe_shared::registry`, watched): a bot in both is answered with the
//! static token (the registry's record is ignored with a WARN). Each update takes the
//! directory once, so a change never reaches an update halfway through.
//!
//! What the state of a registry bot means here:
//! - `active`, `paused`: handled. Pausing stops the intake at the ingress (503, Telegram
//!   keeps the updates); what was stored before the pause is still answered, so nothing
//!   waits in the stream for a resume that may be long in coming.
//! - `removed`: by `TGPIPE_REMOVED_POLICY`, its updates still in the stream are
//!   dead-lettered with the reason `bot <id> was removed from the registry`
//!   (`dead-letter`, the default; `dlq replay` brings them back) or handled with the
//!   record's token (`drain`). Never dropped.

use std::collections::HashMap;
use std::io::Write;
use std::ops::Deref;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use serde_json::json;
use tgpipe_shared::BotId;
use tgpipe_shared::registry::{BotRecord, BotState, BotToken, Records, Registry, RegistryError};

use tgpipe::bot::{Bot, BotError};

/// What a worker does with the updates of a removed bot that are still in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RemovedPolicy {
    /// Dead-letter them with the reason (`dlq list` shows it; `dlq replay` undoes it).
    DeadLetter,
    /// Handle them with the removed bot's token, as if it were still active.
    Drain,
}

/// A bot this worker answers for.
#[derive(Debug, Clone)]
pub(super) struct DirectoryBot {
    /// The Bot API handle.
    pub bot: BotHandle,
    /// Its state (`active` for static bots).
    pub state: BotState,
    token: Option<BotToken>,
    /// A registry bot's webhook URL and update kinds, as `bots add` stored them.
    webhook: Option<(String, Vec<String>)>,
}

impl DirectoryBot {
    /// A registry bot's webhook URL and update kinds.
    pub(super) fn webhook(&self) -> Option<(&str, &[String])> {
        self.webhook
            .as_ref()
            .map(|(url, kinds)| (url.as_str(), kinds.as_slice()))
    }

    /// Whether the bot's token is static (`TGPIPE_BOT_TOKENS`).
    pub(super) fn is_static(&self) -> bool {
        self.token.is_none()
    }
}

/// Makes a [`Bot`] from a registry token (the API URL, limits and Redis of the pod).
pub(super) type MakeBot = Box<dyn Fn(&str) -> Option<Bot> + Send + Sync>;

/// A bot's Bot API handle. A registry bot's is built at its first update: a pod that
/// reads 300,000 records builds the handles of the bots it serves, not all of them
/// before it can answer one (seconds of CPU, and memory for each).
#[derive(Clone)]
pub(super) struct BotHandle(Arc<Handle>);

enum Handle {
    Built(Bot),
    Deferred {
        token: BotToken,
        make: Arc<MakeBot>,
        built: OnceLock<Bot>,
    },
}

impl std::fmt::Debug for BotHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BotHandle(..)")
    }
}

impl BotHandle {
    /// The bot, without keeping it built: a registry bot that has had no update yet stays
    /// unbuilt (the webhook watchdog visits every bot, and most never get an update on
    /// this pod). `None` for a token that builds no bot.
    pub(super) fn transient(&self) -> Option<Bot> {
        match &*self.0 {
            Handle::Built(bot) => Some(bot.clone()),
            Handle::Deferred { token, make, built } => {
                built.get().cloned().or_else(|| make(token.expose()))
            }
        }
    }
}

impl Deref for BotHandle {
    type Target = Bot;

    fn deref(&self) -> &Bot {
        match &*self.0 {
            Handle::Built(bot) => bot,
            Handle::Deferred { token, make, built } => built.get_or_init(|| {
                // `BotDirectory::update` took only tokens that name their bot, which is
                // all that building checks (`BotBuilder::build`).
                make(token.expose()).expect("a token that names its bot builds a Bot")
            }),
        }
    }
}

/// The bots this worker answers for now, static and registered.
pub(super) struct BotDirectory {
    statics: HashMap<BotId, Bot>,
    make: Arc<MakeBot>,
    current: RwLock<Arc<HashMap<BotId, DirectoryBot>>>,
}

impl std::fmt::Debug for BotDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotDirectory")
            .field("bots", &self.snapshot().len())
            .finish()
    }
}

impl BotDirectory {
    /// The static bots; registry bots are built with `make`.
    pub(super) fn new(statics: HashMap<BotId, Bot>, make: MakeBot) -> BotDirectory {
        let table = statics
            .iter()
            .map(|(id, bot)| {
                (
                    *id,
                    DirectoryBot {
                        bot: BotHandle(Arc::new(Handle::Built(bot.clone()))),
                        state: BotState::Active,
                        token: None,
                        webhook: None,
                    },
                )
            })
            .collect();
        BotDirectory {
            statics,
            make: Arc::new(make),
            current: RwLock::new(Arc::new(table)),
        }
    }

    /// The bots now; an update keeps this to its end.
    pub(super) fn snapshot(&self) -> Arc<HashMap<BotId, DirectoryBot>> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The static bots (asked `getMe` once at start).
    pub(super) fn statics(&self) -> impl Iterator<Item = &Bot> {
        self.statics.values()
    }

    /// Rebuilds the directory from the registry's records. A bot whose token did not
    /// change keeps its handle (and what it learnt: its username, its 429 pauses).
    pub(super) fn update(&self, records: &Records) {
        let before = self.snapshot();
        let mut table: HashMap<BotId, DirectoryBot> = self
            .statics
            .iter()
            .map(|(id, bot)| {
                (
                    *id,
                    DirectoryBot {
                        bot: BotHandle(Arc::new(Handle::Built(bot.clone()))),
                        state: BotState::Active,
                        token: None,
                        webhook: None,
                    },
                )
            })
            .collect();
        for (id, record) in records {
            if self.statics.contains_key(id) {
                tracing::warn!(bot = %id, "bot is in TGPIPE_BOT_TOKENS and in the registry; the static token is used");
                continue;
            }
            let Some(token) = &record.token else {
                tracing::warn!(bot = %id, "registry record without a token; this worker cannot answer for the bot");
                continue;
            };
            let reused = before
                .get(id)
                .filter(|b| b.token.as_ref() == Some(token))
                .map(|b| b.bot.clone());
            let bot = match reused {
                Some(bot) => bot,
                None => match BotId::from_token(token.expose()) {
                    None => {
                        tracing::warn!(bot = %id, "registry record with a malformed token; skipped");
                        continue;
                    }
                    Some(named) if named != *id => {
                        tracing::warn!(bot = %id, "registry record whose token is another bot's; skipped");
                        continue;
                    }
                    Some(_) => BotHandle(Arc::new(Handle::Deferred {
                        token: token.clone(),
                        make: Arc::clone(&self.make),
                        built: OnceLock::new(),
                    })),
                },
            };
            table.insert(
                *id,
                DirectoryBot {
                    bot,
                    state: record.state,
                    token: Some(token.clone()),
                    webhook: record
                        .webhook_url
                        .clone()
                        .map(|url| (url, record.allowed_updates.clone())),
                },
            );
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }
}

/// `bots …`: manage the bot registry.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum BotsCommand {
    /// Registers a bot: asks `getMe` for its id and username, makes a webhook secret,
    /// stores the bot, then points Telegram at the ingress (`setWebhook`).
    Add {
        /// The bot's token (from @BotFather). Prefer the environment variable: a flag is
        /// visible in the process list.
        #[arg(long, env = "TGPIPE_NEW_BOT_TOKEN", hide_env_values = true)]
        token: tgpipe_shared::config::SecretString,
        /// The ingress's public base URL (`https://hooks.example.com`), to which
        /// `/webhook/<bot_id>` is added; or a full URL with `{bot_id}` in it.
        #[arg(long, env = "TGPIPE_WEBHOOK_URL")]
        url: String,
        /// Update kinds to receive, comma separated; by default the kinds this bot's
        /// handlers use.
        #[arg(long, value_delimiter = ',')]
        allowed_updates: Option<Vec<String>>,
    },
    /// Lists the registered bots (tokens masked).
    List,
    /// Pauses a bot: the ingress answers its updates 503, so Telegram keeps and retries
    /// them until it is resumed.
    Pause {
        /// The bot id.
        id: u64,
    },
    /// Resumes a paused bot.
    Resume {
        /// The bot id.
        id: u64,
    },
    /// Removes a bot: the ingress answers it 404 and its webhook is deleted at Telegram
    /// (Telegram keeps what it has not delivered); its updates still in the stream are
    /// dead-lettered or handled, as the workers' `TGPIPE_REMOVED_POLICY` says.
    Remove {
        /// The bot id.
        id: u64,
        /// Leave the webhook at Telegram as it is.
        #[arg(long)]
        keep_webhook: bool,
    },
    /// Gives a bot a new webhook secret with no gap: stores it next to the old one,
    /// waits until every ingress has it, then calls `setWebhook`. The old secret is
    /// refused once the ingress has seen a request signed with the new one.
    RotateSecret {
        /// The bot id.
        id: u64,
        /// How long to wait between storing the secret and `setWebhook` (how long the
        /// ingress pods take to see a registry change).
        #[arg(long, default_value = "2s", value_parser = tgpipe_shared::stream::parse_duration)]
        settle: Duration,
    },
}

/// Why a `bots` command failed. Never holds a token or a secret.
#[derive(Debug, thiserror::Error)]
pub enum BotsCommandError {
    /// The registry refused or could not be reached.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The token does not look like `<id>:<secret>`.
    #[error("the token is not `<bot_id>:<secret>`")]
    BadToken,
    /// Telegram refused, or could not be reached.
    #[error("Bot API: {0}")]
    Bot(#[from] BotError),
    /// A bot without a token in the registry (its token is static).
    #[error("bot {0} has no token in the registry; use `webhook set` with TGPIPE_BOT_TOKENS")]
    NoToken(BotId),
    /// A bot without a stored webhook URL.
    #[error("bot {0} has no webhook URL in the registry")]
    NoUrl(BotId),
    /// Writing the report failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// The webhook URL of `bot` for a base URL (`https://h.example/` ->
/// `https://h.example/webhook/7`) or a `{bot_id}` template
/// (`https://h.example/tg/{bot_id}` -> `https://h.example/tg/7`).
pub(super) fn webhook_url(base: &str, bot: BotId) -> String {
    if base.contains("{bot_id}") {
        base.replace("{bot_id}", &bot.to_string())
    } else {
        format!("{}/webhook/{bot}", base.trim_end_matches('/'))
    }
}

/// `setWebhook` with the secret, keeping what Telegram holds.
pub(super) async fn set_webhook(
    bot: &Bot,
    url: &str,
    secret: &str,
    allowed: &[String],
) -> Result<(), BotError> {
    let _: bool = bot
        .call(
            "setWebhook",
            &json!({
                "url": url,
                "secret_token": secret,
                "allowed_updates": allowed,
                // What Telegram holds is kept: it arrives signed with the new secret.
                "drop_pending_updates": false,
            }),
        )
        .await?;
    Ok(())
}

/// Gives registry bot `id` a new webhook secret with no gap, and sets its webhook (its
/// stored URL and update kinds) with it through `bot`: the secret is stored next to the
/// old one (in both buckets), `settle` gives every ingress the time to see it, then `setWebhook`. The old
/// secret is refused once the ingress has seen a request signed with the new one.
/// Returns the URL set.
pub(super) async fn rotate_secret(
    kv: &Registry,
    bot: &Bot,
    id: BotId,
    settle: Duration,
) -> Result<String, BotsCommandError> {
    let (record, _) = kv.get(id).await?;
    let url = record
        .webhook_url
        .clone()
        .ok_or(BotsCommandError::NoUrl(id))?;
    let secret = crate::set_webhook::new_secret_token();
    let stored = kv
        .modify(id, |r| {
            r.rotate(&secret);
            true
        })
        .await?
        .unwrap_or(record);
    // Every ingress accepts the new secret before Telegram sends it.
    tokio::time::sleep(settle).await;
    set_webhook(bot, &url, &secret, &stored.allowed_updates).await?;
    Ok(url)
}

/// Runs a `bots` command against the registry (both buckets: every change reaches the
/// webhooks bucket the ingress reads) and the Bot API at `api_url`, and writes a report
/// to `out`. `used_kinds` are the kinds the handlers use (the default `allowed_updates`).
pub async fn run_bots_command(
    kv: &Registry,
    api_url: &str,
    used_kinds: &[tgpipe_shared::UpdateKind],
    command: BotsCommand,
    out: &mut impl Write,
) -> Result<(), BotsCommandError> {
    let bot_of =
        |token: &str| Bot::with_api_url(token, api_url).map_err(|_| BotsCommandError::BadToken);
    match command {
        BotsCommand::Add {
            token,
            url,
            allowed_updates,
        } => {
            let bot = bot_of(token.expose())?;
            let me = bot.me().await?;
            let id = BotId(me.id);
            if id != bot.id() {
                return Err(BotsCommandError::BadToken);
            }
            let secret = crate::set_webhook::new_secret_token();
            let mut record = BotRecord::new(id, &secret);
            record.username = me.username.clone();
            record.token = Some(BotToken::new(token.expose()));
            record.allowed_updates =
                crate::set_webhook::allowed_updates(used_kinds, allowed_updates.as_deref());
            let url = webhook_url(&url, id);
            record.webhook_url = Some(url.clone());
            kv.add(&record).await?;
            set_webhook(&bot, &url, &secret, &record.allowed_updates).await?;
            writeln!(
                out,
                "bot {id} (@{}) added; webhook set: {url}",
                me.username.as_deref().unwrap_or("?")
            )?;
        }
        BotsCommand::List => {
            let (records, bad) = kv.list().await?;
            writeln!(
                out,
                "{:<14} {:<24} {:<8} {:<10} TOKEN",
                "ID", "USERNAME", "STATE", "SECRET"
            )?;
            for r in records {
                writeln!(
                    out,
                    "{:<14} {:<24} {:<8} {:<10} {}",
                    r.id.to_string(),
                    r.username
                        .as_deref()
                        .map_or("-".to_owned(), |u| format!("@{u}")),
                    r.state.to_string(),
                    if r.previous_secret.is_some() {
                        "rotating"
                    } else {
                        "confirmed"
                    },
                    r.token
                        .as_ref()
                        .map_or("(static)".to_owned(), BotToken::masked),
                )?;
            }
            for e in bad {
                writeln!(out, "unreadable: {e}")?;
            }
        }
        BotsCommand::Pause { id } | BotsCommand::Resume { id } => {
            let state = if matches!(command, BotsCommand::Pause { .. }) {
                BotState::Paused
            } else {
                BotState::Active
            };
            let changed = kv
                .modify(BotId(id), |r| {
                    let change = r.state != state;
                    r.state = state;
                    change
                })
                .await?;
            writeln!(
                out,
                "bot {id}: {state}{}",
                if changed.is_none() { " (already)" } else { "" }
            )?;
        }
        BotsCommand::Remove { id, keep_webhook } => {
            let record = kv
                .modify(BotId(id), |r| {
                    let change = r.state != BotState::Removed;
                    r.state = BotState::Removed;
                    change
                })
                .await?;
            writeln!(out, "bot {id}: removed")?;
            if !keep_webhook {
                let record = match record {
                    Some(r) => r,
                    None => kv.get(BotId(id)).await?.0,
                };
                if let Some(token) = &record.token {
                    let _: bool = bot_of(token.expose())?
                        .call("deleteWebhook", &json!({"drop_pending_updates": false}))
                        .await?;
                    writeln!(
                        out,
                        "  webhook deleted (Telegram keeps what it has not delivered)"
                    )?;
                }
            }
        }
        BotsCommand::RotateSecret { id, settle } => {
            let id = BotId(id);
            let (record, _) = kv.get(id).await?;
            let token = record.token.clone().ok_or(BotsCommandError::NoToken(id))?;
            rotate_secret(kv, &bot_of(token.expose())?, id, settle).await?;
            writeln!(
                out,
                "bot {id}: new webhook secret set; the old one is accepted until the ingress sees the new one"
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tgpipe_shared::BotId;

    use super::webhook_url;

    #[test]
    fn a_webhook_url_is_the_base_with_the_bot_or_the_filled_template() {
        assert_eq!(
            webhook_url("https://h.example/", BotId(7)),
            "https://h.example/webhook/7"
        );
        assert_eq!(
            webhook_url("https://h.example/tg/{bot_id}", BotId(7)),
            "https://h.example/tg/7"
        );
    }
}
