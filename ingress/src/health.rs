//! `/healthz`, `/readyz` and `/metrics`.
//!
//! Readiness is "NATS connected and the update stream exists". Probes arrive every few
//! seconds from every kubelet, so the stream check is not done per probe: a background
//! task refreshes it every second and, when provisioning is on, re-creates a stream that
//! went missing (NATS started after the ingress, or was wiped).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    draining: AtomicBool,
    /// The broker's max_payload last warned about (0: none yet).
    warned_max_payload: AtomicUsize,
}

impl Readiness {
    /// Starts the background check; it ends when the returned handle is aborted or the
    /// runtime stops.
    pub fn spawn(
        self: &Arc<Self>,
        publisher: Publisher,
        stream: StreamSettings,
        provision: bool,
        max_body: usize,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                me.check_body_limit(&publisher, max_body);
                let ok = me.check(&publisher, &stream, provision, &mut failing).await;
                me.stream_ok.store(ok, Ordering::Relaxed);
                tokio::time::sleep(every).await;
            }
        })
    }

    /// TGPIPE_MAX_BODY is lowered to what the broker can store (see `webhook`); say so
    /// once per server limit, naming the setting, when it bites.
    fn check_body_limit(&self, p: &Publisher, max_body: usize) {
        if !p.is_connected() {
            return;
        }
        let max_payload = p.max_payload();
        if p.max_body() >= max_body
            || self.warned_max_payload.swap(max_payload, Ordering::Relaxed) == max_payload
        {
            return;
        }
        let effective = p.max_body();
        let allowance = tgpipe_shared::publish::HEADER_ALLOWANCE;
        if max_payload >= max_body {
            // Only the headers' reserve (the defaults: both 1 MiB): worth a line, not a warning.
            tracing::info!(
                max_body,
                max_payload,
                effective,
                "body limit lowered by {allowance} bytes for the headers to fit NATS's max_payload"
            );
        } else {
            tracing::warn!(
                max_body,
                max_payload,
                effective,
                "TGPIPE_MAX_BODY (--max-body) is over what the NATS server stores per message \
                 (its max_payload, less {allowance} bytes for headers): larger bodies are answered 413"
            );
        }
    }

    /// Readiness goes false for good: the process is shutting down, and the endpoint
    /// should leave the Service before the listener closes.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether shutdown began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
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
    if inner.readiness.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if !inner.publisher.is_connected() {
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
