//! Configuration helpers shared by the binaries: parse flags and environment with clap,
//! fail fast with exit code 64 (`EX_USAGE`), and read list values from files.
//!
//! Every setting is both a CLI flag and an environment variable (clap's `env`), which is
//! what Kubernetes hands a pod. Validation happens at start-up, never in the middle of
//! traffic: a process that starts is correctly configured.

use std::path::Path;
#[cfg(feature = "nats")]
use std::sync::Arc;
#[cfg(feature = "nats")]
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;

/// The exit code for a configuration error (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// Parses the process's arguments and environment into `T`, or prints clap's error and
/// exits: 0 for `--help`/`--version`, [`EXIT_CONFIG`] for anything invalid.
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(config) => config,
        Err(e) => {
            let mut command = T::command();
            command.build();
            match name_the_setting(&e, &command) {
                Some(message) => {
                    eprint!("{message}");
                    std::process::exit(EXIT_CONFIG)
                }
                None => exit_with(e),
            }
        }
    }
}

/// clap names only the flag (`'--max-body <MAX_BODY>'`), while a pod sets the
/// environment variable: the message names both, `TGPIPE_MAX_BODY (--max-body)`.
/// `None` when the error is not about one setting that has a variable.
fn name_the_setting(e: &clap::Error, command: &clap::Command) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let env = env_of(command, long)?;
    let rendered = e.render().to_string();
    Some(rendered.replacen(&format!("'{arg}'"), &format!("{env} (--{long})"), 1))
}

/// The environment variable of the flag `--<long>`, in `command` or its subcommands.
fn env_of(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .or_else(|| command.get_subcommands().find_map(|sub| env_of(sub, long)))
}

/// A URL with its password (or token) replaced by `***`, for logs:
///
/// ```
/// use tgpipe_shared::config::redact_url;
/// assert_eq!(redact_url("nats://app:hunter2@nats:4222"), "nats://app:***@nats:4222");
/// assert_eq!(redact_url("nats://s3cr3t-token@nats:4222"), "nats://***@nats:4222");
/// assert_eq!(redact_url("redis://redis-master:6379"), "redis://redis-master:6379");
/// ```
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let redacted = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // A lone userinfo is a token.
        None => "***".to_owned(),
    };
    let prefix = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://")
    };
    format!("{prefix}{redacted}{}", &rest[at..])
}

/// Prints a clap error and exits with the code described in [`parse_or_exit`].
pub fn exit_with(e: clap::Error) -> ! {
    let code = match e.kind() {
        clap::error::ErrorKind::DisplayHelp
        | clap::error::ErrorKind::DisplayVersion
        | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
        _ => EXIT_CONFIG,
    };
    // Printing can only fail when stderr is closed; there is nothing left to tell then.
    let _ = e.print();
    std::process::exit(code)
}

/// Prints a validation error that clap could not catch and exits with [`EXIT_CONFIG`].
pub fn exit_invalid(message: impl std::fmt::Display) -> ! {
    eprintln!("error: invalid configuration: {message}");
    std::process::exit(EXIT_CONFIG)
}

/// Splits a comma-separated list, trimming entries and skipping empty ones.
///
/// ```
/// assert_eq!(tgpipe_shared::config::split_list(" a, b,,c "), vec!["a", "b", "c"]);
/// ```
pub fn split_list(s: &str) -> Vec<&str> {
    s.split([',', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.starts_with('#'))
        .collect()
}

/// Why a list file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct ListFileError {
    /// The file.
    pub path: String,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Reads a file holding a list in the same format as the environment variable
/// (comma or newline separated; `#` starts a comment line), as mounted from a
/// Kubernetes Secret.
pub fn read_list_file(path: &Path) -> Result<String, ListFileError> {
    std::fs::read_to_string(path).map_err(|source| ListFileError {
        path: path.display().to_string(),
        source,
    })
}

/// Log output format (`TGPIPE_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Telemetry settings shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log format.
    #[arg(long, env = "TGPIPE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint for traces, e.g. `http://otel-collector:4318`; unset disables
    /// trace export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Which spans are exported, in `RUST_LOG`'s syntax (default `info`: every span
    /// tgpipe makes). Independent of `RUST_LOG`, so quieting the logs keeps the traces;
    /// `OTEL_TRACES_SAMPLER` picks which traces are kept.
    #[arg(long, env = "TGPIPE_TRACE_FILTER", default_value = "info")]
    pub trace_filter: String,
}

