//! A Redis outage costs latency, never an update: Redis frozen with `SIGSTOP` for 60 s
//! (connections open, nothing answers: a hung host, a slow Sentinel failover), or gone
//! without an RST behind a black-holing proxy, while updates keep arriving; nothing is
//! lost, nothing dead-lettered, each chat stays in order, and processing resumes within
//! 2 s of Redis answering again.

mod stack;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use stack::{Stack, chat_of, text, text_of};
use tgpipe_testkit::{TcpProxy, eventually_ok};

const OUTAGE: Duration = Duration::from_secs(60);
const CHATS: i64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60s_redis_outage_under_load_loses_nothing_and_resumes_within_2s() {
    let mut s = Stack::start().await;
    // The production retry delay (1 s, doubling): without a wake-up on recovery the
    // last wait before Redis returns would be 32 s.
    let worker = s
        .worker(&[
            ("TGPIPE_RETRY_DELAY", "1s"),
            ("RUST_LOG", "error,tgpipe_worker::runtime::redis_probe=info"),
        ])
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    // Each chat sends an update every 250 ms, the next only once the ingress answered.
    let posters = post_every_250ms(s.ingress, CHATS, &stop);

    tokio::time::sleep(Duration::from_secs(2)).await;
    s.redis.pause();
    let paused_at = SystemTime::now();
    tokio::time::sleep(OUTAGE).await;
    s.redis.resume();
    let resumed_at = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = collect(posters).await;
    let total: usize = sent.values().map(Vec::len).sum();
    let during: usize = sent
        .values()
        .flatten()
        .filter(|(at, _)| *at > paused_at && *at < resumed_at)
        .count();
    assert!(
        during >= 1000,
        "updates kept arriving during the outage: {during}"
    );

    // Everything is answered once, in order, and nothing went to the DLQ.
    let replies = all_answered(&s, total, Duration::from_secs(60)).await;
    for (chat, sent) in &sent {
        let want: Vec<&str> = sent.iter().map(|(_, t)| t.as_str()).collect();
        let got: Vec<&str> = replies[chat].iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(got, want, "chat {chat}: every update once, in order");
    }
    assert_eq!(s.dead_letters().await, 0, "an outage dead-letters nothing");

    // Processing resumed within 2 s of Redis answering: the first reply to an update
    // that arrived during the outage.
    let first_after = replies
        .values()
        .flatten()
        .map(|(at, _)| *at)
        .filter(|at| *at > resumed_at)
        .min()
        .expect("replies after the outage");
    let resumed_in = first_after.duration_since(resumed_at).unwrap_or_default();
    let last = replies.values().flatten().map(|(at, _)| *at).max().unwrap();
    eprintln!(
        "outage {OUTAGE:?}: {total} updates, {during} during the outage; first reply {resumed_in:?} after Redis answered, the backlog done in {:?}",
        last.duration_since(resumed_at).unwrap_or_default()
    );
    assert!(
        resumed_in <= Duration::from_secs(2),
        "processing resumed {resumed_in:?} after Redis answered"
    );
    drop(worker);
}

/// Out of memory (`maxmemory` reached), Redis still answers `PING` but refuses every
/// write: the recovery probe used to `PING`, saw Redis "answer again" every 250 ms and
/// woke the failing update each time, a retry (and a WARN) four times a second instead
/// of the 1 s, 2 s, 4 s backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_out_of_memory_does_not_wake_the_retries_every_250ms() {
    use clap::Parser;
    use std::sync::atomic::AtomicU32;
    use std::time::Instant;
    use tgpipe::fsm::FsmContext;
    use tgpipe::{Dispatcher, HandlerError, Router};

    let s = Stack::start().await;
    let attempts = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut router = Router::new("writes-state");
    let (a, d) = (Arc::clone(&attempts), Arc::clone(&done));
    router.message(move |fsm: FsmContext| {
        let (a, d) = (Arc::clone(&a), Arc::clone(&d));
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            fsm.set_state("filled").await?;
            d.store(true, Ordering::SeqCst);
            Ok::<_, HandlerError>(())
        }
    });
    let (nats, redis_url, api) = (s.nats.url(), s.redis.url(), s.sink.url());
    let config = tgpipe_worker::runtime::Cli::try_parse_from([
        "worker",
        "--nats-url",
        &nats,
        "--redis-url",
        &redis_url,
        "--bot-tokens",
        stack::TOKEN,
        "--api-url",
        &api,
        "--rate-limits",
        "off",
        "--retry-delay",
        "1s",
    ])
    .unwrap()
    .run
    .validate()
    .unwrap();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(tgpipe_worker::runtime::serve(
        config,
        Dispatcher::builder(router),
        ops,
        async {
            let _ = stopped.await;
        },
    ));
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let maxmemory = |bytes: &'static str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(bytes)
            .clone()
    };
    maxmemory("1").query_async::<()>(&mut redis).await.unwrap();
    assert_eq!(s.post(&text(130_001, 13_001, "/start")).await, 200);
    eventually_ok(Duration::from_secs(20), "the first attempt", || {
        std::future::ready(match attempts.load(Ordering::SeqCst) {
            0 => Err("not yet"),
            _ => Ok(()),
        })
    })
    .await;
    let first = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let in_8s = attempts.load(Ordering::SeqCst);
    eprintln!("Redis out of memory: {in_8s} attempts in the first 8 s");
    // The backoff's attempts at 0, 1, 3 and 7 s (+ jitter-free 100 ms slack), not 30.
    assert!(
        in_8s <= 5,
        "{in_8s} attempts in 8 s: the backoff was defeated"
    );
    assert!(!done.load(Ordering::SeqCst));
    maxmemory("0").query_async::<()>(&mut redis).await.unwrap();
    let restored = Instant::now();
    eventually_ok(
        Duration::from_secs(30),
        "handled once Redis takes writes",
        || {
            std::future::ready(match done.load(Ordering::SeqCst) {
                true => Ok(()),
                false => Err(format!("{} attempts", attempts.load(Ordering::SeqCst))),
            })
        },
    )
    .await;
    let resumed_in = restored.elapsed();
    eprintln!(
        "handled {resumed_in:?} after Redis took writes again ({:?} after the first attempt)",
        first.elapsed()
    );
    assert!(resumed_in <= Duration::from_secs(2), "{resumed_in:?}");
    assert_eq!(s.dead_letters().await, 0);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// Redis gone without an RST (its pod moved behind a stable Service address; here a proxy
