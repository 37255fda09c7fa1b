//! [`RedisStorage`]: states, data and locks in Redis, through one connection that is
//! reconnected when dropped and replaced when Redis stops answering
//! ([`RedisConnection`]).
//!
//! Layout (the hash tag keeps one key's records in one Redis Cluster slot):
//!
//! ```text
//! tgpipe:fsm:{<bot>:<chat>:<user>[:<thread>]}:state     the state name (string)
//! tgpipe:fsm:{<bot>:<chat>:<user>[:<thread>]}:data      the data document (MessagePack)
//! tgpipe:lock:{<bot>:<chat>:<user>[:<thread>]}          the lease: a random token, PX
//! tgpipe:lock:{<bot>:<chat>:<user>[:<thread>]}:fence    the fencing counter (INCR)
//! tgpipe:fsm:{<bot>:<chat>:<user>[:<thread>]}:fence     highest owner epoch per lane (hash)
//! ```
//!
//! Side records ([`FsmKey::destiny`]) insert the destiny before the suffix
//! (`...}:scenes:data`). Every read-modify-write is one Lua script.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManagerConfig;
use redis::{Script, Value};
use tgpipe_bot::RedisConnection;

use super::fence::FENCE_TTL;
use super::storage::{DataUpdate, FsmStorage, LockGrant};
use super::{FsmError, FsmKey, OwnerFence};

/// How many times an atomic data update retries a lost compare-and-set. Under the
/// dispatcher's lock it never loses; without isolation a hot key may, so retries back
/// off with jitter (up to 20 ms) to let contenders spread out.
const CAS_ATTEMPTS: u32 = 64;

/// Sets the data document `KEYS[1]` only if it is still what was read (`ARGV[1]` says
/// whether a document existed, `ARGV[2]` is it) to `ARGV[3]`, PX `ARGV[4]` (`0`: none).
/// Under partition ownership (`ARGV[5]` the lane, empty: unfenced) it is refused when
/// the fence hash `KEYS[2]` holds a later epoch than `ARGV[6]`, and records the epoch
/// (PX `ARGV[7]`). In the same step the state `KEYS[3]` can be set (`ARGV[8]` = `set`,
/// to `ARGV[9]`) or deleted (`del`): a scene's history and state change together.
/// Returns 1 when written, 0 when the document changed meanwhile, -1 when fenced off.
const CAS: &str = r"
local fenced = ARGV[5] ~= ''
if fenced then
  local fence = tonumber(redis.call('HGET', KEYS[2], ARGV[5]) or '0')
  if fence > tonumber(ARGV[6]) then return -1 end
end
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then return 0 end
elseif cur then
  return 0
end
if fenced then
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
local function put(key, value)
  if ARGV[4] ~= '0' then
    redis.call('SET', key, value, 'PX', ARGV[4])
  else
    redis.call('SET', key, value)
  end
end
put(KEYS[1], ARGV[3])
if ARGV[8] == 'set' then
  put(KEYS[3], ARGV[9])
elseif ARGV[8] == 'del' then
  redis.call('DEL', KEYS[3])
end
return 1
";

/// Takes the lease and, in the same round trip, bumps the fencing counter and reads the
/// state. `ARGV[3]` is the fencing counter's PX, renewed with every lock.
const LOCK: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return {fence, redis.call('GET', KEYS[3])}
end
return {0}
";

/// Writes (`ARGV[3]` = `set`: `ARGV[4]` into `KEYS[2]`, PX `ARGV[5]`) or deletes
/// (`del`: every key after the first) unless a later owner of the key's partition wrote:
/// `KEYS[1]` is the fence hash, `ARGV[1]` the lane, `ARGV[2]` the epoch, `ARGV[6]` the
/// fence's PX. Returns 0 when fenced off.
const FENCED_WRITE: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if cur > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if ARGV[3] == 'del' then
  for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
elseif ARGV[5] ~= '0' then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
else
  redis.call('SET', KEYS[2], ARGV[4])
end
return 1
";