/// A setting that holds a secret (webhook secrets, tokens): parsed like a string, but
/// its `Debug` prints `<redacted>`, so printing a configuration never leaks it.
///
/// ```
/// let s: tgpipe_shared::config::SecretString = "1:hunter2".parse().unwrap();
/// assert_eq!(format!("{s:?}"), "<redacted>");
/// assert_eq!(s.expose(), "1:hunter2");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for SecretString {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretString(s.to_owned()))
    }
}

impl From<&str> for SecretString {
    fn from(s: &str) -> Self {
        SecretString(s.to_owned())
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Whether Telegram accepts `s` as a webhook secret token (`secret_token` of
/// `setWebhook`): 1 to 256 characters of `A-Z a-z 0-9 _ -`.
///
/// ```
/// use tgpipe_shared::config::is_valid_webhook_secret;
/// assert!(is_valid_webhook_secret("s3cret-Token_1"));
/// assert!(!is_valid_webhook_secret("with space"));
/// assert!(!is_valid_webhook_secret(""));
/// ```
pub fn is_valid_webhook_secret(s: &str) -> bool {
    (1..=256).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The ingress's bots and their webhook secrets (`TGPIPE_BOTS` / `TGPIPE_BOTS_FILE`),
/// declared once: the ingress checks every request against them, and the worker's
/// `webhook set` sends a bot's secret to Telegram. Both read the list with the one
/// strict parser ([`BotSecrets::parse`]), so a list the ingress refuses is refused by
/// the worker too, instead of a bad entry being skipped.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BotSecretsArgs {
    /// The ingress's bots and their webhook secrets: `<bot_id>:<secret>[,...]`, a secret
    /// being 1 to 256 of `A-Z a-z 0-9 _ -` (optional with the bot registry, which adds
    /// its bots; a bot in both is served as given here).
    #[arg(long = "bots", env = "TGPIPE_BOTS", hide_env_values = true)]
    pub bots: Option<SecretString>,
    /// A file with the same content as TGPIPE_BOTS (comma or newline separated, `#`
    /// comments), as mounted from a Kubernetes Secret.
    #[arg(long = "bots-file", env = "TGPIPE_BOTS_FILE", conflicts_with = "bots")]
    pub bots_file: Option<std::path::PathBuf>,
}

const BOTS: &str = "TGPIPE_BOTS (--bots)";
const BOTS_FILE: &str = "TGPIPE_BOTS_FILE (--bots-file)";

impl BotSecretsArgs {
    /// The bots and secrets given, every entry checked; empty when neither setting is
    /// given or the list has no entry (a registry-only install mounts an empty Secret).
    pub fn secrets(&self) -> Result<BotSecrets, BotSecretsError> {
        let (list, setting) = match (&self.bots, &self.bots_file) {
            (_, Some(path)) => (
                read_list_file(path).map_err(BotSecretsError::File)?,
                BOTS_FILE,
            ),
            (Some(list), None) => (list.expose().to_owned(), BOTS),
            (None, None) => return Ok(BotSecrets::default()),
        };
        BotSecrets::parse(&list).map_err(|e| BotSecretsError::List(setting, e))
    }

    /// As [`BotSecretsArgs::secrets`], and no bot at all is an error too.
    ///
    /// ```
    /// use clap::Parser;
    /// use tgpipe_shared::config::BotSecretsArgs;
    ///
    /// #[derive(Parser)]
    /// struct Cli {
    ///     #[command(flatten)]
    ///     bots: BotSecretsArgs,
    /// }
    ///
    /// let cli = Cli::parse_from(["t", "--bots", "123:s3cret,456:other"]);
    /// let bots = cli.bots.require().unwrap();
    /// assert_eq!(bots.get(tgpipe_shared::BotId(123)).unwrap().expose(), "s3cret");
    /// let bad = Cli::parse_from(["t", "--bots", "123:s3cret,456:not secret"]);
    /// assert_eq!(
    ///     bad.bots.require().unwrap_err().to_string(),
    ///     "TGPIPE_BOTS (--bots): entry #2 (bot 456): a secret must be 1 to 256 characters \
    ///      of A-Z, a-z, 0-9, _ and -"
    /// );
    /// ```
    pub fn require(&self) -> Result<BotSecrets, BotSecretsError> {
        let secrets = self.secrets()?;
        if secrets.is_empty() {
            let setting = if self.bots_file.is_some() {
                BOTS_FILE
            } else {
                BOTS
            };
            return Err(BotSecretsError::List(setting, BotListError::Empty));
        }
        Ok(secrets)
    }
}

/// A checked `<bot_id>:<secret>` list: every bot id a positive integer, every secret one
/// Telegram accepts, no bot twice. `Debug` shows the bot ids only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BotSecrets(std::collections::BTreeMap<crate::BotId, SecretString>);

impl BotSecrets {
    /// Parses `<bot_id>:<secret>[,<bot_id>:<secret>...]` (commas or newlines; `#` lines
    /// are comments, so a mounted Secret file can be annotated). Refuses the whole list
    /// at its first bad entry, naming the entry by position (and its bot, once that
    /// parsed), never by its secret. An empty list is an empty set.
    ///
    /// ```
    /// use tgpipe_shared::config::{BotListError, BotSecrets};
    /// assert_eq!(BotSecrets::parse("1:abc, 2:def").unwrap().len(), 2);
    /// assert_eq!(BotSecrets::parse("1:abc,x:def"), Err(BotListError::BadBotId(2)));
    /// ```
    pub fn parse(list: &str) -> Result<BotSecrets, BotListError> {
        let mut bots = std::collections::BTreeMap::new();
        for (i, entry) in split_list(list).into_iter().enumerate() {
            let n = i + 1;
            let (id, secret) = entry.split_once(':').ok_or(BotListError::Malformed(n))?;
            let bot = crate::BotId::parse(id.trim()).ok_or(BotListError::BadBotId(n))?;
            let secret = secret.trim();
            if !is_valid_webhook_secret(secret) {
                return Err(BotListError::BadSecret { entry: n, bot });
            }
            if bots.insert(bot, SecretString(secret.to_owned())).is_some() {
                return Err(BotListError::Duplicate(bot));
            }
        }
        Ok(BotSecrets(bots))
    }

    /// The secret of `bot`, if listed.
    pub fn get(&self, bot: crate::BotId) -> Option<&SecretString> {
        self.0.get(&bot)
    }

    /// The bots and their secrets, by bot id.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (crate::BotId, &SecretString)> {
        self.0.iter().map(|(id, secret)| (*id, secret))
    }

    /// How many bots are listed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for BotSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|id| (id.0, "<redacted>")))
            .finish()
    }
}

/// What is wrong with a `<bot_id>:<secret>` list. Printed at start-up: it never contains
/// a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BotListError {
    /// An entry is not `<bot_id>:<secret>`.
    #[error("entry #{0} is not `<bot_id>:<secret>`")]
    Malformed(usize),
    /// The bot id is not a positive integer.
    #[error("entry #{0} has a bot id that is not a positive integer")]
    BadBotId(usize),
    /// The secret breaks Telegram's rule.
    #[error(
        "entry #{entry} (bot {bot}): a secret must be 1 to 256 characters of A-Z, a-z, 0-9, _ and -"
    )]
    BadSecret {
        /// The entry's position, from 1.
        entry: usize,
        /// Its bot.
        bot: crate::BotId,
    },
    /// The same bot twice.
    #[error("bot {0} is listed twice")]
    Duplicate(crate::BotId),
    /// No bot at all (where one is required).
    #[error("no bots configured (set TGPIPE_BOTS or TGPIPE_BOTS_FILE)")]
    Empty,
}

