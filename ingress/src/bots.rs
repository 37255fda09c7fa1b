//! The bots this ingress serves and their webhook secrets.
//!
//! Telegram sends the secret given to `setWebhook` in `X-Telegram-Bot-Api-Secret-Token`
//! on every request. It is the only proof that a request comes from Telegram for this
//! bot, so it is compared in constant time and never printed.
//!
//! Two sources: the static list ([`Bots`], `TGPIPE_BOTS` / `TGPIPE_BOTS_FILE`, read once)
//! and the bot registry (`tgpipe_shared::registry`, watched). [`BotTable`] merges them;
//! a bot in both is served as the static list says (the registry's record is ignored
//! with a WARN), so a pod's explicit configuration is never overridden from outside.
//! [`LiveBots`] holds the current table: a request takes the table once (an `Arc`
//! clone under a read lock held for nanoseconds) and is answered under it, however
//! the registry changes meanwhile.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;
use tgpipe_shared::BotId;
use tgpipe_shared::config::{BotListError, BotSecrets};
use tgpipe_shared::registry::{BotState, SecretDigest, WebhookRecords};

/// A webhook secret token: 1 to 256 characters of `A-Z a-z 0-9 _ -` (Telegram's rule).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(Box<[u8]>);

impl SecretToken {
    /// Longest secret Telegram accepts.
    pub const MAX_LEN: usize = 256;

    /// Wraps a secret, if Telegram would accept it
    /// ([`tgpipe_shared::config::is_valid_webhook_secret`]).
    pub fn new(secret: &str) -> Option<SecretToken> {
        tgpipe_shared::config::is_valid_webhook_secret(secret)
            .then(|| SecretToken(secret.as_bytes().into()))
    }

    /// Whether `presented` is this secret. Takes the same time whatever the position of
    /// the first differing byte, so the secret cannot be guessed byte by byte from
    /// response times. (Its length can be learnt, which Telegram's rules make public
    /// anyway: 1 to 256 characters.)
    pub fn verify(&self, presented: &[u8]) -> bool {
        if presented.len() != self.0.len() {
            // Still do the same work as a same-length comparison.
            let _ = self.0.ct_eq(&self.0);
            return false;
        }
        self.0.ct_eq(presented).into()
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(<redacted>)")
    }
}

/// The bots this ingress accepts updates for.
///
/// ```
/// use tgpipe_ingress::bots::Bots;
/// use tgpipe_shared::BotId;
///
/// let bots = Bots::parse("123:s3cret, 456:other").unwrap();
/// assert!(bots.get(BotId(123)).unwrap().verify(b"s3cret"));
/// assert!(!bots.get(BotId(123)).unwrap().verify(b"other"));
/// assert!(bots.get(BotId(789)).is_none());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Bots(HashMap<BotId, SecretToken>);

impl Bots {
    /// Parses `<bot_id>:<secret>[,<bot_id>:<secret>...]` (commas or newlines; `#` lines
    /// are comments, so a mounted Secret file can be annotated) with the parser the
    /// worker uses too ([`BotSecrets::parse`]); an empty list is refused.
    pub fn parse(list: &str) -> Result<Bots, BotListError> {
        let bots = BotSecrets::parse(list)?;
        if bots.is_empty() {
            return Err(BotListError::Empty);
        }
        Ok(Bots::from(&bots))
    }

    /// The secret of a bot, if this ingress serves it.
    pub fn get(&self, bot: BotId) -> Option<&SecretToken> {
        self.0.get(&bot)
    }

    /// The bot ids served, sorted.
    pub fn ids(&self) -> Vec<BotId> {
        let mut ids: Vec<BotId> = self.0.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

impl From<&BotSecrets> for Bots {
    fn from(secrets: &BotSecrets) -> Bots {
        Bots(
            secrets
                .iter()
                // The parser checked every secret against Telegram's rule.
                .map(|(id, secret)| (id, SecretToken(secret.expose().as_bytes().into())))
                .collect(),
        )
    }
}

/// Bots labelled by their id in the metrics; the others (past this many registry bots)
/// are counted under `other`, so a platform with 100 000 bots keeps a bounded label set.
pub const LABELLED_BOTS: usize = 1000;

/// What a presented secret is, for one bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a secret of this bot.
    Refused,
    /// The bot's (current) secret.
    Current,
    /// The secret before a rotation that is not confirmed yet.
    Previous,
}

#[derive(Debug)]
enum Check {
    Static(SecretToken),
    Registry {
        current: SecretDigest,
        previous: Option<SecretDigest>,
    },
}

/// One bot as this ingress serves it now.
#[derive(Debug)]
pub struct ServedBot {
    check: Check,
    state: BotState,
    label: Arc<str>,
    metrics: crate::metrics::BotMetrics,
    /// Set once a confirmation of the current secret has been sent, so that a burst of
    /// requests signed with a new secret makes one registry write, not one each.
    confirming: AtomicBool,
}

impl ServedBot {
    /// Whether `presented` is a secret of this bot. Every stored secret is compared, in
    /// constant time, whichever matches.
    pub fn verify(&self, presented: &[u8]) -> Verdict {
        match &self.check {
            Check::Static(secret) => {
                if secret.verify(presented) {
                    Verdict::Current
                } else {
                    Verdict::Refused
                }
            }
            Check::Registry { current, previous } => {
                let digest = SecretDigest::of(presented);
                let is_current = current.matches(&digest);
                let is_previous = previous.is_some_and(|p| p.matches(&digest));
                if is_current {
                    Verdict::Current
                } else if is_previous {
                    Verdict::Previous
                } else {
                    Verdict::Refused
                }
            }
        }
    }

