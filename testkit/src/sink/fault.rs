//! Faults queued for particular calls: the next `sendMessage` answers 429, the next
//! `getUpdates` is slow, the next call of any method gets a body that is not JSON.
//!
//! Where [`SinkConfig`](super::SinkConfig) injects faults at a rate (for load tests), a
//! queue makes one exact answer happen once, which is what a client's tests need: each
//! queued fault answers one call of its method (or of any method, for `"*"`), in order;
//! a fault queued for a chat answers only a call addressed to that chat (`chat_id`).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use tgpipe_testkit::sink::{Fault, Sink, SinkConfig};
//!
//! let sink = Sink::start(SinkConfig::default()).await?;
//! sink.push_fault("sendMessage", Fault::retry_after(2));
//! sink.push_fault("*", Fault::server(502));
//! // Only chat 42's next reply waits 28 s; other chats are answered at once.
//! sink.push_chat_fault("sendMessage", 42, Fault::slow(std::time::Duration::from_secs(28)));
//! # Ok(()) }
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One queued answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// An error in Telegram's envelope.
    Error {
        /// `error_code` and the HTTP status.
        code: u16,
        /// `description`.
        description: String,
        /// `parameters` (`retry_after`, `migrate_to_chat_id`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parameters: Option<Value>,
    },
    /// Waits, then answers as usual.
    Slow {
        /// The delay in milliseconds.
        ms: u64,
    },
    /// Answers a body that is not Telegram's envelope.
    Malformed {
        /// The HTTP status.
        status: u16,
        /// The body.
        body: String,
    },
}

impl Fault {
    /// 429 with `retry_after`.
    pub fn retry_after(secs: u64) -> Fault {
        Fault::Error {
            code: 429,
            description: format!("Too Many Requests: retry after {secs}"),
            parameters: Some(json!({"retry_after": secs})),
        }
    }

    /// 400 with `migrate_to_chat_id`.
    pub fn migrate(to: i64) -> Fault {
        Fault::Error {
            code: 400,
            description: "Bad Request: group chat was upgraded to a supergroup chat".into(),
            parameters: Some(json!({"migrate_to_chat_id": to})),
        }
    }

    /// 403 (the user blocked the bot).
    pub fn forbidden() -> Fault {
        Fault::error(403, "Forbidden: bot was blocked by the user")
    }

    /// 400 with this description.
    pub fn bad_request(what: &str) -> Fault {
        Fault::error(400, &format!("Bad Request: {what}"))
    }

    /// 404.
    pub fn not_found() -> Fault {
        Fault::error(404, "Not Found")
    }

    /// 409, as when `getUpdates` is called while a webhook is set.
    pub fn conflict() -> Fault {
        Fault::error(
            409,
            "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
        )
    }

    /// A 5xx in Telegram's envelope.
    pub fn server(code: u16) -> Fault {
        Fault::error(code, "Internal Server Error")
    }

    /// Any error code.
    pub fn error(code: u16, description: &str) -> Fault {
        Fault::Error {
            code,
            description: description.to_owned(),
            parameters: None,
        }
    }

    /// An answer delayed by `delay`.
    pub fn slow(delay: Duration) -> Fault {
        Fault::Slow {
            ms: delay.as_millis() as u64,
        }
    }

    /// A 200 whose body is not JSON.
    pub fn malformed() -> Fault {
        Fault::Malformed {
            status: 200,
            body: "<html>not the Bot API</html>".into(),
        }
    }

    /// A proxy's error page: this status, an HTML body.
    pub fn proxy_error(status: u16) -> Fault {
        Fault::Malformed {
            status,
            body: format!("<html><body><h1>{status}</h1></body></html>"),
        }
    }
}

/// A queued fault and the method it is for (`"*"`: any), optionally for one chat's
/// calls only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedFault {
    /// The method, case-insensitive, or `"*"`.
    pub method: String,
    /// Only for calls whose `chat_id` is this chat (see
    /// [`SinkHandle::push_chat_fault`](super::SinkHandle::push_chat_fault)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<i64>,
    /// The answer.
    pub fault: Fault,
}
