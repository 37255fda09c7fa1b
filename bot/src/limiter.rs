//! The rate limiter: Telegram's flood limits kept by every pod of a bot together.
//!
//! Telegram allows a bot about 30 messages a second overall (1000 with
//! `allow_paid_broadcast`), one a second in a private chat and 20 a minute in a group;
//! beyond that it answers 429 with `retry_after`, which then stops the whole bot. So the
//! limits are kept *before* sending, in Redis, where all pods see them: a GCRA (generic
//! cell rate algorithm) per limit, checked and advanced for all of a call's limits in one
//! Lua script, atomically, against Redis's clock (so pods' clocks need not agree). The
//! same script reports the pauses a 429 seen by any pod sets for `retry_after`, in the
//! scope Telegram's answer concerned: the chat the refused call was sent to
//! (`tgpipe:pause:{<bot>}:chat:<chat_id>`: a chat's flood holds that chat only), or the
//! whole bot for a call addressed to no chat (`tgpipe:pause:{<bot>}`).
//!
//! A call never waits out a pause longer than the caller allows (the client's
//! `max_retry_after`): it is refused at once with the time left, so a handler does not
//! hold its permit for minutes and the update is redelivered after the pause instead.
//! Pauses are stored for at most [`MAX_PAUSE`] (a `retry_after` beyond any real one must
//! not overflow a clock or Redis's expiry).
//!
//! Keys (the hash tag puts all of a bot's keys in one Redis Cluster slot, so the script
//! may touch them together): `tgpipe:rl:{<bot>}:bot`, `tgpipe:rl:{<bot>}:paid`,
//! `tgpipe:rl:{<bot>}:chat:<chat_id>`, `tgpipe:pause:{<bot>}`,
//! `tgpipe:pause:{<bot>}:chat:<chat_id>`. Each expires once it no longer limits anything.
//!
//! Without Redis (not configured, unreachable, or built without the `redis` feature) the
//! same algorithm runs in process; the bot-wide rates are divided by the expected number
//! of pods so that each pod keeps to its share. Per-chat rates are not divided: a chat's
//! updates are ordered onto one shard and handled one at a time, so one pod at a time
//! answers a chat.
//!
//! Only message-sending methods are limited ([`is_limited_method`]); answers to callback
//! queries, edits, `getUpdates` and the like are not, but they do wait out a pause.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tgpipe_shared::BotId;

use super::middleware::{ChatRef, Target};

/// A rate: `count` events per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events allowed per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// `count` a second.
    pub const fn per_second(count: u32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(1),
        }
    }

    /// `count` a minute.
    pub const fn per_minute(count: u32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(60),
        }
    }

    /// The spacing between two events at this rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count.max(1)
    }
}

/// The limits to keep, per bot. The defaults are Telegram's documented ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// Messages a second over all chats.
    pub per_bot: Rate,
    /// Messages a second over all chats when sent with `allow_paid_broadcast`.
    pub paid_broadcast: Rate,
    /// Messages into one private chat.
    pub per_private_chat: Rate,
    /// Messages into one group, supergroup or channel.
    pub per_group: Rate,
    /// How many messages may go at once before spacing starts (GCRA burst), for the
    /// bot-wide limit. Chats get no burst: Telegram counts them strictly.
    pub bot_burst: u32,
    /// How many pods share the bot: the in-process fallback keeps each pod to
    /// `1 / expected_pods` of the bot-wide rate.
    pub expected_pods: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            per_bot: Rate::per_second(30),
            paid_broadcast: Rate::per_second(1000),
            per_private_chat: Rate::per_second(1),
            per_group: Rate::per_minute(20),
            bot_burst: 1,
            expected_pods: 1,
        }
    }
}

impl RateLimits {
    /// No limits to speak of (a million a second everywhere): for a Bot API stand-in in
    /// benchmarks and tests, never for Telegram.
    pub fn unlimited() -> RateLimits {
        let fast = Rate::per_second(1_000_000);
        RateLimits {
            per_bot: fast,
            paid_broadcast: fast,
            per_private_chat: fast,
            per_group: fast,
            bot_burst: 1_000,
            expected_pods: 1,
        }
    }
}

