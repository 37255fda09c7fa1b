//! Each Bot API call at most once per update: a call that succeeded for an update is
//! answered from a record when the update runs again (a transient failure, the handler
//! timeout, a crash, a handover), not made again.
//!
//! The runtime gives each update an [`UpdateCalls`] (a task-local around every dispatch
//! of it); [`OncePerUpdate`], on every bot the runtime builds, numbers the update's
//! calls in the order the handler makes them and keeps the answer of each one that
//! succeeded: in memory for the attempts in this pod, and in Redis
//! (`tgpipe:effects:{<bot>:<chat>}:<update_id>`, a hash of call number -> method and
//! answer, written under the partition's fence) for the pod that runs it next. A repeated
//! call is matched by its number and method. Reads (`get*`) are made afresh and not
//! numbered. Calls outside a dispatch (a task the handler spawned, a program of its own)
//! pass through. The record is deleted as the update is remembered as finished, in the
//! same round trip as the memory's insert (which then skips its copies); without that
//! memory, once the update is acknowledged. Otherwise it expires after `TGPIPE_SEEN_TTL`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use redis::Script;
use tgpipe::fsm::OwnerFence;
use tgpipe_bot::RedisConnection;
use tgpipe_bot::chain::{BoxFuture, Middleware};
use tgpipe_bot::{ApiNext, ApiRequest, ApiResult, BotError};
use tgpipe_shared::BotId;

/// How long one read or write of the record may take: the call waits for it.
const PATIENCE: Duration = Duration::from_millis(500);

/// Writes call `ARGV[1]`'s record (`ARGV[2]`) and refreshes the TTL (`ARGV[3]` ms),
/// unless a later owner of the chat's partition wrote the record before: the hash's
/// field `~<lane>` (`ARGV[4]`) keeps the highest epoch (`ARGV[5]`; `0`: unfenced).
/// Returns 0 when fenced off.
const RECORD: &str = r"
if ARGV[5] ~= '0' then
  local f = '~' .. ARGV[4]
  local cur = tonumber(redis.call('HGET', KEYS[1], f) or '0')
  if cur > tonumber(ARGV[5]) then return 0 end
  redis.call('HSET', KEYS[1], f, ARGV[5])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// The Redis key of an update's record.
fn key(bot: BotId, chat: i64, update_id: i64) -> String {
    format!("tgpipe:effects:{{{bot}:{chat}}}:{update_id}")
}

/// Where the records are kept: one per pod, shared by the bots' middleware.
#[derive(Clone)]
struct Store {
    redis: RedisConnection,
    ttl_ms: u64,
    record: Arc<Script>,
}

/// The call middleware that answers an update's repeated calls from its record. The
/// worker runtime adds it to every bot it builds.
#[derive(Clone)]
pub(crate) struct OncePerUpdate {
    store: Store,
}

impl std::fmt::Debug for OncePerUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OncePerUpdate")
            .field("ttl_ms", &self.store.ttl_ms)
            .finish_non_exhaustive()
    }
}

impl OncePerUpdate {
    /// Records in `redis`, each kept `ttl` after its last write.
    pub(crate) fn new(redis: RedisConnection, ttl: Duration) -> OncePerUpdate {
        OncePerUpdate {
            store: Store {
                redis,
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
                record: Arc::new(Script::new(RECORD)),
            },
        }
    }
}

/// A successful call's answer.
struct Recorded {
    method: String,
    body: Bytes,
}

/// One update's calls, across its attempts in this pod.
pub(crate) struct UpdateCalls {
    key: String,
    fence: OwnerFence,
    /// The number the next call of this attempt gets.
    next: AtomicU32,
    /// The successful calls, by number.
    memory: Mutex<HashMap<u32, Recorded>>,
    /// Whether Redis's record was read into `memory` (from the start for a first
    /// delivery: no pod ran it before).
    loaded: tokio::sync::OnceCell<()>,
    /// Where this update's calls are recorded (set by its first call), to delete the
    /// record once the update is finished.
    store: OnceLock<Store>,
    /// A later owner of the partition wrote the record: no more calls from here.
    fenced: AtomicBool,
}

impl UpdateCalls {
    /// The calls of `update_id` of `chat`, run under `fence`; `first_delivery`: no pod
    /// can have run it before.
    pub(crate) fn new(
        bot: BotId,
        chat: i64,
        update_id: i64,
        fence: OwnerFence,
        first_delivery: bool,
    ) -> Arc<UpdateCalls> {
        let loaded = tokio::sync::OnceCell::new();
        if first_delivery {
            let _ = loaded.set(());
        }
        Arc::new(UpdateCalls {
            key: key(bot, chat, update_id),
            fence,
            next: AtomicU32::new(0),
            memory: Mutex::new(HashMap::new()),
            loaded,
            store: OnceLock::new(),
            fenced: AtomicBool::new(false),
        })
    }

    /// The key of the record in Redis, when this update made a call that wrote one:
    /// the memory of finished updates deletes it as it remembers the update.
    pub(crate) fn record_key(&self) -> Option<&str> {
        self.store.get().map(|_| self.key.as_str())
    }

