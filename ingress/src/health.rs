//! `/healthz`, `/readyz` and `/metrics`.
//!
//! Readiness is "NATS connected and the update stream exists". Probes arrive every few
//! seconds from every kubelet, so the stream check is not done per probe: a background
//! task refreshes it every second and, when provisioning is on, re-creates a stream that
//! went missing (NATS started after the ingress, or was wiped).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tgpipe_shared::stream::{StreamSettings, provision_streams};

use crate::AppState;
use crate::publish::Publisher;

/// Whether the update stream was found at the last check.
#[derive(Debug, Default)]
pub struct Readiness {
    stream_ok: AtomicBool,
}

impl Readiness {
    /// Starts the background check; it ends when the returned handle is aborted or the
    /// runtime stops.
    pub fn spawn(
        self: &Arc<Self>,
        publisher: Publisher,
        stream: StreamSettings,
        provision: bool,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                let ok = me.check(&publisher, &stream, provision, &mut failing).await;
                me.stream_ok.store(ok, Ordering::Relaxed);
                tokio::time::sleep(every).await;
            }
        })
    }

    async fn check(
        &self,
        p: &Publisher,
        stream: &StreamSettings,
        provision: bool,
        failing: &mut bool,
    ) -> bool {
        if !p.is_connected() {
            return false;
        }
        let js = p.jetstream();
        if js.get_stream(&stream.name).await.is_ok() {
            *failing = false;
            return true;
        }
        if !provision {
            return false;
        }
        match provision_streams(js, stream).await {
            Ok(()) => {
                tracing::info!(stream = %stream.name, "streams created or updated");
                *failing = false;
                true
            }
            Err(e) => {
                // Once per failure streak: the check repeats every second.
                if !*failing {
                    tracing::error!(error = %e, "cannot provision the streams");
                }
                *failing = true;
                false
            }
        }
    }

    /// Whether the stream was there at the last check.
    pub fn stream_ok(&self) -> bool {
        self.stream_ok.load(Ordering::Relaxed)
    }
}

pub(crate) async fn healthz() -> &'static str {
    "ok"
}

pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let inner = &state.inner;
    if !inner.publisher.is_connected() {
        (StatusCode::SERVICE_UNAVAILABLE, "NATS disconnected").into_response()
    } else if !inner.readiness.stream_ok() {
        (StatusCode::SERVICE_UNAVAILABLE, "stream missing").into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    match &state.inner.metrics {
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