/// Methods that send messages, the ones Telegram's flood limits count.
const LIMITED: &[&str] = &[
    "sendmessage",
    "sendphoto",
    "sendaudio",
    "senddocument",
    "sendvideo",
    "sendanimation",
    "sendvoice",
    "sendvideonote",
    "sendsticker",
    "sendlocation",
    "sendvenue",
    "sendcontact",
    "sendpoll",
    "senddice",
    "sendinvoice",
    "sendgame",
    "sendpaidmedia",
    "sendmediagroup",
    "sendchecklist",
    "copymessage",
    "copymessages",
    "forwardmessage",
    "forwardmessages",
];

/// Whether a method counts against the flood limits.
///
/// ```
/// use tgpipe_bot::is_limited_method;
///
/// assert!(is_limited_method("sendMessage"));
/// assert!(is_limited_method("copyMessage"));
/// assert!(!is_limited_method("answerCallbackQuery"));
/// ```
pub fn is_limited_method(method: &str) -> bool {
    LIMITED.iter().any(|m| m.eq_ignore_ascii_case(method))
}

/// One GCRA cell: a key, the spacing of events and the burst tolerance.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cell {
    suffix: String,
    interval_us: u64,
    tolerance_us: u64,
    /// Whether the in-process fallback divides this rate among pods.
    shared_by_pods: bool,
}

impl Cell {
    fn new(suffix: String, rate: Rate, burst: u32, shared_by_pods: bool) -> Cell {
        let interval_us = rate.interval().as_micros() as u64;
        Cell {
            suffix,
            interval_us,
            tolerance_us: interval_us * u64::from(burst.max(1) - 1),
            shared_by_pods,
        }
    }
}

/// Checks the pauses, then every limit; if all allow, advances them all. Returns 0
/// (go), the microseconds to wait before asking again (a limit), or minus the
/// microseconds a pause has left. ARGV[1]: how many of the KEYS are pause keys (the
/// bot's, and the chat's if the call has one); then interval and tolerance (µs) per limit
/// key, in KEYS order after the pause keys.
#[cfg(feature = "redis")]
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local npause = tonumber(ARGV[1])
local paused = 0
for i = 1, npause do
  local p = redis.call('PTTL', KEYS[i])
  if p > paused then paused = p end
