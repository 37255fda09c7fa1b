//! [`BotBuilder`]: a [`Bot`] with non-default settings (its Bot API server, rate
//! limits and where they are kept, retries, request middleware, HTTP client), and the
//! HTTP client that many bots can share.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tgpipe_shared::BotId;

use crate::chain::{self, Middleware};
use crate::client::{Inner, base_url};
use crate::limiter::{self, Limiter};
use crate::{
    ApiNext, ApiRequest, ApiResult, Bot, BotError, DEFAULT_API_URL, InvalidToken,
    LoggingMiddleware, MetricsMiddleware, RateLimits, RequestMiddleware, RetryPolicy,
};

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

    /// Keeps the limits and pauses in this Redis, shared by every pod of the bot: a
    /// [`RedisConnection`](crate::RedisConnection), or a redis-rs `ConnectionManager`
    /// (which is never replaced when Redis stops answering; see
    /// [`RedisConnection`](crate::RedisConnection)'s `From`).
    #[cfg(feature = "redis")]
    pub fn redis(mut self, conn: impl Into<crate::RedisConnection>) -> Self {
        self.redis = Some(conn.into());
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
        Ok(self.redis(crate::RedisConnection::new(client, config)?))
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

impl Bot {
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
}
