//! The load generator against the baseline, and against a small echo webhook that can be
//! told to drop, duplicate, fail or delay, so that every counter is shown to be right.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use tgpipe_loadtest::run::{self, Delivery, Kind, Progress};
use tgpipe_testkit::sink::{Sink, SinkConfig, SinkHandle};

const FIRST_ID: i64 = 5000;

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// What the echo webhook does wrong, by update index (update_id - FIRST_ID).
#[derive(Default)]
struct Faults {
    drop_every: Option<usize>,
    duplicate_every: Option<usize>,
    fail_first_every: Option<usize>,
    /// Reply to the first update of each chat after this delay (others at once).
    delay_first_in_chat: Option<Duration>,
}

struct Echo {
    sink_url: String,
    client: reqwest::Client,
    faults: Faults,
    attempts: Mutex<HashMap<i64, usize>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    chats_in_flight: Mutex<HashMap<i64, usize>>,
    max_per_chat: AtomicUsize,
    seen_chats: Mutex<HashMap<i64, usize>>,
}

async fn echo(State(e): State<Arc<Echo>>, body: Bytes) -> StatusCode {
    let update: Value = serde_json::from_slice(&body).unwrap();
    let id = update["update_id"].as_i64().unwrap();
    let i = (id - FIRST_ID) as usize;
    let message = &update["message"];
    let chat = message["chat"]["id"].as_i64().unwrap();
    let now = e.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    e.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let per_chat = {
        let mut c = e.chats_in_flight.lock().unwrap();
        let n = c.entry(chat).or_default();
        *n += 1;
        *n
    };
    e.max_per_chat.fetch_max(per_chat, Ordering::SeqCst);
    // Hold the request a little so overlapping deliveries would show.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let attempt = {
        let mut a = e.attempts.lock().unwrap();
        let n = a.entry(id).or_default();
        *n += 1;
        *n
    };
    let status = if e
        .faults
        .fail_first_every
        .is_some_and(|n| i.is_multiple_of(n))
        && attempt == 1
    {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        let first_in_chat = {
            let mut s = e.seen_chats.lock().unwrap();
            let n = s.entry(chat).or_default();
            *n += 1;
            *n == 1
        };
        let replies = if e.faults.drop_every.is_some_and(|n| i.is_multiple_of(n)) {
            0
        } else if e
            .faults
            .duplicate_every
            .is_some_and(|n| i.is_multiple_of(n))
        {
            2
        } else {
            1
        };
        let delay = e
            .faults
            .delay_first_in_chat
            .filter(|_| first_in_chat)
            .unwrap_or_default();
        let (client, url, text) = (
            e.client.clone(),
            e.sink_url.clone(),
            message["text"].clone(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            for _ in 0..replies {
                client
                    .post(format!("{url}/bot1:T/sendMessage"))
                    .json(&json!({"chat_id": chat, "text": text}))
                    .send()
                    .await
                    .unwrap();
            }
        });
        StatusCode::OK
    };
    *e.chats_in_flight.lock().unwrap().get_mut(&chat).unwrap() -= 1;
    e.in_flight.fetch_sub(1, Ordering::SeqCst);
    status
}

async fn echo_bot(sink: &SinkHandle, faults: Faults) -> (String, Arc<Echo>) {
    let e = Arc::new(Echo {
        sink_url: sink.url(),
        client: reqwest::Client::new(),
        faults,
        attempts: Mutex::default(),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        chats_in_flight: Mutex::default(),
        max_per_chat: AtomicUsize::new(0),
        seen_chats: Mutex::default(),
    });
    let url = serve(
        Router::new()
            .route("/webhook/{bot}", post(echo))
            .with_state(Arc::clone(&e)),
    )
    .await;
    (url, e)
}

