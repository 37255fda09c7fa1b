//! The client: a [`Bot`] handle and its one call path ([`Bot::execute`]: a span, the
//! request middleware, then the limiter and HTTP with retries, in [`crate::retry`]),
//! one HTTP request and its answer read into a typed error, and every Bot API method
//! through [`frankenstein::AsyncTelegramApi`].

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tgpipe_shared::BotId;
use tracing::Instrument;

use crate::limiter::Limiter;
use crate::{ApiNext, ApiRequest, BotError, InputFile, InvalidToken, Payload, RetryPolicy};

pub(crate) struct Inner {
    pub(crate) token: String,
    pub(crate) id: BotId,
    pub(crate) api_url: String,
    /// `<api_url>/bot<token>`, parsed once: a call's URL is a clone of it with the
    /// method pushed as the last path segment, not a string parsed again per call
    /// (`None` when it does not parse as a base URL: then each call formats and parses
    /// it, and fails as it always did).
    pub(crate) base: Option<reqwest::Url>,
    pub(crate) client: reqwest::Client,
    pub(crate) username: OnceLock<String>,
    /// `getMe`'s answer, asked once (a failure is not kept: the next use asks again).
    pub(crate) me: tokio::sync::OnceCell<frankenstein::types::User>,
    /// The request middleware chain, composed once, ending in the limiter and HTTP.
    pub(crate) chain: ApiNext,
    pub(crate) limiter: Limiter,
    pub(crate) retry: RetryPolicy,
    pub(crate) request_timeout: Duration,
}

/// A bot: cheap to clone, shared by every handler.
#[derive(Clone)]
pub struct Bot(pub(crate) Arc<Inner>);

impl fmt::Debug for Bot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bot")
            .field("id", &self.0.id)
            .field("username", &self.0.username.get())
            .finish()
    }
}

/// `<api_url>/bot<token>` as a URL that can take a method as its next path segment.
pub(crate) fn base_url(api_url: &str, token: &str) -> Option<reqwest::Url> {
    let url = reqwest::Url::parse(&format!("{api_url}/bot{token}")).ok()?;
    // The token must stay one path segment ('/' or '?' in it would change the URL's
    // shape) and the URL must take a path; otherwise the per-call format is kept.
    let one_segment = url.path_segments()?.next_back() == Some(&*format!("bot{token}"));
    (one_segment && url.query().is_none() && url.fragment().is_none()).then_some(url)
}

#[derive(serde::Deserialize)]
struct Envelope<R> {
    ok: bool,
    result: Option<R>,
    error_code: Option<u16>,
    description: Option<String>,
    parameters: Option<Parameters>,
}

#[derive(serde::Deserialize)]
struct Parameters {
    retry_after: Option<u64>,
    migrate_to_chat_id: Option<i64>,
}

/// One HTTP attempt's failure, and whether sending again is safe.
pub(crate) struct Failed {
    pub(crate) error: BotError,
    /// The request never reached Telegram (connection refused): sending again cannot
    /// duplicate a message.
    pub(crate) not_sent: bool,
}

impl From<BotError> for Failed {
    fn from(error: BotError) -> Failed {
        Failed {
            error,
            not_sent: false,
        }
    }
}

impl Bot {
    /// A bot with this token, talking to Telegram, with the default limits (in
    /// process) and retries.
    pub fn new(token: impl Into<String>) -> Result<Bot, InvalidToken> {
        Bot::builder(token).build()
    }

    /// A bot talking to another Bot API server (a local one, or a stand-in).
    pub fn with_api_url(token: impl Into<String>, api_url: &str) -> Result<Bot, InvalidToken> {
        Bot::builder(token).api_url(api_url).build()
    }

    /// The bot's id.
    pub fn id(&self) -> BotId {
        self.0.id
    }

    /// The bot's username, once known ([`Bot::me`] or [`Bot::set_username`]). The
    /// `Command` filter asks [`Bot::me`] itself the first time a command mentions a bot.
    pub fn username(&self) -> Option<&str> {
        self.0.username.get().map(String::as_str)
    }

    /// Sets the username without asking Telegram (tests, or when it is configured).
    pub fn set_username(&self, username: impl Into<String>) {
        let _ = self.0.username.set(username.into());
    }

    /// Calls a Bot API method with JSON parameters and decodes its `result`.
    pub async fn call<P: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, BotError> {
        let body = self.execute(ApiRequest::json(method, params)?).await?;
        decode(&body)
    }