/// Extends the lease only for its holder.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes the lease only for its holder.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// FSM storage in Redis.
///
/// ```no_run
/// # async fn demo() -> Result<(), redis::RedisError> {
/// use std::time::Duration;
/// use tgpipe::fsm::{Fsm, RedisStorage};
///
/// let storage = RedisStorage::connect("redis://127.0.0.1:6379")
///     .await?
///     .ttl(Some(Duration::from_secs(86_400)));
/// let fsm = Fsm::new(storage);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStorage {
    conn: RedisConnection,
    ttl: Option<Duration>,
    scripts: std::sync::Arc<Scripts>,
}

struct Scripts {
    cas: Script,
    fenced_write: Script,
    lock: Script,
    renew: Script,
    unlock: Script,
}

impl std::fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStorage")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    // A zero PX is an error in Redis; a sub-millisecond duration rounds up.
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStorage {
    /// Connects to `url`. Commands time out after 2 s (a connection that answers nothing
    /// for that long is replaced) and reconnection is retried in the background, so an
    /// unreachable Redis fails updates quickly (transiently) instead of stalling them.
    pub async fn connect(url: &str) -> Result<RedisStorage, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisStorage::new(
            RedisConnection::connect(client, config).await?,
        ))
    }

    /// Storage over an existing connection: a [`RedisConnection`], or a redis-rs
    /// `ConnectionManager` (which is never replaced when Redis stops answering).
    pub fn new(conn: impl Into<RedisConnection>) -> RedisStorage {
        RedisStorage {
            conn: conn.into(),
            ttl: None,
            scripts: std::sync::Arc::new(Scripts {
                cas: Script::new(CAS),
                fenced_write: Script::new(FENCED_WRITE),
                lock: Script::new(LOCK),
                renew: Script::new(RENEW),
                unlock: Script::new(UNLOCK),
            }),
        }
    }

    /// Expiry of states and data, refreshed by every write (`None`, the default: they
    /// live until cleared). The runtime sets it from `TGPIPE_FSM_TTL` (seconds).
    pub fn ttl(mut self, ttl: Option<Duration>) -> RedisStorage {
        self.ttl = ttl;
        self
    }

    fn record(key: &FsmKey, suffix: &str) -> String {
        match key.destiny {
            Some(d) => format!("tgpipe:fsm:{}:{d}:{suffix}", key.hash_tag()),
            None => format!("tgpipe:fsm:{}:{suffix}", key.hash_tag()),
        }
    }

    /// The Redis key of `key`'s state.
    pub fn state_key(key: &FsmKey) -> String {
        RedisStorage::record(key, "state")
    }

    /// The Redis key of `key`'s data document.
    pub fn data_key(key: &FsmKey) -> String {
        RedisStorage::record(key, "data")
    }

    /// The Redis key of `key`'s lock (side records share the main record's lock).
    pub fn lock_key(key: &FsmKey) -> String {
        format!("tgpipe:lock:{}", key.hash_tag())
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.map_or(0, millis)
    }

    fn fence_key(key: &FsmKey) -> String {
        format!("tgpipe:fsm:{}:fence", key.hash_tag())
    }

    fn fence_ttl_ms(&self) -> u64 {
        millis(self.ttl.map_or(FENCE_TTL, |t| t.max(FENCE_TTL)))
    }

    async fn fenced_write(
        &self,
        key: &FsmKey,
        targets: &[String],
        value: Option<&[u8]>,
        fence: &OwnerFence,
    ) -> Result<(), FsmError> {
        // Ownership is checked at the moment of writing: a pod that lost the partition
        // writes nothing, even before the next owner's first write raises the fence.
        if !fence.is_current() {
            return Err(FsmError::Fenced {
                key: key.to_string(),
            });
        }
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.fenced_write.key(RedisStorage::fence_key(key));
        for t in targets {
            invocation.key(t);
        }
        let written: i64 = invocation
            .arg(fence.lane())
            .arg(fence.epoch())
            .arg(if value.is_some() { "set" } else { "del" })
            .arg(value.unwrap_or_default())
            .arg(self.ttl_ms())
            .arg(self.fence_ttl_ms())
            .invoke_async(&mut conn)
            .await?;
        if written == 1 {
            Ok(())
        } else {
            Err(FsmError::Fenced {
                key: key.to_string(),
            })
        }
    }

    async fn set_or_del(&self, redis_key: String, value: Option<&[u8]>) -> Result<(), FsmError> {
        let mut conn = self.conn.clone();
        let cmd = match value {
            Some(v) => {
                let mut c = redis::cmd("SET");
                c.arg(&redis_key).arg(v);
                if let Some(ttl) = self.ttl {
                    c.arg("PX").arg(millis(ttl));
                }
                c
            }
            None => {
                let mut c = redis::cmd("DEL");
                c.arg(&redis_key);
                c
            }
        };
        let _: Value = cmd.query_async(&mut conn).await?;
        Ok(())
    }
}

