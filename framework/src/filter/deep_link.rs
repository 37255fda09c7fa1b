//! `/start` with a deep-link payload (`https://t.me/<bot>?start=<payload>`).
//!
//! Telegram allows `[A-Za-z0-9_-]`, up to 64 characters, in a start payload; anything
//! else is carried base64url-encoded without padding, as aiogram's `encode_payload`
//! does. [`CommandStart`] matches `/start`, optionally only with a payload, and decodes
//! an encoded one for the handler's [`CommandObject`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Command, CommandObject, Filter, FilterOutcome};
use crate::context::{Context, Extensions};
use crate::handler::BoxFuture;

/// Encodes any text as a start payload (base64url, no padding).
///
/// ```
/// use tgpipe::filter::{decode_payload, encode_payload};
/// let p = encode_payload("ref=42&lang=uk");
/// assert_eq!(decode_payload(&p).as_deref(), Some("ref=42&lang=uk"));
/// ```
pub fn encode_payload(payload: &str) -> String {
    URL_SAFE_NO_PAD.encode(payload.as_bytes())
}

/// Decodes a payload made by [`encode_payload`]; `None` if it is not one.
pub fn decode_payload(encoded: &str) -> Option<String> {
    URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

/// Why a start link cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a start payload is at most 64 characters of A-Z, a-z, 0-9, _ and - (encode other text)")]
pub struct PayloadError;

/// `https://t.me/<bot>?start=<payload>`, encoding the payload when `encode` is set.
pub fn create_start_link(
    bot_username: &str,
    payload: &str,
    encode: bool,
) -> Result<String, PayloadError> {
    let payload = if encode {
        encode_payload(payload)
    } else {
        payload.to_owned()
    };
    if payload.is_empty()
        || payload.len() > 64
        || !payload
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(PayloadError);
    }
    Ok(format!("https://t.me/{bot_username}?start={payload}"))
}

/// Matches `/start`, like `Command::new(["start"])`, with deep-link options.
#[derive(Debug, Clone)]
pub struct CommandStart {
    command: Command,
    deep_link: bool,
    encoded: bool,
}

impl CommandStart {
    /// `/start`, with or without a payload.
    pub fn new() -> CommandStart {
        CommandStart {
            command: Command::new(["start"]),
            deep_link: false,
            encoded: false,
        }
    }

    /// Only `/start <payload>`.
    pub fn deep_link(mut self) -> CommandStart {
        self.deep_link = true;
        self
    }

    /// The payload is base64url-encoded: hand the decoded text to the handler (and
    /// reject payloads that do not decode).
    pub fn encoded(mut self) -> CommandStart {
        self.encoded = true;
        self
    }
}

impl Default for CommandStart {
    fn default() -> Self {
        CommandStart::new()
    }
}

impl Filter for CommandStart {
    fn check<'a>(&'a self, cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        Box::pin(async move {
            let parsed = self.command.parse_update(cx).await;
            parsed.and_then(|mut c: CommandObject| {
                if self.deep_link && c.args.is_none() {
                    return None;
                }
                if self.encoded
                    && let Some(args) = &c.args
                {
                    c.args = Some(decode_payload(args)?);
                }
                let mut v = Extensions::new();
                v.insert(c);
                Some(v)
            })
        })
    }
    fn provides(&self) -> Vec<std::any::TypeId> {
        vec![std::any::TypeId::of::<CommandObject>()]
    }
}
