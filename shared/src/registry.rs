//! The bot registry: the bots of an installation, in a NATS KV bucket that the ingress
//! and the workers watch, so that a bot added, paused, removed or given a new webhook
//! secret takes effect on every pod within about a second, with no restart.
//!
//! One key per bot (its id), holding a JSON [`BotRecord`]: the SHA-256 digest of the
//! webhook secret (what the ingress compares; the secret itself is only ever given to
//! `setWebhook`), the token (what the workers call the Bot API with), the update kinds
//! asked of Telegram, and a [`BotState`]. During a secret rotation the record holds the
//! previous digest too, accepted until a request signed with the new secret arrives.
//!
//! A second bucket, `<bucket>_webhooks`, holds what the ingress reads and nothing more:
//! a [`WebhookRecord`] per bot (state and digests, no token). Every writer ([`Registry`])
//! writes the main record first, then the webhook record made from it, so the ingress's
//! NATS user needs no access to the tokens. The ingress confirms a rotation there.
//!
//! A record this version cannot read (bad JSON, an unknown state) is skipped with a WARN
//! and the other bots are unaffected; fields this version does not know are kept
//! ([`BotRecord::extra`]) and written back by every change, so an older pod or CLI never
//! erases what a newer one stored.
//!
//! Who can read the main bucket can read the tokens: see `docs/deploy.md` for the NATS
//! permissions that keep it to the workers and the operators.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::BotId;

/// Default name of the registry bucket.
pub const DEFAULT_BUCKET: &str = "tgpipe_bots";

/// What the webhooks bucket's name adds to the registry bucket's: `tgpipe_bots` ->
/// `tgpipe_bots_webhooks`.
pub const WEBHOOKS_SUFFIX: &str = "_webhooks";

/// The registry settings every binary shares.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistrySettings {
    /// Watch the bot registry (a NATS KV bucket) for bots added, paused, removed and
    /// rotated at runtime, next to the statically configured ones.
    #[arg(long, env = "TGPIPE_REGISTRY", default_value_t = true, action = clap::ArgAction::Set)]
    pub registry: bool,
    /// Name of the registry's KV bucket (one per installation).
    #[arg(long = "registry-bucket", env = "TGPIPE_REGISTRY_BUCKET", default_value = DEFAULT_BUCKET)]
    pub bucket: String,
}

impl RegistrySettings {
    /// The name of the bucket the ingress reads: the registry bucket's name with
    /// [`WEBHOOKS_SUFFIX`].
    ///
    /// ```
    /// use tgpipe_shared::registry::RegistrySettings;
    /// assert_eq!(RegistrySettings::default().webhooks_bucket(), "tgpipe_bots_webhooks");
    /// ```
    pub fn webhooks_bucket(&self) -> String {
        format!("{}{WEBHOOKS_SUFFIX}", self.bucket)
    }
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            registry: true,
            bucket: DEFAULT_BUCKET.to_owned(),
        }
    }
}

/// What a bot does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotState {
    /// Served: the ingress stores its updates, the workers handle them.
    Active,
    /// The ingress answers its updates 503, so Telegram keeps them and retries; the
    /// workers still finish what was stored before the pause.
    Paused,
    /// Gone: the ingress answers 404; what is still in the stream is dead-lettered or
    /// handled, as `TGPIPE_REMOVED_POLICY` says.
    Removed,
}

impl fmt::Display for BotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BotState::Active => "active",
            BotState::Paused => "paused",
            BotState::Removed => "removed",
        })
    }
}

/// The SHA-256 digest of a webhook secret, stored as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    /// The digest of `secret`.
    pub fn of(secret: &[u8]) -> SecretDigest {
        SecretDigest(Sha256::digest(secret).into())
    }

    /// Whether `other` is this digest, in constant time.
    pub fn matches(&self, other: &SecretDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest of a random 64-character secret reveals nothing, but it need not be
        // printed either.
        f.write_str("SecretDigest(..)")
    }
}

impl Serialize for SecretDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256:");
        for b in self.0 {
            out.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&out)
    }
}

impl<'de> Deserialize<'de> for SecretDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let hex = s
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64)
            .ok_or_else(|| serde::de::Error::custom("a secret digest is `sha256:<64 hex>`"))?;
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| serde::de::Error::custom("a secret digest is `sha256:<64 hex>`"))?;
        }
        Ok(SecretDigest(out))
    }
}

/// A bot token, as the registry stores it. `Debug` and [`BotToken::masked`] never show
/// it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BotToken(String);

impl BotToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> BotToken {
        BotToken(token.into())
    }

    /// The token itself, for the one place that calls the Bot API with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The token for a listing: the bot id and the last two characters, `123:…yz`.
    ///
    /// ```
    /// use tgpipe_shared::registry::BotToken;
    /// assert_eq!(BotToken::new("123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw").masked(), "123456:…aw");
    /// assert_eq!(BotToken::new("12:ab").masked(), "12:…");
    /// ```
    pub fn masked(&self) -> String {
        let (id, rest) = self.0.split_once(':').unwrap_or(("?", &self.0));
        // Too short a tail would give most of a short token away.
        let tail: String = if rest.chars().count() >= 16 {
            rest.chars().skip(rest.chars().count() - 2).collect()
        } else {
            String::new()
        };
        format!("{id}:…{tail}")
    }
}

impl fmt::Debug for BotToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BotToken(<redacted>)")
    }
}