impl RedisStorage {
    /// The one read-modify-write of a data document: read, apply `update`, write back
    /// unless it changed meanwhile (then again, backing off with jitter), fenced under
    /// ownership, optionally setting a state in the same step. Under the dispatcher's
    /// lock or ownership the first attempt succeeds; without isolation a hot key may
    /// need more.
    async fn compare_and_set(
        &self,
        key: &FsmKey,
        update: &mut DataUpdate<'_>,
        fence: Option<&OwnerFence>,
        state: Option<(&FsmKey, Option<&str>)>,
    ) -> Result<Vec<u8>, FsmError> {
        let data_key = RedisStorage::data_key(key);
        let fence_key = RedisStorage::fence_key(key);
        let state_key = RedisStorage::state_key(state.map_or(key, |(k, _)| k));
        let (state_op, state_value) = match state {
            None => ("", ""),
            Some((_, Some(s))) => ("set", s),
            Some((_, None)) => ("del", ""),
        };
        let mut conn = self.conn.clone();
        for attempt in 0..CAS_ATTEMPTS {
            if fence.is_some_and(|f| !f.is_current()) {
                return Err(FsmError::Fenced {
                    key: key.to_string(),
                });
            }
            if attempt > 0 {
                let cap = u64::from(attempt).min(20) * 1000;
                tokio::time::sleep(Duration::from_micros(rand::random_range(0..=cap))).await;
            }
            let current: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&data_key)
                .query_async(&mut conn)
                .await?;
            let new = update(current.as_deref())?;
            let (existed, old): (&str, &[u8]) = match &current {
                Some(c) => ("1", c),
                None => ("0", b""),
            };
            let set: i64 = self
                .scripts
                .cas
                .key(&data_key)
                .key(&fence_key)
                .key(&state_key)
                .arg(existed)
                .arg(old)
                .arg(&new[..])
                .arg(self.ttl_ms())
                .arg(fence.map_or("", OwnerFence::lane))
                .arg(fence.map_or(0, OwnerFence::epoch))
                .arg(self.fence_ttl_ms())
                .arg(state_op)
                .arg(state_value)
                .invoke_async(&mut conn)
                .await?;
            match set {
                1 => return Ok(new),
                -1 => {
                    return Err(FsmError::Fenced {
                        key: key.to_string(),
                    });
                }
                _ => {}
            }
        }
        Err(FsmError::Contended {
            key: key.to_string(),
        })
    }
}