/// that black-holes every connection it has, reading and answering nothing, closing
/// nothing): redis-rs's connection manager does not reconnect on a response timeout, so
/// the worker kept its dead connection, every Redis call timed out until TCP gave up
/// (never, while the peer's kernel ACKs), and FSM updates were retried until the retry
/// budget ran out and dead-lettered. New connections are forwarded again after 8 s: the
/// updates must resume within 2 s, every one answered once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_without_an_rst_was_waited_on_until_the_retries_ran_out() {
    const GONE: Duration = Duration::from_secs(8);
    let s = Stack::start().await;
    let proxy = TcpProxy::redis(&s.redis.url()).await;
    let redis_url = proxy.redis_url();
    let worker = s
        .worker(&[
            ("REDIS_URL", redis_url.as_str()),
            ("TGPIPE_RETRY_DELAY", "1s"),
            ("RUST_LOG", "error,tgpipe_bot::redis_connection=warn"),
        ])
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    // Every update is a private text: the echo handler runs only with no FSM state, so
    // each one reads its chat's state from Redis.
    let posters = post_every_250ms(s.ingress, 10, &stop);

    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.black_hole();
    let gone_at = SystemTime::now();
    tokio::time::sleep(GONE).await;
    proxy.forward();
    let back_at = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = collect(posters).await;
    let total: usize = sent.values().map(Vec::len).sum();
    let during = sent
        .values()
        .flatten()
        .filter(|(at, _)| *at > gone_at && *at < back_at)
        .count();
    assert!(
        during >= 200,
        "updates kept arriving while Redis was gone: {during}"
    );

    let replies = all_answered(&s, total, Duration::from_secs(30)).await;
    for (chat, sent) in &sent {
        let want: Vec<&str> = sent.iter().map(|(_, t)| t.as_str()).collect();
        let got: Vec<&str> = replies[chat].iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(got, want, "chat {chat}: every update once, in order");
    }
    assert_eq!(s.dead_letters().await, 0, "nothing is dead-lettered");
    let resumed_in = replies
        .values()
        .flatten()
        .map(|(at, _)| *at)
        .filter(|at| *at > back_at)
        .min()
        .expect("replies after Redis came back")
        .duration_since(back_at)
        .unwrap_or_default();
    eprintln!(
        "Redis black-holed for {GONE:?}: {total} updates, {during} meanwhile; first reply {resumed_in:?} after new connections reached Redis again"
    );
    assert!(
        resumed_in <= Duration::from_secs(2),
        "updates resumed {resumed_in:?} after Redis was reachable again"
    );
    drop(worker);
}

type Sent = BTreeMap<i64, Vec<(SystemTime, String)>>;

/// `chats` private chats (70_000 + i) each post a text `r<chat>-<i>` to the ingress every
/// 250 ms until `stop`; each task returns what it sent, when.
fn post_every_250ms(
    ingress: std::net::SocketAddr,
    chats: i64,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(SystemTime, String)>>> {
    let http = reqwest::Client::new();
    (0..chats)
        .map(|chat| {
            let (http, stop) = (http.clone(), Arc::clone(stop));
            tokio::spawn(async move {
                let mut sent = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let said = format!("r{chat}-{i}");
                    let body = text(1_000_000 + i * chats + chat, 70_000 + chat, &said);
                    let status = http
                        .post(format!("http://{ingress}/webhook/{}", stack::BOT))
                        .header("X-Telegram-Bot-Api-Secret-Token", stack::SECRET)
                        .header("Content-Type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                        .expect("ingress answers")
                        .status();
                    assert_eq!(status, 200, "the ingress does not need Redis");
                    sent.push((SystemTime::now(), said));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                sent
            })
        })
        .collect()
}

async fn collect(posters: Vec<tokio::task::JoinHandle<Vec<(SystemTime, String)>>>) -> Sent {
    let mut sent = Sent::new();
    for (chat, p) in posters.into_iter().enumerate() {
        sent.insert(70_000 + chat as i64, p.await.unwrap());
    }
    sent
}

/// The echoes of the posted texts per chat, once `total` have come (within `limit`).
async fn all_answered(s: &Stack, total: usize, limit: Duration) -> Sent {
    eventually_ok(limit, "every update is answered", || {
        let mut per_chat = Sent::new();
        for call in s.calls_of("sendMessage") {
            let text = text_of(&call);
            if text.starts_with('r') {
                per_chat
                    .entry(chat_of(&call))
                    .or_default()
                    .push((call.at, text));
            }
        }
        let answered: usize = per_chat.values().map(Vec::len).sum();
        std::future::ready(if answered >= total {
            Ok(per_chat)
        } else {
            Err(format!("{answered} of {total} answered"))
        })
    })
    .await
}
