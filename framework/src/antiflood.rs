//! Anti-flood: a middleware that drops the updates of a user (or a chat) over a rate.
//!
//! The count is kept per process, or in Redis so that every pod of a bot shares it
//! (grammY's ratelimiter): a user cannot spread a flood over the pods. Over the limit,
//! an update is dropped silently or with one reply per window.
//!
//! ```
//! use std::time::Duration;
//! use tgpipe::antiflood::AntiFlood;
//! use tgpipe::prelude::*;
//!
//! let flood = AntiFlood::per_user(5, Duration::from_secs(10)).reply("Slow down, please.");
//! let dispatcher = Dispatcher::builder(Router::new("main"))
//!     .update_middleware(flood)
//!     .build()
//!     .unwrap();
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::context::Context;
use crate::handler::BoxFuture;
use crate::middleware::{MiddlewareResult, Next, Outcome, chain};

/// Whose updates are counted together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodScope {
    /// Each user, in every chat.
    User,
    /// Each chat, whoever writes.
    Chat,
}

/// The anti-flood middleware: at most `limit` updates per `window` for each user (or
/// chat); the window starts at the first update counted.
#[derive(Clone)]
pub struct AntiFlood(Arc<Inner>);

struct Inner {
    scope: FloodScope,
    limit: u64,
    window: Duration,
    reply: Option<String>,
    counter: Counter,
}

enum Counter {
    /// Per process: (bot, id) -> (count, window start).
    Memory(Mutex<HashMap<(u64, i64), (u64, Instant)>>),
    #[cfg(feature = "redis")]
    Redis(tgpipe_bot::RedisConnection, redis::Script),
}

/// Counts an update and starts the key's window with its first one (`PX` only when the
/// key is new), in one step: pods' counts add up and none resets another's window.
#[cfg(feature = "redis")]
const HIT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
";

impl std::fmt::Debug for AntiFlood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AntiFlood")
            .field("scope", &self.0.scope)
            .field("limit", &self.0.limit)
            .field("window", &self.0.window)
            .finish_non_exhaustive()
    }
}

impl AntiFlood {
    /// At most `limit` updates of each user per `window`, counted in this process.
    pub fn per_user(limit: u64, window: Duration) -> AntiFlood {
        AntiFlood::new(FloodScope::User, limit, window)
    }

    /// At most `limit` updates of each chat per `window`, counted in this process.
    pub fn per_chat(limit: u64, window: Duration) -> AntiFlood {
        AntiFlood::new(FloodScope::Chat, limit, window)
    }

    fn new(scope: FloodScope, limit: u64, window: Duration) -> AntiFlood {
        AntiFlood(Arc::new(Inner {
            scope,
            limit,
            window,
            reply: None,
            counter: Counter::Memory(Mutex::new(HashMap::new())),
        }))
    }

    fn with(self, f: impl FnOnce(&mut Inner)) -> AntiFlood {
        let mut inner = Arc::try_unwrap(self.0).unwrap_or_else(|shared| Inner {
            scope: shared.scope,
            limit: shared.limit,
            window: shared.window,
            reply: shared.reply.clone(),
            counter: Counter::Memory(Mutex::new(HashMap::new())),
        });
        f(&mut inner);
        AntiFlood(Arc::new(inner))
    }

    /// Answers the first update over the limit in each window with `text` (the others
    /// are dropped silently, so a flood does not become the bot's flood).
    pub fn reply(self, text: impl Into<String>) -> AntiFlood {
        let text = text.into();
        self.with(|i| i.reply = Some(text))
    }

    /// Counts in Redis at `url`, shared by every process of the bot.
    #[cfg(feature = "redis")]
    pub async fn shared(self, url: &str) -> Result<AntiFlood, redis::RedisError> {
        let client = redis::Client::open(url)?;
        // As the FSM's storage: a slow Redis fails open quickly rather than stalling.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = tgpipe_bot::RedisConnection::connect(client, config).await?;
        Ok(self.with(|i| i.counter = Counter::Redis(conn, redis::Script::new(HIT))))
    }

    /// Counts one update of `id` for bot `bot`: how many there were in its window.
    pub async fn hit(&self, bot: u64, id: i64) -> Result<u64, crate::HandlerError> {
        let inner = &self.0;
        match &inner.counter {
            Counter::Memory(counts) => {
                let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let entry = counts.entry((bot, id)).or_insert((0, now));
                if now.duration_since(entry.1) >= inner.window {
                    *entry = (0, now);
                }
                entry.0 += 1;
                Ok(entry.0)
            }
            #[cfg(feature = "redis")]
            Counter::Redis(conn, script) => {
                let scope = match inner.scope {
                    FloodScope::User => "user",
                    FloodScope::Chat => "chat",
                };
                let key = format!("tgpipe:flood:{{{bot}:{scope}:{id}}}");
                let ms = u64::try_from(inner.window.as_millis()).unwrap_or(u64::MAX);
                let mut conn = conn.clone();
                let n: u64 = script
                    .key(key)
                    .arg(ms.max(1))
                    .invoke_async(&mut conn)
                    .await?;
                Ok(n)
            }
        }
    }
}

impl chain::Middleware<Context, MiddlewareResult> for AntiFlood {
    fn call(&self, cx: Context, next: Next) -> BoxFuture<'static, MiddlewareResult> {
        let id = match self.0.scope {
            FloodScope::User => cx.update().user_id,
            FloodScope::Chat => cx.update().chat_id,
        };
        let Some(id) = id else {
            return next.run(cx);
        };
        let this = self.clone();
        Box::pin(async move {
            let count = match this.hit(cx.bot().id().0, id).await {
                Ok(n) => n,
                // Fails open: a Redis outage must not silence the bot.
                Err(e) => {
                    tracing::warn!(error = %e, "anti-flood count failed; update let through");
                    return next.run(cx).await;
                }
            };
            if count <= this.0.limit {
                return next.run(cx).await;
            }
            metrics::counter!("tgpipe_antiflood_dropped_total").increment(1);
            if let (Some(text), Some(chat)) = (&this.0.reply, cx.update().chat_id)
                && count == this.0.limit + 1
            {
                cx.bot().send_text(chat, text).await?;
            }
            Ok(Outcome::Handled)
        })
    }
}
