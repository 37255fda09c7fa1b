//! `tgpipe-ingress`: the webhook receiver.
//!
//! Telegram POSTs each update to `/webhook/{bot_id}`. The ingress checks that the request
//! is genuine (source range, bot, secret token), reads the few keys routing needs from the
//! raw bytes, publishes the bytes unchanged to JetStream on
//! `tg.<bot_id>.<update_type>.<shard>`, and answers `200` only after JetStream
//! acknowledged the write. It keeps no state, so it scales by adding pods.
//!
//! [`app`] builds the router that tests drive with `oneshot`; [`serve::serve`] runs it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

pub mod bots;
pub mod cert;
pub mod client_ip;
pub mod config;
pub mod health;
pub mod metrics;
pub mod publish;
pub mod serve;
pub mod webhook;

pub use config::IngressConfig;

use crate::bots::Bots;
use crate::client_ip::IpPolicy;
use crate::health::Readiness;
use crate::publish::Publisher;

/// Everything a request needs, shared by all of them.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bots: Bots,
    ip_policy: IpPolicy,
    max_body: usize,
    shards: std::num::NonZeroU16,
    body_read_timeout: Duration,
    publisher: Publisher,
    readiness: Arc<Readiness>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    _readiness_task: AbortOnDrop,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AppState {
    /// The state for `config`, publishing through `client`. Starts the readiness check
    /// (which also provisions the streams when `config.provision` is set); must be
    /// called inside a Tokio runtime.
    pub fn new(config: &IngressConfig, client: async_nats::Client) -> AppState {
        let publisher = Publisher::new(client, config.publish_timeout);
        let readiness = Arc::new(Readiness::default());
        let task = readiness.spawn(
            publisher.clone(),
            config.stream.clone(),
            config.provision,
            config.max_body,
            Duration::from_secs(1),
        );
        AppState {
            inner: Arc::new(Inner {
                bots: config.bots.clone(),
                ip_policy: config.ip_policy.clone(),
                max_body: config.max_body,
                shards: config.shards,
                body_read_timeout: config.body_read_timeout,
                publisher,
                readiness,
                metrics: metrics::install(),
                _readiness_task: AbortOnDrop(task),
            }),
        }
    }

    /// The publisher (to flush it at shutdown).
    pub fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }

    /// Whether the ingress is ready (NATS connected, stream present, not draining).
    pub fn is_ready(&self) -> bool {
        self.inner.publisher.is_connected()
            && self.inner.readiness.stream_ok()
            && !self.inner.readiness.is_draining()
    }

    /// Shutdown began: `/readyz` answers 503 from now on, while webhooks are still served
    /// (for `TGPIPE_DRAIN_DELAY`), so that the endpoint leaves the Service first.
    pub fn start_draining(&self) {
        self.inner.readiness.start_draining();
    }
}

/// The public routes: `POST /webhook/{bot_id}`, and nothing else (probes and metrics are
/// on [`ops_app`]'s port, which the Internet never reaches). Requests must carry
/// `ConnectInfo<SocketAddr>` (the server inserts it; tests add it to the request's
/// extensions).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/webhook/{bot_id}", post(webhook::webhook))
        .with_state(state)
}

/// The operations routes, on `TGPIPE_OPS_LISTEN`: `GET /healthz`, `GET /readyz`,
/// `GET /metrics`.
pub fn ops_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state)
}