/// One bot of the registry, as stored under its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotRecord {
    /// The bot's id (also the key).
    pub id: BotId,
    /// Its username, as `getMe` answered when it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// What it does now.
    pub state: BotState,
    /// The token the workers use; absent when the workers get it from
    /// `TGPIPE_BOT_TOKENS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<BotToken>,
    /// The digest of the webhook secret Telegram sends.
    pub secret: SecretDigest,
    /// During a rotation: the digest of the secret before, still accepted until a
    /// request signed with [`BotRecord::secret`] arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<SecretDigest>,
    /// Update kinds given to `setWebhook` (`allowed_updates`); empty for Telegram's
    /// default set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_updates: Vec<String>,
    /// The URL given to `setWebhook` (for a rotation's `setWebhook`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// When the record last changed (unix milliseconds).
    #[serde(default)]
    pub updated_at: u64,
    /// Fields this version does not know, kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl BotRecord {
    /// A new active bot with `secret`.
    pub fn new(id: BotId, secret: &str) -> BotRecord {
        BotRecord {
            id,
            username: None,
            state: BotState::Active,
            token: None,
            secret: SecretDigest::of(secret.as_bytes()),
            previous_secret: None,
            allowed_updates: Vec::new(),
            webhook_url: None,
            updated_at: now_ms(),
            extra: serde_json::Map::new(),
        }
    }

    /// Starts a rotation to `new_secret`: the current secret stays accepted (as the
    /// previous one) until the new one is confirmed. A rotation started before the
    /// last one was confirmed keeps the older previous secret, which is the one Telegram
    /// may still be sending.
    pub fn rotate(&mut self, new_secret: &str) {
        if self.previous_secret.is_none() {
            self.previous_secret = Some(self.secret);
        }
        self.secret = SecretDigest::of(new_secret.as_bytes());
    }

    /// Ends a rotation: only the current secret is accepted from now on. `false` when
    /// the record's secret is no longer `confirmed` (rotated again meanwhile) or there
    /// was nothing to confirm.
    pub fn confirm(&mut self, confirmed: &SecretDigest) -> bool {
        if self.previous_secret.is_none() || !self.secret.matches(confirmed) {
            return false;
        }
        self.previous_secret = None;
        true
    }

    /// The record as stored.
    pub fn to_json(&self) -> Bytes {
        // Serialising plain data into a Vec cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// What the ingress reads of a bot, stored under its id in the webhooks bucket: no token,
/// no URL, nothing the ingress does not compare or route by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRecord {
    /// The bot's id (also the key).
    pub id: BotId,
    /// What it does now.
    pub state: BotState,
    /// The digest of the webhook secret Telegram sends.
    pub secret: SecretDigest,
    /// During a rotation: the digest of the secret before, accepted until confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<SecretDigest>,
    /// When the record last changed (unix milliseconds).
    #[serde(default)]
    pub updated_at: u64,
    /// Fields this version does not know, kept as they are. They are never copied from
    /// [`BotRecord::extra`]: a newer version's field there may be as secret as a token.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl WebhookRecord {
    /// A new active bot with `secret` (tests and benchmarks; writers use
    /// [`WebhookRecord::of`]).
    pub fn new(id: BotId, secret: &str) -> WebhookRecord {
        WebhookRecord::of(&BotRecord::new(id, secret), None)
    }

    /// The webhook record of `record`, over what the webhooks bucket holds now
    /// (`stored`): its unknown fields are kept, and a rotation it confirmed stays
    /// confirmed even while the main record still lists the previous secret (an
    /// ingress confirms here, where it may write; the next change of the main record
    /// folds the confirmation in).
    pub fn of(record: &BotRecord, stored: Option<&WebhookRecord>) -> WebhookRecord {
        let confirmed = stored.is_some_and(|w| w.confirmed(record));
        WebhookRecord {
            id: record.id,
            state: record.state,
            secret: record.secret,
            previous_secret: record.previous_secret.filter(|_| !confirmed),
            updated_at: record.updated_at,
            extra: stored.map(|w| w.extra.clone()).unwrap_or_default(),
        }
    }

    /// Whether this record confirmed the rotation `record` is in: same current secret,
    /// no previous one, where `record` still has one.
    pub fn confirmed(&self, record: &BotRecord) -> bool {
        record.previous_secret.is_some()
            && self.previous_secret.is_none()
            && self.secret.matches(&record.secret)
    }

    /// Ends a rotation, as [`BotRecord::confirm`].
    pub fn confirm(&mut self, confirmed: &SecretDigest) -> bool {
        if self.previous_secret.is_none() || !self.secret.matches(confirmed) {
            return false;
        }
        self.previous_secret = None;
        true
    }

    /// Whether the two say the same, whenever they were written.
    fn same_as(&self, other: &WebhookRecord) -> bool {
        WebhookRecord {
            updated_at: other.updated_at,
            ..self.clone()
        } == *other
    }
}