    /// Forgets the record once the update is finished (acknowledged), where the memory
    /// of finished updates is off: it skips no copies then, but a record is kept only
    /// for the update's attempts. Fire and forget: a record left behind expires.
    pub(crate) fn finished(&self) {
        if let Some(store) = self.store.get() {
            let (mut redis, key) = (store.redis.clone(), self.key.clone());
            tokio::spawn(async move {
                let mut unlink = redis::cmd("UNLINK");
                unlink.arg(&key);
                let unlink = unlink.query_async::<()>(&mut redis);
                if let Err(e) = tokio::time::timeout(PATIENCE, unlink).await {
                    tracing::debug!(error = %e, "the record of an update's calls expires instead");
                }
            });
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Recorded>> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads what another pod (or an earlier run here) recorded, once.
    async fn load(&self, store: &Store) -> Result<(), BotError> {
        self.loaded
            .get_or_try_init(|| async {
                let (mut redis, mut read) = (store.redis.clone(), redis::cmd("HGETALL"));
                read.arg(&self.key);
                let read = read.query_async::<HashMap<String, Vec<u8>>>(&mut redis);
                let fields = match tokio::time::timeout(PATIENCE, read).await {
                    Ok(Ok(fields)) => fields,
                    Ok(Err(e)) => return Err(unreadable(e.to_string())),
                    Err(_) => return Err(unreadable(format!("no answer within {PATIENCE:?}"))),
                };
                let mut memory = self.memory();
                for (n, value) in fields {
                    let (Ok(n), Some(split)) =
                        (n.parse::<u32>(), value.iter().position(|b| *b == 0))
                    else {
                        continue; // a fence field
                    };
                    let method = String::from_utf8_lossy(&value[..split]).into_owned();
                    let body = Bytes::copy_from_slice(&value[split + 1..]);
                    memory.entry(n).or_insert(Recorded { method, body });
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Call number `n`: answered from the record, or made and recorded.
    async fn call(
        self: Arc<Self>,
        store: Store,
        n: u32,
        request: ApiRequest,
        next: ApiNext,
    ) -> ApiResult {
        if !self.fence.is_current() || self.fenced.load(Ordering::Acquire) {
            // The runtime gives the update back to the partition's new owner.
            return Err(BotError::Network(format!(
                "{} not sent: this pod no longer owns the chat's partition",
                request.method
            )));
        }
        // Known from now on, so that the record is deleted when the update is done,
        // whoever wrote it.
        let _ = self.store.set(store.clone());
        self.load(&store).await?;
        if let Some(r) = self.memory().get(&n)
            && r.method == request.method
        {
            metrics::counter!("tgpipe_bot_api_calls_answered_from_record_total", "method" => request.method.clone())
                .increment(1);
            return Ok(r.body.clone());
        }
        let method = request.method.clone();
        let body = next.run(request).await?;
        let mut value = Vec::with_capacity(method.len() + 1 + body.len());
        value.extend_from_slice(method.as_bytes());
        value.push(0);
        value.extend_from_slice(&body);
        self.memory().insert(
            n,
            Recorded {
                method: method.clone(),
                body: body.clone(),
            },
        );
        let (mut redis, mut write) = (store.redis.clone(), store.record.key(&self.key));
        write
            .arg(n)
            .arg(value)
            .arg(store.ttl_ms)
            .arg(self.fence.lane())
            .arg(self.fence.epoch());
        let write = write.invoke_async::<i64>(&mut redis);
        match tokio::time::timeout(PATIENCE, write).await {
            Ok(Ok(1)) => {}
            Ok(Ok(_)) => {
                // The call was made; its answer goes to the handler, but nothing more
                // is sent from a pod that lost the chat.
                self.fenced.store(true, Ordering::Release);
            }
            // The answer is still kept here for this pod's next attempts; only a crash
            // or a handover before the record is written repeats the call.
            Ok(Err(e)) => {
                tracing::warn!(%method, error = %e, "the call is made but not recorded in Redis");
                metrics::counter!("tgpipe_bot_api_calls_unrecorded_total").increment(1);
            }
            Err(_) => {
                tracing::warn!(%method, "the call is made but its record was not written in time");
                metrics::counter!("tgpipe_bot_api_calls_unrecorded_total").increment(1);
            }
        }
        Ok(body)
    }
}

/// A record that cannot be read: whether the call was made before is unknown, so the
/// update waits (transient) rather than risk sending it twice.
fn unreadable(why: String) -> BotError {
    BotError::Network(format!(
        "not sent: the record of this update's earlier calls cannot be read from Redis ({why})"
    ))
}

tokio::task_local! {
    static CALLS: Option<Arc<UpdateCalls>>;
}

/// Runs one dispatch of an update with its calls' record (`None`: none is kept). Each
/// dispatch numbers its calls from the first again.
pub(crate) fn scope<F: Future>(
    calls: Option<Arc<UpdateCalls>>,
    dispatch: F,
) -> impl Future<Output = F::Output> {
    if let Some(c) = &calls {
        c.next.store(0, Ordering::Relaxed);
    }
    CALLS.scope(calls, dispatch)
}

impl Middleware<ApiRequest, ApiResult> for OncePerUpdate {
    fn call(&self, request: ApiRequest, next: ApiNext) -> BoxFuture<'static, ApiResult> {
        if tgpipe_bot::effects::is_read(&request.method) {
            return next.run(request);
        }
        // Numbered when the call starts (in the order the handler makes them), not
        // when its future first runs.
        let Some(calls) = CALLS.try_with(Clone::clone).ok().flatten() else {
            return next.run(request);
        };
        let n = calls.next.fetch_add(1, Ordering::Relaxed);
        Box::pin(calls.call(self.store.clone(), n, request, next))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tgpipe::fsm::OwnerFence;
    use tgpipe_bot::{Bot, BotError};
    use tgpipe_shared::BotId;
    use tgpipe_testkit::sink::{Sink, SinkConfig};

    use super::{OncePerUpdate, UpdateCalls, scope};

    /// A pod that takes an update over (after a crash or a handover) used to run its
    /// handler from the top, sending again what the first pod sent.
    #[tokio::test]
    async fn a_pod_taking_over_an_update_answers_the_calls_the_last_pod_made() {
        let server = tgpipe_testkit::RedisServer::start();
        let sink = Sink::start(SinkConfig::default()).await.unwrap();
        let redis = redis::Client::open(server.url())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let bot = Bot::builder("123:TEST")
            .api_url(&sink.url())
            .middleware(OncePerUpdate::new(redis.into(), Duration::from_secs(60)))
            .build()
            .unwrap();
        let (old, new) = (
            OwnerFence::new("default#16", 3, 1),
            OwnerFence::new("default#16", 3, 2),
        );
        let texts = || -> Vec<String> {
            sink.calls()
                .iter()
                .map(|c| c.params["text"].as_str().unwrap_or_default().to_owned())
                .collect()
        };
        // The first owner sends two messages, then stops (dies, or loses the chat).
        let first = UpdateCalls::new(BotId(123), 5, 900, old, true);
        let sent = scope(Some(first.clone()), async {
            (
                bot.send_text(5, "one").await.unwrap(),
                bot.send_text(5, "two").await.unwrap(),
            )
        })
        .await;
        // The next owner runs the handler again and goes further.
        let next = UpdateCalls::new(BotId(123), 5, 900, new, false);
        let again = scope(Some(next), async {
            (
                bot.send_text(5, "one").await.unwrap(),
                bot.send_text(5, "two").await.unwrap(),
                bot.send_text(5, "three").await.unwrap(),
            )
        })
        .await;
        assert_eq!(texts(), ["one", "two", "three"], "each sent once");
        assert_eq!(
            (sent.0.message_id, sent.1.message_id),
            (again.0.message_id, again.1.message_id),
            "the handler sees the first answers again"
        );
        // The first owner, still running, makes a call the new owner also made: it went
        // out (nothing can stop a call that is already sent), but its record is refused,
        // and it sends nothing more.
        scope(Some(first), async {
            bot.send_text(5, "one").await.unwrap();
            bot.send_text(5, "two").await.unwrap();
            bot.send_text(5, "stale").await.unwrap();
            let e = bot.send_text(5, "after").await.unwrap_err();
            assert!(
                matches!(e, BotError::Network(_)) && e.is_transient(),
                "{e:?}"
            );
        })
        .await;
        assert_eq!(texts(), ["one", "two", "three", "stale"]);
        // Outside a dispatch every call is made.
        bot.send_text(5, "free").await.unwrap();
        bot.send_text(5, "free").await.unwrap();
        assert_eq!(texts().len(), 6);
    }

    /// A record that cannot be read leaves the call unmade (the update waits), rather
    /// than risk making it twice; a first delivery needs no record.
    #[tokio::test]
    async fn a_retried_update_whose_record_is_unreadable_waits_instead_of_sending() {
        let sink = Sink::start(SinkConfig::default()).await.unwrap();
        // Nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(100)))
            .set_number_of_retries(0);
        let redis = redis::aio::ConnectionManager::new_lazy_with_config(client, config).unwrap();
        let bot = Bot::builder("123:TEST")
            .api_url(&sink.url())
            .middleware(OncePerUpdate::new(redis.into(), Duration::from_secs(60)))
            .build()
            .unwrap();
        let fence = OwnerFence::new("default#16", 3, 1);
        let retried = UpdateCalls::new(BotId(123), 5, 901, fence.clone(), false);
        let e = scope(Some(retried), bot.send_text(5, "maybe twice"))
            .await
            .unwrap_err();
        assert!(e.is_transient() && e.to_string().contains("record"), "{e}");
        assert!(sink.calls().is_empty());
        let fresh = UpdateCalls::new(BotId(123), 5, 902, fence, true);
        scope(Some(fresh), bot.send_text(5, "first delivery"))
            .await
            .unwrap();
        assert_eq!(sink.calls().len(), 1);
    }
}
