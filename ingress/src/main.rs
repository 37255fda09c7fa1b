//! `tgpipe-ingress`: config -> build -> serve -> drain.

use anyhow::Context as _;
use tgpipe_ingress::config::{Cli, Command};
use tgpipe_ingress::serve::{ConnectionLimits, ServeOptions, bind, serve_with, tls_acceptor};
use tgpipe_ingress::{AppState, app, ops_app};
use tgpipe_shared::config::{exit_invalid, parse_or_exit};

/// A server allocator: per-thread caches cut the cost of the allocations every request
/// makes (docs/benchmarks.md has the before and after).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli: Cli = parse_or_exit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Command::Cert(args)) => {
            tgpipe_ingress::cert::write(&args.host, args.days, &args.out_cert, &args.out_key)?;
            println!("wrote {} and {}", args.out_cert.display(), args.out_key.display());
            println!(
                "Upload the certificate with setWebhook, e.g. `tgpipe-example-bot webhook set --url https://{}:8443/webhook/<bot_id> --secret <secret> --certificate {}`,",
                args.host,
                args.out_cert.display()
            );
            println!("and serve with TGPIPE_TLS_CERT={} TGPIPE_TLS_KEY={}.", args.out_cert.display(), args.out_key.display());
            Ok(())
        }
        Some(Command::Provision(args)) => runtime.block_on(async {
            let _telemetry = tgpipe_shared::telemetry::init("tgpipe-ingress", &args.telemetry)?;
            let client = args.nats.connect("tgpipe-ingress provision").await?;
            let js = async_nats::jetstream::new(client);
            tgpipe_shared::stream::provision_streams(&js, &args.stream).await?;
            if args.registry.registry {
                // Both buckets, and every webhook record brought up to date with the
                // main bucket (an upgrade from a version without the webhooks bucket).
                let (_, backfill) = tgpipe_shared::registry::Registry::provision(&js, &args.registry, usize::from(args.stream.replicas)).await?;
                tracing::info!(written = backfill.written, deleted = backfill.deleted, bucket = %args.registry.webhooks_bucket(), "webhooks bucket up to date");
            }
            tracing::info!(stream = %args.stream.name, dlq = %args.stream.dlq_name, registry = %args.registry.bucket, "streams ready");
            Ok(())
        }),
        Some(Command::Serve(args)) => runtime.block_on(run(*args)),
        None => runtime.block_on(run(cli.serve)),
    }
}

async fn run(args: tgpipe_ingress::config::ServeArgs) -> anyhow::Result<()> {
    let config = args.validate().unwrap_or_else(|e| exit_invalid(e));
    let _telemetry = tgpipe_shared::telemetry::init("tgpipe-ingress", &config.telemetry)?;
    let tls = config.tls.as_ref().map(|(cert, key)| {
        tls_acceptor(cert, key).unwrap_or_else(|e| {
            exit_invalid(format!(
                "TGPIPE_TLS_CERT / TGPIPE_TLS_KEY (--tls-cert / --tls-key): {e}"
            ))
        })
    });
    let client = config.nats.connect("tgpipe-ingress").await?;
    let state = AppState::new(&config, client);
    let listener = bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (TGPIPE_LISTEN)", config.listen))?;
    let ops_listener = bind(config.ops_listen)
        .await
        .with_context(|| format!("cannot listen on {} (TGPIPE_OPS_LISTEN)", config.ops_listen))?;
    tracing::info!(listen = %config.listen, ops = %config.ops_listen, tls = tls.is_some(), static_bots = config.bots.ids().len(), registry = config.registry.registry, "serving webhooks");
    let options = ServeOptions {
        header_read_timeout: config.header_read_timeout,
        grace: config.shutdown_grace,
    };
    // Probes and metrics answer until the process exits (readiness says "draining").
    let ops = tokio::spawn(tgpipe_shared::ops::serve(
        ops_listener,
        ops_app(state.clone()),
    ));
    let limits = ConnectionLimits {
        drain_delay: config.drain_delay,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections,
        admit: config.ip_policy.clone(),
        max_per_ip: config.max_connections_per_ip,
    };
    let draining = state.clone();
    let shutdown = async move {
        tgpipe_shared::shutdown::signal().await;
        // Out of the Service's endpoints first; the webhook is served on meanwhile.
        draining.start_draining();
    };
    serve_with(listener, app(state.clone()), tls, options, limits, shutdown).await;
    state
        .publisher()
        .flush(std::time::Duration::from_secs(5))
        .await;
    ops.abort();
    tracing::info!("stopped");
    Ok(())
}