/// A record one of the registry's buckets holds: [`BotRecord`] or [`WebhookRecord`].
pub trait StoredRecord: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// The bot it is about (the key it must be stored under).
    fn bot(&self) -> BotId;
    /// Marks it changed now.
    fn touch(&mut self);
    /// The record as stored.
    fn to_json(&self) -> Bytes {
        // Serialising plain data into a Vec cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

impl StoredRecord for BotRecord {
    fn bot(&self) -> BotId {
        self.id
    }
    fn touch(&mut self) {
        self.updated_at = now_ms();
    }
}

impl StoredRecord for WebhookRecord {
    fn bot(&self) -> BotId {
        self.id
    }
    fn touch(&mut self) {
        self.updated_at = now_ms();
    }
}

/// The KV key of a bot.
pub fn key(bot: BotId) -> String {
    bot.0.to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a stored record was not taken. Never holds a secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The key is not a bot id.
    #[error("key `{0}` is not a bot id")]
    BadKey(String),
    /// The value is not a record this version reads.
    #[error("record of bot {bot} does not parse: {reason}")]
    BadRecord {
        /// The bot.
        bot: BotId,
        /// serde's message (it names the field and the line, not the values).
        reason: String,
    },
    /// The record's id is not its key.
    #[error("record under key {key} names bot {id}")]
    WrongId {
        /// The key.
        key: BotId,
        /// The id in the record.
        id: BotId,
    },
}

/// Parses a stored record of the main bucket.
pub fn parse_record(key: &str, value: &[u8]) -> Result<BotRecord, RecordError> {
    parse(key, value)
}

/// Parses a stored record of either bucket.
pub fn parse<R: StoredRecord>(key: &str, value: &[u8]) -> Result<R, RecordError> {
    let bot = BotId::parse(key).ok_or_else(|| RecordError::BadKey(key.to_owned()))?;
    let record: R = serde_json::from_slice(value).map_err(|e| RecordError::BadRecord {
        bot,
        // serde_json's messages quote unknown variants and types, never whole values;
        // cut anyway, so a token in a wrong place cannot reach a log in full.
        reason: e.to_string().chars().take(120).collect(),
    })?;
    if record.bot() != bot {
        return Err(RecordError::WrongId {
            key: bot,
            id: record.bot(),
        });
    }
    Ok(record)
}

/// Why the registry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The bucket could not be opened or created.
    #[error("cannot open or create the bot registry bucket `{bucket}`: {source}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// Why.
        source: crate::BoxError,
    },
    /// The bucket does not exist and was not to be created.
    #[error("the bot registry bucket `{0}` does not exist (`provision` creates it)")]
    Missing(String),
    /// A read or write failed.
    #[error("bot registry: {0}")]
    Kv(#[source] crate::BoxError),
    /// The bot is not in the registry.
    #[error("bot {0} is not in the registry")]
    NotFound(BotId),
    /// `add` of a bot that is there.
    #[error("bot {0} is already in the registry")]
    Exists(BotId),
    /// The stored record cannot be read.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Opens the registry's bucket; with `create`, creates it when missing (with
/// `replicas`). An existing bucket is never changed.
pub async fn bucket(
    js: &jetstream::Context,
    settings: &RegistrySettings,
    replicas: usize,
    create: bool,
) -> Result<kv::Store, RegistryError> {
    open_bucket(
        js,
        &settings.bucket,
        "tgpipe: bot registry (tokens and secret digests)",
        replicas,
        create,
    )
    .await
}

/// Opens the webhooks bucket (what the ingress reads), as [`bucket`] the main one.
pub async fn webhooks_bucket(
    js: &jetstream::Context,
    settings: &RegistrySettings,
    replicas: usize,
    create: bool,
) -> Result<kv::Store, RegistryError> {
    open_bucket(
        js,
        &settings.webhooks_bucket(),
        "tgpipe: what the ingress reads of the bot registry (states and secret digests, no tokens)",
        replicas,
        create,
    )
    .await
}

async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    replicas: usize,
    create: bool,
) -> Result<kv::Store, RegistryError> {
    let err = |e: crate::BoxError| RegistryError::Bucket {
        bucket: name.to_owned(),
        source: e,
    };
    match js.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(e) if !create => {
            let missing = matches!(
                js.get_stream(format!("KV_{name}")).await,
                Err(ref ge) if matches!(ge.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref je)
                    if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
            );
            if missing {
                Err(RegistryError::Missing(name.to_owned()))
            } else {
                Err(err(e.into()))
            }
        }
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: name.to_owned(),
                description: description.to_owned(),
                // A few versions back, to see what a change replaced.
                history: 5,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| err(e.into())),
    }
}

/// Reads one bot's record.
pub async fn get(store: &kv::Store, bot: BotId) -> Result<(BotRecord, u64), RegistryError> {
    get_stored(store, bot).await
}

/// Reads one bot's record from either bucket, with its revision.
async fn get_stored<R: StoredRecord>(
    store: &kv::Store,
    bot: BotId,
) -> Result<(R, u64), RegistryError> {
    let entry = store
        .entry(key(bot))
        .await
        .map_err(|e| RegistryError::Kv(e.into()))?
        .filter(|e| e.operation == kv::Operation::Put)
        .ok_or(RegistryError::NotFound(bot))?;
    Ok((parse(&entry.key, &entry.value)?, entry.revision))
}

/// Stores a new bot; fails with [`RegistryError::Exists`] when its key holds a record.
/// Writes the main bucket only: writers use [`Registry::add`].
pub async fn add(store: &kv::Store, record: &BotRecord) -> Result<u64, RegistryError> {
    match store.create(key(record.id), record.to_json()).await {
        Ok(rev) => Ok(rev),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            Err(RegistryError::Exists(record.id))
        }
        Err(e) => Err(RegistryError::Kv(e.into())),
    }
}