/// Why `TGPIPE_BOTS` / `TGPIPE_BOTS_FILE` is unusable; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum BotSecretsError {
    /// The list (of the named setting) is wrong.
    #[error("{0}: {1}")]
    List(&'static str, BotListError),
    /// The file cannot be read.
    #[error("TGPIPE_BOTS_FILE (--bots-file): {0}")]
    File(ListFileError),
}

/// The shards of the update subjects (`TGPIPE_SHARDS`), declared once for every binary
/// that writes or reads them: the ingress, a poller that publishes, the worker and the
/// DLQ commands must agree.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ShardArgs {
    /// Shards per bot and update type (the same in the ingress, pollers and workers).
    #[arg(long = "shards", env = "TGPIPE_SHARDS", value_parser = parse_shards,
        default_value_t = crate::subject::DEFAULT_SHARDS)]
    shards: u16,
}

impl ShardArgs {
    /// How many shards.
    pub fn count(self) -> std::num::NonZeroU16 {
        // parse_shards refuses 0.
        std::num::NonZeroU16::new(self.shards).unwrap_or(std::num::NonZeroU16::MIN)
    }
}

fn parse_shards(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a number of shards from 1 to 65535")),
    }
}

/// The Redis connection (`REDIS_URL`), declared once for every binary that uses Redis.
/// `Debug` redacts the password in the URL.
#[derive(Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL (`redis://`, `rediss://` for TLS; credentials in the URL).
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
}

impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisArgs")
            .field("redis_url", &redact_url(&self.redis_url))
            .finish()
    }
}

/// NATS connection settings shared by every binary. `Debug` redacts passwords and
/// tokens in the URLs.
#[derive(Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(
        long = "nats-url",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// Path of a NATS credentials file (JWT + nkey), if the server requires one.
    #[arg(long = "nats-creds", env = "NATS_CREDS")]
    pub creds: Option<std::path::PathBuf>,
    /// Prefix of the subjects the replies and a watch's deliveries come back on. A user
    /// allowed to subscribe to another user's prefix reads what that user reads (the
    /// workers' watch delivers the tokens): give each NATS user its own prefix.
    #[arg(
        long = "nats-inbox-prefix",
        env = "TGPIPE_NATS_INBOX_PREFIX",
        default_value = "_INBOX"
    )]
    pub inbox_prefix: String,
}

impl std::fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = split_list(&self.url).into_iter().map(redact_url).collect();
        f.debug_struct("NatsArgs")
            .field("url", &urls.join(","))
            .field("creds", &self.creds)
            .field("inbox_prefix", &self.inbox_prefix)
            .finish()
    }
}

#[cfg(feature = "nats")]
impl NatsArgs {
    /// Connect options with the credentials applied and a client name.
    pub async fn connect(&self, client_name: &str) -> Result<async_nats::Client, ConnectError> {
        let servers = split_list(&self.url)
            .into_iter()
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",");
        let mut options = async_nats::ConnectOptions::new()
            .name(client_name)
            // Keep retrying in the background: a pod that starts before NATS should
            // become ready when NATS does, not crash-loop.
            .retry_on_initial_connect()
            .custom_inbox_prefix(&self.inbox_prefix)
            // A registry watch's first replay pushes messages faster than a busy pod
            // parses them; past the default 65,536 queued the client drops them ("slow
            // consumers") and the replay starts over. The queue grows only as needed.
            .subscription_capacity(1 << 20)
            .event_callback({
                let servers: Arc<str> = servers.into();
                let failures = Arc::new(AtomicU64::new(0));
                move |event| {
                    let (servers, failures) = (Arc::clone(&servers), Arc::clone(&failures));
                    async move { log_connection_event(&servers, &failures, event) }
                }
            });
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| ConnectError(e.to_string()))?;
        }
        let urls: Vec<&str> = split_list(&self.url);
        // async-nats takes a user and password (or a token) from its options only, not
        // from the URL: `nats://user:pass@host` and `nats://token@host` are applied here.
        let mut auth = None;
        for url in &urls {
            let addr: async_nats::ServerAddr = url.parse().map_err(|e| {
                ConnectError(format!("NATS_URL (--nats-url) {}: {e}", redact_url(url)))
            })?;
            if let Some(user) = addr.username() {
                let this = (percent_decode(user), addr.password().map(percent_decode));
                if auth.as_ref().is_some_and(|a| *a != this) {
                    return Err(ConnectError(
                        "NATS_URL (--nats-url): the servers name different users; give one".into(),
                    ));
                }
                auth = Some(this);
            }
        }
        options = match auth {
            Some((user, Some(password))) => options.user_and_password(user, password),
            Some((token, None)) => options.token(token),
            None => options,
        };
        options
            .connect(urls.as_slice())
            .await
            .map_err(|e| ConnectError(e.to_string()))
    }
}

