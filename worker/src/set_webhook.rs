//! Webhook management: `webhook set`, `webhook info`, `webhook delete`, and `secret`.
//!
//! The worker binary's CLI embeds [`WebhookCommand`] and calls [`run_webhook_command`];
//! tests call it directly. `set` computes `allowed_updates` from the dispatcher's
//! handlers ([`tgpipe::Dispatcher::used_update_kinds`]) unless told otherwise, so that
//! Telegram sends exactly the kinds the bot handles, and uploads a self-signed
//! certificate as multipart (frankenstein 0.52's `setWebhook` would send it as JSON,
//! which uploads nothing). `delete` happens only when asked: deleting a webhook stops
//! the bot.
//!
//! ```no_run
//! # async fn demo(bot: tgpipe::Bot, dp: tgpipe::Dispatcher) -> Result<(), tgpipe_worker::set_webhook::WebhookCommandError> {
//! use clap::Parser;
//! use tgpipe_worker::set_webhook::{WebhookCommand, new_secret_token, run_webhook_command};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(subcommand)]
//!     webhook: WebhookCommand,
//! }
//!
//! let secret = new_secret_token();
//! let cli = Cli::parse_from(["worker", "set", "--url", "https://bot.example.com/webhook/123", "--secret", &secret]);
//! run_webhook_command(&bot, &dp.used_update_kinds(), cli.webhook, &mut std::io::stdout()).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tgpipe_shared::UpdateKind;

use tgpipe::bot::{Bot, BotError, InputFile};

/// `webhook …`: manage the bot's webhook at Telegram.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum WebhookCommand {
    /// Points Telegram at the ingress (`setWebhook`).
    Set(SetWebhookArgs),
    /// Shows what Telegram has (`getWebhookInfo`): URL, pending updates, last error.
    Info,
    /// Removes the webhook (`deleteWebhook`); the bot receives nothing until it is set
    /// again or polled.
    Delete {
        /// Also drop the updates Telegram still holds.
        #[arg(long)]
        drop_pending_updates: bool,
    },
}

/// `webhook set`'s arguments.
#[derive(Clone, PartialEq, Eq, clap::Args)]
pub struct SetWebhookArgs {
    /// The HTTPS URL Telegram posts updates to (`https://host/webhook/<bot_id>`).
    #[arg(long, env = "TGPIPE_WEBHOOK_URL")]
    pub url: String,
    /// The secret Telegram sends in `X-Telegram-Bot-Api-Secret-Token` (1-256 of
    /// `A-Z a-z 0-9 _ -`; `secret` makes one). Without it, the worker binary takes the
    /// bot's secret from the ingress's `TGPIPE_BOTS` / `TGPIPE_BOTS_FILE`.
    #[arg(long, env = "TGPIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// A PEM certificate to upload, for a self-signed certificate.
    #[arg(long)]
    pub certificate: Option<PathBuf>,
    /// The IP address Telegram sends to instead of resolving the URL's host.
    #[arg(long)]
    pub ip_address: Option<String>,
    /// At most this many connections at once from Telegram (1-100, Telegram's default 40).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_connections: Option<u32>,
    /// Drop the updates Telegram still holds.
    #[arg(long)]
    pub drop_pending_updates: bool,
    /// The update kinds to receive, comma-separated; by default the kinds the bot's
    /// handlers use.
    #[arg(long, value_delimiter = ',')]
    pub allowed_updates: Option<Vec<String>>,
}

impl fmt::Debug for SetWebhookArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetWebhookArgs")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("certificate", &self.certificate)
            .field("ip_address", &self.ip_address)
            .field("max_connections", &self.max_connections)
            .field("drop_pending_updates", &self.drop_pending_updates)
            .field("allowed_updates", &self.allowed_updates)
            .finish()
    }
}