/// Changes a bot's record with `change` (compare-and-set on its revision, retried when
/// another writer came first). `change` returns `false` to leave the record as it is.
/// Returns the record as stored, or `None` when nothing was written. Works on either
/// bucket; writers of the main one use [`Registry::modify`], which updates both.
pub async fn modify<R: StoredRecord>(
    store: &kv::Store,
    bot: BotId,
    mut change: impl FnMut(&mut R) -> bool,
) -> Result<Option<R>, RegistryError> {
    for _ in 0..10 {
        let (mut record, revision) = get_stored::<R>(store, bot).await?;
        if !change(&mut record) {
            return Ok(None);
        }
        record.touch();
        match store.update(key(bot), record.to_json(), revision).await {
            Ok(_) => return Ok(Some(record)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(RegistryError::Kv(e.into())),
        }
    }
    Err(RegistryError::Kv(
        format!("bot {bot}: the record kept changing under ten attempts to update it").into(),
    ))
}

/// Drops the previous secret of `bot` in the webhooks bucket once a request signed with
/// `confirmed` arrived (what an ingress does). `false` when there was nothing to
/// confirm or the bot was rotated again meanwhile.
pub async fn confirm_rotation(
    webhooks: &kv::Store,
    bot: BotId,
    confirmed: &SecretDigest,
) -> Result<bool, RegistryError> {
    Ok(
        modify::<WebhookRecord>(webhooks, bot, |r| r.confirm(confirmed))
            .await?
            .is_some(),
    )
}

/// Every readable record, by id; unreadable ones are returned apart.
pub async fn list(store: &kv::Store) -> Result<(Vec<BotRecord>, Vec<RecordError>), RegistryError> {
    list_stored(store).await
}

async fn list_stored<R: StoredRecord>(
    store: &kv::Store,
) -> Result<(Vec<R>, Vec<RecordError>), RegistryError> {
    let mut keys = store
        .keys()
        .await
        .map_err(|e| RegistryError::Kv(e.into()))?;
    let mut ids = Vec::new();
    while let Some(k) = keys.next().await {
        ids.push(k.map_err(|e| RegistryError::Kv(e.into()))?);
    }
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for k in ids {
        if let Ok(Some(entry)) = store.entry(&k).await
            && entry.operation == kv::Operation::Put
        {
            match parse::<R>(&entry.key, &entry.value) {
                Ok(r) => good.push(r),
                Err(e) => bad.push(e),
            }
        }
    }
    good.sort_by_key(|r| r.bot());
    Ok((good, bad))
}

/// Every key's last entry of a bucket (deleted keys included, as delete markers), read
/// with one ordered consumer: a bucket of 100,000 records in about a second, where a
/// `get` per key takes a round trip each.
async fn read_all(store: &kv::Store) -> Result<Vec<kv::Entry>, RegistryError> {
    let info = bounded(store.stream.get_info()).await?;
    if info.state.messages == 0 {
        return Ok(Vec::new());
    }
    let mut w = store
        .watch_with_history(">")
        .await
        .map_err(|e| RegistryError::Kv(e.into()))?;
    let mut out = Vec::new();
    loop {
        // A replay that stops for this long is not coming back: fail, a rerun retries.
        let next = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .map_err(|_| RegistryError::Kv("reading the bucket timed out".into()))?;
        let entry = match next {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return Err(RegistryError::Kv(e.into())),
            None => return Err(RegistryError::Kv("the bucket's replay ended early".into())),
        };
        let done = entry.delta == 0;
        out.push(entry);
        if done {
            return Ok(out);
        }
    }
}

/// What [`Registry::backfill`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backfill {
    /// Webhook records written (missing or different from the main bucket's).
    pub written: usize,
    /// Webhook records deleted (their bot is gone from the main bucket).
    pub deleted: usize,
}

/// The registry as its writers (`bots` commands, provisioning) see it: the main bucket
/// and the webhooks bucket. Every change writes the main record first, then the webhook
/// record made from it. A writer that dies between the two leaves the webhooks bucket
/// behind; any later change of the bot, or [`Registry::backfill`] (`provision`), brings
/// it up to date. An ingress of an older version watches the main bucket, which keeps
/// the digests too.
#[derive(Debug, Clone)]
pub struct Registry {
    bots: kv::Store,
    webhooks: kv::Store,
}

impl Registry {
    /// Opens both buckets; with `create`, creates the missing ones, and fills a new (or
    /// empty) webhooks bucket from the main one, so an upgrade keeps serving the bots
    /// already registered.
    pub async fn open(
        js: &jetstream::Context,
        settings: &RegistrySettings,
        replicas: usize,
        create: bool,
    ) -> Result<Registry, RegistryError> {
        let registry = Registry::open_buckets(js, settings, replicas, create).await?;
        if create && registry.webhooks_empty().await? {
            registry.backfill().await?;
        }
        Ok(registry)
    }

    /// Creates both buckets when missing and brings every webhook record up to date
    /// with the main bucket (what `provision` does at each install and upgrade).
    pub async fn provision(
        js: &jetstream::Context,
        settings: &RegistrySettings,
        replicas: usize,
    ) -> Result<(Registry, Backfill), RegistryError> {
        let registry = Registry::open_buckets(js, settings, replicas, true).await?;
        let done = registry.backfill().await?;
        Ok((registry, done))
    }

    async fn open_buckets(
        js: &jetstream::Context,
        settings: &RegistrySettings,
        replicas: usize,
        create: bool,
    ) -> Result<Registry, RegistryError> {
        Ok(Registry {
            bots: bucket(js, settings, replicas, create).await?,
            webhooks: webhooks_bucket(js, settings, replicas, create).await?,
        })
    }

    async fn webhooks_empty(&self) -> Result<bool, RegistryError> {
        Ok(bounded(self.webhooks.stream.get_info())
            .await?
            .state
            .messages
            == 0)
    }

    /// The main bucket (tokens included).
    pub fn bots(&self) -> &kv::Store {
        &self.bots
    }

    /// The webhooks bucket (what the ingress reads).
    pub fn webhooks(&self) -> &kv::Store {
        &self.webhooks
    }

