//! The Bot API client against the stand-in (and a real Redis): typed errors, retries,
//! the shared rate limits and pauses, the in-process fallback, middleware, helpers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tgpipe_bot::chain::{BoxFuture, Middleware};
use tgpipe_bot::{
    ApiNext, ApiRequest, CallbackQueryExt, ChatActionSender, InputFile, MediaGroup, MessageExt,
    Rate, RateLimits, RetryPolicy,
};
use tgpipe_bot::{ApiResult, Bot, BotError, ErrorClass};
use tgpipe_testkit::sink::{Fault, RecordedCall, Sink, SinkConfig, SinkHandle};
use tgpipe_testkit::{RedisServer, eventually, eventually_some};

const TOKEN: &str = "123:TEST";

async fn sink() -> SinkHandle {
    Sink::start(SinkConfig::default()).await.unwrap()
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..RetryPolicy::default()
    }
}

fn bot(sink: &SinkHandle, retry: RetryPolicy) -> Bot {
    Bot::builder(TOKEN)
        .api_url(&sink.url())
        .limits(fast_limits())
        .retry(retry)
        .request_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

/// Limits loose enough not to slow a test down, unless it sets them.
fn fast_limits() -> RateLimits {
    RateLimits {
        per_bot: Rate::per_second(1000),
        per_private_chat: Rate::per_second(1000),
        per_group: Rate::per_second(1000),
        ..RateLimits::default()
    }
}

fn gaps(calls: &[RecordedCall]) -> Vec<Duration> {
    let mut at: Vec<SystemTime> = calls.iter().map(|c| c.at).collect();
    at.sort();
    at.windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap_or_default())
        .collect()
}

