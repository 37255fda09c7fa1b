//! Request middleware: what wraps every Bot API call, in one chain.
//!
//! A call goes through the chain in order (the built-ins first: metrics, then logging;
//! then the ones added with [`BotBuilder::middleware`](super::BotBuilder::middleware)),
//! then the rate limiter, then HTTP (with the `retry_after` and backoff retries). A
//! middleware sees the request and the answer's body, may change the request, answer
//! without calling on, or act after the call: the same model as the update middleware ([`crate::chain`]: `async fn(request, next)`,
//! composed once, when the bot is built).
//!
//! ```
//! use tgpipe_bot::chain::{BoxFuture, Middleware};
//! use tgpipe_bot::{ApiNext, ApiRequest, ApiResult, BotError};
//!
//! /// Refuses to send anything to one chat.
//! struct Quarantine(i64);
//!
//! impl Middleware<ApiRequest, ApiResult> for Quarantine {
//!     fn call(&self, request: ApiRequest, next: ApiNext) -> BoxFuture<'static, ApiResult> {
//!         if request.chat_id() == Some(self.0) {
//!             return Box::pin(async { Err(BotError::Forbidden("quarantined chat".into())) });
//!         }
//!         next.run(request)
//!     }
//! }
//!
//! let bot = tgpipe_bot::Bot::builder("123:TEST").middleware(Quarantine(13)).build().unwrap();
//! # let _ = bot;
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::BotError;
use super::input_file::{FormPart, Payload};
use crate::chain::{BoxFuture, Middleware, Next};

/// One Bot API call on its way out.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// The method (`sendMessage`).
    pub method: String,
    /// The body.
    pub payload: Payload,
    /// How long the HTTP request may take (the client's default when `None`); long
    /// polls need more than the poll's own timeout.
    pub timeout: Option<Duration>,
}

impl ApiRequest {
    /// A JSON request.
    pub fn json<P: serde::Serialize + ?Sized>(
        method: impl Into<String>,
        params: &P,
    ) -> Result<ApiRequest, BotError> {
        Ok(ApiRequest {
            method: method.into(),
            payload: Payload::json(params)?,
            timeout: None,
        })
    }

    /// A request with this body.
    pub fn new(method: impl Into<String>, payload: Payload) -> ApiRequest {
        ApiRequest {
            method: method.into(),
            payload,
            timeout: None,
        }
    }

    /// Sets the HTTP timeout of this call.
    pub fn with_timeout(mut self, timeout: Duration) -> ApiRequest {
        self.timeout = Some(timeout);
        self
    }

    /// The `chat_id` parameter when it is an integer (or a numeric string in a form).
    pub fn chat_id(&self) -> Option<i64> {
        match self.target()?.chat? {
            ChatRef::Id(id) => Some(id),
            ChatRef::Username => None,
        }
    }

    /// What the rate limiter needs to know: the chat addressed and whether the message
    /// is a paid broadcast. `None` if the body has no `chat_id`.
    pub(crate) fn target(&self) -> Option<Target> {
        match &self.payload {
            Payload::Json(body) => {
                #[derive(serde::Deserialize)]
                struct Probe {
                    chat_id: Option<serde_json::Value>,
                    #[serde(default)]
                    allow_paid_broadcast: bool,
                }
                let probe: Probe = serde_json::from_slice(body).ok()?;
                Some(Target {
                    chat: probe.chat_id.as_ref().and_then(ChatRef::of_value),
                    paid_broadcast: probe.allow_paid_broadcast,
                })
            }
            Payload::Multipart(parts) => {
                let text = |name: &str| {
                    parts.iter().find_map(|p| match p {
                        FormPart::Text { field, value } if field == name => Some(value.as_str()),
                        _ => None,
                    })
                };
                Some(Target {
                    chat: text("chat_id").map(ChatRef::of_str),
                    paid_broadcast: text("allow_paid_broadcast") == Some("true"),
                })
            }
        }
    }

    /// Points the request at another chat (after a group's migration). Returns whether
    /// it had a `chat_id` to change.
    pub(crate) fn retarget(&mut self, chat: i64) -> bool {
        match &mut self.payload {
            Payload::Json(body) => {
                let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice(body) else {
                    return false;
                };
                if !map.contains_key("chat_id") {
                    return false;
                }
                map.insert("chat_id".into(), chat.into());
                match serde_json::to_vec(&map) {
                    Ok(b) => {
                        *body = Bytes::from(b);
                        true
                    }
                    Err(_) => false,
                }
            }
            Payload::Multipart(parts) => {
                let mut changed = false;
                for p in parts.iter_mut() {
                    if let FormPart::Text { field, value } = p
                        && field == "chat_id"
                    {
                        *value = chat.to_string();
                        changed = true;
                    }
                }
                changed
            }
        }
    }
}

/// The chat a request addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChatRef {
    /// A numeric id.
    Id(i64),
    /// `@channelusername`.
    Username,
}

