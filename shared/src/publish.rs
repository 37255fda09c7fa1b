//! Publishing one update to JetStream and waiting for its acknowledgement.
//!
//! A `200` to Telegram promises that the update is stored, so the ingress answers only
//! after the PubAck (and a poller confirms an update to Telegram only after it). Any broker failure (disconnected, no stream, no answer in time) is a
//! `503`: Telegram retries, and the retry is de-duplicated by `Nats-Msg-Id` should the
//! first write have landed after all.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;

/// Why a publish failed. Every variant means "not known to be stored".
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The client is not connected to NATS right now.
    #[error("not connected to NATS")]
    Disconnected,
    /// JetStream refused or failed the write.
    #[error("JetStream did not store the update: {0}")]
    Rejected(String),
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

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Publishes and waits for the acknowledgement. Returns whether JetStream saw the
    /// message id before (a duplicate, stored once).
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
        let ack = async {
            let future = self
                .js
                .publish_with_headers(subject, headers, body)
                .await
                .map_err(|e| PublishError::Rejected(e.to_string()))?;
            future
                .await
                .map_err(|e| PublishError::Rejected(e.to_string()))
        };
        match tokio::time::timeout(self.timeout, ack).await {
            Ok(Ok(ack)) => Ok(ack.duplicate),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PublishError::Timeout(self.timeout)),
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