    /// Reads one bot's record (from the main bucket).
    pub async fn get(&self, bot: BotId) -> Result<(BotRecord, u64), RegistryError> {
        get(&self.bots, bot).await
    }

    /// Every readable record of the main bucket, with the rotations the ingress
    /// confirmed in the webhooks bucket shown as confirmed (read only: the next change
    /// of the bot writes it).
    pub async fn list(&self) -> Result<(Vec<BotRecord>, Vec<RecordError>), RegistryError> {
        let (mut records, bad) = list(&self.bots).await?;
        let (hooks, _) = list_stored::<WebhookRecord>(&self.webhooks).await?;
        let hooks: std::collections::HashMap<BotId, WebhookRecord> =
            hooks.into_iter().map(|h| (h.id, h)).collect();
        for r in &mut records {
            if hooks.get(&r.id).is_some_and(|h| h.confirmed(r)) {
                r.previous_secret = None;
            }
        }
        Ok((records, bad))
    }

    /// Stores a new bot in both buckets. When the bot is there already, fails with
    /// [`RegistryError::Exists`] after bringing its webhook record up to date (a rerun
    /// of an `add` that died between the two writes).
    pub async fn add(&self, record: &BotRecord) -> Result<u64, RegistryError> {
        let added = add(&self.bots, record).await;
        if matches!(added, Ok(_) | Err(RegistryError::Exists(_))) {
            self.publish(record.id).await?;
        }
        added
    }

    /// Changes a bot's record as [`modify`] does, then its webhook record. A rotation
    /// the ingress confirmed in the webhooks bucket is folded into the main record
    /// first, so a new rotation keeps the secret Telegram sends now as the previous one.
    /// `None` when `change` changed nothing.
    pub async fn modify(
        &self,
        bot: BotId,
        mut change: impl FnMut(&mut BotRecord) -> bool,
    ) -> Result<Option<BotRecord>, RegistryError> {
        let hook = match get_stored::<WebhookRecord>(&self.webhooks, bot).await {
            Ok((hook, _)) => Some(hook),
            // Missing or unreadable: nothing to fold; `publish` rewrites it.
            Err(RegistryError::NotFound(_) | RegistryError::Record(_)) => None,
            Err(e) => return Err(e),
        };
        let mut changed = false;
        let stored = modify(&self.bots, bot, |r: &mut BotRecord| {
            let fold = hook.as_ref().is_some_and(|h| h.confirmed(r));
            if fold {
                r.previous_secret = None;
            }
            changed = change(r);
            changed || fold
        })
        .await?;
        self.publish(bot).await?;
        Ok(stored.filter(|_| changed))
    }

    /// Writes the webhook record of `bot` from its main record (deletes it when the
    /// bot is not in the main bucket). `true` when something was written.
    pub async fn publish(&self, bot: BotId) -> Result<bool, RegistryError> {
        for _ in 0..10 {
            let record = match get(&self.bots, bot).await {
                Ok((record, _)) => Some(record),
                Err(RegistryError::NotFound(_)) => None,
                Err(e) => return Err(e),
            };
            let current = self
                .webhooks
                .entry(key(bot))
                .await
                .map_err(|e| RegistryError::Kv(e.into()))?;
            let (stored, revision) = match &current {
                Some(e) if e.operation == kv::Operation::Put => (
                    parse::<WebhookRecord>(&e.key, &e.value).ok(),
                    Some(e.revision),
                ),
                Some(e) => (None, Some(e.revision)),
                None => (None, None),
            };
            let written = match (record, revision) {
                (None, None) => return Ok(false),
                (None, Some(_)) if stored.is_none() => return Ok(false),
                (None, Some(rev)) => self
                    .webhooks
                    .delete_expect_revision(key(bot), Some(rev))
                    .await
                    .map(|_| ())
                    .map_err(|e| (e.kind() == kv::DeleteErrorKind::WrongLastRevision, e.into())),
                (Some(record), revision) => {
                    let next = WebhookRecord::of(&record, stored.as_ref());
                    if stored.as_ref().is_some_and(|s| s.same_as(&next)) {
                        return Ok(false);
                    }
                    self.write_webhook(&next, revision).await
                }
            };
            match written {
                Ok(()) => return Ok(true),
                // Another writer (or an ingress confirming) came first: read again.
                Err((true, _)) => continue,
                Err((false, e)) => return Err(RegistryError::Kv(e)),
            }
        }
        Err(RegistryError::Kv(
            format!("bot {bot}: the webhook record kept changing under ten attempts to update it")
                .into(),
        ))
    }

