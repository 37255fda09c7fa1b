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
use axum::routing::post;

pub mod bots;
pub mod cert;
pub mod client_ip;
pub mod config;
mod health;
pub mod metrics;
pub mod publish;
pub mod serve;
pub mod webhook;

pub use config::IngressConfig;

use crate::bots::LiveBots;
use crate::client_ip::IpPolicy;
use crate::health::ReadinessTask;
use crate::publish::Publisher;
use tgpipe_shared::ops::Readiness;

/// Everything a request needs, shared by all of them.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bots: Arc<LiveBots>,
    /// The registry's webhooks bucket once opened (where rotations are confirmed).
    registry: Arc<std::sync::OnceLock<async_nats::jetstream::kv::Store>>,
    ip_policy: IpPolicy,
    max_body: usize,
    shards: std::num::NonZeroU16,
    body_read_timeout: Duration,
    publisher: Publisher,
    readiness: Arc<Readiness>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    in_flight: ::metrics::Gauge,
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
    /// The state for `config`, publishing through `client`. Starts the readiness checks
    /// (which also provision the streams when `config.provision` is set) and the
    /// registry's watch; must be called inside a Tokio runtime.
    pub fn new(config: &IngressConfig, client: async_nats::Client) -> AppState {
        let bots = Arc::new(LiveBots::new(config.bots.clone()));
        let registry = Arc::new(std::sync::OnceLock::new());
        let registry_watch = config
            .registry
            .registry
            .then(|| watch_registry(config, &client, Arc::clone(&bots), Arc::clone(&registry)));
        let publisher = Publisher::new(client, config.publish_timeout);
        let (readiness, task) = ReadinessTask {
            publisher: publisher.clone(),
            stream: config.stream.clone(),
            provision: config.provision,
            max_body: config.max_body,
            registry: registry_watch,
        }
        .spawn(Duration::from_secs(1));
        AppState {
            inner: Arc::new(Inner {
                bots,
                registry,
                ip_policy: config.ip_policy.clone(),
                max_body: config.max_body,
                shards: config.shards,
                body_read_timeout: config.body_read_timeout,
                publisher,
                readiness,
                metrics: metrics::install(),
                in_flight: metrics::in_flight(),
                _readiness_task: AbortOnDrop(task),
            }),
        }
    }

    /// The publisher (to flush it at shutdown).
    pub fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }

    /// Whether the ingress is ready, as `/readyz` says: NATS connected, stream present,
    /// the bot registry read once when it is used or 10 s passed trying, not draining
    /// (checked every second).
    pub fn is_ready(&self) -> bool {
        self.inner.readiness.is_ready()
    }

    /// Shutdown began: `/readyz` answers 503 from now on, while webhooks are still served
    /// (for `TGPIPE_DRAIN_DELAY`), so that the endpoint leaves the Service first.
    pub fn start_draining(&self) {
        self.inner.readiness.start_draining();
    }
}

/// Watches the registry's webhooks bucket (digests and states, no tokens: the ingress's
/// NATS user need not read the main bucket) and rebuilds the bot table on every change.
fn watch_registry(
    config: &IngressConfig,
    client: &async_nats::Client,
    bots: Arc<LiveBots>,
    opened: Arc<std::sync::OnceLock<async_nats::jetstream::kv::Store>>,
) -> tgpipe_shared::registry::Watching {
    let js = async_nats::jetstream::new(client.clone());
    let settings = config.registry.clone();
    let replicas = usize::from(config.stream.replicas);
    // The buckets are created like the streams: when provisioning is on, never changed.
    // Then a new webhooks bucket is also filled from the main one (an upgrade without the
    // provisioning Job); without provisioning only the webhooks bucket is opened.
    let create = config.provision;
    // Set while the main bucket stands in for a webhooks bucket not made yet.
    let polling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rewatch = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&rewatch);
    tgpipe_shared::registry::watch_with(
        move || {
            let (js, settings, opened) = (js.clone(), settings.clone(), Arc::clone(&opened));
            let (polling, notify) = (Arc::clone(&polling), Arc::clone(&notify));
            async move {
                use tgpipe_shared::registry::{Registry, RegistryError, bucket, webhooks_bucket};
                let store = if create {
                    Registry::open(&js, &settings, replicas, true)
                        .await?
                        .webhooks()
                        .clone()
                } else {
                    match webhooks_bucket(&js, &settings, replicas, false).await {
                        Ok(store) => store,
                        // An upgrade from a version without the webhooks bucket, before
                        // `provision` (a post-upgrade Job) made it: the main bucket has
                        // the digests too, where this pod's NATS user may read it.
                        Err(missing @ RegistryError::Missing(_)) => {
                            let Ok(main) = bucket(&js, &settings, replicas, false).await else {
                                return Err(missing);
                            };
                            if !polling.swap(true, std::sync::atomic::Ordering::AcqRel) {
                                tracing::warn!(bucket = %settings.webhooks_bucket(), "reading the main registry bucket until the webhooks bucket exists (`provision` makes it)");
                                tokio::spawn(async move {
                                    // Made and filled: an empty one is taken only when the
                                    // main bucket is empty too.
                                    loop {
                                        tokio::time::sleep(Duration::from_secs(2)).await;
                                        let count = |store: Result<
                                            async_nats::jetstream::kv::Store,
                                            RegistryError,
                                        >| async move {
                                            match store {
                                                Ok(s) => {
                                                    s.status().await.map(|st| st.values()).ok()
                                                }
                                                Err(_) => None,
                                            }
                                        };
                                        let hooks = count(
                                            webhooks_bucket(&js, &settings, replicas, false).await,
                                        )
                                        .await;
                                        let main =
                                            count(bucket(&js, &settings, replicas, false).await)
                                                .await;
                                        if hooks.is_some_and(|h| h > 0 || main == Some(0)) {
                                            break;
                                        }
                                    }
                                    polling.store(false, std::sync::atomic::Ordering::Release);
                                    notify.notify_one();
                                });
                            }
                            // Not where rotations are confirmed: both secrets stay
                            // accepted until the webhooks bucket is read, the safe side.
                            return Ok(main);
                        }
                        Err(e) => return Err(e),
                    }
                };
                let _ = opened.set(store.clone());
                Ok(store)
            }
        },
        move |records| {
            bots.update(records);
            tracing::debug!(bots = records.len(), "bot registry changed");
        },
        rewatch,
    )
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
/// `GET /metrics`, as every tgpipe process answers them ([`tgpipe_shared::ops`]).
pub fn ops_app(state: AppState) -> Router {
    tgpipe_shared::ops::router(
        Arc::clone(&state.inner.readiness),
        state.inner.metrics.clone(),
    )
}