#[cfg(feature = "nats")]
/// A URL's userinfo as written before percent-encoding (`p%40ss` is `p@ss`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(feature = "nats")]
/// Logs the connection's life: what failed, where (the URLs, passwords redacted), and
/// what the process does about it. Replaces async-nats's own callback, which logs every
/// event at INFO without the server (`event: client error: IO error`). `failures`
/// counts failed rounds since the last connection: the first is logged, then every tenth
/// (the client backs off, so that is a line every few minutes, not a flood).
fn log_connection_event(servers: &str, failures: &AtomicU64, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            failures.store(0, Ordering::Relaxed);
            tracing::info!(nats = %servers, "connected to NATS");
        }
        async_nats::Event::Disconnected => tracing::warn!(
            nats = %servers,
            "disconnected from NATS; reconnecting in the background (not ready until then)"
        ),
        async_nats::Event::ClientError(e) => {
            let n = failures.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(10) {
                tracing::warn!(
                    nats = %servers, error = %e, attempts = n + 1,
                    "cannot reach NATS; retrying in the background (not ready until connected)"
                );
            }
        }
        async_nats::Event::ServerError(e) => {
            tracing::warn!(nats = %servers, error = %e, "NATS server error");
        }
        async_nats::Event::LameDuckMode => tracing::warn!(
            nats = %servers,
            "NATS server entering lame duck mode; the client will move to another server"
        ),
        other => tracing::debug!(nats = %servers, event = %other, "NATS connection event"),
    }
}

#[cfg(feature = "nats")]
/// Why connecting to NATS failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS: {0}")]
pub struct ConnectError(pub String);

#[cfg(test)]
mod tests {

    #[test]
    fn credentials_in_nats_url_are_decoded() {
        assert_eq!(percent_decode("p%40ss%3Aw0rd"), "p@ss:w0rd");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[arg(long, env = "TGPIPE_TEST_MAX_BODY", default_value_t = 1)]
        max_body: u64,
    }

    #[test]
    fn value_errors_name_the_environment_variable_and_the_flag() {
        use clap::{CommandFactory, Parser};
        let e = Cli::try_parse_from(["t", "--max-body", "1.048576e+06"]).unwrap_err();
        let mut command = Cli::command();
        command.build();
        let message = name_the_setting(&e, &command).unwrap();
        assert!(
            message.contains("'1.048576e+06' for TGPIPE_TEST_MAX_BODY (--max-body)"),
            "{message}"
        );
    }

    #[test]
    fn list_files_allow_comments_and_newlines() {
        assert_eq!(
            split_list("# bots\n1:a\n2:b,3:c\n"),
            vec!["1:a", "2:b", "3:c"]
        );
    }

    #[test]
    fn debug_of_the_redis_url_redacts_its_password() {
        let args = RedisArgs {
            redis_url: "redis://app:redis-password@redis:6379/0".to_owned(),
        };
        let shown = format!("{args:?}");
        assert!(shown.contains("redis://app:***@redis:6379/0"), "{shown}");
        assert!(!shown.contains("redis-password"), "{shown}");
    }

    #[derive(Debug, clap::Parser)]
    struct WithBots {
        #[command(flatten)]
        bots: BotSecretsArgs,
    }

    fn bots(flags: &[&str]) -> BotSecretsArgs {
        use clap::Parser;
        let argv = std::iter::once("t").chain(flags.iter().copied());
        WithBots::try_parse_from(argv).unwrap().bots
    }

