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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = tgpipe_shared::config::parse_or_exit();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Baseline { listen } => tgpipe_loadtest::baseline::serve(listen).await?,
    }
    Ok(())
}
