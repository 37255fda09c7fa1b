//! NATS stopped mid-run: 503 while it is down, 200 once it is back, and nothing lost.

mod common;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use tgpipe_shared::extract_keys;
use tgpipe_testkit::eventually;

#[tokio::test]
async fn nats_stopped_mid_run_is_503_then_200_with_nothing_lost() {
    let mut t = harness(&["--publish-timeout", "1s"]).await;
    let mut pending: Vec<String> = (0..40)
        .map(|i| text_update(i, i % 7, &format!("u{i}")))
        .collect();
    // First half while NATS is up.
    for body in pending.drain(..20) {
        assert_eq!(t.post(body).await, StatusCode::OK);
    }
    t.nats.stop();
    // While it is down, every update is refused with 503 (Telegram will retry it).
    for body in &pending[..5] {
        assert_eq!(t.post(body.clone()).await, StatusCode::SERVICE_UNAVAILABLE);
    }
    t.nats.restart();
    t.wait_ready().await;
    // Telegram's retries: keep re-sending what was not accepted until it is.
    let pending = Cell::new(pending);
    eventually(
        Duration::from_secs(30),
        "every update is accepted after the restart",
        || async {
            let mut refused = Vec::new();
            for body in pending.take() {
                if t.post(body.clone()).await != StatusCode::OK {
                    refused.push(body);
                }
            }
            let done = refused.is_empty();
            pending.set(refused);
            done
        },
    )
    .await;
    let ids: BTreeSet<i64> = t
        .stored()
        .await
        .iter()
        .map(|m| extract_keys(&m.payload).unwrap().update_id)
        .collect();
    assert_eq!(
        ids,
        (0..40).collect::<BTreeSet<i64>>(),
        "every update stored exactly once"
    );
    assert_eq!(t.stored().await.len(), 40);
}

#[tokio::test]
async fn readiness_follows_the_broker() {
    let mut t = harness(&[]).await;
    t.nats.stop();
    eventually(
        Duration::from_secs(20),
        "the ingress is not ready",
        || async { !t.state.is_ready() },
    )
    .await;
    t.nats.restart();
    t.wait_ready().await;
}

/// Regression: with the broker gone, the flush at shutdown waited for a reconnection
/// forever, so the process never exited.
#[tokio::test]
async fn flush_at_shutdown_does_not_wait_for_a_broker_that_is_gone() {
    let mut t = harness(&[]).await;
    t.nats.stop();
    let started = std::time::Instant::now();
    let flushed = tokio::time::timeout(
        Duration::from_secs(30),
        t.state.publisher().flush(Duration::from_millis(500)),
    )
    .await;
    assert!(flushed.is_ok(), "flush did not return");
    assert!(started.elapsed() < Duration::from_secs(10));
}