/// The most calls that arrived within any one second (arrival times carry the network's
/// jitter, so limits are checked over windows rather than single gaps).
fn busiest_second(calls: &[RecordedCall]) -> usize {
    let mut at: Vec<SystemTime> = calls.iter().map(|c| c.at).collect();
    at.sort();
    (0..at.len())
        .map(|i| {
            at[i..]
                .iter()
                .take_while(|u| {
                    u.duration_since(at[i]).unwrap_or_default() < Duration::from_secs(1)
                })
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Two clients of one bot sharing one Redis, as two pods would.
fn two_clients(
    s: &SinkHandle,
    redis: &RedisServer,
    limits: RateLimits,
    retry: Option<RetryPolicy>,
) -> (Bot, Bot) {
    let make = || {
        let mut builder = Bot::builder(TOKEN)
            .api_url(&s.url())
            .redis_url(&redis.url())
            .unwrap()
            .limits(limits.clone());
        if let Some(retry) = &retry {
            builder = builder.retry(retry.clone());
        }
        builder.build().unwrap()
    };
    (make(), make())
}

#[tokio::test]
async fn every_error_class_comes_back_typed_and_classified() {
    let s = sink().await;
    let b = Bot::builder(TOKEN)
        .api_url(&s.url())
        .retry(RetryPolicy::none())
        .limits(fast_limits())
        .build()
        .unwrap();
    type Check = Box<dyn Fn(&BotError) -> bool>;
    let cases: Vec<(Fault, Check, bool)> = vec![
        (
            Fault::migrate(-100_777),
            Box::new(|e| *e == BotError::MigrateToChat(-100_777)),
            false,
        ),
        (
            Fault::forbidden(),
            Box::new(|e| matches!(e, BotError::Forbidden(d) if d.contains("blocked"))),
            false,
        ),
        (
            Fault::bad_request("chat not found"),
            Box::new(|e| matches!(e, BotError::BadRequest(d) if d.contains("chat not found"))),
            false,
        ),
        (
            Fault::not_found(),
            Box::new(|e| *e == BotError::NotFound),
            false,
        ),
        (
            Fault::conflict(),
            Box::new(|e| matches!(e, BotError::Conflict(_))),
            false,
        ),
        (
            Fault::server(502),
            Box::new(|e| *e == BotError::Server(502)),
            true,
        ),
        (
            Fault::proxy_error(504),
            Box::new(|e| *e == BotError::Server(504)),
            true,
        ),
        (
            Fault::malformed(),
            Box::new(|e| matches!(e, BotError::InvalidResponse(_))),
            false,
        ),
        // Last: it pauses the bot for its seven seconds.
        (
            Fault::retry_after(7),
            Box::new(|e| *e == BotError::RetryAfter(Duration::from_secs(7))),
            true,
        ),
    ];
    for (fault, is_expected, transient) in cases {
        s.push_fault("sendMessage", fault.clone());
        let e = b.send_text(5, "x").await.unwrap_err();
        assert!(is_expected(&e), "{fault:?} gave {e:?}");
        assert_eq!(e.is_transient(), transient, "{e:?}");
        // The class is in the type, the source is free for a cause.
        let expected = if transient {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        };
        assert_eq!(e.class(), expected, "{e:?}");
    }
    // The network: nothing listens there.
    let port = tgpipe_testkit::free_port();
    let gone = Bot::builder(TOKEN)
        .api_url(&format!("http://127.0.0.1:{port}"))
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let e = gone.send_text(5, "x").await.unwrap_err();
    assert!(
        matches!(e, BotError::Network(_)) && e.is_transient(),
        "{e:?}"
    );
    assert!(
        !e.to_string().contains("TEST"),
        "the token is not in errors"
    );
}

#[tokio::test]
async fn a_429_is_waited_out_then_sent_again() {
    let s = sink().await;
    s.push_fault("sendMessage", Fault::retry_after(1));
    let b = bot(&s, quick_retries());
    let started = Instant::now();
    let m = b.send_text(5, "hello").await.unwrap();
    assert_eq!(m.text.as_deref(), Some("hello"));
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    let calls = s.calls();
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [429, 200]
    );
    assert!(gaps(&calls)[0] >= Duration::from_millis(950));

    // Bounded: with more 429s than retries, the error comes back.
    s.clear();
    for _ in 0..3 {
        s.push_fault("sendMessage", Fault::retry_after(0));
    }
    let b = bot(
        &s,
        RetryPolicy {
            max_flood_retries: 2,
            ..quick_retries()
        },
    );
    let e = b.send_text(5, "x").await.unwrap_err();
    assert!(matches!(e, BotError::RetryAfter(_)));
    assert_eq!(s.calls().len(), 3);

    // A wait longer than the policy allows goes back to the handler at once.
    s.clear();
    s.push_fault("sendMessage", Fault::retry_after(60));
    let b = bot(
        &s,
        RetryPolicy {
            max_retry_after: Duration::from_secs(5),
            ..quick_retries()
        },
    );
    let started = Instant::now();
    let e = b.send_text(5, "x").await.unwrap_err();
    assert_eq!(e, BotError::RetryAfter(Duration::from_secs(60)));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn server_errors_and_slow_answers_are_retried_with_backoff() {
    let s = sink().await;
    s.push_fault("editMessageText", Fault::server(500));
    s.push_fault("editMessageText", Fault::proxy_error(502));
    let b = bot(&s, quick_retries());
    let edit = json!({"chat_id": 5, "message_id": 1, "text": "x"});
    b.call::<_, serde_json::Value>("editMessageText", &edit)
        .await
        .unwrap();
    assert_eq!(
        s.calls().iter().map(|c| c.status).collect::<Vec<_>>(),
        [500, 502, 200]
    );

    // Bounded.
    s.clear();
    for _ in 0..4 {
        s.push_fault("getMe", Fault::server(503));
    }
    assert_eq!(b.me().await.unwrap_err(), BotError::Server(503));
    assert_eq!(s.calls().len(), 4, "one call and three retries");

    // A slow answer times out; `getMe` is safe to send again, a message is not (it may
    // have been delivered), so that error goes to the handler.
    s.clear();
    s.push_fault("getMe", Fault::slow(Duration::from_secs(2)));
    b.me().await.unwrap();
    s.push_fault("sendMessage", Fault::slow(Duration::from_secs(2)));
    let started = Instant::now();
    let e = b.send_text(5, "x").await.unwrap_err();
    assert!(matches!(e, BotError::Network(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
}

/// Telegram's edge answers 502 when the server behind it did not answer in time, after
/// it may have posted the message: the client used to send it again, up to 4 copies.
#[tokio::test]
async fn a_502_after_send_message_was_posted_is_not_sent_again_by_the_client() {
    let s = sink().await;
    s.push_fault("sendMessage", Fault::proxy_error(502));
    s.push_fault("sendMessage", Fault::server(500));
    let b = bot(&s, quick_retries());
    assert_eq!(
        b.send_text(5, "x").await.unwrap_err(),
        BotError::Server(502)
    );
    assert_eq!(s.calls().len(), 1, "one request, no blind retry");
    // Still transient: the update's next attempt may send it (once) again.
    assert_eq!(
        b.send_text(5, "x").await.unwrap_err(),
        BotError::Server(500)
    );
    assert_eq!(s.calls().len(), 2);
}

/// A timeout after sending used to be retried for every method that is not a message
/// (up to 4 gifts paid for); a 5xx too.
#[tokio::test]
async fn a_gift_that_timed_out_after_sending_is_not_sent_again_and_says_so() {
    let s = sink().await;
    let b = bot(&s, quick_retries());
    // One request times out after 500 ms; sent again, it would take 4 times that.
    s.push_fault("sendGift", Fault::slow(Duration::from_secs(2)));
    let started = Instant::now();
    let e = b
        .call::<_, serde_json::Value>("sendGift", &json!({"user_id": 5, "gift_id": "g1"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BotError::Unconfirmed(d) if d.starts_with("sendGift")),
        "{e:?}"
    );
    assert!(!e.is_transient(), "dead-lettered for a person, not retried");
    assert!(started.elapsed() < Duration::from_millis(900), "sent once");
    // A 5xx may come after Telegram acted too.
    s.push_fault("transferGift", Fault::server(500));
    let e = b
        .call::<_, serde_json::Value>("transferGift", &json!({"owned_gift_id": "o1"}))
        .await
        .unwrap_err();
    assert!(matches!(e, BotError::Unconfirmed(_)), "{e:?}");
    assert_eq!(s.stats().by_method.get("transferGift"), Some(&1));
    // Topics are not paid for, but made anew on each call: not sent again either, and
    // the error stays transient.
    s.push_fault("createForumTopic", Fault::slow(Duration::from_secs(2)));
    let started = Instant::now();
    let e = b
        .call::<_, serde_json::Value>("createForumTopic", &json!({"chat_id": -5, "name": "t"}))
        .await
        .unwrap_err();
    assert!(matches!(e, BotError::Network(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(900), "sent once");
}

#[tokio::test]
async fn migration_is_an_error_or_followed_once_when_configured() {
    let s = sink().await;
    s.push_fault("sendMessage", Fault::migrate(-100_123));
    let b = bot(&s, quick_retries());
    assert_eq!(
        b.send_text(-123, "x").await.unwrap_err(),
        BotError::MigrateToChat(-100_123)
    );
    s.push_fault("sendMessage", Fault::migrate(-100_123));
    let b = bot(
        &s,
        RetryPolicy {
            follow_migration: true,
            ..quick_retries()
        },
    );
    let m = b.send_text(-123, "x").await.unwrap();
    assert_eq!(m.chat.id, -100_123);
    let calls = s.calls();
    assert_eq!(calls.last().unwrap().params["chat_id"], json!(-100_123));
}

/// Two bots (as in two pods) sharing one Redis keep one private chat's limit together.
#[tokio::test]
async fn two_clients_sharing_redis_keep_the_per_chat_limit() {
    let redis = RedisServer::start();
    let s = sink().await;
    let limits = RateLimits {
        per_private_chat: Rate::per_second(5),
        ..fast_limits()
    };
    let (a, b) = two_clients(&s, &redis, limits, None);
    let send = |bot: Bot| async move {
        for i in 0..5 {
            bot.send_text(42, &format!("m{i}")).await.unwrap();
        }
    };
    let started = Instant::now();
    tokio::join!(send(a), send(b));
    let calls = s.calls();
    assert_eq!(calls.len(), 10);
    // 5 a second: ten messages take at least 1.8 s, and no second holds more than 6
    // (the limit plus one late arrival).
    let busiest = busiest_second(&calls);
    assert!(
        busiest <= 6,
        "{busiest} messages to one chat within a second"
    );
    assert!(started.elapsed() >= Duration::from_millis(1750));
    eprintln!(
        "10 messages to one chat from 2 clients: {:?}, at most {busiest} in any second",
        started.elapsed()
    );
}

#[tokio::test]
async fn two_clients_sharing_redis_keep_the_per_bot_limit() {
    let redis = RedisServer::start();
    let s = sink().await;
    let limits = RateLimits {
        per_bot: Rate::per_second(20),
        ..fast_limits()
    };
    let (a, b) = two_clients(&s, &redis, limits, None);
    // Each to its own chats: only the bot-wide limit binds.
    let send = |bot: Bot, base: i64| async move {
        let sends = (0..20).map(|i| {
            let bot = bot.clone();
            async move { bot.send_text(base + i, "x").await.unwrap() }
        });
        futures::future::join_all(sends).await;
    };
    let started = Instant::now();
    tokio::join!(send(a, 1000), send(b, 2000));
    let elapsed = started.elapsed();
    let calls = s.calls();
    assert_eq!(calls.len(), 40);
    // No window of one second holds more than 20 (+1 for the window's edge).
    let busiest = busiest_second(&calls);
    assert!(busiest <= 21, "{busiest} calls within a second");
    assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
    eprintln!(
        "40 messages, 20/s shared by 2 clients: {elapsed:?} ({:.1} msg/s), at most {busiest} in any second",
        40.0 / elapsed.as_secs_f64()
    );
}

/// A 429 for a call to a chat pauses that chat (a chat's flood), in every pod sharing the
/// Redis; other chats go on.
#[tokio::test]
async fn a_429_seen_by_one_client_pauses_its_chat_in_the_other() {
    let redis = RedisServer::start();
    let s = sink().await;
    let (a, b) = two_clients(&s, &redis, fast_limits(), Some(quick_retries()));
    s.push_fault("sendMessage", Fault::retry_after(1));
    let first = tokio::spawn(async move { a.send_text(1, "a").await });
    let calls = s.wait_for_calls(1, Duration::from_secs(5)).await;
    assert_eq!(calls[0].status, 429);
    let paused_at = calls[0].at;
    // a sets the chat's pause as soon as its 429 arrives.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    eventually(Duration::from_secs(2), "a pause key in Redis", || {
        let mut conn = conn.clone();
        async move {
            let ttl: i64 = redis::cmd("PTTL")
                .arg("tgpipe:pause:{123}:chat:1")
                .query_async(&mut conn)
                .await
                .unwrap();
            ttl > 0
        }
    })
    .await;
    let bot_ttl: i64 = redis::cmd("PTTL")
        .arg("tgpipe:pause:{123}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(bot_ttl < 0, "a chat's flood does not pause the bot");
    // Another chat is not held.
    b.send_text(3, "other chat").await.unwrap();
    let other = s.calls().last().unwrap().at;
    assert!(
        other.duration_since(paused_at).unwrap_or_default() < Duration::from_millis(700),
        "another chat waited for the paused one"
    );
    // b has seen no 429 itself; it learns of the chat's pause from Redis.
    b.send_text(1, "b").await.unwrap();
    first.await.unwrap().unwrap();
    let calls = s.calls();
    assert_eq!(calls.len(), 4);
    for c in calls
        .iter()
        .filter(|c| c.params["chat_id"] == json!(1))
        .skip(1)
    {
        let after = c.at.duration_since(paused_at).unwrap_or_default();
        assert!(
            after >= Duration::from_millis(900),
            "sent {after:?} after the 429"
        );
    }
}

/// A 429 for a call addressed to no chat pauses the whole bot.
#[tokio::test]
async fn a_429_without_a_chat_pauses_the_bot() {
    let s = sink().await;
    s.push_fault("answerCallbackQuery", Fault::retry_after(1));
    let b = bot(&s, quick_retries());
    let started = Instant::now();
    let e = b
        .call::<_, bool>("answerCallbackQuery", &json!({"callback_query_id": "q"}))
        .await;
    assert_eq!(e, Ok(true));
    b.send_text(9, "held").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(950));
}

/// `Instant::now() + retry_after` panicked on a huge `retry_after`; the pause is kept for
/// at most a day, the call is refused at once with the full wait (transient), and later
/// calls to the chat, in this pod and in another sharing the Redis, are refused without
/// being sent instead of holding their handlers.
#[tokio::test]
async fn a_retry_after_of_10_to_the_12_seconds_does_not_panic() {
    let redis = RedisServer::start();
    let s = sink().await;
    let (a, b) = two_clients(&s, &redis, fast_limits(), Some(quick_retries()));
    s.push_fault("sendMessage", Fault::retry_after(1_000_000_000_000));
    let started = Instant::now();
    let e = a.send_text(1, "x").await.unwrap_err();
    assert_eq!(
        e,
        BotError::RetryAfter(Duration::from_secs(1_000_000_000_000))
    );
    assert!(e.is_transient());
    for client in [&a, &b] {
        match client.send_text(1, "again").await {
            Err(BotError::RetryAfter(left)) => {
                assert!(left > Duration::from_secs(3600), "{left:?}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(s.calls().len(), 1, "refused calls are not sent");
    // Other chats are not paused.
    b.send_text(2, "fine").await.unwrap();
}

#[tokio::test]
async fn without_redis_the_in_process_limiter_keeps_the_limits() {
    let mut redis = RedisServer::start();
    let s = sink().await;
    let b = Bot::builder(TOKEN)
        .api_url(&s.url())
        .redis_url(&redis.url())
        .unwrap()
        .limits(RateLimits {
            per_private_chat: Rate::per_second(5),
            ..fast_limits()
        })
        .build()
        .unwrap();
    b.send_text(7, "with redis").await.unwrap();
    redis.stop();
    let started = Instant::now();
    for i in 0..4 {
        b.send_text(7, &format!("without {i}")).await.unwrap();
    }
    // Still spaced (five messages at 5/s span at least 0.8 s, less the arrivals'
    // jitter), and not held up by the dead Redis for long.
    let spread: Duration = gaps(&s.calls()).into_iter().sum();
    assert!(spread >= Duration::from_millis(740), "{spread:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A bot whose Redis was never there works the same.
    let port = tgpipe_testkit::free_port();
    let b = Bot::builder(TOKEN)
        .api_url(&s.url())
        .redis_url(&format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .build()
        .unwrap();
    b.send_text(8, "x").await.unwrap();

    // And a bot with no Redis configured keeps its share of the bot-wide rate.
    s.clear();
    let b = Bot::builder(TOKEN)
        .api_url(&s.url())
        .limits(RateLimits {
            per_bot: Rate::per_second(20),
            expected_pods: 2,
            ..fast_limits()
        })
        .build()
        .unwrap();
    for i in 0..4 {
        b.send_text(100 + i, "x").await.unwrap();
    }
    // 20/s over 2 pods: 10/s here, so four messages span at least 0.3 s.
    let spread: Duration = gaps(&s.calls()).into_iter().sum();
    assert!(spread >= Duration::from_millis(270), "{spread:?}");
}

#[tokio::test]
async fn only_sending_methods_are_rate_limited() {
    let s = sink().await;
    let b = Bot::builder(TOKEN)
        .api_url(&s.url())
        .limits(RateLimits {
            per_private_chat: Rate::per_second(1),
            ..RateLimits::default()
        })
        .build()
        .unwrap();
    b.send_text(5, "x").await.unwrap();
    let started = Instant::now();
    for _ in 0..5 {
        let _: bool = b
            .call(
                "answerCallbackQuery",
                &json!({"callback_query_id": "1", "chat_id": 5}),
            )
            .await
            .unwrap();
    }
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Middleware<ApiRequest, ApiResult> for Seen {
    fn call(&self, request: ApiRequest, next: ApiNext) -> BoxFuture<'static, ApiResult> {
        let log = Arc::clone(&self.0);
        Box::pin(async move {
            let method = request.method.clone();
            let result = next.run(request).await;
            log.lock()
                .unwrap()
                .push(format!("{method}:{}", result.is_ok()));
            result
        })
    }
}

struct Refuse(i64);

impl Middleware<ApiRequest, ApiResult> for Refuse {
    fn call(&self, request: ApiRequest, next: ApiNext) -> BoxFuture<'static, ApiResult> {
        if request.chat_id() == Some(self.0) {
            return Box::pin(async { Err(BotError::Forbidden("refused by middleware".into())) });
        }
        next.run(request)
    }
}

#[tokio::test]
async fn request_middleware_wraps_every_call_typed_or_not() {
    use frankenstein::AsyncTelegramApi;
    let s = sink().await;
    let seen = Seen::default();
    let b = Bot::builder(TOKEN)
        .api_url(&s.url())
        .middleware(seen.clone())
        .middleware(Refuse(13))
        .build()
        .unwrap();
    b.send_text(1, "x").await.unwrap();
    b.get_me().await.unwrap();
    assert!(matches!(
        b.send_text(13, "x").await,
        Err(BotError::Forbidden(_))
    ));
    assert_eq!(
        *seen.0.lock().unwrap(),
        ["sendMessage:true", "getMe:true", "sendMessage:false"]
    );
    assert_eq!(s.calls().len(), 2, "the refused call never left");
}

#[tokio::test]
async fn uploads_are_multipart_and_references_are_json() {
    let s = sink().await;
    let b = bot(&s, quick_retries());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("photo.jpg");
    std::fs::write(&path, [0u8; 1234]).unwrap();
    let _: serde_json::Value = b
        .call_with_files(
            "sendPhoto",
            &json!({"chat_id": 5, "caption": "c", "reply_markup": {"inline_keyboard": []}}),
            vec![("photo".into(), InputFile::path(&path))],
        )
        .await
        .unwrap();
    let _: serde_json::Value = b
        .call_with_files(
            "sendPhoto",
            &json!({"chat_id": 5}),
            vec![("photo".into(), InputFile::file_id("AgAC"))],
        )
        .await
        .unwrap();
    let msgs = MediaGroup::new()
        .photo(InputFile::bytes("a.jpg", vec![1; 10]), Some("a"))
        .photo(InputFile::url("https://example.com/b.jpg"), None)
        .document(InputFile::bytes("c.txt", vec![2; 20]), None)
        .send(&b, 5)
        .await
        .unwrap();
    assert_eq!(msgs.len(), 3);
    let calls = s.calls();
    assert_eq!(calls[0].files.len(), 1);
    assert_eq!(
        (
            calls[0].files[0].field.as_str(),
            calls[0].files[0].file_name.as_deref(),
            calls[0].files[0].size
        ),
        ("photo", Some("photo.jpg"), 1234)
    );
    assert_eq!(calls[0].params["caption"], json!("c"));
    assert!(calls[1].files.is_empty());
    assert_eq!(calls[1].params["photo"], json!("AgAC"));
    assert_eq!(calls[1].params["chat_id"], json!(5), "JSON, not a form");
    assert_eq!(
        calls[2]
            .files
            .iter()
            .map(|f| (f.field.as_str(), f.size))
            .collect::<Vec<_>>(),
        [("file0", 10), ("file1", 20)]
    );
    let media: serde_json::Value =
        serde_json::from_str(calls[2].params["media"].as_str().unwrap()).unwrap();
    assert_eq!(media[0]["media"], json!("attach://file0"));
    assert_eq!(media[1]["media"], json!("https://example.com/b.jpg"));
    assert!(matches!(
        MediaGroup::new()
            .photo(InputFile::file_id("x"), None)
            .send(&b, 5)
            .await,
        Err(BotError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn chat_actions_repeat_until_stopped_and_shortcuts_answer_in_place() {
    let s = sink().await;
    let b = Bot::builder(TOKEN)
        .api_url(&s.url())
        .limits(fast_limits())
        .build()
        .unwrap();
    let typing = ChatActionSender::with_interval(&b, 5, "typing", Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(350)).await;
    typing.stop();
    let n = s.calls().len();
    assert!((3..=5).contains(&n), "{n} chat actions");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.calls().len(), n, "none after stop");
    assert!(
        s.calls()
            .iter()
            .all(|c| c.method == "sendChatAction" && c.params["action"] == json!("typing"))
    );

    s.clear();
    let msg: frankenstein::types::Message = serde_json::from_value(json!({
        "message_id": 77, "date": 0, "message_thread_id": 9, "is_topic_message": true,
        "chat": {"id": -1005, "type": "supergroup"}, "text": "hi"
    }))
    .unwrap();
    msg.answer(&b, "a").await.unwrap();
    msg.reply(&b, "r").await.unwrap();
    let q: frankenstein::types::CallbackQuery = serde_json::from_value(json!({
        "id": "cb1", "chat_instance": "ci", "from": {"id": 1, "is_bot": false, "first_name": "U"},
        "message": {"message_id": 3, "date": 0, "chat": {"id": 1, "type": "private"}, "text": "t"}
    }))
    .unwrap();
    q.answer(&b).await.unwrap();
    q.answer_text(&b, "done", true).await.unwrap();
    q.answer_in_chat(&b, "in chat").await.unwrap();
    let calls = s.calls();
    assert_eq!(calls[0].params["message_thread_id"], json!(9));
    assert_eq!(calls[1].params["reply_parameters"]["message_id"], json!(77));
    assert_eq!(calls[2].params, json!({"callback_query_id": "cb1"}));
    assert_eq!(calls[3].params["show_alert"], json!(true));
    assert_eq!(
        (calls[4].method.as_str(), &calls[4].params["chat_id"]),
        ("sendMessage", &json!(1))
    );
}

/// The fallback lasts only while Redis is away: once it answers again, the limits are
/// shared again.
#[tokio::test]
async fn the_limiter_returns_to_redis_when_it_is_back() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let s = sink().await;
    let b = Bot::builder(TOKEN)
        .api_url(&s.url())
        .redis_url(&url)
        .unwrap()
        .limits(fast_limits())
        .build()
        .unwrap();
    b.send_text(7, "with redis").await.unwrap();
    redis.stop();
    b.send_text(7, "without").await.unwrap();

    // The same port again, a fresh (empty) Redis.
    redis.restart();
    // Ten seconds for both: Redis answering, then the limiter using it.
    let (restarted, limit) = (Instant::now(), Duration::from_secs(10));
    let conn = eventually_some(limit, "redis comes back", || async {
        let client = redis::Client::open(url.as_str()).unwrap();
        client.get_multiplexed_async_connection().await.ok()
    })
    .await;
    eventually(
        limit.saturating_sub(restarted.elapsed()),
        "the limiter keeps its state in Redis again",
        || {
            let (b, mut conn) = (&b, conn.clone());
            async move {
                b.send_text(7, "back").await.unwrap();
                let ttl: i64 = redis::cmd("PTTL")
                    .arg("tgpipe:rl:{123}:chat:7")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                ttl > 0
            }
        },
    )
    .await;
}

#[tokio::test]
async fn paid_broadcasts_have_their_own_higher_bot_wide_limit() {
    let redis = RedisServer::start();
    let s = sink().await;
    let b = Bot::builder(TOKEN)
        .api_url(&s.url())
        .redis_url(&redis.url())
        .unwrap()
        .limits(RateLimits {
            per_bot: Rate::per_second(2),
            paid_broadcast: Rate::per_second(1000),
            ..fast_limits()
        })
        .build()
        .unwrap();
    let started = Instant::now();
    for chat in 0..10 {
        let _: serde_json::Value = b
            .call(
                "sendMessage",
                &json!({"chat_id": 500 + chat, "text": "sale", "allow_paid_broadcast": true}),
            )
            .await
            .unwrap();
    }
    // At 2/s the ten would take 4.5 s.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    b.send_text(1, "free").await.unwrap();
    let started = Instant::now();
    b.send_text(2, "free").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the free limit still holds"
    );
}

#[tokio::test]
async fn closures_are_middleware_too() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let s = sink().await;
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let b = Bot::builder(TOKEN)
        .api_url(&s.url())
        .limits(fast_limits())
        .middleware(move |mut request: ApiRequest, next: ApiNext| {
            seen.fetch_add(1, Ordering::Relaxed);
            // Rewrite the request on its way out.
            if request.method == "getMe" {
                "getMyName".clone_into(&mut request.method);
            }
            next.run(request)
        })
        .build()
        .unwrap();
    b.send_text(1, "x").await.unwrap();
    let _ = b.me().await;
    assert_eq!(count.load(Ordering::Relaxed), 2);
    assert_eq!(s.calls()[1].method, "getMyName");
}
