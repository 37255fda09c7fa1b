//! Configuration: every setting is a flag and an environment variable (clap), parsed and
//! validated before anything starts, so a misconfigured pod fails at once with exit
//! code 64 and a message, not later under traffic.
//!
//! Tests build a configuration with [`Cli::try_parse_from`] and explicit flags, never
//! through the process environment.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tgpipe_shared::config::{BotSecretsArgs, BotSecretsError, NatsArgs, TelemetryArgs};
use tgpipe_shared::registry::RegistrySettings;
use tgpipe_shared::stream::{StreamSettings, parse_duration};

use crate::bots::Bots;
use crate::client_ip::{CidrError, IpPolicy, TELEGRAM_CIDRS, parse_cidrs};

/// `tgpipe-ingress`: receives Telegram webhooks and stores every update in NATS JetStream.
#[derive(Debug, Parser)]
#[command(
    name = "tgpipe-ingress",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings of `serve`, also accepted without the subcommand.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the webhook (the default).
    Serve(Box<ServeArgs>),
    /// Create or update the JetStream streams, then exit.
    Provision(Box<BrokerArgs>),
    /// Write a self-signed certificate and key for this host, for `setWebhook`.
    Cert(CertArgs),
}

/// Settings of the webhook server.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the webhook (`POST /webhook/{bot_id}`, nothing else).
    #[arg(long, env = "TGPIPE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of `/healthz`, `/readyz` and `/metrics`, apart from the public webhook port.
    #[arg(long, env = "TGPIPE_OPS_LISTEN", default_value = "0.0.0.0:9091")]
    pub ops_listen: SocketAddr,
    /// Bots served and their webhook secrets (`TGPIPE_BOTS` / `TGPIPE_BOTS_FILE`).
    #[command(flatten)]
    pub bots: BotSecretsArgs,
    /// Source ranges allowed to post updates (`any` disables the check).
    #[arg(long, env = "TGPIPE_ALLOWED_CIDRS", default_value = TELEGRAM_CIDRS)]
    pub allowed_cidrs: String,
    /// Proxies whose X-Forwarded-For is believed (CIDRs, comma separated).
    #[arg(long, env = "TGPIPE_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// Largest accepted body in bytes; larger ones are answered 413 without being read.
    #[arg(long, env = "TGPIPE_MAX_BODY", default_value_t = 1 << 20,
        value_parser = clap::value_parser!(u64).range(1..=64 << 20))]
    pub max_body: u64,
    /// Shards per bot and update type.
    #[command(flatten)]
    pub shards: tgpipe_shared::config::ShardArgs,
    /// How long to wait for JetStream's acknowledgement before answering 503.
    #[arg(long, env = "TGPIPE_PUBLISH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub publish_timeout: Duration,
    /// How long a client may take to send the request headers.
    #[arg(long, env = "TGPIPE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// How long a client may take to send the body.
    #[arg(long, env = "TGPIPE_BODY_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// After SIGTERM, how long `/readyz` says 503 while webhooks are still served, so
    /// that the endpoint leaves the Service before the listener closes.
    #[arg(long, env = "TGPIPE_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// How long in-flight requests may take to finish after the drain delay.
    #[arg(long, env = "TGPIPE_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// A connection (HTTP/1 keep-alive or HTTP/2) with no traffic for this long is closed.
    #[arg(long, env = "TGPIPE_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    #[arg(long, env = "TGPIPE_MAX_CONNECTIONS", default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Connections served at once for one peer address (trusted proxies excepted): one
    /// host cannot take every slot. Telegram's few addresses carry up to 100 connections
    /// per bot, hence a high default; `0`: no cap.
    #[arg(long, env = "TGPIPE_MAX_CONNECTIONS_PER_IP", default_value_t = 1024)]
    pub max_connections_per_ip: u32,
    /// Create or update the streams at start (and whenever the update stream is missing).
    #[arg(long, env = "TGPIPE_PROVISION", default_value_t = true, action = clap::ArgAction::Set)]
    pub provision: bool,
    /// PEM certificate chain: serve HTTPS directly (with --tls-key).
    #[arg(long, env = "TGPIPE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "TGPIPE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// The broker, stream and telemetry settings that `serve` and `provision` share.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub nats: NatsArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub stream: StreamSettings,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub registry: RegistrySettings,
}

/// Settings of `cert`.
#[derive(Debug, Clone, Args)]
pub struct CertArgs {
    /// The webhook's public IP address or domain name (Common Name and subjectAltName).
    #[arg(long)]
    pub host: String,
    /// Where to write the PEM certificate (upload it with `setWebhook`).
    #[arg(long, default_value = "tgpipe-cert.pem")]
    pub out_cert: PathBuf,
    /// Where to write the PEM private key (mode 0600; keep it on the server).
    #[arg(long, default_value = "tgpipe-key.pem")]
    pub out_key: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub days: u32,
}

