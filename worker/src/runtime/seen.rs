//! The per-chat memory of recently finished updates, which skips duplicates that outlive
//! JetStream's dedupe window.
//!
//! Telegram re-sends an update of a chat before it sends that chat's next one, so a short
//! memory per chat catches its retries: a Redis sorted set
//! `tgpipe:seen:{<bot>:<chat>}` of the last `cap` finished `update_id`s, expiring `ttl`
//! after the chat's last update. Memory grows with active chats, never with traffic. A
//! high-water mark would be wrong: an update replayed from the dead-letter stream is
//! older than its chat's newer updates and must still run.
//!
//! Writes carry the partition owner's epoch ([`OwnerFence`]): a pod that lost the chat's
//! partition cannot overwrite what the new owner remembered
//! (`tgpipe:seen:{<bot>:<chat>}:fence`, the highest epoch per lane that wrote).

use std::time::Duration;

use redis::Script;
use tgpipe_bot::RedisConnection;
use tgpipe_shared::BotId;

use tgpipe::fsm::OwnerFence;

/// Adds the id, trims to the cap, refreshes the TTL, unless a later owner of the chat's
/// partition (in this lane) wrote before: `ARGV[4]` is the lane, `ARGV[5]` the epoch
/// (`0`: unfenced). Returns 0 when fenced off. `KEYS[3]`, when given, is the record of
/// the update's Bot API calls ([`super::effects`]): no longer needed once the update is
/// remembered (its copies are skipped), it goes in the same round trip.
const INSERT: &str = r"
if ARGV[5] ~= '0' then
  local cur = tonumber(redis.call('HGET', KEYS[2], ARGV[4]) or '0')
  if cur > tonumber(ARGV[5]) then return 0 end
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[2]) + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if KEYS[3] then redis.call('UNLINK', KEYS[3]) end
return 1
";

/// How long the check for a finished update may take.
const PATIENCE: Duration = Duration::from_millis(500);

/// The memory of finished updates.
#[derive(Clone)]
pub(super) struct Seen {
    redis: RedisConnection,
    cap: u32,
    ttl: Duration,
    insert: std::sync::Arc<Script>,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seen")
            .field("cap", &self.cap)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// The Redis key of a chat's memory.
pub(super) fn key(bot: BotId, chat: i64) -> String {
    format!("tgpipe:seen:{{{bot}:{chat}}}")
}

impl Seen {
    /// A memory of the last `cap` updates per chat (`cap` > 0).
    pub(super) fn new(redis: RedisConnection, cap: u32, ttl: Duration) -> Seen {
        Seen {
            redis,
            cap,
            ttl,
            insert: std::sync::Arc::new(Script::new(INSERT)),
        }
    }

    /// Whether `update_id` of this chat was finished recently.
    pub(super) async fn contains(
        &self,
        bot: BotId,
        chat: i64,
        update_id: i64,
    ) -> Result<bool, redis::RedisError> {
        let (mut redis, mut zscore) = (self.redis.clone(), redis::cmd("ZSCORE"));
        zscore.arg(key(bot, chat)).arg(update_id);
        // Bounded here too, whatever the connection's settings: the check comes before
        // every update's handler.
        let score: Option<f64> = tokio::time::timeout(PATIENCE, zscore.query_async(&mut redis))
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })??;
        Ok(score.is_some())
    }

    /// Remembers that `update_id` of this chat is finished, forgetting the oldest beyond
    /// the cap, and deletes `record` (the key of the update's calls, if it made some), in
    /// one round trip. `Ok(false)`: fenced off, a later owner of the chat's partition
    /// wrote first (nothing is deleted).
    pub(super) async fn insert(
        &self,
        bot: BotId,
        chat: i64,
        update_id: i64,
        fence: Option<&OwnerFence>,
        record: Option<&str>,
    ) -> Result<bool, redis::RedisError> {
        if fence.is_some_and(|f| !f.is_current()) {
            return Ok(false);
        }
        let key = key(bot, chat);
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let (lane, epoch) = fence.map_or(("", 0), |f| (f.lane(), f.epoch()));
        let mut insert = self.insert.key(&key);
        insert.key(format!("{key}:fence"));
        if let Some(record) = record {
            insert.key(record);
        }
        let done: i64 = insert
            .arg(update_id)
            .arg(self.cap)
            .arg(ttl_ms)
            .arg(lane)
            .arg(epoch)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(done == 1)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tgpipe::fsm::OwnerFence;
    use tgpipe_shared::BotId;

    use super::Seen;

    /// The duplicate memory is fenced like the FSM: a stale owner's insert is refused.
    #[tokio::test]
    async fn a_worker_that_lost_its_partition_cannot_write_the_duplicate_memory() {
        let server = tgpipe_testkit::RedisServer::start();
        let redis = redis::Client::open(server.url())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let seen = Seen::new(redis.into(), 64, Duration::from_secs(60));
        let (new, old) = (
            OwnerFence::new("chat", 1, 30),
            OwnerFence::new("chat", 1, 12),
        );
        assert!(
            seen.insert(BotId(1), 5, 100, Some(&new), None)
                .await
                .unwrap()
        );
        assert!(
            !seen
                .insert(BotId(1), 5, 101, Some(&old), None)
                .await
                .unwrap()
        );
        assert!(seen.contains(BotId(1), 5, 100).await.unwrap());
        assert!(
            !seen.contains(BotId(1), 5, 101).await.unwrap(),
            "the stale insert was refused"
        );
    }

    /// The record of an update's Bot API calls was deleted in a round trip of its own
    /// after the update was remembered; the insert deletes it, unless fenced off.
    #[tokio::test]
    async fn remembering_an_update_deletes_its_record_of_calls_in_the_same_round_trip() {
        let server = tgpipe_testkit::RedisServer::start();
        let mut redis = redis::Client::open(server.url())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let seen = Seen::new(redis.clone().into(), 64, Duration::from_secs(60));
        let (new, old) = (
            OwnerFence::new("chat", 1, 30),
            OwnerFence::new("chat", 1, 12),
        );
        let (kept, gone) = ("tgpipe:effects:{1:5}:100", "tgpipe:effects:{1:5}:101");
        for record in [kept, gone] {
            redis::cmd("HSET")
                .arg(record)
                .arg("0")
                .arg("sendMessage")
                .query_async::<()>(&mut redis)
                .await
                .unwrap();
        }
        assert!(
            seen.insert(BotId(1), 5, 101, Some(&new), Some(gone))
                .await
                .unwrap()
        );
        assert!(
            !seen
                .insert(BotId(1), 5, 100, Some(&old), Some(kept))
                .await
                .unwrap()
        );
        let exists = |key: &'static str| {
            let mut redis = redis.clone();
            async move {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query_async::<i64>(&mut redis)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(exists(gone).await, 0, "deleted with the insert");
        assert_eq!(exists(kept).await, 1, "a fenced-off insert deletes nothing");
    }
}
