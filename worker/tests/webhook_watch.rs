//! The webhook watchdog: one pod of the deployment asks Telegram about each bot's
//! webhook, exports what it says, and sets a drifted webhook again; no pod deletes a
//! webhook when it stops.

mod stack;

use std::time::Duration;

use stack::{BOT, SECRET, Stack};
use tgpipe_testkit::{eventually, eventually_ok};

/// A worker that watches every second and knows the static bot's URL and secret.
const WATCH: &[(&str, &str)] = &[
    ("TGPIPE_WEBHOOK_CHECK_INTERVAL", "1s"),
    ("TGPIPE_WEBHOOK_URL", "https://hooks.example.com"),
    ("TGPIPE_BOTS", "4242:e2e_Secret-1"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_changed_behind_the_bots_back_stayed_changed() {
    let s = Stack::start().await;
    s.sink
        .change_webhook_behind_the_bots_back(BOT, "https://elsewhere.example/hook");
    let w = s.worker(WATCH).await;
    let want = "https://hooks.example.com/webhook/4242";
    eventually(
        Duration::from_secs(10),
        "the webhook is set again",
        || async { s.sink.webhook_url_of(BOT) == want },
    )
    .await;
    let set = s.calls_of("setWebhook");
    assert_eq!(set.len(), 1, "set once");
    assert_eq!(
        set[0].params["secret_token"], SECRET,
        "with the ingress's secret"
    );
    let kinds = set[0].params["allowed_updates"].as_array().unwrap();
    assert!(
        kinds.iter().any(|k| k == "callback_query") && kinds.iter().any(|k| k == "message"),
        "the handlers' kinds: {kinds:?}"
    );
    // Set right, it stays: the next rounds only look.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(s.calls_of("setWebhook").len(), 1);
    assert!(s.calls_of("getWebhookInfo").len() >= 3);
    let metrics = w.metrics().await;
    assert!(
        metrics.contains(r#"tgpipe_webhook_repairs_total{bot="4242",result="set"} 1"#)
            && metrics.contains(r#"tgpipe_webhook_drifted{bot="4242"} 0"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegrams_delivery_errors_were_seen_only_by_the_bots_users() {
    let s = Stack::start().await;
    let w = s.worker(WATCH).await;
    s.sink.webhook_pending(BOT, 1_234);
    s.sink
        .webhook_error(BOT, 1_765_000_000, "Connection timed out");
    eventually_ok(Duration::from_secs(10), "the error is exported", || async {
        let m = w.metrics().await;
        if m.contains(r#"tgpipe_webhook_pending_updates{bot="4242"} 1234"#)
            && m.contains(r#"tgpipe_webhook_last_error_timestamp_seconds{bot="4242"} 1765000000"#)
        {
            Ok(())
        } else {
            Err(m)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_watches_and_another_takes_over_when_it_dies() {
    let s = Stack::start().await;
    let mut a = s.worker(WATCH).await;
    let mut b = s.worker(WATCH).await;
    // Two pods, one watcher: about one getWebhookInfo a second, not two.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = s.calls_of("getWebhookInfo").len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let in_4s = s.calls_of("getWebhookInfo").len() - before;
    assert!((2..=6).contains(&in_4s), "{in_4s} calls in 4 s");
    let watcher_a = a.metrics().await.contains("tgpipe_webhook_watcher 1");
    let watcher_b = b.metrics().await.contains("tgpipe_webhook_watcher 1");
    assert!(
        watcher_a ^ watcher_b,
        "exactly one watcher: a {watcher_a}, b {watcher_b}"
    );
    // The watcher dies; its lease expires (TGPIPE_LEASE_TTL, 5 s) and the other watches.
    let (dead, alive) = if watcher_a {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    dead.kill9();
    eventually(Duration::from_secs(15), "the other pod watches", || async {
        alive.metrics().await.contains("tgpipe_webhook_watcher 1")
    })
    .await;
    let after = s.calls_of("getWebhookInfo").len();
    eventually(Duration::from_secs(5), "rounds go on", || async {
        s.calls_of("getWebhookInfo").len() > after
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_deleted_the_webhook() {
    let s = Stack::start().await;
    s.sink
        .change_webhook_behind_the_bots_back(BOT, "https://hooks.example.com/webhook/4242");
    let mut w = s.worker(WATCH).await;
    s.wait_for("getWebhookInfo", 1, Duration::from_secs(10))
        .await;
    let status = w.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    assert!(s.calls_of("deleteWebhook").is_empty());
    assert_eq!(
        s.sink.webhook_url_of(BOT),
        "https://hooks.example.com/webhook/4242"
    );
}