impl ChatRef {
    fn of_value(v: &serde_json::Value) -> Option<ChatRef> {
        match v {
            serde_json::Value::Number(n) => n.as_i64().map(ChatRef::Id),
            serde_json::Value::String(s) => Some(ChatRef::of_str(s)),
            _ => None,
        }
    }

    fn of_str(s: &str) -> ChatRef {
        s.trim().parse().map_or(ChatRef::Username, ChatRef::Id)
    }
}

/// What the limiter keys on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) chat: Option<ChatRef>,
    pub(crate) paid_broadcast: bool,
}

/// What a Bot API call comes to: the body of an `ok: true` answer, or the error.
pub type ApiResult = Result<Bytes, BotError>;

/// The rest of a call's chain after a middleware: further middleware, the limiter, HTTP.
pub type ApiNext = Next<ApiRequest, ApiResult>;

/// Wraps every Bot API call: a [`chain::Middleware`](crate::chain::Middleware) of
/// [`ApiRequest`]s (see the module docs). Any
/// `Fn(ApiRequest, ApiNext) -> impl Future<Output = ApiResult>` is one:
///
/// ```
/// use tgpipe_bot::{ApiNext, ApiRequest, Bot};
///
/// let bot = Bot::builder("123:TEST")
///     .middleware(|request: ApiRequest, next: ApiNext| async move {
///         tracing::debug!(method = %request.method, "outgoing");
///         next.run(request).await
///     })
///     .build()
///     .unwrap();
/// # let _ = bot;
/// ```
pub trait RequestMiddleware: Middleware<ApiRequest, ApiResult> {}

impl<M: Middleware<ApiRequest, ApiResult>> RequestMiddleware for M {}

/// Built-in: `tgpipe_bot_api_calls_total{method,status}` and the latency histogram
/// `tgpipe_bot_api_call_duration_seconds{method}` (including the limiter's wait and
/// retries: what a handler experiences).
#[derive(Debug, Default, Clone, Copy)]
pub struct MetricsMiddleware;

impl Middleware<ApiRequest, ApiResult> for MetricsMiddleware {
    fn call(&self, request: ApiRequest, next: ApiNext) -> BoxFuture<'static, ApiResult> {
        Box::pin(Self::around(request, next))
    }
}

impl MetricsMiddleware {
    async fn around(request: ApiRequest, next: ApiNext) -> ApiResult {
        let method = request.method.clone();
        let started = Instant::now();
        let result = next.run(request).await;
        let status = match &result {
            Ok(_) => "ok",
            Err(e) => e.status_label(),
        };
        metrics::counter!("tgpipe_bot_api_calls_total", "method" => method.clone(), "status" => status)
            .increment(1);
        metrics::histogram!("tgpipe_bot_api_call_duration_seconds", "method" => method)
            .record(started.elapsed().as_secs_f64());
        result
    }
}

/// Built-in: one `debug` line per call (method, status, duration). Errors are logged
/// (once) where they are handled, so this stays at `debug`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoggingMiddleware;

impl Middleware<ApiRequest, ApiResult> for LoggingMiddleware {
    fn call(&self, request: ApiRequest, next: ApiNext) -> BoxFuture<'static, ApiResult> {
        Box::pin(Self::around(request, next))
    }
}

impl LoggingMiddleware {
    async fn around(request: ApiRequest, next: ApiNext) -> ApiResult {
        let method = request.method.clone();
        let started = Instant::now();
        let result = next.run(request).await;
        match &result {
            Ok(_) => {
                tracing::debug!(%method, elapsed_ms = started.elapsed().as_millis() as u64, "Bot API call")
            }
            Err(e) => {
                tracing::debug!(%method, elapsed_ms = started.elapsed().as_millis() as u64, error = %e, "Bot API call failed")
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_json_and_forms() {
        let r = ApiRequest::json(
            "sendMessage",
            &serde_json::json!({"chat_id": -5, "text": "x", "allow_paid_broadcast": true}),
        )
        .unwrap();
        assert_eq!(
            r.target(),
            Some(Target {
                chat: Some(ChatRef::Id(-5)),
                paid_broadcast: true
            })
        );
        let r = ApiRequest::json("sendMessage", &serde_json::json!({"chat_id": "@news"})).unwrap();
        assert_eq!(r.target().unwrap().chat, Some(ChatRef::Username));
        let r = ApiRequest::new(
            "sendPhoto",
            Payload::Multipart(vec![FormPart::Text {
                field: "chat_id".into(),
                value: "42".into(),
            }]),
        );
        assert_eq!(r.chat_id(), Some(42));
    }

    #[test]
    fn retarget_rewrites_chat_id() {
        let mut r = ApiRequest::json(
            "sendMessage",
            &serde_json::json!({"chat_id": -5, "text": "x"}),
        )
        .unwrap();
        assert!(r.retarget(-1005));
        assert_eq!(r.chat_id(), Some(-1005));
        let mut r = ApiRequest::json("getMe", &serde_json::json!({})).unwrap();
        assert!(!r.retarget(1));
    }
}