/// Why a webhook command failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookCommandError {
    /// No secret was given: a webhook without one would take updates from anyone.
    #[error(
        "no secret: give --secret, or TGPIPE_BOTS / TGPIPE_BOTS_FILE with this bot's `<bot_id>:<secret>`"
    )]
    NoSecret,
    /// The secret has characters Telegram does not allow, or a wrong length.
    #[error("the secret must be 1 to 256 characters of A-Z, a-z, 0-9, `_` and `-`")]
    BadSecret,
    /// The URL names a port Telegram does not post to (it posts to 443, 80, 88 and
    /// 8443 only, and answers `setWebhook` with an error for any other).
    #[error("{url}: Telegram sends webhooks to ports 443, 80, 88 and 8443 only, not {port}")]
    BadPort {
        /// The URL given.
        url: String,
        /// Its port.
        port: String,
    },
    /// The certificate file could not be read.
    #[error("certificate {path}: {source}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Telegram refused, or could not be reached.
    #[error(transparent)]
    Bot(#[from] BotError),
    /// Writing the report failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// What `getWebhookInfo` answers.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
pub struct WebhookInfo {
    /// The URL; empty when no webhook is set.
    #[serde(default)]
    pub url: String,
    /// Whether a custom certificate was uploaded.
    #[serde(default)]
    pub has_custom_certificate: bool,
    /// Updates waiting to be delivered.
    #[serde(default)]
    pub pending_update_count: u64,
    /// The IP address in use.
    pub ip_address: Option<String>,
    /// When the last delivery error happened (unix seconds).
    pub last_error_date: Option<i64>,
    /// What it was.
    pub last_error_message: Option<String>,
    /// When synchronising with Telegram's datacenters last failed (unix seconds).
    pub last_synchronization_error_date: Option<i64>,
    /// Connections allowed at once.
    pub max_connections: Option<u32>,
    /// The kinds delivered (absent: Telegram's default set).
    pub allowed_updates: Option<Vec<String>>,
}

/// A new secret token for `setWebhook`: 64 random characters of `A-Z a-z 0-9`.
///
/// ```
/// let s = tgpipe_worker::set_webhook::new_secret_token();
/// assert_eq!(s.len(), 64);
/// assert!(tgpipe_worker::set_webhook::is_valid_secret(&s));
/// ```
pub fn new_secret_token() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(64)
        .map(char::from)
        .collect()
}

/// Whether Telegram accepts `s` as a secret token: 1 to 256 of `A-Z a-z 0-9 _ -` (the
/// rule the ingress checks `TGPIPE_BOTS` with).
pub fn is_valid_secret(s: &str) -> bool {
    tgpipe_shared::config::is_valid_webhook_secret(s)
}

/// The `allowed_updates` for `setWebhook` / `getUpdates`: the override if given, else
/// the kinds the handlers use.
pub fn allowed_updates(used_kinds: &[UpdateKind], overridden: Option<&[String]>) -> Vec<String> {
    match overridden {
        Some(list) => list
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        None => used_kinds.iter().map(|k| k.as_str().to_owned()).collect(),
    }
}