    /// Writes `record` over `revision` (none: a new key). `Err((true, _))` when another
    /// writer came first.
    async fn write_webhook(
        &self,
        record: &WebhookRecord,
        revision: Option<u64>,
    ) -> Result<(), (bool, crate::BoxError)> {
        match revision {
            Some(rev) => self
                .webhooks
                .update(key(record.id), record.to_json(), rev)
                .await
                .map(|_| ())
                .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.into())),
            None => self
                .webhooks
                .create(key(record.id), record.to_json())
                .await
                .map(|_| ())
                .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.into())),
        }
    }

    /// Brings every webhook record up to date with the main bucket: writes the missing
    /// and different ones, deletes those of bots the main bucket no longer has. Safe to
    /// run again at any time; a run cut short is finished by the next.
    pub async fn backfill(&self) -> Result<Backfill, RegistryError> {
        let bots = read_all(&self.bots).await?;
        let hooks: std::collections::HashMap<String, kv::Entry> = read_all(&self.webhooks)
            .await?
            .into_iter()
            .map(|e| (e.key.clone(), e))
            .collect();
        let mut done = Backfill::default();
        let mut present = HashSet::new();
        let mut writes = Vec::new();
        for entry in &bots {
            if entry.operation != kv::Operation::Put {
                continue;
            }
            // Unreadable here is still present: its webhook record is left as it is.
            present.insert(entry.key.clone());
            let record = match parse_record(&entry.key, &entry.value) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "bot registry: unreadable record not copied to the webhooks bucket");
                    continue;
                }
            };
            let hook = hooks.get(&entry.key);
            let stored = hook
                .filter(|h| h.operation == kv::Operation::Put)
                .and_then(|h| parse::<WebhookRecord>(&h.key, &h.value).ok());
            let next = WebhookRecord::of(&record, stored.as_ref());
            if stored.as_ref().is_some_and(|s| s.same_as(&next)) {
                continue;
            }
            writes.push((next, hook.map(|h| h.revision)));
        }
        // Many writes in flight: an upgrade of 100,000 bots takes seconds, not minutes.
        let mut results = futures::stream::iter(writes)
            .map(|(next, revision)| async move {
                match self.write_webhook(&next, revision).await {
                    // Changed meanwhile: the one-bot path reads again.
                    Err((true, _)) => self.publish(next.id).await.map(|_| ()),
                    Err((false, e)) => Err(RegistryError::Kv(e)),
                    Ok(()) => Ok(()),
                }
            })
            .buffer_unordered(64);
        while let Some(result) = results.next().await {
            result?;
            done.written += 1;
        }
        drop(results);
        for (k, hook) in &hooks {
            if hook.operation == kv::Operation::Put
                && !present.contains(k)
                && let Some(bot) = BotId::parse(k)
                && self.publish(bot).await?
            {
                done.deleted += 1;
            }
        }
        Ok(done)
    }
}

/// The registry as one pod sees it: every readable record by bot id.
pub type Records = BTreeMap<BotId, BotRecord>;

/// The webhooks bucket as an ingress sees it: every readable record by bot id.
pub type WebhookRecords = BTreeMap<BotId, WebhookRecord>;

/// A running watch of the registry (see [`watch`]); the task stops when this is dropped.
#[derive(Debug)]
pub struct Watching {
    synced: Arc<AtomicBool>,
    /// Entries the watch has taken since it started (a replay in progress moves it).
    progress: Arc<std::sync::atomic::AtomicU64>,
    started: std::time::Instant,
    task: tokio::task::JoinHandle<()>,
}

/// How long a pod waits for the registry before it serves without it (the static bots
/// only, until the registry can be read): a registry the pod's NATS user may not read
/// must not keep it unready forever.
pub const SYNC_GRACE: Duration = Duration::from_secs(10);

impl Watching {
    /// Whether the watch has delivered the bucket's state at least once (and `on_change`
    /// has returned: the pod's table holds it).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether the pod may take traffic as far as the registry goes: its state has been
    /// read, or [`SYNC_GRACE`] has passed since the watch started.
    pub fn allows_ready(&self) -> bool {
        self.is_synced() || self.started.elapsed() >= SYNC_GRACE
    }

