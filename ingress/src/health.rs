//! What makes the ingress ready, reported into the shared [`Readiness`] that
//! `/readyz` answers from (`tgpipe_shared::ops`, the same endpoints as the workers').
//!
//! Ready is "NATS connected, the update stream exists, and the bot registry (when on)
//! was read once or could not be for `SYNC_GRACE`". Probes arrive every few seconds from
//! every kubelet, so nothing is checked per probe: a background task refreshes the
//! checks every second and, when provisioning is on, re-creates a stream that went
//! missing (NATS started after the ingress, or was wiped). The same task says once when
//! the broker's `max_payload` lowers the body limit.

use std::sync::Arc;
use std::time::Duration;

use tgpipe_shared::ops::{Check, Readiness};
use tgpipe_shared::registry::Watching;
use tgpipe_shared::stream::{StreamSettings, provision_streams};

use crate::publish::Publisher;

/// The readiness checks' background task and what it needs.
#[derive(Debug)]
pub(crate) struct ReadinessTask {
    pub(crate) publisher: Publisher,
    pub(crate) stream: StreamSettings,
    pub(crate) provision: bool,
    pub(crate) max_body: usize,
    /// The registry's watch: the task owns it, so both stop together.
    pub(crate) registry: Option<Watching>,
}

struct Checks {
    nats: Check,
    stream: Check,
    registry: Check,
}

impl ReadinessTask {
    /// Starts checking every `every`; the task ends when the returned handle is aborted
    /// or the runtime stops. The readiness is false until the first round passes.
    pub(crate) fn spawn(self, every: Duration) -> (Arc<Readiness>, tokio::task::JoinHandle<()>) {
        let checks = Checks {
            nats: Check::new("NATS disconnected"),
            stream: Check::new("stream missing"),
            registry: Check::new("bot registry not read yet"),
        };
        let readiness = Arc::new(Readiness::new([
            checks.nats.clone(),
            checks.stream.clone(),
            checks.registry.clone(),
        ]));
        let task = tokio::spawn(async move {
            let (mut failing, mut warned_max_payload) = (false, 0);
            loop {
                self.check_body_limit(&mut warned_max_payload);
                checks.nats.set(self.publisher.is_connected());
                let stream_ok = self.check_stream(&mut failing).await;
                checks.stream.set(stream_ok);
                // Again: the stream check may have waited on a connection that dropped.
                checks.nats.set(self.publisher.is_connected());
                checks
                    .registry
                    .set(self.registry.as_ref().is_none_or(Watching::allows_ready));
                tokio::time::sleep(every).await;
            }
        });
        (readiness, task)
    }

    /// TGPIPE_MAX_BODY is lowered to what the broker can store (see `webhook`); say so
    /// once per server limit, naming the setting, when it bites. `warned` is the
    /// broker's max_payload last warned about (0: none yet).
    fn check_body_limit(&self, warned: &mut usize) {
        let (p, max_body) = (&self.publisher, self.max_body);
        if !p.is_connected() {
            return;
        }
        let max_payload = p.max_payload();
        if p.max_body() >= max_body || std::mem::replace(warned, max_payload) == max_payload {
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

    /// Whether the update stream is there (created first when missing and provisioning
    /// is on). `failing` keeps the provisioning error to one line per failure streak.
    async fn check_stream(&self, failing: &mut bool) -> bool {
        let (p, stream) = (&self.publisher, &self.stream);
        if !p.is_connected() {
            return false;
        }
        let js = p.jetstream();
        if js.get_stream(&stream.name).await.is_ok() {
            *failing = false;
            return true;
        }
        if !self.provision {
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
}
