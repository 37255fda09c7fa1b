//! `tgpipe-loadtest`: command-line entry point.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

/// Load-testing tools for tgpipe.
#[derive(Debug, Parser)]
#[command(name = "tgpipe-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a bare webhook handler (reads the body, answers 200) as a baseline.
    Baseline {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
    },
    /// Serve the Bot API stand-in: answers every method like Telegram, records every call
    /// (`GET /_sink/calls`, `/_sink/stats`; `POST /_sink/reset`, `/_sink/updates`).
    Sink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Delay before every answer, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Fraction of calls answered 500 (0.0 to 1.0).
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Answer every Nth call with 429 Too Many Requests.
        #[arg(long = "429-every", value_parser = clap::value_parser!(u64).range(1..))]
        every_429: Option<u64>,
        /// The retry_after of 429 answers, in seconds.
        #[arg(long, default_value_t = 1)]
        retry_after: u64,
        /// Answer calls to this chat with 400 and migrate_to_chat_id.
        #[arg(long, allow_hyphen_values = true)]
        migrate_chat: Option<i64>,
        /// The bot's username in getMe.
        #[arg(long, default_value = "tgpipe_sink_bot")]
        bot_username: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = tgpipe_shared::config::parse_or_exit();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Baseline { listen } => tgpipe_loadtest::baseline::serve(listen).await?,
        Command::Sink {
            listen,
            latency_ms,
            error_rate,
            every_429,
            retry_after,
            migrate_chat,
            bot_username,
        } => {
            if !(0.0..=1.0).contains(&error_rate) {
                tgpipe_shared::config::exit_invalid("--error-rate must be between 0.0 and 1.0");
            }
            let config = tgpipe_loadtest::sink::SinkConfig {
                latency: std::time::Duration::from_millis(latency_ms),
                error_rate,
                every_429,
                retry_after,
                migrate_chat,
                bot_username,
                ..Default::default()
            };
            let sink = tgpipe_loadtest::sink::Sink::bind(listen, config).await?;
            tracing::info!(url = %sink.url(), "Bot API stand-in listening");
            tgpipe_shared::shutdown::signal().await;
        }
    }
    Ok(())
}
