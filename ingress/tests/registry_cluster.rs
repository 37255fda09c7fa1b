//! The ingress's watch of the bot registry on a 3-node NATS cluster: it survives the loss
//! of the bucket's stream leader (kill -9), and a bot added afterwards is served with no
//! restart.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{text_update, webhook};
use tgpipe_ingress::{AppState, IngressConfig};
use tgpipe_shared::BotId;
use tgpipe_shared::registry::{self, BotRecord, RegistrySettings};
use tgpipe_testkit::{NatsCluster, eventually, eventually_some};
use tower::ServiceExt;

async fn status(state: &AppState, bot: u64, secret: &str, update: i64) -> StatusCode {
    tgpipe_ingress::app(state.clone())
        .oneshot(webhook(bot, Some(secret), text_update(update, 1, "c")))
        .await
        .expect("infallible")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_watch_survives_the_loss_of_the_bucket_leader() {
    let mut cluster = NatsCluster::start();
    let url = cluster.url();
    let config = IngressConfig::from_flags([
        "--nats-url",
        &url,
        "--replicas",
        "3",
        "--publish-timeout",
        "2s",
    ])
    .expect("valid config");
    // The watch's WARNs say what it did when this test fails (RUST_LOG, info by default).
    let _telemetry = tgpipe_shared::telemetry::init("registry-cluster-test", &config.telemetry);
    let client = config.nats.connect("ingress-test").await.expect("connect");
    let state = AppState::new(&config, client.clone());
    eventually(Duration::from_secs(30), "the ingress is ready", || async {
        state.is_ready()
    })
    .await;
    let js = async_nats::jetstream::new(client);
    let kv = registry::Registry::open(&js, &RegistrySettings::default(), 3, false)
        .await
        .expect("the ingress created the buckets");
    // A new replicated bucket may take a moment to answer.
    eventually(
        Duration::from_secs(10),
        "the new bucket takes a write",
        || async {
            kv.add(&BotRecord::new(BotId(41), "first-secret"))
                .await
                .is_ok()
        },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the first bot is served",
        || async { status(&state, 41, "first-secret", 1).await == StatusCode::OK },
    )
    .await;

    let (leader, node) = cluster.leader_of(&js, "KV_tgpipe_bots_webhooks").await;
    cluster.kill(node);
    let killed = Instant::now();

    // A bot added once the bucket has a new leader is served without a restart.
    let added = eventually_some(
        Duration::from_secs(30),
        "the bucket takes writes again",
        || async {
            match kv.add(&BotRecord::new(BotId(42), "second-secret")).await {
                Ok(_) | Err(registry::RegistryError::Exists(_)) => Some(Instant::now()),
                Err(_) => {
                    // Writes are retried every 200 ms, as before this wait used the
                    // helper: the 2 s bound below was set with that pacing.
                    tokio::time::sleep(Duration::from_millis(180)).await;
                    None
                }
            }
        },
    )
    .await;
    let mut update = 1;
    let mut seen = Vec::new();
    loop {
        let s = status(&state, 42, "second-secret", update).await;
        if seen.last().is_none_or(|(last, _)| *last != s) {
            seen.push((s, added.elapsed()));
        }
        if s == StatusCode::OK {
            break;
        }
        // 404 until the watch has it (within 2 s); then 503 while the update stream
        // may still be electing its leader.
        assert!(
            s != StatusCode::NOT_FOUND || added.elapsed() < Duration::from_secs(2),
            "the watch did not deliver the bot added after the leader loss within 2 s"
        );
        assert!(
            added.elapsed() < Duration::from_secs(10),
            "bot added after the leader loss not served: {s}"
        );
        update += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "leader {leader} killed; bucket writable after {:?}, new bot served {:?} after it was added ({seen:?})",
        added.duration_since(killed),
        added.elapsed()
    );
    // The bot from before is still served.
    assert_eq!(status(&state, 41, "first-secret", 2).await, StatusCode::OK);
}
