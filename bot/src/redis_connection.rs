//! [`RedisConnection`]: a Redis connection that is replaced when Redis stops answering.
//!
//! redis-rs's `ConnectionManager` reconnects when a connection is dropped or garbled, not
//! when answers stop: a Redis gone without an RST (a pod moved behind a stable Service
//! address, a frozen server, a black-holing proxy) times every call out on the same dead
//! socket until TCP gives up, which it never does while the peer's kernel still ACKs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};

/// A shared Redis connection (a redis-rs `ConnectionManager`) that is put aside for a
/// fresh one when a call timed out and nothing was answered on it since that call was
/// sent. Cloning is cheap; clones share the connection.
///
/// Why this rule and not "reconnect on every timeout": a slow Redis that still answers
/// within the response timeout never causes a reconnect, and neither does a call that
/// timed out while its connection answered others (Redis is there; a new connection
/// would only wait its turn). A connection that answered nothing for a whole response
/// timeout (Redis gone, frozen, or busy with one command or batch longer than that) is
/// dead to its callers, whatever the reason. The replacement is single-flight:
/// only the connection the timed-out call used is swapped out (compare-and-swap), so
/// a hundred calls failing on one dead connection make one new connection, and the dead
/// one is dropped (its socket closed) once its last call is over. A Redis that stays
/// silent (frozen, or slower than the response timeout for everything) gets at most one
/// new connection per timeout (response or connect) and pod.
///
/// Calls whose caller gives up first (a `tokio::time::timeout` around the call) still
/// count: the call is finished in the background, so its answer or its timeout is seen.
///
/// Besides the replacement, the connection behaves as a `ConnectionManager` (a dropped
/// connection is reconnected in the background, with its config's retries).
///
/// ```no_run
/// # async fn demo() -> redis::RedisResult<()> {
/// use std::time::Duration;
/// use redis::aio::ConnectionManagerConfig;
/// use tgpipe_bot::RedisConnection;
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let config =
///     ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_millis(500)));
/// let mut redis = RedisConnection::connect(client, config).await?;
/// let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut redis).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisConnection {
    shared: Arc<Shared>,
}

struct Shared {
    /// How to make the next connection: `None` for one made from a `ConnectionManager`.
    remake: Option<(Client, ConnectionManagerConfig)>,
    current: ArcSwap<Line>,
    /// The clock `Line::heard` and a call's start are read on.
    epoch: Instant,
    replaced: AtomicU64,
}

/// One connection, and when it last answered.
struct Line {
    conn: ConnectionManager,
    /// Nanoseconds since `Shared::epoch` of the last answer, plus one; 0 for never.
    heard: AtomicU64,
}

impl Line {
    fn new(conn: ConnectionManager) -> Arc<Line> {
        Arc::new(Line {
            conn,
            heard: AtomicU64::new(0),
        })
    }
}

impl RedisConnection {
    /// A connection to `client`'s Redis that connects on its first call (a Redis that is
    /// down does not fail this). `config` must have a response timeout: it is what tells
    /// a dead connection (redis-rs's default is 500 ms).
    pub fn new(client: Client, config: ConnectionManagerConfig) -> RedisResult<RedisConnection> {
        check(&config)?;
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(RedisConnection::of(conn, Some((client, config))))
    }

    /// As [`RedisConnection::new`], but connected: fails if Redis cannot be reached now.
    pub async fn connect(
        client: Client,
        config: ConnectionManagerConfig,
    ) -> RedisResult<RedisConnection> {
        check(&config)?;
        let conn = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
        Ok(RedisConnection::of(conn, Some((client, config))))
    }

    fn of(conn: ConnectionManager, remake: Option<(Client, ConnectionManagerConfig)>) -> Self {
        RedisConnection {
            shared: Arc::new(Shared {
                remake,
                current: ArcSwap::new(Line::new(conn)),
                epoch: Instant::now(),
                replaced: AtomicU64::new(0),
            }),
        }
    }

    /// How many times the connection was replaced because Redis stopped answering (also
    /// counted in `tgpipe_redis_connections_replaced_total`).
    pub fn replaced(&self) -> u64 {
        self.shared.replaced.load(Ordering::Relaxed)
    }

    fn watch<T: Send + 'static>(
        &self,
        call: impl FnOnce(ConnectionManager) -> Call<T>,
    ) -> Watched<T> {
        let line = self.shared.current.load_full();
        let sent = self.shared.now();
        Watched {
            call: Some(call(line.conn.clone())),
            shared: Arc::clone(&self.shared),
            line,
            sent,
        }
    }
}