    /// Waits until the registry was read, or [`SYNC_GRACE`] passed and the watch took
    /// no entry for a second (a registry this pod cannot read; a long first replay that
    /// is still moving is waited for). A worker waits so before it pulls: an update of a
    /// registry bot pulled earlier would fail for want of its token and wait out retry
    /// delays.
    pub async fn ready(&self) {
        let mut last = (
            self.progress.load(Ordering::Relaxed),
            std::time::Instant::now(),
        );
        while !self.is_synced() {
            let now = self.progress.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, std::time::Instant::now());
            } else if self.started.elapsed() >= SYNC_GRACE
                && last.1.elapsed() >= Duration::from_secs(1)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A shared flag of [`Watching::is_synced`].
    pub fn synced_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.synced)
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long to wait before watching again after the watch failed (a reconnect, a lost
/// stream leader): short, because a change is to reach every pod within 2 s.
const REWATCH_DELAY: Duration = Duration::from_millis(250);

/// How often a watch checks that it is not behind the bucket.
const STALL_CHECK: Duration = Duration::from_millis(300);

/// Checks in a row that find the watch behind the bucket and no entry arrived since
/// the previous one, before it is called stalled: a watch that is still replaying a
/// large bucket (100,000 records take seconds, more on a busy pod) is behind but moving.
const STALLED_CHECKS: u32 = 2;

/// The same, while a watch replays the bucket for the first time since it was created:
/// the server pauses the replay now and then (flow control, reading a large stream
/// from disk), and a restart would start it from zero, so a replay is called stalled
/// only after about 5 s without an entry. A watch that caught up keeps the short bound.
const STALLED_CHECKS_REPLAYING: u32 = 16;

/// The longest wait before watching again after repeated stalls: the first re-watch
/// is immediate (a lost stream leader must not cost the 2 s bound), each one after it
/// waits twice as long as the last, from [`REWATCH_DELAY`].
const MAX_REWATCH_BACKOFF: Duration = Duration::from_secs(4);

/// Watches a registry bucket and calls `on_change` with every readable record each time
/// it changed (and once when the bucket's state has been read): the workers watch the
/// main bucket ([`BotRecord`]s), the ingress the webhooks bucket ([`WebhookRecord`]s).
/// `open` gives the bucket; it is called again whenever the watch has to be re-created (the connection
/// was lost, the bucket's stream moved to another leader, the bucket did not exist yet).
///
/// A record that does not parse is logged at WARN and skipped: the bot keeps the last
/// record this pod read for it (none on a fresh pod), the others are unaffected.
pub fn watch<R, O, F>(
    open: O,
    on_change: impl FnMut(&BTreeMap<BotId, R>) + Send + 'static,
) -> Watching
where
    R: StoredRecord,
    O: FnMut() -> F + Send + 'static,
    F: Future<Output = Result<kv::Store, RegistryError>> + Send,
{
    watch_with(open, on_change, Arc::new(tokio::sync::Notify::new()))
}

/// [`watch`], which also watches again (calling `open`) whenever `rewatch` is notified:
/// `open` may then give another bucket (the ingress reads the main bucket until the
/// webhooks bucket exists).
pub fn watch_with<R, O, F>(
    mut open: O,
    mut on_change: impl FnMut(&BTreeMap<BotId, R>) + Send + 'static,
    rewatch: Arc<tokio::sync::Notify>,
) -> Watching
where
    R: StoredRecord,
    O: FnMut() -> F + Send + 'static,
    F: Future<Output = Result<kv::Store, RegistryError>> + Send,
{
    let synced = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&synced);
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let moved = Arc::clone(&progress);
    let task = tokio::spawn(async move {
        let mut records = BTreeMap::<BotId, R>::new();
        let mut failing = false;
        // Logged once, when the first replay is done: how long a pod takes to know its bots.
        let mut first_read = Some(std::time::Instant::now());
        // Stalls since the last watch that caught up with the bucket.
        let mut stalls = 0u32;
        loop {
            let opened = tokio::time::timeout(STEP_TIMEOUT, open())
                .await
                .unwrap_or_else(|_| Err(RegistryError::Kv("timed out".into())));
            let store = match opened {
                Ok(s) => s,
                // Not provisioned (and this pod may not create it): no registry bots
                // until it appears.
                Err(e @ RegistryError::Missing(_)) => {
                    if !failing {
                        tracing::warn!(error = %e, "serving the static bots only until the bot registry exists");
                        failing = true;
                    }
                    if !records.is_empty() || !flag.load(Ordering::Acquire) {
                        records.clear();
                        on_change(&records);
                        flag.store(true, Ordering::Release);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "bot registry unavailable; will retry");
                        failing = true;
                    }
                    tokio::time::sleep(REWATCH_DELAY).await;
                    continue;
                }
            };
            let empty = match bounded(store.stream.get_info()).await {
                Ok(info) => info.state.messages == 0,
                Err(e) => {
                    tracing::warn!(error = %e, "bot registry status");
                    tokio::time::sleep(REWATCH_DELAY).await;
                    continue;
                }
            };
            let mut w = match bounded(store.watch_with_history(">")).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "watching the bot registry");
                    tokio::time::sleep(REWATCH_DELAY).await;
                    continue;
                }
            };
            if failing {
                tracing::info!("bot registry watched again");
                failing = false;
            }
            // A fresh watch replays the bucket's current state; a bot that vanished
            // meanwhile without a delete marker is dropped once the replay is done.
            let mut replayed: Option<HashSet<BotId>> = Some(HashSet::new());
            if empty {
                records.clear();
                replayed = None;
                on_change(&records);
                flag.store(true, Ordering::Release);
            }
            // The watch is an ordered consumer: when the bucket's stream loses its leader
            // it notices only after two missed 5 s heartbeats. Comparing the stream's last
            // sequence with the last revision seen finds a stalled watch within a second.
            let mut last_revision = 0u64;
            // The stream's last sequence at the previous check: a watch that has not
            // reached it and received nothing for `STALLED_CHECKS` checks is stalled (an
            // entry merely in flight at one check has arrived by the next; a long replay
            // is behind its target but moving).
            let mut behind: Option<u64> = None;
            let (mut seen_at_check, mut still) = (0u64, 0u32);
            let mut stalled = false;
            let mut check = tokio::time::interval(STALL_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let next = tokio::select! {
                    // Entries first: a check only runs when none is waiting.
                    biased;
                    next = w.next() => next,
                    _ = rewatch.notified() => {
                        tracing::info!("bot registry: watching again (its bucket changed)");
                        break;
                    }
                    _ = check.tick() => {
                        let moved = last_revision != seen_at_check;
                        seen_at_check = last_revision;
                        still = match behind {
                            Some(target) if last_revision < target && !moved => still + 1,
                            _ => 0,
                        };
                        let patience = if replayed.is_some() {
                            STALLED_CHECKS_REPLAYING
                        } else {
                            STALLED_CHECKS
                        };
                        if still >= patience {
                            tracing::warn!("bot registry watch stalled (the bucket has newer changes); watching again");
                            stalled = true;
                            break;
                        }
                        // Bounded: during a leader election the request would wait for
                        // the JetStream timeout (5 s), and the watch with it.
                        // `Store::status` answers from a cached stream info: ask the server.
                        behind = match tokio::time::timeout(STALL_CHECK, store.stream.get_info()).await {
                            Ok(Ok(info)) => Some(info.state.last_sequence)
                                .filter(|last| *last > last_revision),
                            _ => None,
                        };
                        continue;
                    }
                };
                let entry = match next {
                    Some(Ok(entry)) => entry,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "bot registry watch failed; watching again");
                        break;
                    }
                    None => {
                        tracing::warn!("bot registry watch ended; watching again");
                        break;
                    }
                };
                last_revision = last_revision.max(entry.revision);
                moved.fetch_add(1, Ordering::Relaxed);
                let caught_up = entry.delta == 0 || entry.seen_current;
                apply(&mut records, &entry, replayed.as_mut());
                // Changes come in bursts (a bulk import): take the burst together.
                let burst = tokio::time::Instant::now() + Duration::from_millis(10);
                let mut caught_up = caught_up;
                while let Ok(Some(Ok(entry))) = tokio::time::timeout_at(burst, w.next()).await {
                    last_revision = last_revision.max(entry.revision);
                    caught_up |= entry.delta == 0 || entry.seen_current;
                    apply(&mut records, &entry, replayed.as_mut());
                }
                if let Some(seen) = replayed.as_ref().filter(|_| caught_up) {
                    records.retain(|id, _| seen.contains(id));
                    replayed = None;
                    stalls = 0;
                    if let Some(started) = first_read.take() {
                        tracing::info!(
                            records = records.len(),
                            took_ms = started.elapsed().as_millis() as u64,
                            "bot registry read"
                        );
                    }
                }
                if replayed.is_none() {
                    on_change(&records);
                    flag.store(true, Ordering::Release);
                }
            }
            if !stalled {
                tokio::time::sleep(REWATCH_DELAY).await;
            } else {
                // Stalling again and again (a bucket whose leader keeps moving, a pod
                // starved of CPU): each re-watch waits longer, up to the cap.
                if stalls > 0 {
                    let backoff = REWATCH_DELAY
                        .saturating_mul(1 << (stalls - 1).min(8))
                        .min(MAX_REWATCH_BACKOFF);
                    tokio::time::sleep(backoff).await;
                }
                stalls += 1;
            }
        }
    });
    Watching {
        synced,
        progress,
        started: std::time::Instant::now(),
        task,
    }
}

