//! Publishing one update to JetStream and waiting for its acknowledgement.
//!
//! A `200` to Telegram promises that the update is stored, so the ingress answers only
//! after the PubAck (and a poller confirms an update to Telegram only after it). Any broker failure (disconnected, no stream, no answer in time) is a
//! `503`: Telegram retries, and the retry is de-duplicated by `Nats-Msg-Id` should the
//! first write have landed after all.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;

/// Bytes of a message's budget kept for its headers (`Nats-Msg-Id`, `Tg-*`,
/// `traceparent`, a `tracestate` of up to 512 bytes): the largest body the broker stores
/// is its `max_payload` minus this.
pub const HEADER_ALLOWANCE: usize = 1024;

/// Why a publish failed. Every variant but [`PublishError::TooLarge`] means "not known
/// to be stored, try again".
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The client is not connected to NATS right now.
    #[error("not connected to NATS")]
    Disconnected,
    /// JetStream refused or failed the write.
    #[error("JetStream did not store the update: {0}")]
    Rejected(#[source] crate::BoxError),
    /// Body and headers exceed the server's `max_payload`: this message can never be
    /// stored, so retrying is pointless (the ingress answers 413, not 503).
    #[error(
        "the update ({size} bytes with headers) is over the NATS server's max_payload of {max_payload} bytes"
    )]
    TooLarge {
        /// Body plus headers.
        size: usize,
        /// The server's limit.
        max_payload: usize,
    },
    /// No acknowledgement within the publish timeout.
    #[error("no acknowledgement from JetStream within {0:?}")]
    Timeout(Duration),
}

/// Publishes updates through one NATS connection.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    timeout: Duration,
}

impl Publisher {
    /// A publisher on `client` that waits at most `timeout` for each PubAck.
    pub fn new(client: async_nats::Client, timeout: Duration) -> Publisher {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(timeout);
        Publisher {
            client,
            js,
            timeout,
        }
    }

    /// The JetStream context (for readiness checks and provisioning).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The server's `max_payload` as last announced (async-nats's default before the
    /// first connection).
    pub fn max_payload(&self) -> usize {
        self.client.max_payload()
    }

    /// The largest body the broker can store with its headers: `max_payload` minus
    /// [`HEADER_ALLOWANCE`].
    pub fn max_body(&self) -> usize {
        self.max_payload().saturating_sub(HEADER_ALLOWANCE)
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Publishes and waits for the acknowledgement: at most the timeout for the write
    /// into the client's buffer, then at most the timeout for the PubAck. Returns
    /// whether JetStream saw the message id before (a duplicate, stored once).
    pub async fn publish(
        &self,
        subject: String,
        headers: async_nats::HeaderMap,
        body: Bytes,
    ) -> Result<bool, PublishError> {
        // Fail fast while disconnected instead of queueing in the client's buffer:
        // Telegram will retry, and the answer comes now rather than after the timeout.
        if !self.is_connected() {
            return Err(PublishError::Disconnected);
        }
        let size = header_len(&headers) + body.len();
        // Two steps, one timer each at most: the write into the client's buffer (ready at
        // once unless the buffer is full, and a `Timeout` arms its timer only when the
        // future it wraps is pending), then the PubAck, which the JetStream context
        // bounds by the same timeout. A timer around both would be armed on every
        // publish, beside the context's own.
        let future = tokio::time::timeout(
            self.timeout,
            self.js.publish_with_headers(subject, headers, body),
        )
        .await
        .map_err(|_| PublishError::Timeout(self.timeout))?
        .map_err(|e| self.failed(e, size))?;
        let ack = future.await.map_err(|e| self.failed(e, size))?;
        Ok(ack.duplicate)
    }

    fn failed(&self, e: jetstream::context::PublishError, size: usize) -> PublishError {
        match e.kind() {
            jetstream::context::PublishErrorKind::MaxPayloadExceeded => PublishError::TooLarge {
                size,
                max_payload: self.max_payload(),
            },
            jetstream::context::PublishErrorKind::TimedOut => PublishError::Timeout(self.timeout),
            _ => PublishError::Rejected(e.into()),
        }
    }

    /// Sends everything buffered (at shutdown), waiting at most `limit`. Every answered
    /// request was already acknowledged, so a flush that cannot finish loses nothing;
    /// without the limit it would wait forever for a broker that is gone (async-nats
    /// waits for a reconnection), and the pod would never exit.
    pub async fn flush(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.client.flush()).await;
    }
}

/// The serialized size of a header block, as the server counts it against `max_payload`
/// (`NATS/1.0\r\n`, each `<name>: <value>\r\n`, then `\r\n`).
fn header_len(headers: &async_nats::HeaderMap) -> usize {
    headers
        .iter()
        .flat_map(|(name, values)| values.iter().map(move |v| (name, v)))
        .map(|(name, value)| AsRef::<str>::as_ref(name).len() + 2 + value.as_str().len() + 2)
        .sum::<usize>()
        + 12
}
