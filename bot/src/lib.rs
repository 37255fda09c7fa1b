//! `tgpipe-bot`: the Bot API client of tgpipe.
//!
//! The [`Bot`] handle is a bot's identity and the one path every Bot API call takes; the
//! framework (`tgpipe`) hands it to handlers, and it can be used on its own.
//!
//! Every method, typed ([`frankenstein::AsyncTelegramApi`]) or by name ([`Bot::call`]),
//! becomes an [`ApiRequest`] and goes through [`Bot::execute`]: a tracing span, the
//! request middleware chain ([`middleware`]: metrics and logging built in, more can be
//! added), the rate limiter ([`limiter`]; with the `redis` feature and
//! `BotBuilder::redis_url`, in Redis so that all pods of a bot keep Telegram's limits
//! together, else in process), then HTTP with bounded retries: after a 429 the chat the
//! call went to (or, for a call to no chat, the whole bot) waits `retry_after` (every
//! pod: the pause is in Redis too), up to [`RetryPolicy::max_retry_after`]: a longer
//! pause is not waited out but returned as a transient [`BotError::RetryAfter`] with the
//! time left. 5xx and connection failures back off exponentially with jitter and send
//! again where that cannot repeat an effect ([`effects`]). Answers
//! become typed errors ([`BotError`]) that know whether they are transient.
//!
//! The token is part of the request URL only as Telegram requires; it is never logged,
//! and `Debug` prints the bot id alone.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tgpipe_bot::Bot;
//! use tgpipe_bot::{RateLimits, RetryPolicy};
//!
//! let bot = Bot::builder("123456:ABC-DEF")
//!     .api_url("http://127.0.0.1:8081")
//!     .limits(RateLimits { expected_pods: 4, ..RateLimits::default() })
//!     .retry(RetryPolicy { max_flood_retries: 2, ..RetryPolicy::default() })
//!     .build()?;
//! bot.send_text(5, "hello").await?;
//! # Ok(()) }
//! ```

pub mod chain;
mod class;
pub mod effects;
mod error;
mod helpers;
pub mod idle;
mod input_file;
pub mod limiter;
pub mod middleware;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tgpipe_shared::BotId;
use tracing::Instrument;

pub use class::ErrorClass;
pub use error::{BotError, ForbiddenReason, InvalidToken};
pub use helpers::{CallbackQueryExt, ChatActionSender, MediaGroup, MessageExt};
pub use input_file::{FormPart, InputFile, Payload};
pub use limiter::{Rate, RateLimits, is_limited_method};
pub use middleware::{
    ApiNext, ApiRequest, ApiResult, LoggingMiddleware, MetricsMiddleware, RequestMiddleware,
};

use chain::Middleware;
use limiter::Limiter;

/// The default Bot API base URL.
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";

/// How calls are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times a call is sent again after a 429 (each after the pause).
    pub max_flood_retries: u32,
    /// A 429 asking for a longer wait than this is not waited out here: the error goes
    /// to the handler (transient, so the runtime redelivers the update later) instead of
    /// holding the handler that long. The pause is set all the same, and a later call
    /// that would wait longer than this for a pause is refused at once with
    /// `BotError::RetryAfter(time left)`, without being sent.
    pub max_retry_after: Duration,
    /// How many times a call is sent again after a 5xx or a connection failure.
    pub max_server_retries: u32,
    /// The first backoff; each retry doubles it, up to `max_backoff`, with full jitter.
    pub backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// After `migrate_to_chat_id`, send the same call once more to the new supergroup
    /// (the error is returned when this is off, or when the retry fails too).
    pub follow_migration: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_flood_retries: 3,
            max_retry_after: Duration::from_secs(30),
            max_server_retries: 3,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            follow_migration: false,
        }
    }
}

impl RetryPolicy {
    /// No retries at all: every error goes straight to the caller.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_flood_retries: 0,
            max_server_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry number `attempt` (0-based): full jitter over an
    /// exponentially growing window, so that pods that failed together do not retry
    /// together.
    fn backoff(&self, attempt: u32) -> Duration {
        let window = self
            .backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_backoff);
        window.mul_f64(rand::random::<f64>())
    }
}

struct Inner {
    token: String,
    id: BotId,
    api_url: String,
    /// `<api_url>/bot<token>`, parsed once: a call's URL is a clone of it with the
    /// method pushed as the last path segment, not a string parsed again per call
    /// (`None` when it does not parse as a base URL: then each call formats and parses
    /// it, and fails as it always did).
    base: Option<reqwest::Url>,
    client: reqwest::Client,
    username: OnceLock<String>,
    /// `getMe`'s answer, asked once (a failure is not kept: the next use asks again).
    me: tokio::sync::OnceCell<frankenstein::types::User>,
    /// The request middleware chain, composed once, ending in the limiter and HTTP.
    chain: ApiNext,
    limiter: Limiter,
    retry: RetryPolicy,
    request_timeout: Duration,
}