/// How long one step of (re-)creating the watch may take before it is tried again: a
/// request sent into a leader election otherwise waits for the JetStream timeout (5 s).
const STEP_TIMEOUT: Duration = Duration::from_secs(1);

async fn bounded<T, E>(step: impl Future<Output = Result<T, E>>) -> Result<T, RegistryError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(STEP_TIMEOUT, step).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RegistryError::Kv(e.into())),
        Err(_) => Err(RegistryError::Kv("timed out".into())),
    }
}

fn apply<R: StoredRecord>(
    records: &mut BTreeMap<BotId, R>,
    entry: &kv::Entry,
    replayed: Option<&mut HashSet<BotId>>,
) {
    let Some(bot) = BotId::parse(&entry.key) else {
        tracing::warn!(key = %entry.key, "bot registry: a key that is not a bot id; skipped");
        return;
    };
    if let Some(seen) = replayed {
        seen.insert(bot);
    }
    if entry.operation != kv::Operation::Put {
        records.remove(&bot);
        return;
    }
    match parse::<R>(&entry.key, &entry.value) {
        Ok(record) => {
            records.insert(bot, record);
        }
        Err(e) => tracing::warn!(
            bot = %bot,
            error = %e,
            kept = records.contains_key(&bot),
            "bot registry: unreadable record skipped (the bot keeps its last readable record, if any)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_keep_unknown_fields() {
        let raw = format!(
            r#"{{"id":42,"state":"paused","secret":"{}","token":"42:AAAA","plan":"gold","limits":{{"rps":3}}}}"#,
            serde_json::to_value(SecretDigest::of(b"s"))
                .unwrap()
                .as_str()
                .unwrap()
        );
        let r = parse_record("42", raw.as_bytes()).unwrap();
        assert_eq!(r.state, BotState::Paused);
        assert_eq!(r.extra["plan"], "gold");
        let back: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(back["limits"]["rps"], 3);
        assert_eq!(back["plan"], "gold");
    }

    #[test]
    fn unreadable_records_say_why_without_the_token() {
        let e = parse_record(
            "42",
            br#"{"id":42,"state":"sleeping","secret":"x","token":"42:TOPSECRETTOKEN"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bot 42"), "{e}");
        assert!(!e.contains("TOPSECRETTOKEN"), "{e}");
        assert!(parse_record("x", b"{}").is_err());
        assert!(parse_record("42", b"not json").is_err());
        let wrong = BotRecord::new(BotId(7), "s").to_json();
        assert!(matches!(
            parse_record("42", &wrong),
            Err(RecordError::WrongId { .. })
        ));
    }

    #[test]
    fn rotation_accepts_both_until_confirmed() {
        let mut r = BotRecord::new(BotId(1), "old");
        r.rotate("new");
        assert_eq!(r.previous_secret, Some(SecretDigest::of(b"old")));
        // A rotation before confirmation keeps the secret Telegram may still use.
        r.rotate("newer");
        assert_eq!(r.previous_secret, Some(SecretDigest::of(b"old")));
        assert!(!r.confirm(&SecretDigest::of(b"new")));
        assert!(r.confirm(&SecretDigest::of(b"newer")));
        assert_eq!(r.previous_secret, None);
        assert!(!r.confirm(&SecretDigest::of(b"newer")));
    }

    #[test]
    fn debug_never_shows_tokens_or_digests() {
        let mut r = BotRecord::new(BotId(1), "hunter2");
        r.token = Some(BotToken::new("1:TOPSECRETTOKENVALUE"));
        let shown = format!("{r:?}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");
        let digest = serde_json::to_value(SecretDigest::of(b"hunter2")).unwrap();
        assert!(!shown.contains(&digest.as_str().unwrap()[7..20]), "{shown}");
        assert_eq!(BotToken::new("1:TOPSECRETTOKENVALUE").masked(), "1:…UE");
    }
}