/// A validated configuration of the webhook server.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// Address of the webhook.
    pub listen: SocketAddr,
    /// Address of the probes and metrics.
    pub ops_listen: SocketAddr,
    /// Bots and secrets of `TGPIPE_BOTS` / `TGPIPE_BOTS_FILE`.
    pub bots: Bots,
    /// The bot registry.
    pub registry: RegistrySettings,
    /// Source checks.
    pub ip_policy: IpPolicy,
    /// Body limit in bytes.
    pub max_body: usize,
    /// Shard count.
    pub shards: NonZeroU16,
    /// PubAck timeout.
    pub publish_timeout: Duration,
    /// Header read timeout.
    pub header_read_timeout: Duration,
    /// Body read timeout.
    pub body_read_timeout: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Serving on after SIGTERM, not ready.
    pub drain_delay: Duration,
    /// Idle connection timeout.
    pub idle_timeout: Duration,
    /// Connection cap.
    pub max_connections: usize,
    /// Connection cap per peer address (0: none).
    pub max_connections_per_ip: usize,
    /// Whether to provision streams.
    pub provision: bool,
    /// TLS certificate and key files.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// NATS connection.
    pub nats: NatsArgs,
    /// Stream settings.
    pub stream: StreamSettings,
    /// Telemetry settings.
    pub telemetry: TelemetryArgs,
}

/// Why a configuration is invalid. Each message names the environment variable (what a
/// pod sets) and the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// TGPIPE_BOTS / TGPIPE_BOTS_FILE.
    #[error(transparent)]
    Bots(#[from] BotSecretsError),
    /// TGPIPE_ALLOWED_CIDRS.
    #[error("TGPIPE_ALLOWED_CIDRS (--allowed-cidrs): {0}")]
    AllowedCidrs(CidrError),
    /// TGPIPE_TRUSTED_PROXIES.
    #[error("TGPIPE_TRUSTED_PROXIES (--trusted-proxies): {0}")]
    TrustedProxies(CidrError),
    /// A zero duration where waiting is needed.
    #[error("{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// The webhook and the probes on one port.
    #[error(
        "TGPIPE_OPS_LISTEN (--ops-listen) must be another port than TGPIPE_LISTEN (--listen): {0}"
    )]
    SamePort(SocketAddr),
}

impl ServeArgs {
    /// Validates the settings.
    pub fn validate(self) -> Result<IngressConfig, ConfigError> {
        // With the registry, the static list may be empty (unset, or an empty Secret
        // mounted as the file): bots come from the bucket.
        let bots = Bots::from(&if self.broker.registry.registry {
            self.bots.secrets()?
        } else {
            self.bots.require()?
        });
        for (name, d) in [
            (
                "TGPIPE_PUBLISH_TIMEOUT (--publish-timeout)",
                self.publish_timeout,
            ),
            (
                "TGPIPE_HEADER_READ_TIMEOUT (--header-read-timeout)",
                self.header_read_timeout,
            ),
            (
                "TGPIPE_BODY_READ_TIMEOUT (--body-read-timeout)",
                self.body_read_timeout,
            ),
            ("TGPIPE_IDLE_TIMEOUT (--idle-timeout)", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if self.ops_listen.port() == self.listen.port()
            && (self.ops_listen.ip() == self.listen.ip()
                || self.ops_listen.ip().is_unspecified()
                || self.listen.ip().is_unspecified())
        {
            return Err(ConfigError::SamePort(self.ops_listen));
        }
        Ok(IngressConfig {
            listen: self.listen,
            ops_listen: self.ops_listen,
            bots,
            registry: self.broker.registry,
            ip_policy: ip_policy(&self.allowed_cidrs, &self.trusted_proxies)?,
            max_body: usize::try_from(self.max_body).unwrap_or(usize::MAX),
            // The parser's range excludes zero.
            shards: self.shards.count(),
            publish_timeout: self.publish_timeout,
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            shutdown_grace: self.shutdown_grace,
            drain_delay: self.drain_delay,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections as usize,
            max_connections_per_ip: self.max_connections_per_ip as usize,
            provision: self.provision,
            tls: self.tls_cert.zip(self.tls_key),
            nats: self.broker.nats,
            stream: self.broker.stream,
            telemetry: self.broker.telemetry,
        })
    }
}

/// The source policy, with an error that says which of the two settings is wrong.
fn ip_policy(allowed: &str, trusted: &str) -> Result<IpPolicy, ConfigError> {
    if !allowed.trim().eq_ignore_ascii_case("any") {
        parse_cidrs(allowed).map_err(ConfigError::AllowedCidrs)?;
    }
    parse_cidrs(trusted).map_err(ConfigError::TrustedProxies)?;
    // Both lists parse; what is left is an empty allowed list.
    IpPolicy::new(allowed, trusted).map_err(ConfigError::AllowedCidrs)
}

impl IngressConfig {
    /// A configuration from flags only (what tests use), ignoring the environment's
    /// defaults only where a flag is given.
    pub fn from_flags<I, T>(flags: I) -> Result<IngressConfig, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(
            std::iter::once(std::ffi::OsString::from("tgpipe-ingress"))
                .chain(flags.into_iter().map(Into::into)),
        )
        .map_err(|e| e.to_string())?;
        cli.serve.validate().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = IngressConfig::from_flags(["--bots", "1:abc"]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.ops_listen.to_string(), "0.0.0.0:9091");
        assert_eq!(c.drain_delay, Duration::from_secs(5));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.max_connections, 4096);
        assert_eq!(c.max_body, 1 << 20);
        assert_eq!(c.shards.get(), 64);
        assert!(c.provision);
        assert_eq!(c.stream.name, "TG_UPDATES");
    }

