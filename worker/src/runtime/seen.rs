//! The per-chat memory of recently finished updates, which skips duplicates that outlive
//! JetStream's dedupe window.
//!
//! Telegram re-sends an update of a chat before it sends that chat's next one, so a short
//! memory per chat catches its retries: a Redis sorted set
//! `tgpipe:seen:{<bot>:<chat>}` of the last `cap` finished `update_id`s, expiring `ttl`
//! after the chat's last update. Memory grows with active chats, never with traffic. A
//! high-water mark would be wrong: without FIFO across pods a later update can finish
//! first.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tgpipe_shared::BotId;

/// The memory of finished updates.
#[derive(Clone)]
pub struct Seen {
    redis: ConnectionManager,
    cap: u32,
    ttl: Duration,
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
pub fn key(bot: BotId, chat: i64) -> String {
    format!("tgpipe:seen:{{{bot}:{chat}}}")
}

impl Seen {
    /// A memory of the last `cap` updates per chat (`cap` > 0).
    pub fn new(redis: ConnectionManager, cap: u32, ttl: Duration) -> Seen {
        Seen { redis, cap, ttl }
    }

    /// Whether `update_id` of this chat was finished recently.
    pub async fn contains(
        &self,
        bot: BotId,
        chat: i64,
        update_id: i64,
    ) -> Result<bool, redis::RedisError> {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(key(bot, chat))
            .arg(update_id)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(score.is_some())
    }

    /// Remembers that `update_id` of this chat is finished, forgetting the oldest beyond
    /// the cap, in one round trip.
    pub async fn insert(
        &self,
        bot: BotId,
        chat: i64,
        update_id: i64,
    ) -> Result<(), redis::RedisError> {
        let key = key(bot, chat);
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        redis::pipe()
            .atomic()
            .cmd("ZADD")
            .arg(&key)
            .arg(update_id)
            .arg(update_id)
            .ignore()
            // Keep the `cap` highest ids: ranks 0 .. -(cap+1) are the oldest.
            .cmd("ZREMRANGEBYRANK")
            .arg(&key)
            .arg(0)
            .arg(-(i64::from(self.cap) + 1))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms)
            .ignore()
            .query_async::<()>(&mut self.redis.clone())
            .await
    }
}
