//! The bots this ingress serves and their webhook secrets.
//!
//! Telegram sends the secret given to `setWebhook` in `X-Telegram-Bot-Api-Secret-Token`
//! on every request. It is the only proof that a request comes from Telegram for this
//! bot, so it is compared in constant time and never printed.

use std::collections::HashMap;
use std::fmt;

use subtle::ConstantTimeEq;
use tgpipe_shared::BotId;

/// A webhook secret token: 1 to 256 characters of `A-Z a-z 0-9 _ -` (Telegram's rule).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(Box<[u8]>);

impl SecretToken {
    /// Longest secret Telegram accepts.
    pub const MAX_LEN: usize = 256;

    /// Validates and wraps a secret.
    pub fn new(secret: &str) -> Result<SecretToken, BotsError> {
        if secret.is_empty()
            || secret.len() > Self::MAX_LEN
            || !secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(BotsError::BadSecret);
        }
        Ok(SecretToken(secret.as_bytes().into()))
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

/// Why a bot list is invalid. Printed at start-up: it never contains a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BotsError {
    /// An entry is not `<bot_id>:<secret>`.
    #[error("entry #{0} is not `<bot_id>:<secret>`")]
    Malformed(usize),
    /// The bot id is not a positive integer.
    #[error("entry #{0} has a bot id that is not a positive integer")]
    BadBotId(usize),
    /// The secret breaks Telegram's rule.
    #[error("a secret must be 1 to 256 characters of A-Z, a-z, 0-9, _ and -")]
    BadSecret,
    /// The same bot twice.
    #[error("bot {0} is listed twice")]
    Duplicate(BotId),
    /// No bot at all.
    #[error("no bots configured (set TGPIPE_BOTS or TGPIPE_BOTS_FILE)")]
    Empty,
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
    /// are comments, so a mounted Secret file can be annotated).
    pub fn parse(list: &str) -> Result<Bots, BotsError> {
        let mut bots = HashMap::new();
        for (i, entry) in tgpipe_shared::config::split_list(list)
            .into_iter()
            .enumerate()
        {
            let n = i + 1;
            let (id, secret) = entry.split_once(':').ok_or(BotsError::Malformed(n))?;
            let id = BotId::parse(id.trim()).ok_or(BotsError::BadBotId(n))?;
            let secret = SecretToken::new(secret.trim())?;
            if bots.insert(id, secret).is_some() {
                return Err(BotsError::Duplicate(id));
            }
        }
        if bots.is_empty() {
            return Err(BotsError::Empty);
        }
        Ok(Bots(bots))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lists_are_rejected_without_echoing_secrets() {
        assert_eq!(Bots::parse("").unwrap_err(), BotsError::Empty);
        assert_eq!(Bots::parse("123").unwrap_err(), BotsError::Malformed(1));
        assert_eq!(Bots::parse("1:a,x:b").unwrap_err(), BotsError::BadBotId(2));
        assert_eq!(Bots::parse("1:a b").unwrap_err(), BotsError::BadSecret);
        assert_eq!(Bots::parse("1:").unwrap_err(), BotsError::BadSecret);
        assert_eq!(
            Bots::parse(&format!("1:{}", "a".repeat(257))).unwrap_err(),
            BotsError::BadSecret
        );
        assert_eq!(
            Bots::parse("1:a,1:b").unwrap_err(),
            BotsError::Duplicate(BotId(1))
        );
        let err = Bots::parse("1:topsecret,1:topsecret2")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("topsecret"));
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
