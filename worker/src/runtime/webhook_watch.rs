//! The webhook watchdog: one pod of the deployment asks Telegram about every bot's
//! webhook and sets a drifted one again.
//!
//! Telegram says when it cannot deliver only through `getWebhookInfo`
//! (`pending_update_count`, `last_error_date`, `last_error_message`); without a watch,
//! operators learn it from users. And a webhook pointed elsewhere (someone ran a script
//! with the token, an old deployment's `setWebhook`) silently takes the bot away.
//!
//! Which pod watches is decided by a lease in the lanes' group bucket (NATS KV, expiring
//! with `TGPIPE_LEASE_TTL`): the pod that creates the key `webhook-watch` renews it
//! while it lives; when it stops, the key expires and another pod takes it. A round that
//! outlives the lease is cancelled, so two pods never watch at once for long.
//!
//! Each round asks `getWebhookInfo` of every active bot, one after another (so a large
//! registry paces itself: 10,000 bots at 50 ms a call make a round of about 8 minutes),
//! and exports what Telegram says
//! (`tgpipe_webhook_*` gauges, per bot). A webhook whose URL or update kinds differ from
//! what the bot should have is set again: a registry bot's by rotating its secret (the
//! ingress keeps accepting the old one until Telegram uses the new one, as `bots
//! rotate-secret` does), a static bot's with its secret from `TGPIPE_BOTS` when the
//! worker is given it. No pod ever deletes a webhook on shutdown: the updates would
//! stop until someone set it again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::Deserialize;
use serde_json::json;
use tgpipe_shared::registry::{BotState, RegistrySettings};
use tgpipe_shared::{BotId, UpdateKind};

use super::registry::{BotDirectory, DirectoryBot, rotate_secret, set_webhook, webhook_url};

/// The key of the watchdog's lease in the group bucket.
const LEASE_KEY: &str = "webhook-watch";

/// How long one `getWebhookInfo` may take before the bot is skipped for this round.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a rotated secret is given to reach every ingress before `setWebhook`.
const SETTLE: Duration = Duration::from_secs(2);

/// What `getWebhookInfo` says (the fields the watch reads).
#[derive(Debug, Default, Deserialize)]
struct WebhookInfo {
    #[serde(default)]
    url: String,
    #[serde(default)]
    pending_update_count: u64,
    last_error_date: Option<i64>,
    last_error_message: Option<String>,
    max_connections: Option<u32>,
    allowed_updates: Option<Vec<String>>,
}

/// The static bots' expected webhooks: the URL (base or `{bot_id}` template) and the
/// secrets, when the worker is given them.
#[derive(Debug, Clone, Default)]
pub(crate) struct StaticHooks {
    /// `TGPIPE_WEBHOOK_URL`.
    pub url: Option<String>,
    /// `TGPIPE_BOTS`: each static bot's secret, to set its webhook again.
    pub secrets: HashMap<BotId, String>,
}

/// The watchdog's settings.
#[derive(Debug, Clone)]
pub(crate) struct WatchSettings {
    /// Time between rounds (`TGPIPE_WEBHOOK_CHECK_INTERVAL`; zero: no watch).
    pub interval: Duration,
    /// Whether a drifted webhook is set again (`TGPIPE_WEBHOOK_REPAIR`).
    pub repair: bool,
    /// The static bots' webhooks.
    pub statics: StaticHooks,
    /// The kinds the handlers use: a static bot's `allowed_updates`.
    pub used_kinds: Vec<String>,
}

/// One pod's part in the watch.
pub(crate) struct WebhookWatch {
    pub(crate) settings: WatchSettings,
    /// The group bucket, where the lease lives.
    pub(crate) group: kv::Store,
    pub(crate) lease_ttl: Duration,
    pub(crate) member: String,
    pub(crate) bots: Arc<BotDirectory>,
    pub(crate) js: jetstream::Context,
    pub(crate) registry: Option<(RegistrySettings, usize)>,
}

/// The last error each bot reported, so that each new one is logged once.
type SeenErrors = HashMap<BotId, i64>;

