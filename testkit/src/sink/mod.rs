//! The Bot API stand-in: an HTTP server that answers Bot API methods the way Telegram
//! does and records every call.
//!
//! Tests, the local stack and the benchmarks point `TGPIPE_API_URL` at it. It is a peer
//! that speaks the real protocol (`{api}/bot<token>/<method>`, JSON, urlencoded, query
//! string and multipart bodies, Telegram's `{"ok":...}` envelope with `error_code`,
//! `description` and `parameters`), not a mock of our own client, so whatever client
//! talks to it would talk to Telegram the same way. Faults can be injected at a rate
//! (latency, 5xx errors, 429 with `retry_after`, `migrate_to_chat_id`) or queued for
//! exact calls ([`Fault`]: any error, a slow answer, a body that is not JSON), through
//! the handle or `POST /_sink/faults`. `getUpdates` long-polls: with a `timeout` it
//! waits for an update to be queued.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use tgpipe_testkit::sink::{Sink, SinkConfig};
//!
//! let sink = Sink::start(SinkConfig::default()).await?;
//! let url = format!("{}/bot123:TEST/sendMessage", sink.url());
//! reqwest::Client::new().post(url).json(&serde_json::json!({"chat_id": 5, "text": "hi"}))
//!     .send().await.unwrap();
//! let calls = sink.wait_for_calls(1, std::time::Duration::from_secs(5)).await;
//! assert_eq!(calls[0].method, "sendMessage");
//! # Ok(()) }
//! ```

mod fault;
mod methods;
mod record;
mod server;

pub use fault::{Fault, QueuedFault};
pub use record::{RecordedCall, RecordedFile, SinkStats};
pub use server::{Sink, SinkConfig, SinkHandle};