/// A bot: cheap to clone, shared by every handler.
#[derive(Clone)]
pub struct Bot(Arc<Inner>);

impl fmt::Debug for Bot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bot")
            .field("id", &self.0.id)
            .field("username", &self.0.username.get())
            .finish()
    }
}

/// `<api_url>/bot<token>` as a URL that can take a method as its next path segment.
fn base_url(api_url: &str, token: &str) -> Option<reqwest::Url> {
    let url = reqwest::Url::parse(&format!("{api_url}/bot{token}")).ok()?;
    // The token must stay one path segment ('/' or '?' in it would change the URL's
    // shape) and the URL must take a path; otherwise the per-call format is kept.
    let one_segment = url.path_segments()?.next_back() == Some(&*format!("bot{token}"));
    (one_segment && url.query().is_none() && url.fragment().is_none()).then_some(url)
}

/// An HTTP client for Bot API calls, which any number of bots can share
/// ([`BotBuilder::http_client`]).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .unwrap_or_default()
}

/// Builds a [`Bot`] with non-default settings.
pub struct BotBuilder {
    token: String,
    api_url: String,
    limits: RateLimits,
    redis: Option<limiter::SharedState>,
    retry: RetryPolicy,
    middleware: Vec<Arc<dyn Middleware<ApiRequest, ApiResult>>>,
    default_middleware: bool,
    request_timeout: Duration,
    http: Option<reqwest::Client>,
}

impl fmt::Debug for BotBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BotBuilder")
            .field("api_url", &self.api_url)
            .field("limits", &self.limits)
            .field("redis", &self.redis.is_some())
            .field("retry", &self.retry)
            .field("middleware", &self.middleware.len())
            .finish_non_exhaustive()
    }
}

impl BotBuilder {
    /// The Bot API server (a local one, or a stand-in).
    pub fn api_url(mut self, url: &str) -> Self {
        url.trim_end_matches('/').clone_into(&mut self.api_url);
        self
    }

    /// The rate limits.
    pub fn limits(mut self, limits: RateLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Keeps the limits and pauses in this Redis, shared by every pod of the bot.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, conn: redis::aio::ConnectionManager) -> Self {
        self.redis = Some(conn);
        self
    }

    /// Keeps the limits in the Redis at `url`, connecting lazily (a Redis that is down
    /// at start-up only means limiting in process until it is up). Call it inside a
    /// Tokio runtime: the connection's task runs there.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use tgpipe_bot::Bot;
    ///
    /// let bot = Bot::builder("123456:ABC-DEF").redis_url("redis://127.0.0.1:6379")?.build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis_url(self, url: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        // Short timeouts: the limiter falls back to its in-process state rather than
        // holding a call while Redis is unreachable.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(250)))
            .set_response_timeout(Some(Duration::from_millis(250)))
            .set_number_of_retries(1);
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(self.redis(conn))
    }

    /// How calls are retried.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Adds a request middleware (after the ones added before).
    pub fn middleware(mut self, m: impl RequestMiddleware) -> Self {
        self.middleware.push(Arc::new(m));
        self
    }

    /// Leaves out the built-in metrics and logging middleware.
    pub fn without_default_middleware(mut self) -> Self {
        self.default_middleware = false;
        self
    }

    /// The HTTP timeout of a call (a `getUpdates` long poll sets its own).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sends the calls through this HTTP client, whose connection pool other bots may
    /// share (one pool per Bot API host, not one per bot); limits stay per bot. The
    /// request timeout is applied per call.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// The bot.
    pub fn build(self) -> Result<Bot, InvalidToken> {
        let id = BotId::from_token(&self.token).ok_or(InvalidToken)?;
        let client = self.http.unwrap_or_else(http_client);
        let mut middleware: Vec<Arc<dyn Middleware<ApiRequest, ApiResult>>> = Vec::new();
        if self.default_middleware {
            middleware.push(Arc::new(MetricsMiddleware));
            middleware.push(Arc::new(LoggingMiddleware));
        }
        middleware.extend(self.middleware);
        let base = base_url(&self.api_url, &self.token);
        let middleware: Arc<[_]> = middleware.into();
        Ok(Bot(Arc::new_cyclic(|me: &std::sync::Weak<Inner>| {
            // The chain's end calls back into the bot it belongs to; a weak handle, so
            // that the chain does not keep its own bot alive.
            let me = me.clone();
            let transport: chain::Endpoint<ApiRequest, ApiResult> = Arc::new(move |request| {
                let bot = me.upgrade().map(Bot);
                Box::pin(async move {
                    match bot {
                        Some(bot) => bot.transport(request).await,
                        None => Err(BotError::InvalidRequest("the bot was dropped".into())),
                    }
                })
            });
            Inner {
                token: self.token,
                id,
                base,
                api_url: self.api_url,
                client,
                username: OnceLock::new(),
                me: tokio::sync::OnceCell::new(),
                chain: ApiNext::new(middleware, transport),
                limiter: Limiter::new(id, self.limits, self.redis),
                retry: self.retry,
                request_timeout: self.request_timeout,
            }
        })))
    }
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
struct Failed {
    error: BotError,
    /// The request never reached Telegram (connection refused): sending again cannot
    /// duplicate a message.
    not_sent: bool,
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