impl WebhookWatch {
    /// Watches until the task is aborted: takes the lease when it is free, and runs a
    /// round every interval while it holds it.
    pub(crate) async fn run(self) {
        let renew_every = (self.lease_ttl / 3).max(Duration::from_millis(200));
        let mut revision: Option<u64> = None;
        let mut errors = SeenErrors::new();
        let mut next_round = tokio::time::Instant::now();
        loop {
            revision = self.hold(revision).await;
            if revision.is_some() && tokio::time::Instant::now() >= next_round {
                next_round = tokio::time::Instant::now() + self.settings.interval;
                // Renewed while the round runs; a lease lost cancels the round.
                let round = self.round(&mut errors);
                tokio::pin!(round);
                loop {
                    tokio::select! {
                        () = &mut round => break,
                        () = tokio::time::sleep(renew_every) => {
                            revision = self.hold(revision).await;
                            if revision.is_none() {
                                tracing::warn!("webhook watch lease lost during a round; another pod takes over");
                                break;
                            }
                        }
                    }
                }
            }
            let wait = if revision.is_some() {
                renew_every.min(next_round.saturating_duration_since(tokio::time::Instant::now()))
            } else {
                renew_every
            };
            tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
        }
    }

    /// Takes or renews the lease; its revision while this pod holds it.
    async fn hold(&self, revision: Option<u64>) -> Option<u64> {
        let value = bytes::Bytes::from(self.member.clone());
        let result = match revision {
            Some(rev) => self.group.update(LEASE_KEY, value, rev).await.ok(),
            None => self.group.create(LEASE_KEY, value).await.ok(),
        };
        if revision.is_none() && result.is_some() {
            tracing::info!(member = %self.member, "watching the bots' webhooks");
        }
        metrics::gauge!("tgpipe_webhook_watcher").set(if result.is_some() { 1.0 } else { 0.0 });
        result
    }

    /// Asks about every active bot's webhook once.
    async fn round(&self, errors: &mut SeenErrors) {
        let bots = self.bots.snapshot();
        let mut ids: Vec<&BotId> = bots.keys().collect();
        ids.sort();
        for id in ids {
            let b = &bots[id];
            if b.state != BotState::Active {
                continue;
            }
            // Not kept built: with a large registry most bots have no handle on this pod.
            let Some(bot) = b.bot.transient() else {
                continue;
            };
            let info = match tokio::time::timeout(
                CALL_TIMEOUT,
                bot.call::<_, WebhookInfo>("getWebhookInfo", &json!({})),
            )
            .await
            {
                Ok(Ok(info)) => info,
                Ok(Err(e)) => {
                    tracing::warn!(bot = %id, error = %e, "getWebhookInfo failed");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(bot = %id, "getWebhookInfo timed out");
                    continue;
                }
            };
            self.report(*id, &info, errors);
            let Some((url, allowed)) = self.expected(*id, b) else {
                continue;
            };
            let drifted = info.url != url || !same_kinds(info.allowed_updates.as_deref(), &allowed);
            metrics::gauge!("tgpipe_webhook_drifted", "bot" => id.to_string()).set(if drifted {
                1.0
            } else {
                0.0
            });
            if !drifted {
                continue;
            }
            tracing::warn!(bot = %id, set = %info.url, want = %url, "the webhook drifted");
            if self.settings.repair {
                self.repair(*id, b, &bot, &url, &allowed).await;
            }
        }
    }

    /// Exports what Telegram says about one bot's webhook, and logs each new error once.
    fn report(&self, id: BotId, info: &WebhookInfo, errors: &mut SeenErrors) {
        let bot = id.to_string();
        metrics::gauge!("tgpipe_webhook_pending_updates", "bot" => bot.clone())
            .set(info.pending_update_count as f64);
        metrics::gauge!("tgpipe_webhook_last_error_timestamp_seconds", "bot" => bot.clone())
            .set(info.last_error_date.unwrap_or(0) as f64);
        metrics::gauge!("tgpipe_webhook_max_connections", "bot" => bot)
            .set(f64::from(info.max_connections.unwrap_or(0)));
        if let Some(date) = info.last_error_date
            && errors.insert(id, date) != Some(date)
        {
            tracing::warn!(
                bot = %id,
                last_error_date = date,
                message = info.last_error_message.as_deref().unwrap_or(""),
                pending = info.pending_update_count,
                "Telegram could not deliver to the webhook"
            );
        }
    }