    /// The bot's state.
    pub fn state(&self) -> BotState {
        self.state
    }

    /// Its metrics label: the id, or `other` past [`LABELLED_BOTS`].
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// Its label with its metric handles.
    pub(crate) fn metrics(&self) -> (&Arc<str>, &crate::metrics::BotMetrics) {
        (&self.label, &self.metrics)
    }

    /// The secret digest to confirm in the registry, the first time a request signed
    /// with the current secret of an unconfirmed rotation arrives; `None` afterwards and
    /// when there is nothing to confirm.
    pub fn take_confirmation(&self) -> Option<SecretDigest> {
        match &self.check {
            Check::Registry {
                current,
                previous: Some(_),
            } if !self.confirming.swap(true, Ordering::AcqRel) => Some(*current),
            _ => None,
        }
    }
}

/// The bots served, from both sources, at one moment.
#[derive(Debug, Default)]
pub struct BotTable(HashMap<BotId, ServedBot>);

impl BotTable {
    /// The static bots and the registry's records; a bot in both is served as the
    /// static list says. Registry bots in the `removed` state are left out (answered
    /// 404, like a bot never seen).
    ///
    /// ```
    /// use tgpipe_ingress::bots::{BotTable, Bots, Verdict};
    /// use tgpipe_shared::BotId;
    /// use tgpipe_shared::registry::{WebhookRecord, WebhookRecords};
    ///
    /// let mut records = WebhookRecords::new();
    /// records.insert(BotId(5), WebhookRecord::new(BotId(5), "from-registry"));
    /// let table = BotTable::build(&Bots::parse("1:static").unwrap(), &records);
    /// assert_eq!(table.get(BotId(5)).unwrap().verify(b"from-registry"), Verdict::Current);
    /// assert_eq!(table.get(BotId(1)).unwrap().verify(b"static"), Verdict::Current);
    /// assert!(table.get(BotId(9)).is_none());
    /// ```
    pub fn build(statics: &Bots, records: &WebhookRecords) -> BotTable {
        let mut table = HashMap::with_capacity(statics.0.len() + records.len());
        for (id, secret) in &statics.0 {
            table.insert(
                *id,
                ServedBot {
                    check: Check::Static(secret.clone()),
                    state: BotState::Active,
                    label: id.to_string().into(),
                    metrics: Default::default(),
                    confirming: AtomicBool::new(false),
                },
            );
        }
        let other: Arc<str> = Arc::from("other");
        let mut labelled = 0;
        // Records are ordered by id: the lowest ids keep their labels as bots are added.
        for (id, record) in records {
            if table.contains_key(id) {
                tracing::warn!(bot = %id, "bot is in TGPIPE_BOTS and in the registry; the static entry is used");
                continue;
            }
            if record.state == BotState::Removed {
                continue;
            }
            let label = if labelled < LABELLED_BOTS {
                labelled += 1;
                Arc::from(id.to_string())
            } else {
                Arc::clone(&other)
            };
            table.insert(
                *id,
                ServedBot {
                    check: Check::Registry {
                        current: record.secret,
                        previous: record.previous_secret,
                    },
                    state: record.state,
                    label,
                    metrics: Default::default(),
                    confirming: AtomicBool::new(false),
                },
            );
        }
        BotTable(table)
    }

    /// A bot, if served.
    pub fn get(&self, bot: BotId) -> Option<&ServedBot> {
        self.0.get(&bot)
    }