    #[test]
    fn a_bot_list_is_refused_at_its_first_bad_entry_without_echoing_secrets() {
        assert_eq!(BotSecrets::parse(""), Ok(BotSecrets::default()));
        assert_eq!(BotSecrets::parse("123"), Err(BotListError::Malformed(1)));
        assert_eq!(BotSecrets::parse("1:a,x:b"), Err(BotListError::BadBotId(2)));
        assert_eq!(BotSecrets::parse("1:a,0:b"), Err(BotListError::BadBotId(2)));
        let bad_secret = |entry, bot| {
            Err(BotListError::BadSecret {
                entry,
                bot: crate::BotId(bot),
            })
        };
        assert_eq!(BotSecrets::parse("1:a b"), bad_secret(1, 1));
        assert_eq!(BotSecrets::parse("1:ok,2:"), bad_secret(2, 2));
        assert_eq!(
            BotSecrets::parse(&format!("7:{}", "a".repeat(257))),
            bad_secret(1, 7)
        );
        assert_eq!(
            BotSecrets::parse("1:a,1:b"),
            Err(BotListError::Duplicate(crate::BotId(1)))
        );
        for list in ["1:topsecret,1:topsecret2", "1:top secret", "x:topsecret"] {
            let e = bots(&["--bots", list]).require().unwrap_err().to_string();
            assert!(e.starts_with("TGPIPE_BOTS (--bots): "), "{e}");
            assert!(!e.contains("topsecret") && !e.contains("top secret"), "{e}");
        }
    }

    #[test]
    fn bot_secrets_come_from_the_variable_or_the_file_and_may_be_required() {
        let b = bots(&["--bots", " 12:abc,\n34:d-e_F "]).require().unwrap();
        assert_eq!(b.get(crate::BotId(34)).unwrap().expose(), "d-e_F");
        assert_eq!(format!("{b:?}"), r#"{12: "<redacted>", 34: "<redacted>"}"#);
        assert!(bots(&[]).secrets().unwrap().is_empty());
        let e = bots(&[]).require().unwrap_err().to_string();
        assert_eq!(
            e,
            "TGPIPE_BOTS (--bots): no bots configured (set TGPIPE_BOTS or TGPIPE_BOTS_FILE)"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bots");
        std::fs::write(&path, "# prod\n1:abc\n2:def\n").unwrap();
        let file = path.to_str().unwrap();
        assert_eq!(bots(&["--bots-file", file]).require().unwrap().len(), 2);
        std::fs::write(&path, "\n").unwrap();
        assert!(bots(&["--bots-file", file]).secrets().unwrap().is_empty());
        let e = bots(&["--bots-file", file])
            .require()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("TGPIPE_BOTS_FILE (--bots-file): no bots"),
            "{e}"
        );
        std::fs::write(&path, "1:abc\n2:d f\n").unwrap();
        let e = bots(&["--bots-file", file])
            .secrets()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("TGPIPE_BOTS_FILE (--bots-file): entry #2 (bot 2)"),
            "{e}"
        );
        let missing = dir.path().join("missing");
        let e = bots(&["--bots-file", missing.to_str().unwrap()])
            .secrets()
            .unwrap_err();
        assert!(matches!(e, BotSecretsError::File(_)), "{e}");
        use clap::Parser;
        assert!(WithBots::try_parse_from(["t", "--bots", "1:a", "--bots-file", file]).is_err());
    }

    #[derive(Debug, clap::Parser)]
    struct Sharded {
        #[command(flatten)]
        shards: ShardArgs,
    }

    #[test]
    fn shards_default_to_64_and_refuse_zero_and_junk() {
        use clap::Parser;
        assert_eq!(
            Sharded::try_parse_from(["t"]).unwrap().shards.count().get(),
            64
        );
        let s = Sharded::try_parse_from(["t", "--shards", "8"]).unwrap();
        assert_eq!(s.shards.count().get(), 8);
        for bad in ["0", "-1", "65536", "many"] {
            let e =
                Sharded::try_parse_from(["t".to_owned(), format!("--shards={bad}")]).unwrap_err();
            assert!(e.to_string().contains("number of shards"), "{bad}: {e}");
        }
    }
}