/// A `ConnectionManager` made elsewhere, used as it is: without its client and config it
/// cannot be made again, so it is **never replaced** (a Redis gone without an RST is then
/// waited on until TCP gives up). Prefer [`RedisConnection::new`].
impl From<ConnectionManager> for RedisConnection {
    fn from(conn: ConnectionManager) -> RedisConnection {
        RedisConnection::of(conn, None)
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("replaceable", &self.shared.remake.is_some())
            .field("replaced", &self.replaced())
            .finish()
    }
}

/// A connection judged by its response timeout needs one.
fn check(config: &ConnectionManagerConfig) -> RedisResult<()> {
    match config.response_timeout() {
        Some(_) => Ok(()),
        None => Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "a RedisConnection needs a response timeout: it tells a dead connection",
        ))),
    }
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Settles a call sent at `sent` on `line`.
    fn judge(&self, line: &Arc<Line>, sent: u64, outcome: Result<(), &RedisError>) {
        match outcome {
            Ok(()) => {
                line.heard.fetch_max(self.now() + 1, Ordering::Relaxed);
            }
            // An error reply is an answer: Redis is there (OOM, READONLY, BUSY, ...).
            Err(e) if matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension) => {
                line.heard.fetch_max(self.now() + 1, Ordering::Relaxed);
            }
            Err(e) if e.is_timeout() && line.heard.load(Ordering::Relaxed) <= sent => {
                self.replace(line);
            }
            Err(_) => {}
        }
    }

    /// Puts a fresh connection in place of `dead`, unless that was done already.
    fn replace(&self, dead: &Arc<Line>) {
        let Some((client, config)) = &self.remake else {
            return;
        };
        if !Arc::ptr_eq(&self.current.load(), dead) {
            return;
        }
        let fresh = match ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
            Ok(conn) => Line::new(conn),
            Err(e) => {
                tracing::warn!(error = %e, "Redis answers nothing, and no new connection could be made");
                return;
            }
        };
        let before = self.current.compare_and_swap(dead, fresh);
        if Arc::ptr_eq(&before, dead) {
            self.replaced.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tgpipe_redis_connections_replaced_total").increment(1);
            tracing::warn!(
                timeout = ?config.response_timeout(),
                "Redis answered nothing on its connection within the response timeout; connecting anew"
            );
        }
    }
}

type Call<T> = Pin<Box<dyn Future<Output = RedisResult<T>> + Send + 'static>>;

/// A call in flight, judged when it ends: finished in the background if its caller
/// drops it first.
struct Watched<T: Send + 'static> {
    call: Option<Call<T>>,
    shared: Arc<Shared>,
    line: Arc<Line>,
    sent: u64,
}

impl<T: Send + 'static> Future for Watched<T> {
    type Output = RedisResult<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RedisResult<T>> {
        let Some(call) = self.call.as_mut() else {
            return Poll::Ready(Err(RedisError::from((
                ErrorKind::Client,
                "a Redis call polled after it ended",
            ))));
        };
        let result = std::task::ready!(call.as_mut().poll(cx));
        self.call = None;
        self.shared
            .judge(&self.line, self.sent, result.as_ref().map(|_| ()));
        Poll::Ready(result)
    }
}

impl<T: Send + 'static> Drop for Watched<T> {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        // The caller gave up (its own timeout, usually): its call still tells whether
        // the connection answers, and it ends within the response timeout.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (shared, line, sent) = (Arc::clone(&self.shared), Arc::clone(&self.line), self.sent);
        runtime.spawn(async move {
            let result = call.await;
            shared.judge(&line, sent, result.as_ref().map(|_| ()));
        });
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        if self.shared.remake.is_none() {
            let mut conn = self.shared.current.load().conn.clone();
            return Box::pin(async move { conn.send_packed_command(cmd).await });
        }
        // Owned, so that the call can outlive a caller that gives up on it.
        let cmd = cmd.clone();
        Box::pin(
            self.watch(move |mut conn| {
                Box::pin(async move { conn.send_packed_command(&cmd).await })
            }),
        )
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        if self.shared.remake.is_none() {
            let mut conn = self.shared.current.load().conn.clone();
            return Box::pin(
                async move { conn.send_packed_commands(pipeline, offset, count).await },
            );
        }
        let pipeline = pipeline.clone();
        Box::pin(self.watch(move |mut conn| {
            Box::pin(async move { conn.send_packed_commands(&pipeline, offset, count).await })
        }))
    }

    fn get_db(&self) -> i64 {
        self.shared.current.load().conn.get_db()
    }
}