    /// How many bots are served.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The current [`BotTable`], replaced whole when the registry changes.
#[derive(Debug)]
pub struct LiveBots {
    statics: Bots,
    current: RwLock<Arc<BotTable>>,
}

impl LiveBots {
    /// Starts with the static bots only.
    pub fn new(statics: Bots) -> LiveBots {
        let table = BotTable::build(&statics, &WebhookRecords::new());
        LiveBots {
            statics,
            current: RwLock::new(Arc::new(table)),
        }
    }

    /// The table now; a request keeps it to its end.
    pub fn snapshot(&self) -> Arc<BotTable> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Rebuilds the table from the registry's records.
    pub fn update(&self, records: &WebhookRecords) {
        let table = Arc::new(BotTable::build(&self.statics, records));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = table;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tgpipe_shared::registry::{BotRecord, WebhookRecord};

    #[test]
    fn rotation_accepts_both_secrets_until_confirmed() {
        let mut rotated = BotRecord::new(BotId(5), "old-secret");
        rotated.rotate("new-secret");
        let mut record = WebhookRecord::of(&rotated, None);
        let mut records = WebhookRecords::new();
        records.insert(BotId(5), record.clone());
        let table = BotTable::build(&Bots::default(), &records);
        let bot = table.get(BotId(5)).unwrap();
        assert_eq!(bot.verify(b"old-secret"), Verdict::Previous);
        assert_eq!(bot.verify(b"new-secret"), Verdict::Current);
        assert_eq!(bot.verify(b"neither"), Verdict::Refused);
        assert_eq!(bot.take_confirmation(), Some(record.secret));
        assert_eq!(bot.take_confirmation(), None, "one confirmation per table");
        assert!(record.confirm(&SecretDigest::of(b"new-secret")));
        records.insert(BotId(5), record);
        let table = BotTable::build(&Bots::default(), &records);
        assert_eq!(
            table.get(BotId(5)).unwrap().verify(b"old-secret"),
            Verdict::Refused
        );
    }

    #[test]
    fn static_bots_win_and_removed_bots_are_not_served() {
        let mut records = WebhookRecords::new();
        records.insert(BotId(1), WebhookRecord::new(BotId(1), "registry-secret"));
        let mut gone = WebhookRecord::new(BotId(2), "gone");
        gone.state = BotState::Removed;
        records.insert(BotId(2), gone);
        let table = BotTable::build(&Bots::parse("1:static-secret").unwrap(), &records);
        assert_eq!(
            table.get(BotId(1)).unwrap().verify(b"static-secret"),
            Verdict::Current
        );
        assert_eq!(
            table.get(BotId(1)).unwrap().verify(b"registry-secret"),
            Verdict::Refused
        );
        assert!(table.get(BotId(2)).is_none());
    }

    #[test]
    fn metric_labels_are_capped() {
        let records: WebhookRecords = (1..=LABELLED_BOTS as u64 + 5)
            .map(|i| (BotId(i), WebhookRecord::new(BotId(i), "s")))
            .collect();
        let table = BotTable::build(&Bots::default(), &records);
        assert_eq!(&**table.get(BotId(1)).unwrap().label(), "1");
        assert_eq!(
            &**table.get(BotId(LABELLED_BOTS as u64)).unwrap().label(),
            "1000"
        );
        assert_eq!(
            &**table.get(BotId(LABELLED_BOTS as u64 + 1)).unwrap().label(),
            "other"
        );
    }

    #[test]
    fn bad_lists_are_rejected_without_echoing_secrets() {
        assert_eq!(Bots::parse("").unwrap_err(), BotListError::Empty);
        assert_eq!(Bots::parse("123").unwrap_err(), BotListError::Malformed(1));
        assert_eq!(
            Bots::parse("1:a,x:b").unwrap_err(),
            BotListError::BadBotId(2)
        );
        assert!(matches!(
            Bots::parse("1:a b").unwrap_err(),
            BotListError::BadSecret { entry: 1, .. }
        ));
        assert!(Bots::parse(&format!("1:{}", "a".repeat(257))).is_err());
        assert_eq!(
            Bots::parse("1:a,1:b").unwrap_err(),
            BotListError::Duplicate(BotId(1))
        );
        let err = Bots::parse("1:topsecret,1:topsecret2")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("topsecret"));
        assert!(SecretToken::new("").is_none() && SecretToken::new("a b").is_none());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let bots = Bots::parse("1:topsecret").unwrap();
        assert!(!format!("{bots:?}").contains("topsecret"));
    }

    #[test]
    fn verify_rejects_prefixes_and_extensions() {
        let s = SecretToken::new("abcdef").unwrap();
        assert!(s.verify(b"abcdef"));
        for bad in [&b""[..], b"abcde", b"abcdefg", b"abcdeF", b"ABCDEF"] {
            assert!(!s.verify(bad));
        }
    }
}