    /// Starts building a bot with other settings.
    pub fn builder(token: impl Into<String>) -> BotBuilder {
        BotBuilder {
            token: token.into(),
            api_url: DEFAULT_API_URL.to_owned(),
            limits: RateLimits::default(),
            redis: None,
            retry: RetryPolicy::default(),
            middleware: Vec::new(),
            default_middleware: true,
            // Telegram answers in well under a second; 30 s covers large uploads.
            request_timeout: Duration::from_secs(30),
            http: None,
        }
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

    /// After the middleware: the limiter, HTTP, and the retries.
    pub(crate) async fn transport(&self, mut request: ApiRequest) -> Result<Bytes, BotError> {
        let policy = &self.0.retry;
        // The method's class and the chat it addresses, read once for the whole call.
        let limited = is_limited_method(&request.method);
        let mut target = if limited { request.target() } else { None };
        let (mut flood_retries, mut server_retries, mut migrated) = (0, 0, false);
        loop {
            if let Err(left) = self
                .0
                .limiter
                .acquire(limited, target, policy.max_retry_after)
                .await
            {
                // Paused for longer than a call may wait: refused here, with the time
                // left, so the update goes back to the stream instead of holding on.
                retried_not(&request.method);
                return Err(BotError::RetryAfter(left));
            }
            let failed = match self.send_once(&request).await {
                Ok(body) => return Ok(body),
                Err(f) => f,
            };
            match failed.error {
                BotError::RetryAfter(wait) => {
                    // Pause the scope Telegram refused (the chat the call went to, else
                    // the bot) in every pod, whether or not this call is sent again.
                    let chat = limiter::chat_of(target.or_else(|| request.target()));
                    self.0.limiter.pause(chat, wait).await;
                    if flood_retries >= policy.max_flood_retries || wait > policy.max_retry_after {
                        return Err(failed.error);
                    }
                    flood_retries += 1;
                    retried(&request.method, "429");
                    // The next `acquire` waits the pause out.
                }
                // Sent again only where that cannot repeat an effect: the failure
                // proves the call was not made (a refused connection), or the method
                // changes nothing when repeated (`effects::replay_of`).
                BotError::Server(_) | BotError::Network(_)
                    if server_retries < policy.max_server_retries
                        && (failed.not_sent
                            || effects::replay_of(&request.method)
                                == effects::Replay::Idempotent) =>
                {
                    idle::idle(tokio::time::sleep(policy.backoff(server_retries))).await;
                    server_retries += 1;
                    retried(&request.method, failed.error.status_label());
                }
                BotError::MigrateToChat(chat)
                    if policy.follow_migration && !migrated && request.retarget(chat) =>
                {
                    migrated = true;
                    target = target.map(|t| middleware::Target {
                        chat: Some(middleware::ChatRef::Id(chat)),
                        ..t
                    });
                    retried(&request.method, "migrate");
                }
                // Money or a gift, and Telegram may have acted: never sent again.
                error @ (BotError::Server(_) | BotError::Network(_))
                    if !failed.not_sent
                        && effects::replay_of(&request.method) == effects::Replay::Costly =>
                {
                    return Err(BotError::Unconfirmed(format!(
                        "{}: {error}",
                        request.method
                    )));
                }
                error => return Err(error),
            }
        }
    }

    /// One HTTP request.
    /// The URL a call of `method` goes to.
    #[cfg(test)]
    fn method_url(&self, method: &str) -> String {
        let mut url = self.0.base.clone().expect("a base URL");
        url.path_segments_mut().expect("a base").push(method);
        url.into()
    }

    async fn send_once(&self, request: &ApiRequest) -> Result<Bytes, Failed> {
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

/// A call refused before it was sent, because a pause outlasts `max_retry_after`.
fn retried_not(method: &str) {
    metrics::counter!("tgpipe_bot_api_paused_refusals_total", "method" => method.to_owned())
        .increment(1);
}

fn retried(method: &str, reason: &'static str) {
    metrics::counter!("tgpipe_bot_api_retries_total", "method" => method.to_owned(), "reason" => reason)
        .increment(1);
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