    /// Calls a method that uploads files: multipart if any file is an upload, JSON if
    /// they are all URLs or `file_id`s.
    pub async fn call_with_files<P: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
        files: Vec<(String, InputFile)>,
    ) -> Result<R, BotError> {
        let payload = Payload::with_files(params, files).await?;
        let body = self.execute(ApiRequest::new(method, payload)).await?;
        decode(&body)
    }

    /// The one call path: span, middleware, limiter, HTTP with retries. Returns the
    /// body of an HTTP 200 answer (Telegram's `ok: true` envelope, not parsed here:
    /// the caller decodes it once).
    pub async fn execute(&self, request: ApiRequest) -> Result<Bytes, BotError> {
        let span = tracing::info_span!(
            "bot_api",
            otel.kind = "client",
            otel.name = %request.method,
            otel.status_code = tracing::field::Empty,
            bot = %self.0.id,
            method = %request.method,
            status = tracing::field::Empty
        );
        async move {
            let result = self.0.chain.clone().run(request).await;
            let status = match &result {
                Ok(_) => "ok",
                Err(e) => e.status_label(),
            };
            let span = tracing::Span::current();
            span.record("status", status);
            if result.is_err() {
                span.record("otel.status_code", "ERROR");
            }
            result
        }
        .instrument(span)
        .await
    }

    /// The URL a call of `method` goes to.
    #[cfg(test)]
    fn method_url(&self, method: &str) -> String {
        let mut url = self.0.base.clone().expect("a base URL");
        url.path_segments_mut().expect("a base").push(method);
        url.into()
    }

    /// One HTTP request.
    pub(crate) async fn send_once(&self, request: &ApiRequest) -> Result<Bytes, Failed> {
        let mut builder = match &self.0.base {
            Some(base) => {
                let mut url = base.clone();
                if let Ok(mut path) = url.path_segments_mut() {
                    path.push(&request.method);
                }
                self.0.client.post(url)
            }
            None => self.0.client.post(format!(
                "{}/bot{}/{}",
                self.0.api_url, self.0.token, request.method
            )),
        };
        builder = builder.timeout(request.timeout.unwrap_or(self.0.request_timeout));
        let builder = match &request.payload {
            Payload::Json(body) => builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone()),
            Payload::Multipart(parts) => builder.multipart(Payload::form(parts)),
        };
        // `without_url`: the URL holds the token.
        let network = |e: reqwest::Error| Failed {
            not_sent: e.is_connect(),
            error: BotError::Network(e.without_url().to_string()),
        };
        let response = builder.send().await.map_err(network)?;
        let status = response.status().as_u16();
        let retry_after_header = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = response.bytes().await.map_err(network)?;
        // Telegram answers every failure with its error code as the HTTP status: a 200
        // is `ok: true`, and its body is read once, by the caller's decoding.
        if status == 200 {
            return Ok(body);
        }
        let head: Envelope<serde::de::IgnoredAny> = match serde_json::from_slice(&body) {
            Ok(h) => h,
            // Not Telegram's envelope: a proxy's error page, a truncated answer.
            Err(e) => {
                return Err(match status {
                    429 => {
                        BotError::RetryAfter(Duration::from_secs(retry_after_header.unwrap_or(1)))
                    }
                    500..=599 => BotError::Server(status),
                    _ => BotError::InvalidResponse(format!("HTTP {status}: {e}")),
                }
                .into());
            }
        };
        if head.ok {
            return Ok(body);
        }
        Err(BotError::from_answer(
            head.error_code.unwrap_or(status),
            head.description.unwrap_or_default(),
            head.parameters.as_ref().and_then(|p| p.retry_after),
            head.parameters.and_then(|p| p.migrate_to_chat_id),
        )
        .into())
    }

    /// `getMe`, asked once per bot and kept (clones share it; a failure is not kept,
    /// so the next call asks again). Its username is what the `Command` filter checks a
    /// mention (`/start@my_bot`) against; the runtime may call this at start, else the
    /// first command with a mention does.
    pub async fn me(&self) -> Result<frankenstein::types::User, BotError> {
        let me = self
            .0
            .me
            .get_or_try_init(|| async {
                self.call::<_, frankenstein::types::User>("getMe", &serde_json::json!({}))
                    .await
            })
            .await?;
        if let Some(u) = &me.username {
            self.set_username(u.clone());
        }
        Ok(me.clone())
    }

    /// The username, asking [`Bot::me`] if it is not known yet. A failed `getMe` is
    /// logged (WARN) and gives `None`.
    pub async fn fetch_username(&self) -> Option<&str> {
        if self.username().is_none()
            && let Err(e) = self.me().await
        {
            tracing::warn!(bot = %self.0.id, error = %e, "getMe failed: commands that mention a bot cannot be matched yet");
        }
        self.username()
    }

    /// `sendMessage` with plain text.
    pub async fn send_text(
        &self,
        chat_id: i64,
        text: &str,
    ) -> Result<frankenstein::types::Message, BotError> {
        self.call(
            "sendMessage",
            &serde_json::json!({"chat_id": chat_id, "text": text}),
        )
        .await
    }
}