#[async_trait]
impl FsmStorage for RedisStorage {
    async fn get_state(&self, key: &FsmKey) -> Result<Option<String>, FsmError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET")
            .arg(RedisStorage::state_key(key))
            .query_async(&mut conn)
            .await?)
    }

    async fn set_state(&self, key: &FsmKey, state: Option<&str>) -> Result<(), FsmError> {
        self.set_or_del(RedisStorage::state_key(key), state.map(str::as_bytes))
            .await
    }

    async fn get_data(&self, key: &FsmKey) -> Result<Option<Vec<u8>>, FsmError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET")
            .arg(RedisStorage::data_key(key))
            .query_async(&mut conn)
            .await?)
    }

    async fn set_data(&self, key: &FsmKey, data: Option<&[u8]>) -> Result<(), FsmError> {
        self.set_or_del(RedisStorage::data_key(key), data).await
    }

    async fn update_data(
        &self,
        key: &FsmKey,
        update: &mut DataUpdate<'_>,
    ) -> Result<Vec<u8>, FsmError> {
        self.compare_and_set(key, update, None, None).await
    }

    async fn clear(&self, key: &FsmKey) -> Result<(), FsmError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(RedisStorage::state_key(key))
            .arg(RedisStorage::data_key(key))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn set_state_fenced(
        &self,
        key: &FsmKey,
        state: Option<&str>,
        fence: &OwnerFence,
    ) -> Result<(), FsmError> {
        self.fenced_write(
            key,
            &[RedisStorage::state_key(key)],
            state.map(str::as_bytes),
            fence,
        )
        .await
    }

    async fn set_data_fenced(
        &self,
        key: &FsmKey,
        data: Option<&[u8]>,
        fence: &OwnerFence,
    ) -> Result<(), FsmError> {
        self.fenced_write(key, &[RedisStorage::data_key(key)], data, fence)
            .await
    }

    async fn clear_fenced(&self, key: &FsmKey, fence: &OwnerFence) -> Result<(), FsmError> {
        self.fenced_write(
            key,
            &[RedisStorage::state_key(key), RedisStorage::data_key(key)],
            None,
            fence,
        )
        .await
    }

    async fn update_data_fenced(
        &self,
        key: &FsmKey,
        update: &mut DataUpdate<'_>,
        fence: &OwnerFence,
    ) -> Result<Vec<u8>, FsmError> {
        self.compare_and_set(key, update, Some(fence), None).await
    }

    async fn set_state_and_update_side(
        &self,
        key: &FsmKey,
        state: Option<&str>,
        side: &FsmKey,
        update: &mut DataUpdate<'_>,
        fence: Option<&OwnerFence>,
    ) -> Result<Vec<u8>, FsmError> {
        self.compare_and_set(side, update, fence, Some((key, state)))
            .await
    }

    async fn try_lock(
        &self,
        key: &FsmKey,
        token: &str,
        lease: Duration,
    ) -> Result<Option<LockGrant>, FsmError> {
        let lock_key = RedisStorage::lock_key(key);
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = self
            .scripts
            .lock
            .key(&lock_key)
            .key(format!("{lock_key}:fence"))
            .key(RedisStorage::state_key(key))
            .arg(token)
            .arg(millis(lease))
            // The counter outlives every lease and every record, and then goes: a key
            // that is never locked again does not keep it forever. An hour longer than
            // the epoch hash its tokens are written to (refreshed by writes made after
            // the lock), so that the counter never starts again below a token the hash
            // still holds.
            .arg(self.fence_ttl_ms().max(millis(lease)) + 3_600_000)
            .invoke_async(&mut conn)
            .await?;
        let fence = match reply.first() {
            Some(Value::Int(n)) if *n > 0 => *n as u64,
            _ => return Ok(None),
        };
        let state = match reply.get(1) {
            Some(v @ (Value::BulkString(_) | Value::SimpleString(_))) => {
                Some(redis::from_redis_value_ref::<String>(v).map_err(FsmError::storage)?)
            }
            _ => None,
        };
        Ok(Some(LockGrant { fence, state }))
    }

    async fn renew_lock(
        &self,
        key: &FsmKey,
        token: &str,
        lease: Duration,
    ) -> Result<bool, FsmError> {
        let mut conn = self.conn.clone();
        let renewed: i64 = self
            .scripts
            .renew
            .key(RedisStorage::lock_key(key))
            .arg(token)
            .arg(millis(lease))
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    async fn unlock(&self, key: &FsmKey, token: &str) -> Result<bool, FsmError> {
        let mut conn = self.conn.clone();
        let deleted: i64 = self
            .scripts
            .unlock
            .key(RedisStorage::lock_key(key))
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(deleted == 1)
    }
}
