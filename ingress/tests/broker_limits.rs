//! The body limit against the broker's: a body that fits TGPIPE_MAX_BODY but not the
//! NATS server's max_payload can never be stored, so it is 413, never 503.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use tgpipe_ingress::{AppState, IngressConfig};
use tgpipe_shared::publish::{HEADER_ALLOWANCE, PublishError, Publisher};
use tgpipe_testkit::eventually;

const MAX_PAYLOAD: usize = 8192;

/// A nats-server with JetStream and a small max_payload (the test kit's has the default).
struct SmallNats {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for SmallNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn small_nats() -> SmallNats {
    let dir = tempfile::tempdir().unwrap();
    let port = tgpipe_testkit::free_port();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\nmax_payload: {MAX_PAYLOAD}\njetstream {{ store_dir: {:?} }}\n",
            dir.path().join("js")
        ),
    )
    .unwrap();
    let server = std::env::var_os("TGPIPE_NATS_SERVER").unwrap_or_else(|| "nats-server".into());
    let mut child = Command::new(server)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nats-server");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Server is ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(15))
        .expect("nats-server with max_payload did not start");
    SmallNats {
        child,
        port,
        _dir: dir,
    }
}

fn update_of_size(update_id: i64, size: usize) -> String {
    let head = text_update(update_id, 1, "");
    let pad = size - head.len();
    text_update(update_id, 1, &"x".repeat(pad))
}

#[tokio::test]
async fn an_update_under_max_body_but_over_the_brokers_max_payload_is_413_not_503() {
    // Regression: an update just under TGPIPE_MAX_BODY (1 MiB) that, with its headers,
    // exceeded NATS's max_payload was answered 503 forever, so Telegram retried an
    // update that could never be stored.
    let nats = small_nats();
    let bots = format!("{BOT}:{SECRET}");
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let config = IngressConfig::from_flags(["--bots", &bots, "--nats-url", &url]).unwrap();
    assert_eq!(
        config.max_body,
        1 << 20,
        "the default limit, far over the broker's"
    );
    let client = config.nats.connect("t").await.unwrap();
    let state = AppState::new(&config, client.clone());
    eventually(Duration::from_secs(20), "the ingress is ready", || async {
        state.is_ready()
    })
    .await;
    let send = |body: String| {
        let state = state.clone();
        async move {
            use tower::ServiceExt;
            tgpipe_ingress::app(state)
                .oneshot(webhook(BOT, Some(SECRET), body))
                .await
                .unwrap()
                .status()
        }
    };
    // Over what the broker stores: 413, the first time and every time.
    for id in 1..=3 {
        assert_eq!(
            send(update_of_size(id, MAX_PAYLOAD - 100)).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
    // Just within the limit lowered to the broker's: stored.
    let effective = MAX_PAYLOAD - HEADER_ALLOWANCE;
    assert_eq!(send(update_of_size(10, effective)).await, StatusCode::OK);
    assert_eq!(
        send(update_of_size(11, effective + 1)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // Should anything still reach the broker over its limit (headers larger than the
    // allowance), the publish error says so and is not a retryable one.
    let publisher = Publisher::new(client, Duration::from_secs(5));
    assert_eq!(publisher.max_payload(), MAX_PAYLOAD);
    let err = publisher
        .publish(
            format!("tg.{BOT}.message.0"),
            async_nats::HeaderMap::new(),
            bytes::Bytes::from(vec![b'x'; MAX_PAYLOAD + 1]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PublishError::TooLarge {
                max_payload: MAX_PAYLOAD,
                ..
            }
        ),
        "{err:?}"
    );
}
