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
    /// Deliver updates to a webhook like Telegram, then match the bot's replies at the sink.
    Run(Box<RunArgs>),
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

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The webhook's base URL (the path /webhook/<bot-id> is added).
    #[arg(long)]
    url: String,
    /// The webhook secret token.
    #[arg(long)]
    secret: String,
    /// The bot id in the webhook path.
    #[arg(long)]
    bot_id: u64,
    /// Updates to deliver.
    #[arg(long, default_value_t = 1000)]
    updates: usize,
    /// Chats they are spread over.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    chats: u64,
    /// The Bot API stand-in's URL, where replies are matched (omit to measure acceptance only).
    #[arg(long)]
    sink: Option<String>,
    /// Requests in flight at most, like Telegram's max_connections.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..=100))]
    connections: u64,
    /// Requests per second at most.
    #[arg(long)]
    rate: Option<f64>,
    /// Update kinds, cycled: text, command, callback, member.
    #[arg(long, default_value = "text", value_delimiter = ',')]
    mix: Vec<tgpipe_loadtest::run::Kind>,
    /// Attempts per update before giving up on it.
    #[arg(long, default_value_t = 10)]
    max_attempts: u32,
    /// How long to wait for replies after the last delivery, in seconds.
    #[arg(long, default_value_t = 60)]
    reply_timeout: u64,
    /// The first update_id (default: the current unix time in milliseconds, so runs
    /// within the broker's de-duplication window do not collide).
    #[arg(long)]
    first_id: Option<i64>,
    /// The first chat's id (chats are this and the ids after it): runs with different
    /// ones do not share chats.
    #[arg(long, default_value_t = tgpipe_loadtest::run::FIRST_CHAT)]
    first_chat: i64,
    /// Print one JSON line with the report on stdout.
    #[arg(long)]
    json: bool,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use tgpipe_loadtest::run;

    let first_id = args.first_id.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as i64)
    });
    let updates = run::generate_from(
        args.updates,
        args.chats as usize,
        &args.mix,
        first_id,
        args.first_chat,
    );
    let delivery = run::Delivery {
        url: format!("{}/webhook/{}", args.url.trim_end_matches('/'), args.bot_id),
        secret: args.secret.clone(),
        connections: args.connections as usize,
        rate: args.rate,
        max_attempts: args.max_attempts,
    };
    let client = reqwest::Client::new();
    let since = match &args.sink {
        Some(sink) => {
            let calls: Vec<serde_json::Value> = client
                .get(format!("{}/_sink/calls", sink.trim_end_matches('/')))
                .send()
                .await?
                .json()
                .await?;
            calls.len() as u64
        }
        None => 0,
    };
    let progress = Arc::new(run::Progress::default());
    let total = updates.len();
    let ticker = {
        let progress = Arc::clone(&progress);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let done = progress.done.load(Ordering::Relaxed);
                let width = 30;
                let filled = (done * width).checked_div(total).unwrap_or(width);
                eprint!(
                    "\r[{}{}] {done}/{total} delivered, {} accepted, {} retries",
                    "#".repeat(filled),
                    " ".repeat(width - filled),
                    progress.accepted.load(Ordering::Relaxed),
                    progress.retries.load(Ordering::Relaxed)
                );
            }
        })
    };
    let outcomes = run::deliver(&updates, &delivery, Arc::clone(&progress)).await;
    ticker.abort();
    eprintln!();
    let calls = match &args.sink {
        Some(sink) => {
            eprintln!("waiting for replies at {sink} ...");
            run::collect_replies(
                sink,
                &updates,
                &outcomes,
                since,
                std::time::Duration::from_secs(args.reply_timeout),
            )
            .await?
        }
        None => Vec::new(),
    };
    let mut report = run::match_replies(&updates, &outcomes, &calls);
    if args.sink.is_none() {
        // Nothing to match against: report acceptance only.
        report.lost = 0;
    }
    eprintln!(
        "sent {} accepted {} rejected {} retried {} | replied {} lost {} duplicates {} out_of_order {} | {:.0} accepted/s {:.0} replies/s | latency ms p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}",
        report.sent,
        report.accepted,
        report.rejected,
        report.retried,
        report.replied,
        report.lost,
        report.duplicates,
        report.out_of_order,
        report.accept_per_s,
        report.reply_per_s,
        report.latency_ms.p50,
        report.latency_ms.p90,
        report.latency_ms.p99,
        report.latency_ms.max
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = tgpipe_shared::config::parse_or_exit();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Baseline { listen } => tgpipe_loadtest::baseline::serve(listen).await?,
        Command::Run(args) => run(*args).await?,
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
            let config = tgpipe_testkit::sink::SinkConfig {
                latency: std::time::Duration::from_millis(latency_ms),
                error_rate,
                every_429,
                retry_after,
                migrate_chat,
                bot_username,
                ..Default::default()
            };
            let sink = tgpipe_testkit::sink::Sink::bind(listen, config).await?;
            tracing::info!(url = %sink.url(), "Bot API stand-in listening");
            tgpipe_shared::shutdown::signal().await;
        }
    }
    Ok(())
}