/// The `result` of an `ok: true` envelope.
fn decode<R: DeserializeOwned>(body: &[u8]) -> Result<R, BotError> {
    let envelope: Envelope<R> =
        serde_json::from_slice(body).map_err(|e| BotError::InvalidResponse(e.to_string()))?;
    if !envelope.ok {
        // A 200 that says otherwise (never seen from Telegram; a stand-in might).
        return Err(BotError::from_answer(
            envelope.error_code.unwrap_or(200),
            envelope.description.unwrap_or_default(),
            envelope.parameters.as_ref().and_then(|p| p.retry_after),
            envelope.parameters.and_then(|p| p.migrate_to_chat_id),
        ));
    }
    envelope
        .result
        .ok_or_else(|| BotError::InvalidResponse("`ok` without a `result`".into()))
}

/// Every Bot API method, through [`Bot`]'s single call path.
///
/// ```no_run
/// # async fn demo(bot: tgpipe_bot::Bot) -> Result<(), tgpipe_bot::BotError> {
/// use frankenstein::AsyncTelegramApi;
/// use frankenstein::methods::SendMessageParams;
///
/// let params = SendMessageParams::builder().chat_id(5).text("hi").build();
/// bot.send_message(&params).await?;
/// # Ok(()) }
/// ```
#[async_trait::async_trait]
impl frankenstein::AsyncTelegramApi for Bot {
    type Error = BotError;

    async fn request<Params, Output>(
        &self,
        method: &str,
        params: Option<Params>,
    ) -> Result<Output, BotError>
    where
        Params: Serialize + std::fmt::Debug + Send,
        Output: DeserializeOwned,
    {
        let request = match params {
            Some(p) => ApiRequest::json(method, &p)?,
            None => ApiRequest::new(method, Payload::Json(Bytes::from_static(b"{}"))),
        };
        let body = self.execute(request).await?;
        serde_json::from_slice(&body).map_err(|e| BotError::InvalidResponse(e.to_string()))
    }

    async fn request_with_form_data<Params, Output>(
        &self,
        method: &str,
        params: Params,
        files: Vec<(&str, std::path::PathBuf)>,
    ) -> Result<Output, BotError>
    where
        Params: Serialize + std::fmt::Debug + Send,
        Output: DeserializeOwned,
    {
        let files = files
            .into_iter()
            .map(|(field, path)| (field.to_owned(), InputFile::Path(path)))
            .collect();
        // Serialised before any await: `Params` need not be `Sync`.
        let params = serde_json::to_value(&params)
            .map_err(|e| BotError::InvalidRequest(format!("parameters: {e}")))?;
        let payload = Payload::with_files(&params, files).await?;
        let body = self.execute(ApiRequest::new(method, payload)).await?;
        serde_json::from_slice(&body).map_err(|e| BotError::InvalidResponse(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_goes_to_the_url_it_went_to_when_formatted_per_call() {
        for api in [
            "https://api.telegram.org",
            "http://127.0.0.1:8081",
            "http://bot-api.internal/prefix/",
        ] {
            let bot = Bot::with_api_url("123:AA-b_c", api).unwrap();
            for method in ["sendMessage", "getUpdates", "answerCallbackQuery"] {
                assert_eq!(
                    bot.method_url(method),
                    format!("{}/bot123:AA-b_c/{method}", api.trim_end_matches('/')),
                );
            }
        }
        // Not a base URL: every call formats its URL, as before.
        assert!(base_url("not a url", "123:AA").is_none());
        assert!(base_url("http://h", "123:a/b").is_none());
        assert!(base_url("http://h", "123:a?b").is_none());
    }

    #[test]
    fn a_reply_is_decoded_once_and_an_ok_false_body_is_an_error() {
        let user: serde_json::Value =
            decode(br#"{"ok":true,"result":{"id":1,"is_bot":true}}"#).unwrap();
        assert_eq!(user["id"], 1);
        let e = decode::<serde_json::Value>(
            br#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            BotError::BadRequest("Bad Request: chat not found".into())
        );
        let e = decode::<serde_json::Value>(
            br#"{"ok":false,"error_code":429,"description":"Too Many Requests","parameters":{"retry_after":7}}"#,
        )
        .unwrap_err();
        assert_eq!(e, BotError::RetryAfter(Duration::from_secs(7)));
        assert!(matches!(
            decode::<serde_json::Value>(b"<html>"),
            Err(BotError::InvalidResponse(_))
        ));
        assert!(matches!(
            decode::<serde_json::Value>(br#"{"ok":true}"#),
            Err(BotError::InvalidResponse(_))
        ));
    }
}