    /// The URL and update kinds `bot` should have, when known: a registry bot's from
    /// its record, a static bot's from `TGPIPE_WEBHOOK_URL` and the handlers.
    fn expected(&self, id: BotId, bot: &DirectoryBot) -> Option<(String, Vec<String>)> {
        match bot.webhook() {
            Some((url, allowed)) => Some((url.to_owned(), allowed.to_vec())),
            None if bot.is_static() => {
                let base = self.settings.statics.url.as_deref()?;
                Some((webhook_url(base, id), self.settings.used_kinds.clone()))
            }
            None => None,
        }
    }

    /// Sets a drifted webhook again.
    async fn repair(
        &self,
        id: BotId,
        b: &DirectoryBot,
        bot: &tgpipe::bot::Bot,
        url: &str,
        allowed: &[String],
    ) {
        let result = if b.is_static() {
            let Some(secret) = self.settings.statics.secrets.get(&id) else {
                tracing::warn!(bot = %id, "cannot set the webhook again: the worker has no TGPIPE_BOTS secret for this static bot");
                metrics::counter!("tgpipe_webhook_repairs_total", "bot" => id.to_string(), "result" => "no_secret").increment(1);
                return;
            };
            set_webhook(bot, url, secret, allowed)
                .await
                .map_err(|e| e.to_string())
        } else {
            match &self.registry {
                Some((settings, replicas)) => {
                    match tgpipe_shared::registry::Registry::open(
                        &self.js, settings, *replicas, false,
                    )
                    .await
                    {
                        Ok(kv) => rotate_secret(&kv, bot, id, SETTLE)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
                None => Err("the registry is off".to_owned()),
            }
        };
        let label = match &result {
            Ok(()) => {
                tracing::info!(bot = %id, %url, "webhook set again");
                "set"
            }
            Err(e) => {
                tracing::warn!(bot = %id, error = %e, "setting the webhook again failed; next round tries again");
                "failed"
            }
        };
        metrics::counter!("tgpipe_webhook_repairs_total", "bot" => id.to_string(), "result" => label)
            .increment(1);
    }
}

/// Whether Telegram's `allowed_updates` are the expected kinds (absent or empty: its
/// default, which the expected list being empty means too).
fn same_kinds(set: Option<&[String]>, want: &[String]) -> bool {
    let a: BTreeSet<&str> = set.unwrap_or_default().iter().map(String::as_str).collect();
    let b: BTreeSet<&str> = want.iter().map(String::as_str).collect();
    a == b
}

/// The kinds the handlers use, as `allowed_updates` names.
pub(crate) fn kind_names(kinds: &[UpdateKind]) -> Vec<String> {
    kinds.iter().map(|k| k.as_str().to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_kinds_compare_as_sets_and_absent_is_telegrams_default() {
        let s = |v: &[&str]| v.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>();
        assert!(same_kinds(
            Some(&s(&["message", "callback_query"])),
            &s(&["callback_query", "message"])
        ));
        assert!(same_kinds(None, &[]));
        assert!(same_kinds(Some(&[]), &[]));
        assert!(!same_kinds(None, &s(&["message"])));
        assert!(!same_kinds(
            Some(&s(&["message"])),
            &s(&["message", "inline_query"])
        ));
    }

    #[test]
    fn webhook_info_reads_telegrams_answer_and_tolerates_missing_fields() {
        let info: WebhookInfo = serde_json::from_value(json!({
            "url": "https://h/webhook/1", "has_custom_certificate": false,
            "pending_update_count": 12, "last_error_date": 1_700_000_000,
            "last_error_message": "Connection refused", "max_connections": 40,
            "allowed_updates": ["message"], "ip_address": "1.2.3.4", "future_field": 1
        }))
        .unwrap();
        assert_eq!(info.pending_update_count, 12);
        assert_eq!(info.last_error_date, Some(1_700_000_000));
        let none: WebhookInfo = serde_json::from_value(json!({"url": ""})).unwrap();
        assert_eq!((none.pending_update_count, none.allowed_updates), (0, None));
    }
}