    #[test]
    fn invalid_settings_are_refused_at_start() {
        for flags in [
            vec!["--bots", "x:abc"],
            vec!["--bots", "1:abc", "--shards", "0"],
            vec!["--bots", "1:abc", "--max-body", "0"],
            vec!["--bots", "1:abc", "--allowed-cidrs", "10.0.0.0/99"],
            vec!["--bots", "1:abc", "--publish-timeout", "0s"],
            vec!["--bots", "1:abc", "--tls-cert", "c.pem"],
            vec!["--bots", "1:abc", "--provision", "maybe"],
            vec!["--listen", "nowhere", "--bots", "1:abc"],
            vec!["--bots", "1:abc", "--ops-listen", "127.0.0.1:8080"],
            vec!["--bots", "1:abc", "--idle-timeout", "0s"],
            vec!["--bots", "1:abc", "--max-connections", "0"],
        ] {
            assert!(
                IngressConfig::from_flags(flags.clone()).is_err(),
                "{flags:?}"
            );
        }
    }

    #[test]
    fn a_bad_cidr_names_the_setting_that_held_it() {
        let e = IngressConfig::from_flags(["--bots", "1:abc", "--allowed-cidrs", "10.0.0.0/99"])
            .unwrap_err();
        assert!(
            e.contains("TGPIPE_ALLOWED_CIDRS (--allowed-cidrs): `10.0.0.0/99`"),
            "{e}"
        );
        let e =
            IngressConfig::from_flags(["--bots", "1:abc", "--trusted-proxies", "10.0.0.1,nope"])
                .unwrap_err();
        assert!(
            e.contains("TGPIPE_TRUSTED_PROXIES (--trusted-proxies): `nope`"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_environment_variable_and_the_flag() {
        let e = IngressConfig::from_flags(["--bots", "x:abc"]).unwrap_err();
        assert!(e.starts_with("TGPIPE_BOTS (--bots): entry #1"), "{e}");
        let e =
            IngressConfig::from_flags(["--bots", "1:abc", "--publish-timeout", "0s"]).unwrap_err();
        assert!(
            e.contains("TGPIPE_PUBLISH_TIMEOUT (--publish-timeout)"),
            "{e}"
        );
    }

    #[test]
    fn debug_of_the_settings_redacts_secrets_and_passwords() {
        let cli = Cli::try_parse_from([
            "tgpipe-ingress",
            "--bots",
            "1:webhook-secret-value",
            "--nats-url",
            "nats://app:nats-password@nats:4222,nats://nats-token@nats-2:4222",
        ])
        .unwrap();
        let config = cli.serve.clone().validate().unwrap();
        for printed in [
            format!("{cli:?}"),
            format!("{:?}", cli.serve),
            format!("{config:?}"),
        ] {
            for secret in ["webhook-secret-value", "nats-password", "nats-token"] {
                assert!(!printed.contains(secret), "{secret} in {printed}");
            }
            assert!(printed.contains("nats://app:***@nats:4222"), "{printed}");
        }
    }

    #[test]
    fn static_bots_are_optional_only_with_the_registry() {
        let c = IngressConfig::from_flags::<[&str; 0], _>([]).unwrap();
        assert!(c.bots.ids().is_empty());
        assert!(c.registry.registry);
        assert_eq!(c.registry.bucket, "tgpipe_bots");
        let e = IngressConfig::from_flags(["--registry", "false"]).unwrap_err();
        assert!(e.contains("no bots configured"), "{e}");
        // An empty Secret mounted as the file (a registry-only install).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bots");
        std::fs::write(&path, "\n").unwrap();
        let file = path.to_str().unwrap();
        let c = IngressConfig::from_flags(["--bots-file", file]).unwrap();
        assert!(c.bots.ids().is_empty());
        let e =
            IngressConfig::from_flags(["--bots-file", file, "--registry", "false"]).unwrap_err();
        assert!(
            e.contains("TGPIPE_BOTS_FILE") && e.contains("no bots configured"),
            "{e}"
        );
        // A malformed entry is refused with or without the registry.
        std::fs::write(&path, "12:").unwrap();
        assert!(IngressConfig::from_flags(["--bots-file", file]).is_err());
    }

    #[test]
    fn bots_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bots");
        std::fs::write(&path, "# prod bots\n1:abc\n2:def\n").unwrap();
        let c = IngressConfig::from_flags(["--bots-file", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.bots.ids().len(), 2);
        let missing = dir.path().join("missing");
        assert!(IngressConfig::from_flags(["--bots-file", missing.to_str().unwrap()]).is_err());
    }
}
