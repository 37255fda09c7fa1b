//! Configuration helpers shared by the binaries: parse flags and environment with clap,
//! fail fast with exit code 64 (`EX_USAGE`), and read list values from files.
//!
//! Every setting is both a CLI flag and an environment variable (clap's `env`), which is
//! what Kubernetes hands a pod. Validation happens at start-up, never in the middle of
//! traffic: a process that starts is correctly configured.

use std::path::Path;

use clap::Parser;

/// The exit code for a configuration error (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// Parses the process's arguments and environment into `T`, or prints clap's error and
/// exits: 0 for `--help`/`--version`, [`EXIT_CONFIG`] for anything invalid.
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(config) => config,
        Err(e) => exit_with(e),
    }
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
}

/// NATS connection settings shared by every binary.
#[derive(Debug, Clone, clap::Args)]
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
}

impl NatsArgs {
    /// Connect options with the credentials applied and a client name.
    pub async fn connect(&self, client_name: &str) -> Result<async_nats::Client, ConnectError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(client_name)
            // Keep retrying in the background: a pod that starts before NATS should
            // become ready when NATS does, not crash-loop.
            .retry_on_initial_connect();
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| ConnectError(e.to_string()))?;
        }
        let urls: Vec<&str> = split_list(&self.url);
        options
            .connect(urls.as_slice())
            .await
            .map_err(|e| ConnectError(e.to_string()))
    }
}

/// Why connecting to NATS failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS: {0}")]
pub struct ConnectError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_files_allow_comments_and_newlines() {
        assert_eq!(
            split_list("# bots\n1:a\n2:b,3:c\n"),
            vec!["1:a", "2:b", "3:c"]
        );
    }
}