/// Runs a webhook command against the Bot API and writes a legible report to `out`.
pub async fn run_webhook_command(
    bot: &Bot,
    used_kinds: &[UpdateKind],
    cmd: WebhookCommand,
    out: &mut impl Write,
) -> Result<(), WebhookCommandError> {
    match cmd {
        WebhookCommand::Set(args) => {
            let secret = args
                .secret
                .as_deref()
                .ok_or(WebhookCommandError::NoSecret)?;
            if !is_valid_secret(secret) {
                return Err(WebhookCommandError::BadSecret);
            }
            if let Some(port) = refused_port(&args.url) {
                return Err(WebhookCommandError::BadPort {
                    url: args.url.clone(),
                    port: port.to_owned(),
                });
            }
            let allowed = allowed_updates(used_kinds, args.allowed_updates.as_deref());
            let mut params = json!({
                "url": args.url,
                "secret_token": secret,
                "allowed_updates": allowed,
                "drop_pending_updates": args.drop_pending_updates,
            });
            if let Some(ip) = &args.ip_address {
                params["ip_address"] = json!(ip);
            }
            if let Some(n) = args.max_connections {
                params["max_connections"] = json!(n);
            }
            let _: bool = match &args.certificate {
                Some(path) => {
                    // Read here, so that a missing file is reported as such.
                    let pem = tokio::fs::read(path).await.map_err(|source| {
                        WebhookCommandError::Certificate {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    let name = path.file_name().map_or_else(
                        || "certificate.pem".into(),
                        |n| n.to_string_lossy().into_owned(),
                    );
                    bot.call_with_files(
                        "setWebhook",
                        &params,
                        vec![("certificate".into(), InputFile::bytes(name, pem))],
                    )
                    .await?
                }
                None => bot.call("setWebhook", &params).await?,
            };
            writeln!(out, "webhook set: {}", args.url)?;
            writeln!(out, "  allowed updates:  {}", list_or_none(&allowed))?;
            if args.certificate.is_some() {
                writeln!(out, "  certificate:      uploaded")?;
            }
            if args.drop_pending_updates {
                writeln!(out, "  pending updates:  dropped")?;
            }
        }
        WebhookCommand::Info => {
            let info: WebhookInfo = bot.call("getWebhookInfo", &json!({})).await?;
            out.write_all(format_webhook_info(&info, SystemTime::now()).as_bytes())?;
        }
        WebhookCommand::Delete {
            drop_pending_updates,
        } => {
            let _: bool = bot
                .call(
                    "deleteWebhook",
                    &json!({"drop_pending_updates": drop_pending_updates}),
                )
                .await?;
            writeln!(out, "webhook deleted")?;
            if drop_pending_updates {
                writeln!(out, "  pending updates:  dropped")?;
            }
        }
    }
    Ok(())
}

fn list_or_none(list: &[String]) -> String {
    if list.is_empty() {
        "(Telegram's default set)".into()
    } else {
        list.join(", ")
    }
}

/// Telegram's webhook ports: <https://core.telegram.org/bots/api#setwebhook>.
const WEBHOOK_PORTS: [&str; 4] = ["443", "80", "88", "8443"];

/// The port of `url` when it names one Telegram does not post to; `None` for an allowed
/// port or none (the scheme's default). The scheme itself is Telegram's to check.
fn refused_port(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    // `[::1]:8443`: the port follows the bracket; a bare IPv6 address has no port.
    let port = match host.rsplit_once(']') {
        Some((_, after)) => after.strip_prefix(':'),
        None => host.rsplit_once(':').map(|(_, port)| port),
    }?;
    (!WEBHOOK_PORTS.contains(&port)).then_some(port)
}

/// The report `webhook info` prints.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tgpipe_worker::set_webhook::{WebhookInfo, format_webhook_info};
///
/// let info = WebhookInfo {
///     url: "https://bot.example.com/webhook/123".into(),
///     pending_update_count: 3,
///     last_error_date: Some(1_700_000_000),
///     last_error_message: Some("Connection refused".into()),
///     ..WebhookInfo::default()
/// };
/// let text = format_webhook_info(&info, UNIX_EPOCH + Duration::from_secs(1_700_000_060));
/// assert!(text.contains("pending updates:  3"));
/// assert!(text.contains("last error:       Connection refused (2023-11-14 22:13:20 UTC, 60 s ago)"));
/// ```
pub fn format_webhook_info(info: &WebhookInfo, now: SystemTime) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: &str| {
        s.push_str(&format!("{:<18}{v}\n", format!("{k}:")));
    };
    if info.url.is_empty() {
        line(
            "url",
            "(none: no webhook is set; updates wait for getUpdates)",
        );
    } else {
        line("url", &info.url);
    }
    line("pending updates", &info.pending_update_count.to_string());
    let when = |t: i64| {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        format!("{}, {} ago", utc(t), ago(now - t))
    };
    match (&info.last_error_message, info.last_error_date) {
        (Some(m), Some(t)) => line("last error", &format!("{m} ({})", when(t))),
        (Some(m), None) => line("last error", m),
        (None, _) => line("last error", "none"),
    }
    if let Some(t) = info.last_synchronization_error_date {
        line("last sync error", &when(t));
    }
    if let Some(n) = info.max_connections {
        line("max connections", &n.to_string());
    }
    match &info.allowed_updates {
        Some(a) => line("allowed updates", &list_or_none(a)),
        None => line("allowed updates", "(Telegram's default set)"),
    }
    line(
        "certificate",
        if info.has_custom_certificate {
            "custom (uploaded with setWebhook)"
        } else {
            "none uploaded (the server's must be CA-signed)"
        },
    );
    if let Some(ip) = &info.ip_address {
        line("ip address", ip);
    }
    s
}

fn ago(secs: i64) -> String {
    let d = Duration::from_secs(secs.max(0) as u64).as_secs();
    match d {
        0..=119 => format!("{d} s"),
        120..=7199 => format!("{} min", d / 60),
        7200..=172_799 => format!("{} h", d / 3600),
        _ => format!("{} days", d / 86_400),
    }
}

/// `YYYY-MM-DD hh:mm:ss UTC` of a unix time.
fn utc(t: i64) -> String {
    let (year, month, day) = civil_from_days(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The (year, month, day) of a count of days since 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The kinds a `getWebhookInfo` lists, as update kinds (for comparing with the
/// dispatcher's).
pub fn kinds_of(list: &[String]) -> Vec<UpdateKind> {
    list.iter().map(|s| UpdateKind::from_field(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: WebhookCommand,
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn set_parses_every_flag() {
        let cli = Cli::try_parse_from([
            "w",
            "set",
            "--url",
            "https://x/webhook/1",
            "--secret",
            "abc",
            "--certificate",
            "cert.pem",
            "--ip-address",
            "1.2.3.4",
            "--max-connections",
            "80",
            "--drop-pending-updates",
            "--allowed-updates",
            "message,callback_query",
        ])
        .unwrap();
        let WebhookCommand::Set(a) = cli.cmd else {
            panic!()
        };
        assert_eq!(a.max_connections, Some(80));
        assert_eq!(
            a.allowed_updates.as_deref(),
            Some(&["message".to_owned(), "callback_query".to_owned()][..])
        );
        assert!(
            !format!("{a:?}").contains("abc"),
            "the secret is not printed"
        );
        assert!(
            Cli::try_parse_from([
                "w",
                "set",
                "--url",
                "u",
                "--secret",
                "s",
                "--max-connections",
                "101"
            ])
            .is_err()
        );
        let cli = Cli::try_parse_from(["w", "delete", "--drop-pending-updates"]).unwrap();
        assert_eq!(
            cli.cmd,
            WebhookCommand::Delete {
                drop_pending_updates: true
            }
        );
    }

    #[test]
    fn only_telegrams_webhook_ports_pass() {
        for ok in [
            "https://h/webhook/1",
            "https://h:443/webhook/1",
            "https://h:8443/webhook/1",
            "https://h:88",
            "http://h:80/x",
            "https://user@h:8443/x",
            "https://[2001:db8::1]/x",
            "https://[2001:db8::1]:8443/x",
            "https://h/a:8444",
        ] {
            assert_eq!(refused_port(ok), None, "{ok}");
        }
        assert_eq!(refused_port("https://h:8444/webhook/1"), Some("8444"));
        assert_eq!(refused_port("https://[2001:db8::1]:8080/x"), Some("8080"));
        assert_eq!(refused_port("https://h:/x"), Some(""));
        assert_eq!(refused_port("https://h:99999?x"), Some("99999"));
    }

    #[test]
    fn secrets() {
        assert!(is_valid_secret("a-b_C9"));
        assert!(!is_valid_secret(""));
        assert!(!is_valid_secret("a b"));
        assert!(!is_valid_secret(&"a".repeat(257)));
        assert_ne!(new_secret_token(), new_secret_token());
    }

    #[test]
    fn allowed_updates_default_to_the_used_kinds() {
        let used = [UpdateKind::Message, UpdateKind::CallbackQuery];
        assert_eq!(allowed_updates(&used, None), ["message", "callback_query"]);
        let o = ["poll".to_owned()];
        assert_eq!(allowed_updates(&used, Some(&o)), ["poll"]);
    }
}
