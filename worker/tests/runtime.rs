//! The worker runtime end to end: real nats-server and redis-server, the ingress in
//! process, the Bot API stand-in, and `tgpipe-example-bot` worker processes.

mod stack;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use stack::{BOT, Stack, TOKEN, callback, chat_of, header, joined, text, text_of};
use tgpipe::{Dispatcher, HandlerError, Router};
use tgpipe_shared::headers;
use tgpipe_testkit::{eventually, eventually_ok, eventually_some};
use tgpipe_worker::runtime::{Cli, DlqCommand};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_bot_answers_each_behaviour_through_the_ingress() {
    let s = Stack::start().await;
    let w = s.worker(&[]).await;

    assert_eq!(s.post(&text(1, 501, "hello there")).await, 200);
    let sent = s.wait_for("sendMessage", 1, Duration::from_secs(20)).await;
    assert_eq!(text_of(&sent[0]), "hello there");
    assert_eq!(chat_of(&sent[0]), 501);

    assert_eq!(s.post(&text(2, 501, "/start")).await, 200);
    let sent = s.wait_for("sendMessage", 2, Duration::from_secs(20)).await;
    assert!(
        text_of(&sent[1]).starts_with("Hello, Ann!"),
        "{}",
        text_of(&sent[1])
    );

    assert_eq!(s.post(&text(3, 501, "/start ref-42")).await, 200);
    let sent = s.wait_for("sendMessage", 3, Duration::from_secs(20)).await;
    assert_eq!(text_of(&sent[2]), "Hello, Ann! You came with: ref-42");

    assert_eq!(s.post(&text(4, 501, "/menu")).await, 200);
    let sent = s.wait_for("sendMessage", 4, Duration::from_secs(20)).await;
    let keyboard = &sent[3].params["reply_markup"]["inline_keyboard"][0];
    assert_eq!(keyboard[0]["callback_data"], "menu:tea");
    assert_eq!(keyboard[1]["callback_data"], "menu:coffee");

    assert_eq!(s.post(&callback(5, 501, "menu:coffee")).await, 200);
    let answered = s
        .wait_for("answerCallbackQuery", 1, Duration::from_secs(20))
        .await;
    assert_eq!(answered[0].params["callback_query_id"], "cq5");
    let edited = s
        .wait_for("editMessageText", 1, Duration::from_secs(20))
        .await;
    assert_eq!(text_of(&edited[0]), "You chose coffee.");
    assert_eq!(edited[0].params["message_id"], 77);

    assert_eq!(s.post(&joined(6, -900, "Bea")).await, 200);
    let sent = s.wait_for("sendMessage", 5, Duration::from_secs(20)).await;
    assert_eq!(text_of(&sent[4]), "Welcome to Rustaceans, Bea!");
    assert_eq!(chat_of(&sent[4]), -900);

    // A command it does not know, in a group, is not echoed; nothing else is sent.
    assert_eq!(s.post(&text(7, 501, "/unknown")).await, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.calls_of("sendMessage").len(), 5);
    let metrics = w.metrics().await;
    assert!(
        metrics.contains(r#"tgpipe_worker_outcomes_total{kind="message",outcome="unhandled"} 1"#),
        "{metrics}"
    );
    assert_eq!(s.dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_updates_over_hundred_chats_are_answered_once_and_in_order() {
    let s = Arc::new(Stack::start().await);
    let _w = s.worker(&[("TGPIPE_CONCURRENCY", "32")]).await;
    let mut posts = Vec::new();
    for chat in 0..100i64 {
        let s = Arc::clone(&s);
        posts.push(tokio::spawn(async move {
            for i in 0..10i64 {
                let id = 10_000 + chat * 10 + i;
                let status = s
                    .post(&text(id, 1000 + chat, &format!("m{chat}-{i}")))
                    .await;
                assert_eq!(status, 200);
            }
        }));
    }
    for p in posts {
        p.await.unwrap();
    }
    let sent = s
        .wait_for("sendMessage", 1000, Duration::from_secs(60))
        .await;
    assert_eq!(sent.len(), 1000);
    let mut per_chat: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for call in &sent {
        per_chat
            .entry(chat_of(call))
            .or_default()
            .push(text_of(call));
    }
    assert_eq!(per_chat.len(), 100);
    for (chat, texts) in per_chat {
        let want: Vec<String> = (0..10).map(|i| format!("m{}-{i}", chat - 1000)).collect();
        assert_eq!(
            texts, want,
            "replies of chat {chat} in stream order, once each"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.calls_of("sendMessage").len(), 1000, "no duplicates");
}

/// Counts, per update text, how often it was answered.
fn answered(s: &Stack) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for call in s.calls_of("sendMessage") {
        *seen.entry(text_of(&call)).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_worker_mid_burst_loses_nothing() {
    // Slow answers keep updates in flight when the worker dies.
    let s = Stack::with_latency(Duration::from_millis(20)).await;
    let mut w = s.worker(&[("TGPIPE_CONCURRENCY", "16")]).await;
    let n = 300i64;
    for i in 0..n {
        assert_eq!(
            s.post(&text(20_000 + i, 2000 + i % 30, &format!("k{i}")))
                .await,
            200
        );
    }
    s.wait_for("sendMessage", 40, Duration::from_secs(30)).await;
    w.kill9();
    let before = s.calls_of("sendMessage").len();
    assert!(
        before < n as usize,
        "the burst was still going when the worker died"
    );
    let _w2 = s.worker(&[]).await;
    let got = eventually_some(
        Duration::from_secs(60),
        "every update is answered after kill -9",
        || {
            let got = answered(&s);
            let all = (0..n).all(|i| got.contains_key(&format!("k{i}")));
            std::future::ready(all.then_some(got))
        },
    )
    .await;
    let duplicates: usize = got.values().map(|c| c - 1).sum();
    // Updates in flight at the kill may be answered twice (their reply went out, their
    // ack did not); nothing is lost.
    eprintln!("kill -9 at {before} of {n} replies: {duplicates} duplicates");
    assert!(duplicates <= 16, "at most the in-flight updates repeat");
    assert_eq!(s.dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_updates_and_exits_zero() {
    let s = Stack::with_latency(Duration::from_millis(300)).await;
    let mut w = s.worker(&[("TGPIPE_CONCURRENCY", "8")]).await;
    for i in 0..40i64 {
        assert_eq!(
            s.post(&text(30_000 + i, 3000 + i, &format!("t{i}"))).await,
            200
        );
    }
    s.wait_for("sendMessage", 1, Duration::from_secs(20)).await;
    let status = w.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    let after_drain = answered(&s);
    // Whatever was answered was answered once: in-flight handlers finished and were acked.
    assert!(after_drain.values().all(|c| *c == 1), "{after_drain:?}");
    // The rest is still in the stream for the next pod.
    let _w2 = s.worker(&[]).await;
    let got = eventually_ok(
        Duration::from_secs(60),
        "every update is answered across SIGTERM",
        || {
            let got = answered(&s);
            std::future::ready(match got.len() {
                40 => Ok(got),
                n => Err(format!("{n} of 40 answered")),
            })
        },
    )
    .await;
    assert!(
        got.values().all(|c| *c == 1),
        "exactly once across the drain: {got:?}"
    );
}

/// The worker of the two tests below: a short handler timeout and the least grace it
/// allows (the handler timeout + 5 s).
const SHORT_DRAIN: &[(&str, &str)] = &[
    ("TGPIPE_HANDLER_TIMEOUT", "3s"),
    ("TGPIPE_SHUTDOWN_GRACE", "8s"),
];

#[tokio::test]
async fn a_worker_took_110_s_to_stop_on_sigterm_when_nats_was_gone() {
    let mut s = Stack::with_latency(Duration::from_millis(0)).await;
    let mut w = s.worker(SHORT_DRAIN).await;
    assert_eq!(s.post(&text(41_000, 4100, "before")).await, 200);
    s.wait_for("sendMessage", 1, Duration::from_secs(20)).await;
    // Every partition's lease is held; NATS goes away with all of them.
    match &mut s.nats {
        stack::Broker::Single(server) => server.stop(),
        stack::Broker::Cluster(_) => unreachable!("a single server"),
    }
    let started = std::time::Instant::now();
    let status = w.terminate(Duration::from_secs(30));
    let took = started.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took <= Duration::from_secs(8),
        "SIGTERM with NATS gone took {took:?}, over TGPIPE_SHUTDOWN_GRACE (8 s)"
    );
}

#[tokio::test]
async fn sigterm_with_redis_gone_ends_within_the_shutdown_grace() {
    let mut s = Stack::with_latency(Duration::from_millis(0)).await;
    let mut w = s.worker(SHORT_DRAIN).await;
    assert_eq!(s.post(&text(42_000, 4200, "before")).await, 200);
    s.wait_for("sendMessage", 1, Duration::from_secs(20)).await;
    s.redis.stop();
    // Updates that now fail on Redis wait to be retried when the signal comes.
    for i in 0..20i64 {
        assert_eq!(s.post(&text(42_100 + i, 4300 + i, "/form")).await, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let status = w.terminate(Duration::from_secs(30));
    let took = started.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took <= Duration::from_secs(8),
        "SIGTERM with Redis gone took {took:?}, over TGPIPE_SHUTDOWN_GRACE (8 s)"
    );
}

#[derive(Debug, thiserror::Error)]
#[error("the database is down")]
struct DatabaseDown;

/// A checked configuration of `run` on this stack, with `extra` flags.
fn run_config(s: &Stack, extra: &[&str]) -> tgpipe_worker::runtime::WorkerConfig {
    let nats = s.nats.url();
    let redis = s.redis.url();
    let api = s.sink.url();
    let mut argv = vec![
        "worker",
        "--nats-url",
        &nats,
        "--redis-url",
        &redis,
        "--bot-tokens",
        TOKEN,
        "--api-url",
        &api,
        "--retry-delay",
        "100ms",
        "--rate-limits",
        "off",
    ];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv)
        .expect("valid flags")
        .run
        .validate()
        .expect("valid config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_is_dead_lettered_after_max_deliveries_and_replayed() {
    let s = Stack::start().await;
    let healthy = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU32::new(0));
    let mut router = Router::new("flaky");
    let (h, a) = (Arc::clone(&healthy), Arc::clone(&attempts));
    router.message(move || {
        let (h, a) = (Arc::clone(&h), Arc::clone(&a));
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            if h.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(HandlerError::transient(DatabaseDown))
            }
        }
    });
    let dispatcher = Dispatcher::builder(router);
    let config = run_config(&s, &["--max-deliver", "3", "--retry-budget", "0s"]);
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(tgpipe_worker::runtime::serve(
        config,
        dispatcher,
        ops,
        async {
            let _ = stopped.await;
        },
    ));

    assert_eq!(s.post(&text(40_001, 4001, "doomed")).await, 200);
    let letter = s.wait_dead_letters(1).await.remove(0);
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "three deliveries, then the DLQ"
    );
    assert_eq!(letter.subject.as_str(), format!("tgdlq.{BOT}.message"));
    assert_eq!(header(&letter, headers::DELIVERIES), "3");
    let error = header(&letter, headers::ERROR);
    assert!(error.contains("the database is down"), "{error}");
    assert_eq!(header(&letter, headers::CHAT_ID), "4001");

    // `dlq list` shows it; after the fix, `dlq replay` brings it back and it is handled.
    let mut out = Vec::new();
    let list = DlqCommand::List {
        bot: None,
        limit: 10,
    };
    tgpipe_worker::runtime::dlq_command(&s.js, "TG_DLQ", 64.try_into().unwrap(), &list, &mut out)
        .await
        .unwrap();
    let listing = String::from_utf8(out).unwrap();
    assert!(
        listing.contains("update_id=40001 deliveries=3"),
        "{listing}"
    );
    healthy.store(true, Ordering::SeqCst);
    let mut out = Vec::new();
    let replay = DlqCommand::Replay {
        seqs: vec![],
        all: true,
        bot: None,
    };
    tgpipe_worker::runtime::dlq_command(&s.js, "TG_DLQ", 64.try_into().unwrap(), &replay, &mut out)
        .await
        .unwrap();
    assert!(String::from_utf8(out).unwrap().contains("1 replayed"));
    eventually(
        Duration::from_secs(30),
        "the replayed update is handled",
        || async { attempts.load(Ordering::SeqCst) >= 4 },
    )
    .await;
    assert_eq!(s.dead_letters().await, 0, "replay removed the letter");
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
}

/// A message on a subject of the stream that is not an update subject (a bot id that is
/// not a number) is dead-lettered under bot 0: `dlq list` used to skip such letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_shows_letters_of_bot_0() {
    let s = Stack::start().await;
    let _w = s.worker(&[]).await;
    let ack =
        s.js.publish(
            "tg.notabot.message.0",
            text(41_001, 4101, "stray").to_string().into(),
        )
        .await
        .expect("publish");
    ack.await.expect("stored");
    let letter = s.wait_dead_letters(1).await.remove(0);
    assert_eq!(letter.subject.as_str(), "tgdlq.0._invalid");
    let run = |cmd: DlqCommand| {
        let js = s.js.clone();
        async move {
            let mut out = Vec::new();
            let result = tgpipe_worker::runtime::dlq_command(
                &js,
                "TG_DLQ",
                64.try_into().unwrap(),
                &cmd,
                &mut out,
            )
            .await;
            (result, String::from_utf8(out).unwrap())
        }
    };
    let (result, listing) = run(DlqCommand::List {
        bot: None,
        limit: 10,
    })
    .await;
    result.unwrap();
    assert!(
        listing.contains("seq=1 bot=0 kind=_invalid update_id=41001"),
        "{listing}"
    );
    assert!(listing.contains("not an update subject"), "{listing}");
    let (result, listing) = run(DlqCommand::List {
        bot: Some(0),
        limit: 10,
    })
    .await;
    result.unwrap();
    assert!(listing.contains("seq=1 bot=0"), "{listing}");
    // It cannot go back on an update subject: `--all` says so and keeps it, a named
    // replay fails with the reason.
    let (result, out) = run(DlqCommand::Replay {
        seqs: vec![],
        all: true,
        bot: None,
    })
    .await;
    result.unwrap();
    assert!(
        out.contains("skipped seq=1") && out.contains("0 replayed"),
        "{out}"
    );
    let (result, _) = run(DlqCommand::Replay {
        seqs: vec![1],
        all: false,
        bot: None,
    })
    .await;
    let e = result.unwrap_err().to_string();
    assert!(e.contains("cannot be replayed"), "{e}");
    assert_eq!(s.dead_letters().await, 1, "the letter is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_kind_and_an_unknown_kind_are_consumed_without_dead_letters() {
    let s = Stack::start().await;
    let _w = s.worker(&[]).await;
    let mut posted = 0;
    for body in tgpipe_testkit::corpus() {
        assert_eq!(s.post_raw(body).await, 200);
        posted += 1;
    }
    let unknown = json!({"update_id": 777_001, "hologram": {"chat": {"id": 5}, "beam": true}});
    assert_eq!(s.post(&unknown).await, 200);
    assert!(posted >= 27, "the corpus covers every kind");
    // Consumed and acknowledged: a work queue is empty once every update is acked (the
    // server applies acks asynchronously, so this is waited for, not read once).
    eventually_ok(
        Duration::from_secs(30),
        "every update is consumed",
        || async {
            let info = s.lane_info("default").await;
            let stored = s.stored().await;
            if info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered > 0
                && stored == 0
            {
                Ok(())
            } else {
                Err(format!("{stored} stored, {info:?}"))
            }
        },
    )
    .await;
    assert_eq!(s.dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lanes_split_the_kinds_and_overlapping_lanes_are_refused() {
    let s = Stack::start().await;
    let chat = s
        .worker(&[
            ("TGPIPE_LANE", "chat"),
            ("TGPIPE_LANE_KINDS", "message,timer"),
        ])
        .await;
    let buttons = s
        .worker(&[
            ("TGPIPE_LANE", "buttons"),
            ("TGPIPE_LANE_KINDS", "callback_query"),
        ])
        .await;
    assert_eq!(s.post(&text(50_001, 5001, "lane test")).await, 200);
    assert_eq!(s.post(&callback(50_002, 5001, "menu:tea")).await, 200);
    s.wait_for("sendMessage", 1, Duration::from_secs(20)).await;
    s.wait_for("editMessageText", 1, Duration::from_secs(20))
        .await;
    let (m1, m2) = (chat.metrics().await, buttons.metrics().await);
    assert!(
        m1.contains(r#"tgpipe_worker_consumed_total{kind="message"} 1"#),
        "{m1}"
    );
    assert!(!m1.contains(r#"kind="callback_query""#), "{m1}");
    assert!(
        m2.contains(r#"tgpipe_worker_consumed_total{kind="callback_query"} 1"#),
        "{m2}"
    );
    assert!(!m2.contains(r#"kind="message""#), "{m2}");

    // A third lane that also takes messages does not start: exit code 64, and says why.
    let out = s.run_to_exit(&[
        ("TGPIPE_LANE", "greedy"),
        ("TGPIPE_LANE_KINDS", "message,inline_query"),
    ]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lane `greedy` overlaps lane `chat` on message"),
        "{stderr}"
    );
    // So does a lane naming something that is not an update kind.
    let out = s.run_to_exit(&[("TGPIPE_LANE_KINDS", "message,not a kind")]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an update kind"));
}

/// A worker in this process running `router`; stop it by sending on the returned channel.
async fn in_process(
    s: &Stack,
    router: Router,
    extra: &[&str],
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tgpipe_worker::runtime::RunError>>,
) {
    let dispatcher = Dispatcher::builder(router);
    let config = run_config(s, extra);
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(tgpipe_worker::runtime::serve(
        config,
        dispatcher,
        ops,
        async {
            let _ = stopped.await;
        },
    ));
    (stop, task)
}

fn counting_router(count: &Arc<AtomicU32>, sleep: Duration) -> Router {
    let mut router = Router::new("counting");
    let count = Arc::clone(count);
    router.message(move || {
        let count = Arc::clone(&count);
        async move {
            tokio::time::sleep(sleep).await;
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    router
}

async fn wait_count(count: &AtomicU32, n: u32) {
    let what = format!("{n} updates handled");
    eventually_ok(Duration::from_secs(30), &what, || {
        std::future::ready(match count.load(Ordering::SeqCst) {
            handled if handled >= n => Ok(()),
            handled => Err(format!("handled {handled} of {n}")),
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_older_than_the_dedupe_window_is_skipped() {
    let s = Stack::start().await;
    let count = Arc::new(AtomicU32::new(0));
    let (stop, task) = in_process(&s, counting_router(&count, Duration::ZERO), &[]).await;
    // Telegram's retry arriving after JetStream's dedupe window: same update, the stream
    // takes it as new (a different message id stands in for the expired window).
    let body = text(60_001, 6001, "once").to_string();
    for msg_id in ["4242:60001", "4242:60001-after-the-window"] {
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::MSG_ID, msg_id);
        h.insert(headers::BOT_ID, "4242");
        h.insert(headers::CHAT_ID, "6001");
        s.js.publish_with_headers("tg.4242.message.3", h, body.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
        wait_count(&count, 1).await;
    }
    // The second copy was delivered and acknowledged without running the handler.
    eventually(
        Duration::from_secs(20),
        "the copy is acknowledged",
        || async { s.stored().await == 0 && s.lane_info("default").await.num_ack_pending == 0 },
    )
    .await;
    assert_eq!(count.load(Ordering::SeqCst), 1, "the late copy was skipped");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_ack_wait_keeps_its_update() {
    let s = Stack::start().await;
    let count = Arc::new(AtomicU32::new(0));
    let router = counting_router(&count, Duration::from_millis(3500));
    let (stop, task) = in_process(&s, router, &["--ack-wait", "1s"]).await;
    assert_eq!(s.post(&text(70_001, 7001, "slow")).await, 200);
    wait_count(&count, 1).await;
    // Without in-progress acks the server would have redelivered it after 1 s, and the
    // handler would run again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(s.lane_info("default").await.num_redelivered, 0);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_form_and_the_counter_keep_their_state_in_redis() {
    let s = Stack::start().await;
    let _w = s.worker(&[]).await;
    let mut id = 80_000;
    let mut say = async |t: &str| {
        id += 1;
        assert_eq!(s.post(&text(id, 8001, t)).await, 200);
    };
    let mut expect = Vec::new();
    for (send, reply) in [
        ("/form", "What is your name?"),
        ("Ann", "How old are you?"),
        (
            "old enough",
            "That is not an age; please send a number. How old are you?",
        ),
        ("37", "Thank you, Ann: you are 37."),
        // The form is over: texts are echoed again.
        ("echo me", "echo me"),
        ("/form", "What is your name?"),
        ("/cancel", "Cancelled."),
        ("after cancel", "after cancel"),
        ("/count", "count: 1"),
        ("/count", "count: 2"),
    ] {
        say(send).await;
        expect.push(reply.to_owned());
        let sent = s
            .wait_for("sendMessage", expect.len(), Duration::from_secs(20))
            .await;
        let got: Vec<String> = sent.iter().map(text_of).collect();
        assert_eq!(got, expect, "after {send:?}");
    }
    assert_eq!(s.dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_lane_count_forty_concurrent_commands_exactly_once_each() {
    let s = Arc::new(Stack::start().await);
    let _a = s.worker(&[("TGPIPE_CONCURRENCY", "8")]).await;
    let _b = s.worker(&[("TGPIPE_CONCURRENCY", "8")]).await;
    let posts: Vec<_> = (0..40i64)
        .map(|i| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.post(&text(90_000 + i, 9001, "/count")).await })
        })
        .collect();
    for p in posts {
        assert_eq!(p.await.unwrap(), 200);
    }
    let sent = s.wait_for("sendMessage", 40, Duration::from_secs(60)).await;
    let mut counts: Vec<u32> = sent
        .iter()
        .map(|c| text_of(c).trim_start_matches("count: ").parse().unwrap())
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=40).collect::<Vec<u32>>());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.calls_of("sendMessage").len(), 40, "each answered once");
    let (ma, mb) = (_a.metrics().await, _b.metrics().await);
    eprintln!(
        "worker a: {}\nworker b: {}",
        ma.lines()
            .filter(|l| l.starts_with("tgpipe_worker_consumed_total"))
            .collect::<Vec<_>>()
            .join(" "),
        mb.lines()
            .filter(|l| l.starts_with("tgpipe_worker_consumed_total"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// Runs the example bot's binary with a command, on this stack's stand-in.
fn command(s: &Stack, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(tgpipe_testkit::workspace_bin(
        "tgpipe-example-bot",
        "tgpipe-example-bot",
    ))
    .args(args)
    .env("TGPIPE_BOT_TOKENS", TOKEN)
    .env("TGPIPE_API_URL", s.sink.url())
    .envs(env.iter().copied())
    .output()
    .expect("run the example bot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_commands_take_the_secret_from_the_ingress_list_and_the_kinds_from_the_handlers() {
    let s = Stack::start().await;
    let out = command(
        &s,
        &[
            // The argument order of the chart's provisioning job.
            "webhook",
            "set",
            "--bot-id",
            "4242",
            "--url",
            "https://bot.example.com/webhook/4242",
            "--max-connections",
            "40",
        ],
        &[("TGPIPE_BOTS", "77:not-this-one,4242:the_Secret-1")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("the_Secret-1"),
        "the secret is not printed: {stdout}"
    );
    let set = s.calls_of("setWebhook");
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].params["secret_token"], "the_Secret-1");
    assert_eq!(set[0].params["max_connections"], 40);
    let mut kinds: Vec<String> =
        serde_json::from_value(set[0].params["allowed_updates"].clone()).unwrap();
    kinds.sort();
    assert_eq!(kinds, ["callback_query", "chat_member", "message"]);

    let out = command(&s, &["webhook", "info"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("https://bot.example.com/webhook/4242"));

    // Without any secret, `set` refuses before calling Telegram: exit 64.
    let out = command(
        &s,
        &[
            "webhook",
            "set",
            "--url",
            "https://bot.example.com/webhook/4242",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no secret"));
    assert_eq!(s.calls_of("setWebhook").len(), 1);

    let out = command(&s, &["webhook", "delete"], &[]);
    assert!(out.status.success());
    assert_eq!(s.calls_of("deleteWebhook").len(), 1);

    let out = command(&s, &["secret"], &[]);
    let secret = String::from_utf8(out.stdout).unwrap();
    let secret = secret.trim();
    assert_eq!(secret.len(), 64);
    assert!(tgpipe_worker::set_webhook::is_valid_secret(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_handles_updates_from_get_updates_in_process() {
    let s = Stack::start().await;
    s.sink.push_update(text(1, 1201, "/start from polling"));
    s.sink.push_update(text(2, 1201, "polled text"));
    let mut child = std::process::Command::new(tgpipe_testkit::workspace_bin(
        "tgpipe-example-bot",
        "tgpipe-example-bot",
    ))
    .args(["poll", "--timeout", "1"])
    .env("TGPIPE_BOT_TOKENS", TOKEN)
    .env("TGPIPE_API_URL", s.sink.url())
    .env("REDIS_URL", s.redis.url())
    .env("TGPIPE_RATE_LIMITS", "off")
    .spawn()
    .unwrap();
    let sent = s.wait_for("sendMessage", 2, Duration::from_secs(30)).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let texts: Vec<String> = sent.iter().map(text_of).collect();
    assert_eq!(
        texts,
        ["Hello, Ann! You came with: from polling", "polled text"]
    );
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_dead_letters_its_update_and_the_worker_goes_on() {
    let s = Stack::start().await;
    let handled = Arc::new(AtomicU32::new(0));
    let mut router = Router::new("panicky");
    let h = Arc::clone(&handled);
    router.message(move |m: Arc<tgpipe::frankenstein::types::Message>| {
        let h = Arc::clone(&h);
        async move {
            assert!(m.text.as_deref() != Some("boom"), "boom");
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    let (stop, task) = in_process(&s, router, &[]).await;
    assert_eq!(s.post(&text(95_001, 9501, "boom")).await, 200);
    assert_eq!(s.post(&text(95_002, 9501, "fine")).await, 200);
    wait_count(&handled, 1).await;
    let letter = s.wait_dead_letters(1).await.remove(0);
    let error = header(&letter, headers::ERROR);
    assert!(error.starts_with("handler panicked: boom"), "{error}");
    assert_eq!(header(&letter, headers::DELIVERIES), "1");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_share_the_rate_limits_through_redis() {
    let s = Arc::new(Stack::start().await);
    let limits = [
        ("TGPIPE_RATE_LIMITS", "telegram"),
        ("TGPIPE_RATE_PER_CHAT", "5"),
        ("TGPIPE_RATE_PER_BOT", "20"),
    ];
    let _a = s.worker(&limits).await;
    let _b = s.worker(&limits).await;
    // Ten texts to one chat, and thirty to thirty others, all at once.
    let mut posts = Vec::new();
    for i in 0..40i64 {
        let s = Arc::clone(&s);
        let chat = if i < 10 { 9900 } else { 9900 + i };
        posts.push(tokio::spawn(async move {
            s.post(&text(96_000 + i, chat, &format!("r{i}"))).await
        }));
    }
    for p in posts {
        assert_eq!(p.await.unwrap(), 200);
    }
    let sent = s.wait_for("sendMessage", 40, Duration::from_secs(30)).await;
    assert_eq!(sent.len(), 40);
    let ms = |c: &tgpipe_testkit::sink::RecordedCall| {
        c.at.duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    // The most messages that arrived within any one second. Arrival times carry the
    // network's jitter, so the check is on windows, not on single gaps.
    let busiest = |mut at: Vec<i64>| {
        at.sort_unstable();
        at.iter()
            .map(|t| at.iter().filter(|u| **u >= *t && **u < t + 1000).count())
            .max()
            .unwrap_or(0)
    };
    // Per chat, 5/s over both processes: its ten messages spread over at least 1.8 s, and
    // no second holds more than 6 (the limit plus one late arrival).
    let one_chat: Vec<i64> = sent.iter().filter(|c| chat_of(c) == 9900).map(ms).collect();
    let spread = one_chat.iter().max().unwrap() - one_chat.iter().min().unwrap();
    let chat_busiest = busiest(one_chat);
    assert!(spread >= 1700, "one chat's 10 messages within {spread} ms");
    assert!(
        chat_busiest <= 6,
        "{chat_busiest} messages to one chat in one second"
    );
    // Per bot, 20/s over both processes: no second holds more than 21.
    let bot_busiest = busiest(sent.iter().map(ms).collect());
    assert!(bot_busiest <= 21, "{bot_busiest} messages in one second");
    eprintln!(
        "one chat: {spread} ms, busiest second {chat_busiest}; bot: busiest second {bot_busiest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_in_the_stream_are_dead_lettered_with_a_reason() {
    let s = Stack::start().await;
    let count = Arc::new(AtomicU32::new(0));
    let budget = ["--retry-budget", "1s", "--max-deliver", "2"];
    let (stop, task) = in_process(&s, counting_router(&count, Duration::ZERO), &budget).await;
    // Published around the ingress: a body that is not an update, an update for a bot
    // this worker has no token for, and a good one after them.
    for (subject, body) in [
        ("tg.4242.message.0", "{not json".to_owned()),
        (
            "tg.999.message.0",
            text(97_001, 9701, "stranger").to_string(),
        ),
        ("tg.4242.message.0", text(97_002, 9702, "fine").to_string()),
    ] {
        s.js.publish(subject, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    wait_count(&count, 1).await;
    let mut errors: Vec<String> = s
        .wait_dead_letters(2)
        .await
        .iter()
        .map(|m| header(m, headers::ERROR))
        .collect();
    errors.sort();
    // A missing token is waited for within the retry budget (a rollout where the ingress
    // knows the bot first), then dead-lettered.
    assert!(errors[0].contains("no token for bot 999"), "{errors:?}");
    assert!(errors[0].contains("still failing after"), "{errors:?}");
    assert!(
        errors[1].starts_with("not an update: body is not a JSON object"),
        "{errors:?}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 1, "the good one was handled");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_stuck_past_the_handler_timeout_is_retried_not_held_forever() {
    let s = Stack::start().await;
    let attempts = Arc::new(AtomicU32::new(0));
    let mut router = Router::new("stuck");
    let a = Arc::clone(&attempts);
    router.message(move || {
        let a = Arc::clone(&a);
        async move {
            // The first attempt hangs on an "external call"; the retry is quick.
            if a.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok::<_, HandlerError>(())
        }
    });
    let (stop, task) = in_process(&s, router, &["--handler-timeout", "300ms"]).await;
    assert_eq!(s.post(&text(98_001, 9801, "hang")).await, 200);
    wait_count(&attempts, 2).await;
    eventually(
        Duration::from_secs(10),
        "the retried update is acknowledged",
        || async { s.stored().await == 0 },
    )
    .await;
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(s.dead_letters().await, 0);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_update_is_retried_in_place_and_blocks_only_its_chat() {
    let s = Stack::start().await;
    let log = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(AtomicU32::new(0));
    let mut router = Router::new("flaky-chat");
    let (l, f) = (Arc::clone(&log), Arc::clone(&failures));
    router.message(move |m: Arc<tgpipe::frankenstein::types::Message>| {
        let (l, f) = (Arc::clone(&l), Arc::clone(&f));
        async move {
            let text = m.text.clone().unwrap_or_default();
            // The first update of chat 1 fails twice before it succeeds.
            if text == "a1" && f.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err(HandlerError::transient(DatabaseDown));
            }
            l.lock().unwrap().push(text);
            Ok(())
        }
    });
    let (stop, task) = in_process(&s, router, &[]).await;
    for (id, chat, t) in [
        (1, 9901, "a1"),
        (2, 9901, "a2"),
        (3, 9902, "b1"),
        (4, 9902, "b2"),
    ] {
        assert_eq!(s.post(&text(99_000 + id, chat, t)).await, 200);
    }
    eventually_ok(Duration::from_secs(20), "all four are handled", || {
        let handled = log.lock().unwrap();
        std::future::ready(match handled.len() {
            4.. => Ok(()),
            _ => Err(format!("{handled:?}")),
        })
    })
    .await;
    let order = log.lock().unwrap().clone();
    let pos = |t: &str| order.iter().position(|x| x == t).unwrap();
    // Chat 1's second update waited for its first (no nak letting it overtake) ...
    assert!(pos("a1") < pos("a2"), "{order:?}");
    // ... while chat 2 went on meanwhile.
    assert!(pos("b2") < pos("a1"), "{order:?}");
    assert_eq!(failures.load(Ordering::SeqCst), 3);
    assert_eq!(s.dead_letters().await, 0);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_port_answers_like_the_ingress_and_says_draining_from_the_signal_on() {
    let s = Stack::start().await;
    let started = Arc::new(AtomicBool::new(false));
    let mut router = Router::new("slow");
    let flag = Arc::clone(&started);
    router.message(move || {
        let flag = Arc::clone(&flag);
        async move {
            flag.store(true, Ordering::SeqCst);
            // Long enough to probe the pod while it drains.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    });
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", ops.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(tgpipe_worker::runtime::serve(
        run_config(&s, &[]),
        Dispatcher::builder(router),
        ops,
        async {
            let _ = stopped.await;
        },
    ));
    let get = |path: &'static str| {
        let url = format!("{base}{path}");
        async move {
            let r = reqwest::get(url).await.expect("the ops port answers");
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    eventually(Duration::from_secs(30), "/readyz says ready", || async {
        get("/readyz").await == (200, "ready".to_owned())
    })
    .await;
    assert_eq!(get("/healthz").await, (200, "ok".to_owned()));
    assert_eq!(s.post(&text(70_001, 7001, "slow")).await, 200);
    eventually(Duration::from_secs(30), "the handler started", || async {
        started.load(Ordering::SeqCst)
    })
    .await;
    let (status, metrics) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tgpipe_worker_consumed_total"),
        "{metrics}"
    );
    let _ = stop.send(());
    eventually(Duration::from_secs(2), "/readyz says draining", || async {
        get("/readyz").await == (503, "draining".to_owned())
    })
    .await;
    task.await.unwrap().unwrap();
}

#[test]
fn run_refuses_a_bad_setting_before_it_connects_to_anything() {
    // Nothing listens on port 1: a worker that connected before validating would fail
    // on Redis or NATS (exit 1), not on the setting (exit 64).
    for (var, value, named) in [
        (
            "TGPIPE_BOT_TOKENS",
            "12:AAA,nonsense",
            "token #2 of TGPIPE_BOT_TOKENS",
        ),
        ("TGPIPE_API_URL", "not a url", "TGPIPE_API_URL"),
        ("TGPIPE_PARTITIONS", "128", "TGPIPE_PARTITIONS"),
    ] {
        let out = std::process::Command::new(tgpipe_testkit::workspace_bin(
            "tgpipe-example-bot",
            "tgpipe-example-bot",
        ))
        .arg("run")
        .env_clear()
        .env("TGPIPE_BOT_TOKENS", TOKEN)
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("TGPIPE_LISTEN", "127.0.0.1:0")
        .env(var, value)
        .output()
        .expect("run the example bot");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{var}: {stderr}");
        assert!(stderr.contains(named), "{var}: {stderr}");
        assert!(!stderr.contains("AAA"), "a token in the error: {stderr}");
    }
}

/// A handler that sends two messages and then fails (transiently, then past the handler
/// timeout) used to send both again on every attempt: the retries answer them from the
/// record of the update's calls instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_fails_after_sending_two_messages_sends_each_once() {
    let s = Stack::start().await;
    let attempts = Arc::new(AtomicU32::new(0));
    let mut router = Router::new("sends-then-fails");
    let a = Arc::clone(&attempts);
    router.message(
        move |bot: tgpipe::bot::Bot, m: Arc<tgpipe::frankenstein::types::Message>| {
            let a = Arc::clone(&a);
            async move {
                let chat = m.chat.id;
                // A read is made afresh on every attempt and takes no number.
                bot.me().await?;
                let first = bot.send_text(chat, "first").await?;
                let second = bot.send_text(chat, "second").await?;
                // The same answers on every attempt.
                assert!(first.message_id < second.message_id);
                match a.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(HandlerError::transient(DatabaseDown)),
                    1 => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(())
                    }
                    2 => Err(HandlerError::transient(DatabaseDown)),
                    _ => {
                        bot.send_text(chat, "third").await?;
                        Ok(())
                    }
                }
            }
        },
    );
    let (stop, task) = in_process(&s, router, &["--handler-timeout", "1s"]).await;
    assert_eq!(s.post(&text(123_001, 12_301, "go")).await, 200);
    wait_count(&attempts, 4).await;
    eventually(
        Duration::from_secs(10),
        "the update is acknowledged",
        || async { s.stored().await == 0 },
    )
    .await;
    let sent: Vec<String> = s.calls_of("sendMessage").iter().map(text_of).collect();
    assert_eq!(sent, ["first", "second", "third"], "each message once");
    assert_eq!(s.dead_letters().await, 0);
    // Acknowledged: its record is gone (the memory of finished updates takes over).
    let redis = redis::Client::open(s.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the record is deleted", || {
        let mut redis = redis.clone();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("tgpipe:effects:*")
                .query_async(&mut redis)
                .await
                .unwrap();
            keys.is_empty()
        }
    })
    .await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// FSM state and data had no TTL unless `TGPIPE_FSM_TTL` was set: Redis grew with every
/// user ever seen. Every key the worker leaves behind now expires by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_a_chat_leaves_in_redis_expires_by_default() {
    let s = Stack::start().await;
    let count = Arc::new(AtomicU32::new(0));
    let mut router = Router::new("form");
    let c = Arc::clone(&count);
    router.message(
        move |bot: tgpipe::bot::Bot,
              m: Arc<tgpipe::frankenstein::types::Message>,
              fsm: tgpipe::fsm::FsmContext| {
            let c = Arc::clone(&c);
            async move {
                fsm.set_state("asked_name").await?;
                fsm.set_data(&BTreeMap::from([("name", "Ann"), ("city", "Lisbon")]))
                    .await?;
                bot.send_text(m.chat.id, "What is your age?").await?;
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        },
    );
    let (stop, task) = in_process(&s, router, &[]).await;
    const CHATS: i64 = 50;
    for chat in 0..CHATS {
        assert_eq!(
            s.post(&text(140_000 + chat, 14_000 + chat, "hi")).await,
            200
        );
    }
    wait_count(&count, CHATS as u32).await;
    eventually(Duration::from_secs(10), "all acknowledged", || async {
        s.stored().await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut redis = redis::Client::open(s.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tgpipe:*")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut bytes = 0u64;
    let mut per_chat = 0usize;
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} never expires ({ttl})");
        if key.contains("{4242:14") {
            per_chat += 1;
            let used: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .query_async(&mut redis)
                .await
                .unwrap();
            bytes += used.unwrap_or_default();
        }
    }
    let fsm_ttl: i64 = redis::cmd("PTTL")
        .arg("tgpipe:fsm:{4242:14000:14000}:state")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(fsm_ttl > 29 * 86_400_000, "30 days: {fsm_ttl} ms");
    eprintln!(
        "{} keys per chat, {} bytes of Redis memory per chat (MEMORY USAGE)",
        per_chat as i64 / CHATS,
        bytes / CHATS as u64
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
