//! The shutdown signal: SIGTERM (what Kubernetes sends) or Ctrl-C.

/// Completes when the process is asked to stop: SIGTERM or SIGINT.
///
/// ```no_run
/// # async fn serve() {
/// tgpipe_shared::shutdown::signal().await;
/// // stop accepting, drain in-flight work, flush.
/// # }
/// ```
pub async fn signal() {
    let ctrl_c = async {
        // If the handler cannot be installed, wait on SIGTERM alone.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