async fn run_against(
    url: &str,
    sink: Option<&SinkHandle>,
    n: usize,
    chats: usize,
    connections: usize,
) -> run::Report {
    let updates = run::generate(n, chats, &[Kind::Text], FIRST_ID);
    let d = Delivery {
        url: format!("{url}/webhook/1"),
        secret: "s".into(),
        connections,
        rate: None,
        max_attempts: 5,
    };
    let outcomes = run::deliver(&updates, &d, Arc::new(Progress::default())).await;
    let calls = match sink {
        Some(s) => run::collect_replies(&s.url(), &updates, &outcomes, 0, Duration::from_secs(5))
            .await
            .unwrap(),
        None => Vec::new(),
    };
    run::match_replies(&updates, &outcomes, &calls)
}

#[tokio::test]
async fn acceptance_only_against_the_bare_handler() {
    let url = serve(tgpipe_loadtest::baseline::app()).await;
    let r = run_against(&url, None, 300, 30, 20).await;
    assert_eq!(
        (r.sent, r.accepted, r.rejected, r.retried),
        (300, 300, 0, 0)
    );
    assert!(r.accept_per_s > 0.0);
}

#[tokio::test]
async fn delivery_follows_telegrams_rules() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let (url, echo) = echo_bot(&sink, Faults::default()).await;
    let r = run_against(&url, Some(&sink), 400, 40, 8).await;
    assert_eq!(
        (r.accepted, r.replied, r.lost, r.duplicates, r.out_of_order),
        (400, 400, 0, 0, 0)
    );
    assert_eq!(
        echo.max_per_chat.load(Ordering::SeqCst),
        1,
        "one update of a chat at a time"
    );
    let max = echo.max_in_flight.load(Ordering::SeqCst);
    assert!(
        (2..=8).contains(&max),
        "at most 8 connections, and really concurrent: {max}"
    );
    assert!(r.latency_ms.p50 > 0.0 && r.latency_ms.max >= r.latency_ms.p99);
}

#[tokio::test]
async fn lost_duplicate_and_retried_updates_are_counted() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let faults = Faults {
        drop_every: Some(10),
        duplicate_every: Some(7),
        fail_first_every: Some(5),
        ..Default::default()
    };
    let (url, _) = echo_bot(&sink, faults).await;
    let r = run_against(&url, Some(&sink), 140, 14, 10).await;
    assert_eq!(r.accepted, 140);
    assert_eq!(r.retried, 28, "every 5th update failed once");
    assert_eq!(r.lost, 14, "every 10th update got no reply");
    // Every 7th is answered twice, unless it was dropped (multiples of 70).
    assert_eq!(r.duplicates, 20 - 2);
    assert_eq!(r.replied, 126);
}

#[tokio::test]
async fn out_of_order_replies_are_counted() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let faults = Faults {
        delay_first_in_chat: Some(Duration::from_millis(400)),
        ..Default::default()
    };
    let (url, _) = echo_bot(&sink, faults).await;
    // 5 chats, 4 updates each: each chat's first reply comes after its later ones.
    let r = run_against(&url, Some(&sink), 20, 5, 5).await;
    assert_eq!((r.replied, r.lost), (20, 0));
    assert_eq!(r.out_of_order, 5);
}

#[tokio::test]
async fn updates_that_are_never_accepted_are_rejected_not_lost() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let url = serve(Router::new().route(
        "/webhook/{bot}",
        post(|| async { StatusCode::SERVICE_UNAVAILABLE }),
    ))
    .await;
    let updates = run::generate(3, 3, &[Kind::Text], FIRST_ID);
    let d = Delivery {
        url: format!("{url}/webhook/1"),
        secret: "s".into(),
        connections: 3,
        rate: None,
        max_attempts: 2,
    };
    let outcomes = run::deliver(&updates, &d, Arc::new(Progress::default())).await;
    let calls = run::collect_replies(&sink.url(), &updates, &outcomes, 0, Duration::from_secs(1))
        .await
        .unwrap();
    let r = run::match_replies(&updates, &outcomes, &calls);
    assert_eq!(
        (r.sent, r.accepted, r.rejected, r.retried, r.lost),
        (3, 0, 3, 3, 0)
    );
}