end
if paused > 0 then return -paused * 1000 end
local wait = 0
local tats = {}
for i = npause + 1, #KEYS do
  local interval = tonumber(ARGV[2 * (i - npause)])
  local tolerance = tonumber(ARGV[2 * (i - npause) + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local w = tat - tolerance - now
  if w > wait then wait = w end
  tats[i] = tat + interval
end
if wait > 0 then return math.ceil(wait) end
for i = npause + 1, #KEYS do
  local ttl = math.ceil((tats[i] - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
end
return 0
"#;

/// Sets the pause unless a longer one is set already.
#[cfg(feature = "redis")]
const PAUSE_SCRIPT: &str = r#"
local cur = redis.call('PTTL', KEYS[1])
if cur < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0
"#;

/// How long a Redis round trip may take before the call goes on with the in-process
/// limiter: sending late is worse than sending slightly over a shared limit.
#[cfg(feature = "redis")]
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// After Redis failed, how long to use the in-process limiter before trying it again.
#[cfg(feature = "redis")]
const REDIS_RETRY: Duration = Duration::from_secs(1);

/// The longest pause kept (a day): Telegram's real `retry_after`s are seconds to hours;
/// anything longer is stored as this, so no clock or expiry overflows, and the error
/// carries the full wait all the same.
pub const MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Default)]
struct Local {
    /// Theoretical arrival times per cell.
    tats: HashMap<String, Instant>,
    /// The bot-wide pause.
    paused_until: Option<Instant>,
    /// Pauses of single chats.
    chat_paused_until: HashMap<i64, Instant>,
    #[cfg(feature = "redis")]
    redis_down_until: Option<Instant>,
}

impl Local {
    /// How long the pause that holds a call to `chat` has left.
    fn pause_left(&self, chat: Option<i64>, now: Instant) -> Duration {
        let bot = self.paused_until;
        let chat = chat.and_then(|c| self.chat_paused_until.get(&c).copied());
        bot.into_iter()
            .chain(chat)
            .map(|until| until.saturating_duration_since(now))
            .max()
            .unwrap_or_default()
    }
}

/// What the limiter's shared state says about a call.
enum Verdict {
    /// Go now (the limits were advanced).
    Go,
    /// A limit asks to wait this long, then ask again.
    Wait(Duration),
    /// A 429's pause has this long left.
    #[cfg(feature = "redis")]
    Paused(Duration),
}

/// The chat id a call is addressed to, if numeric.
pub(crate) fn chat_of(target: Option<Target>) -> Option<i64> {
    match target?.chat? {
        ChatRef::Id(id) => Some(id),
        ChatRef::Username => None,
    }
}

/// The connection a bot's limits and pauses are shared through: Redis, with the
/// `redis` feature.
#[cfg(feature = "redis")]
pub(crate) type SharedState = crate::RedisConnection;

/// Without the `redis` feature there is nothing to share through (no value of this type
/// exists): every limit is kept in process.
#[cfg(not(feature = "redis"))]
#[derive(Clone)]
pub(crate) enum SharedState {}

/// A bot's limiter (shared by the clones of a `Bot`).
pub(crate) struct Limiter {
    bot: BotId,
    limits: RateLimits,
    /// The limits are [`RateLimits::unlimited`]: calls count against none.
    unlimited: bool,
    redis: Option<SharedState>,
    #[cfg(feature = "redis")]
    script: redis::Script,
    #[cfg(feature = "redis")]
    pause_script: redis::Script,
    local: Mutex<Local>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("bot", &self.bot)
            .field("limits", &self.limits)
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

/// Where the limiter took its decision (for tests and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decided {
    Redis,
    Local,
}

impl Limiter {
    pub(crate) fn new(bot: BotId, limits: RateLimits, redis: Option<SharedState>) -> Limiter {
        Limiter {
            unlimited: limits == RateLimits::unlimited(),
            bot,
            limits,
            redis,
            #[cfg(feature = "redis")]
            script: redis::Script::new(SCRIPT),
            #[cfg(feature = "redis")]
            pause_script: redis::Script::new(PAUSE_SCRIPT),
            local: Mutex::new(Local::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        // The state is a cache of timestamps: a panic elsewhere cannot corrupt it.
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(feature = "redis")]
    fn pause_key(&self) -> String {
        format!("tgpipe:pause:{{{}}}", self.bot)
    }

    #[cfg(feature = "redis")]
    fn chat_pause_key(&self, chat: i64) -> String {
        format!("tgpipe:pause:{{{}}}:chat:{chat}", self.bot)
    }

    /// The limits a call counts against: none unless its method is `limited`
    /// ([`is_limited_method`]).
    ///
    /// With [`RateLimits::unlimited`] (`TGPIPE_RATE_LIMITS=off`) there are none either:
    /// no limit of a million a second could make a call wait, and keeping each chat's
    /// cell (a formatted key, a map entry) would be work per call for nothing. Pauses
    /// that Telegram asks for are still kept.
    fn cells(&self, limited: bool, target: Option<Target>) -> Vec<Cell> {
        if !limited || self.unlimited {
            return Vec::new();
        }
        let l = &self.limits;
        let paid = target.is_some_and(|t| t.paid_broadcast);
        let mut cells = vec![if paid {
            Cell::new("paid".into(), l.paid_broadcast, l.bot_burst, true)
        } else {
            Cell::new("bot".into(), l.per_bot, l.bot_burst, true)
        }];
        match target.and_then(|t| t.chat) {
            Some(ChatRef::Id(id)) if id > 0 => {
                cells.push(Cell::new(
                    format!("chat:{id}"),
                    l.per_private_chat,
                    1,
                    false,
                ));
            }
            Some(ChatRef::Id(id)) => {
                cells.push(Cell::new(format!("chat:{id}"), l.per_group, 1, false));
            }
            // A channel by username: no id to key on; the bot-wide limit still holds.
            Some(ChatRef::Username) | None => {}
        }
        cells
    }

    /// Waits until this call may go: neither the bot nor the call's chat is paused and
    /// every limit allows it. A pause with more than `max_pause` left is not waited out:
    /// `Err` carries the time it has left.
    pub(crate) async fn acquire(
        &self,
        limited: bool,
        target: Option<Target>,
        max_pause: Duration,
    ) -> Result<Decided, Duration> {
        let cells = self.cells(limited, target);
        let chat = chat_of(target);
        loop {
            let left = self.lock().pause_left(chat, Instant::now());
            if left > max_pause {
                return Err(left);
            }
            if !left.is_zero() {
                crate::idle::idle(tokio::time::sleep(left)).await;
                continue;
            }
            let (decided, verdict) = match self.try_redis(&cells, chat).await {
                Some(verdict) => (Decided::Redis, verdict),
                None => match self.try_local(&cells) {
                    wait if wait.is_zero() => (Decided::Local, Verdict::Go),
                    wait => (Decided::Local, Verdict::Wait(wait)),
                },
            };
            match verdict {
                Verdict::Go => {
                    if decided == Decided::Redis {
                        self.remember_send(&cells);
                    }
                    return Ok(decided);
                }
                Verdict::Wait(wait) => crate::idle::idle(tokio::time::sleep(wait)).await,
                #[cfg(feature = "redis")]
                Verdict::Paused(left) if left > max_pause => return Err(left),
                #[cfg(feature = "redis")]
                Verdict::Paused(left) => crate::idle::idle(tokio::time::sleep(left)).await,
            }
        }
    }

    /// Asks Redis; `None` when there is no Redis or it did not answer.
    #[cfg(feature = "redis")]
    async fn try_redis(&self, cells: &[Cell], chat: Option<i64>) -> Option<Verdict> {
        let mut conn = self.redis.clone()?;
        if self
            .lock()
            .redis_down_until
            .is_some_and(|t| t > Instant::now())
        {
            return None;
        }
        let mut invocation = self.script.key(self.pause_key());
        match chat {
            Some(c) => invocation.key(self.chat_pause_key(c)).arg(2),
            None => invocation.arg(1),
        };
        for c in cells {
            invocation
                .key(format!("tgpipe:rl:{{{}}}:{}", self.bot, c.suffix))
                .arg(c.interval_us)
                .arg(c.tolerance_us);
        }
        let answer =
            tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async::<i64>(&mut conn)).await;
        match answer {
            Ok(Ok(0)) => Some(Verdict::Go),
            Ok(Ok(us)) if us > 0 => Some(Verdict::Wait(Duration::from_micros(us.unsigned_abs()))),
            Ok(Ok(us)) => Some(Verdict::Paused(Duration::from_micros(us.unsigned_abs()))),
            Ok(Err(e)) => {
                self.redis_failed(&e.to_string());
                None
            }
            Err(_) => {
                self.redis_failed("no answer in time");
                None
            }
        }
    }

    #[cfg(feature = "redis")]
    fn redis_failed(&self, why: &str) {
        let mut local = self.lock();
        let now = Instant::now();
        // One warning per outage window, not one per call.
        if local.redis_down_until.is_none_or(|t| t + REDIS_RETRY < now) {
            tracing::warn!(bot = %self.bot, error = why, "rate limiter: Redis unavailable; limiting in process");
        }
        local.redis_down_until = Some(now + REDIS_RETRY);
    }

    /// Without the `redis` feature there is no shared state to ask.
    #[cfg(not(feature = "redis"))]
    async fn try_redis(&self, _cells: &[Cell], _chat: Option<i64>) -> Option<Verdict> {
        None
    }

    /// The in-process GCRA: 0 (go, limits advanced) or how long to wait.
    fn try_local(&self, cells: &[Cell]) -> Duration {
        let pods = self.limits.expected_pods.max(1);
        let now = Instant::now();
        let mut local = self.lock();
        let mut wait = Duration::ZERO;
        let mut next = Vec::with_capacity(cells.len());
        for c in cells {
            let factor = if c.shared_by_pods { u64::from(pods) } else { 1 };
            let interval = Duration::from_micros(c.interval_us * factor);
            let tolerance = Duration::from_micros(c.tolerance_us * factor);
            let tat = local.tats.get(&c.suffix).copied().unwrap_or(now).max(now);
            let allowed_at = tat.checked_sub(tolerance).unwrap_or(now);
            wait = wait.max(allowed_at.saturating_duration_since(now));
            next.push(tat + interval);
        }
        if !wait.is_zero() {
            return wait;
        }
        for (c, tat) in cells.iter().zip(next) {
            local.tats.insert(c.suffix.clone(), tat);
        }
        // Forget chats that no longer limit anything, so memory follows active chats.
        if local.tats.len() > 10_000 {
            local.tats.retain(|_, tat| *tat > now);
        }
        Duration::ZERO
    }

    /// Notes a send Redis allowed in the in-process state too, so that a fallback in
    /// the middle of a burst still spaces this pod's next message after its last one.
    /// Only the last send counts (no backlog): with Redis a pod may have sent more than
    /// its share while the others were idle.
    fn remember_send(&self, cells: &[Cell]) {
        let pods = u64::from(self.limits.expected_pods.max(1));
        let now = Instant::now();
        let mut local = self.lock();
        for c in cells {
            let factor = if c.shared_by_pods { pods } else { 1 };
            let tat = now + Duration::from_micros(c.interval_us * factor);
            local.tats.insert(c.suffix.clone(), tat);
        }
    }

    /// A 429 said to wait: pause `chat` (the chat the refused call went to) or, without
    /// one, the whole bot, here and (through Redis) in every pod. Saturating: a `wait`
    /// beyond [`MAX_PAUSE`] is kept as [`MAX_PAUSE`].
    pub(crate) async fn pause(&self, chat: Option<i64>, wait: Duration) {
        let wait = wait.min(MAX_PAUSE);
        {
            let mut local = self.lock();
            let now = Instant::now();
            let until = now.checked_add(wait).unwrap_or(now);
            let slot = match chat {
                Some(c) => {
                    // Forget chats whose pause is over, so memory follows paused chats.
                    if local.chat_paused_until.len() > 10_000 {
                        local.chat_paused_until.retain(|_, t| *t > now);
                    }
                    local.chat_paused_until.entry(c).or_insert(until)
                }
                None => local.paused_until.get_or_insert(until),
            };
            if *slot < until {
                *slot = until;
            }
        }
        #[cfg(feature = "redis")]
        self.share_pause(chat, wait).await;
    }

    /// Sets the pause in Redis too, for the other pods of the bot.
    #[cfg(feature = "redis")]
    async fn share_pause(&self, chat: Option<i64>, wait: Duration) {
        let Some(mut conn) = self.redis.clone() else {
            return;
        };
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let key = match chat {
            Some(c) => self.chat_pause_key(c),
            None => self.pause_key(),
        };
        let mut invocation = self.pause_script.key(key);
        invocation.arg(ms);
        let set = invocation.invoke_async::<i64>(&mut conn);
        match tokio::time::timeout(REDIS_TIMEOUT, set).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.redis_failed(&e.to_string()),
            Err(_) => self.redis_failed("no answer in time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limits: RateLimits) -> Limiter {
        Limiter::new(BotId(1), limits, None)
    }

    fn to(chat: i64) -> Option<Target> {
        Some(Target {
            chat: Some(ChatRef::Id(chat)),
            paid_broadcast: false,
        })
    }

    #[test]
    fn only_sending_methods_are_limited() {
        let l = limiter(RateLimits::default());
        assert!(
            l.cells(is_limited_method("answerCallbackQuery"), to(5))
                .is_empty()
        );
        assert_eq!(l.cells(is_limited_method("sendMessage"), to(5)).len(), 2);
        assert_eq!(
            l.cells(is_limited_method("sendMessage"), to(5))[1].interval_us,
            1_000_000
        );
        assert_eq!(
            l.cells(is_limited_method("sendMessage"), to(-5))[1].interval_us,
            3_000_000
        );
        let paid = Some(Target {
            chat: None,
            paid_broadcast: true,
        });
        assert_eq!(
            l.cells(is_limited_method("sendMessage"), paid)[0].interval_us,
            1_000
        );
    }

    #[test]
    fn local_gcra_spaces_a_private_chat() {
        let l = limiter(RateLimits {
            bot_burst: 10,
            ..RateLimits::default()
        });
        let cells = l.cells(is_limited_method("sendMessage"), to(5));
        assert!(l.try_local(&cells).is_zero());
        let wait = l.try_local(&cells);
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        // Another chat is not held up by the first one's limit.
        assert!(
            l.try_local(&l.cells(is_limited_method("sendMessage"), to(6)))
                .is_zero()
        );
    }

    #[test]
    fn local_fallback_divides_the_bot_rate_among_pods() {
        let l = limiter(RateLimits {
            expected_pods: 3,
            ..RateLimits::default()
        });
        let cells = l.cells(is_limited_method("sendMessage"), None);
        assert!(l.try_local(&cells).is_zero());
        let wait = l.try_local(&cells);
        // 30/s shared by 3 pods: 10/s here, 100 ms apart.
        assert!(wait > Duration::from_millis(95) && wait <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_pause_holds_every_method() {
        let l = limiter(RateLimits::default());
        l.pause(None, Duration::from_millis(150)).await;
        let started = Instant::now();
        l.acquire(
            is_limited_method("answerCallbackQuery"),
            None,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(140));
    }

    #[tokio::test]
    async fn unlimited_limits_keep_no_state_per_chat_but_still_honour_a_pause() {
        let l = limiter(RateLimits::unlimited());
        for chat in 1..=100 {
            l.acquire(
                is_limited_method("sendMessage"),
                to(chat),
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        }
        assert!(l.lock().tats.is_empty());
        l.pause(Some(7), Duration::from_secs(60)).await;
        assert!(
            l.acquire(
                is_limited_method("sendMessage"),
                to(7),
                Duration::from_secs(1)
            )
            .await
            .is_err()
        );
        // With limits, every chat has its cell.
        let l = limiter(RateLimits::default());
        l.acquire(
            is_limited_method("sendMessage"),
            to(1),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert!(!l.lock().tats.is_empty());
    }

    #[tokio::test]
    async fn a_chats_pause_holds_that_chat_only() {
        let l = limiter(RateLimits::unlimited());
        l.pause(Some(5), Duration::from_secs(60)).await;
        let cap = Duration::from_secs(1);
        let left = l
            .acquire(is_limited_method("sendMessage"), to(5), cap)
            .await
            .unwrap_err();
        assert!(left > Duration::from_secs(59), "{left:?}");
        let started = Instant::now();
        l.acquire(is_limited_method("sendMessage"), to(6), cap)
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_retry_after_of_10_to_the_12_seconds_does_not_panic() {
        let l = limiter(RateLimits::default());
        let huge = Duration::from_secs(1_000_000_000_000);
        l.pause(None, huge).await;
        l.pause(Some(5), Duration::MAX).await;
        let left = l
            .acquire(
                is_limited_method("sendMessage"),
                to(5),
                Duration::from_secs(30),
            )
            .await
            .unwrap_err();
        assert!(
            left > Duration::from_secs(3600) && left <= MAX_PAUSE,
            "{left:?}"
        );
    }
}
