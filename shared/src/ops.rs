//! The operations endpoints of every tgpipe process, on a port of their own:
//! `GET /healthz`, `GET /readyz` and `GET /metrics`.
//!
//! The ingress and the workers answer them the same way, so probes, scrapes and alerts
//! need no per-tier cases:
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /healthz` | `200 ok` while the process runs |
//! | `GET /readyz` | `200 ready` when every [`Check`] passes and shutdown has not begun; else `503` with `draining` or the first failing check's reason |
//! | `GET /metrics` | `200`, Prometheus text; `503 metrics recorder not installed` when the process has no recorder of ours |
//!
//! What "ready" means is the tier's business: each tier keeps its own background task
//! (the ingress checks its stream and provisions it, the workers watch their consumers'
//! lag) and reports into [`Readiness`] through the [`Check`]s it made. A probe reads a
//! few atomics and never waits on the broker.
//!
//! `/metrics` without a recorder is `503`, not `404`: the route is there, the process
//! cannot serve it (another global recorder was installed first, e.g. by a program that
//! embeds the worker). A `404` would send an operator looking for a wrong path in the
//! scrape configuration; Prometheus counts either as a failed scrape.
//!
//! ```
//! use std::sync::Arc;
//! use tgpipe_shared::ops::{Check, Readiness};
//!
//! let broker = Check::new("NATS disconnected");
//! let readiness = Arc::new(Readiness::new([broker.clone()]));
//! assert_eq!(readiness.status(), Err("NATS disconnected"));
//! broker.set(true);
//! assert!(readiness.is_ready());
//! readiness.start_draining();
//! assert_eq!(readiness.status(), Err("draining"));
//! let app = tgpipe_shared::ops::router(readiness, tgpipe_shared::telemetry::prometheus());
//! # drop(app);
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

/// One condition of readiness, set by the tier's background task; cloning gives another
/// handle to the same condition. It starts failing: a process is not ready before its
/// first check ran.
#[derive(Debug, Clone)]
pub struct Check(Arc<CheckState>);

#[derive(Debug)]
struct CheckState {
    passes: AtomicBool,
    unready: &'static str,
}

impl Check {
    /// A failing check; `unready` is what `/readyz` answers while it fails
    /// (`"stream missing"`).
    pub fn new(unready: &'static str) -> Check {
        Check(Arc::new(CheckState {
            passes: AtomicBool::new(false),
            unready,
        }))
    }

    /// Records the outcome of the latest check.
    pub fn set(&self, passes: bool) {
        self.0.passes.store(passes, Ordering::Relaxed);
    }

    /// Whether the latest check passed.
    pub fn passes(&self) -> bool {
        self.0.passes.load(Ordering::Relaxed)
    }
}

/// What `/readyz` reports: the tier's [`Check`]s, and whether shutdown began.
#[derive(Debug)]
pub struct Readiness {
    checks: Box<[Check]>,
    draining: AtomicBool,
}

impl Readiness {
    /// Ready when every one of `checks` passes (and until shutdown begins); `/readyz`
    /// names the first one that fails, in this order.
    pub fn new(checks: impl IntoIterator<Item = Check>) -> Readiness {
        Readiness {
            checks: checks.into_iter().collect(),
            draining: AtomicBool::new(false),
        }
    }

    /// Readiness goes false for good: the process is shutting down, and its endpoint
    /// should leave the Service before it stops taking work.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether shutdown began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// `Ok` when ready, else why not: `"draining"` or the first failing check's reason.
    pub fn status(&self) -> Result<(), &'static str> {
        if self.is_draining() {
            return Err("draining");
        }
        match self.checks.iter().find(|c| !c.passes()) {
            Some(failing) => Err(failing.0.unready),
            None => Ok(()),
        }
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.status().is_ok()
    }
}

#[derive(Debug, Clone)]
struct Ops {
    readiness: Arc<Readiness>,
    metrics: Option<PrometheusHandle>,
}

/// The routes `/healthz`, `/readyz` and `/metrics` over `readiness`, rendering
/// `metrics` (the handle of `crate::telemetry::prometheus`; `None` when another recorder
/// was installed). Tests drive it with `oneshot`; [`serve`] serves it.
pub fn router(readiness: Arc<Readiness>, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(Ops { readiness, metrics })
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(ops): State<Ops>) -> Response {
    match ops.readiness.status() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn render_metrics(State(ops): State<Ops>) -> Response {
    match &ops.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed",
        )
            .into_response(),
    }
}

/// How long a client of the operations port may take to send a request's headers. A
/// kubelet or Prometheus sends them at once; the limit only stops a stray client from
/// holding connections open by trickling bytes.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` (the [`router`], possibly with routes of the tier's own) on `listener`
/// until the task is aborted or the runtime stops: the operations port answers for as
/// long as the process lives, draining included (readiness says `draining`).
pub async fn serve(listener: TcpListener, app: Router) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "operations port: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (builder, service) = (Arc::clone(&builder), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "operations port: connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(app: &Router, path: &str) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let res = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_names_the_first_failing_check_and_then_draining() {
        let (nats, stream) = (
            Check::new("NATS disconnected"),
            Check::new("stream missing"),
        );
        let readiness = Arc::new(Readiness::new([nats.clone(), stream.clone()]));
        let app = router(Arc::clone(&readiness), None);
        assert_eq!(get(&app, "/healthz").await, (StatusCode::OK, "ok".into()));
        let unready = |why: &str| (StatusCode::SERVICE_UNAVAILABLE, why.to_owned());
        assert_eq!(get(&app, "/readyz").await, unready("NATS disconnected"));
        nats.set(true);
        assert_eq!(get(&app, "/readyz").await, unready("stream missing"));
        stream.set(true);
        assert_eq!(get(&app, "/readyz").await, (StatusCode::OK, "ready".into()));
        readiness.start_draining();
        assert_eq!(get(&app, "/readyz").await, unready("draining"));
        // Draining is for good, whatever the checks say.
        nats.set(true);
        assert!(!readiness.is_ready());
    }

    #[tokio::test]
    async fn metrics_without_a_recorder_is_503_in_every_tier() {
        let app = router(Arc::new(Readiness::new([])), None);
        assert_eq!(
            get(&app, "/metrics").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "metrics recorder not installed".into()
            )
        );
    }

    #[tokio::test]
    async fn metrics_render_prometheus_text() {
        let handle = crate::telemetry::prometheus().expect("the first recorder here");
        let app = router(Arc::new(Readiness::new([])), Some(handle));
        let res = app
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4"
        );
    }

    #[tokio::test]
    async fn serve_answers_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let check = Check::new("not yet");
        let readiness = Arc::new(Readiness::new([check.clone()]));
        let server = tokio::spawn(serve(listener, router(readiness, None)));
        let probe = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            conn.write_all(req.as_bytes()).await.unwrap();
            let mut answer = String::new();
            conn.read_to_string(&mut answer).await.unwrap();
            answer
        };
        assert!(probe("/readyz").await.starts_with("HTTP/1.1 503"));
        check.set(true);
        let answer = probe("/readyz").await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ready"),
            "{answer}"
        );
        server.abort();
    }
}
