//! The bot registry at the ingress, against a real nats-server: bots added, paused,
//! removed and rotated through the registry's writers take effect without a restart,
//! and unreadable records in the webhooks bucket (the one the ingress reads) hurt no
//! other bot.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{BOT, Harness, SECRET, harness, text_update, webhook};
use tgpipe_shared::BotId;
use tgpipe_shared::registry::{BotRecord, BotState, Registry, RegistrySettings, WebhookRecord};
use tgpipe_testkit::eventually;

async fn bucket(t: &Harness) -> Registry {
    Registry::open(&t.js, &RegistrySettings::default(), 1, false)
        .await
        .expect("the ingress created the registry's buckets")
}

/// The webhook record of `bot`, as the ingress reads it.
async fn webhook_record(kv: &Registry, bot: u64) -> Option<WebhookRecord> {
    let entry = kv.webhooks().get(bot.to_string()).await.ok()??;
    serde_json::from_slice(&entry).ok()
}

/// Posts for `bot` with `secret` until stopped, counting each status.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(t: &Harness, bot: u64, secret: &'static str, first_update: i64) -> Load {
        let (stop, sent, refused) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let state = t.state.clone();
        let (s, n, r) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&refused));
        let task = tokio::spawn(async move {
            let mut id = first_update;
            while !s.load(Ordering::Relaxed) {
                let req = webhook(bot, Some(secret), text_update(id, id, "load"));
                let status = tower::ServiceExt::oneshot(tgpipe_ingress::app(state.clone()), req)
                    .await
                    .expect("infallible")
                    .status();
                n.fetch_add(1, Ordering::Relaxed);
                if status != StatusCode::OK {
                    r.fetch_add(1, Ordering::Relaxed);
                }
                id += 1;
                // A refusal completes without waiting on anything: let the watch run.
                tokio::task::yield_now().await;
            }
        });
        Load {
            stop,
            sent,
            refused,
            task,
        }
    }

    /// Stops and returns (sent, not answered 200).
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load task");
        (
            self.sent.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test]
async fn a_bot_added_at_runtime_is_answered_within_2s_while_others_are_under_load() {
    let t = harness(&[]).await;
    let kv = bucket(&t).await;
    let load = Load::start(&t, BOT, SECRET, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let new_bot = 9001;
    kv.add(&BotRecord::new(BotId(new_bot), "added-secret"))
        .await
        .unwrap();
    let added = Instant::now();
    let mut update = 0;
    eventually(Duration::from_secs(2), "the added bot is served", || {
        update += 1;
        let request = webhook(new_bot, Some("added-secret"), text_update(update, 5, "hi"));
        let t = &t;
        async move {
            let status = t.send(request).await;
            if status != StatusCode::OK {
                assert_eq!(status, StatusCode::NOT_FOUND, "before it is known");
            }
            status == StatusCode::OK
        }
    })
    .await;
    let took = added.elapsed();
    let (sent, refused) = load.stop().await;
    assert!(sent > 10, "the load ran ({sent} requests)");
    assert_eq!(refused, 0, "the other bot's requests were all answered 200");
    assert!(
        t.stored()
            .await
            .iter()
            .any(|m| m.subject.starts_with("tg.9001.")),
        "the new bot's update is stored"
    );
    eprintln!("added bot served after {took:?}");
}

#[tokio::test]
async fn a_secret_rotated_under_load_is_never_refused_and_the_old_one_goes_once_confirmed() {
    let t = harness(&[]).await;
    let kv = bucket(&t).await;
    let bot = 9002;
    kv.add(&BotRecord::new(BotId(bot), "old-secret"))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the added bot is served",
        || async {
            t.send(webhook(bot, Some("old-secret"), text_update(1, 1, "x")))
                .await
                == StatusCode::OK
        },
    )
    .await;

    // Telegram keeps signing with the old secret until setWebhook switches it.
    let old = Load::start(&t, bot, "old-secret", 1000);
    kv.modify(BotId(bot), |r| {
        r.rotate("new-secret");
        true
    })
    .await
    .unwrap();
    // What `bots rotate-secret` waits before calling setWebhook: the watch's bound.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Now Telegram switches; requests of both kinds overlap for a while.
    let new = Load::start(&t, bot, "new-secret", 100_000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (old_sent, old_refused) = old.stop().await;
    let (new_sent, new_refused) = new.stop().await;
    assert!(old_sent > 10 && new_sent > 0, "{old_sent} {new_sent}");
    assert_eq!(new_refused, 0, "no request with the new secret was refused");
    // Requests with the old secret sent after the confirmation reached this pod may
    // have been refused; before it none was. Count those sent before the switch.
    eprintln!("old secret: {old_sent} sent, {old_refused} refused after the switch");

    // The first request with the new secret confirmed it: the old one goes.
    eventually(
        Duration::from_secs(3),
        "the old secret is dropped from the webhook record",
        || async {
            webhook_record(&kv, bot)
                .await
                .is_some_and(|r| r.previous_secret.is_none())
        },
    )
    .await;
    eventually(
        Duration::from_secs(3),
        "the old secret is refused",
        || async {
            t.send(webhook(bot, Some("old-secret"), text_update(7, 1, "x")))
                .await
                == StatusCode::UNAUTHORIZED
        },
    )
    .await;
    assert_eq!(
        t.send(webhook(bot, Some("new-secret"), text_update(8, 1, "x")))
            .await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn requests_with_the_old_secret_are_accepted_until_the_new_one_is_seen() {
    let t = harness(&[]).await;
    let kv = bucket(&t).await;
    let bot = 9003;
    kv.add(&BotRecord::new(BotId(bot), "old-secret"))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the added bot is served",
        || async {
            t.send(webhook(bot, Some("old-secret"), text_update(1, 1, "x")))
                .await
                == StatusCode::OK
        },
    )
    .await;
    let load = Load::start(&t, bot, "old-secret", 1000);
    kv.modify(BotId(bot), |r| {
        r.rotate("new-secret");
        true
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent, refused) = load.stop().await;
    assert!(sent > 10);
    assert_eq!(
        refused, 0,
        "zero 401s for the old secret during the rotation"
    );
    assert!(
        webhook_record(&kv, bot)
            .await
            .unwrap()
            .previous_secret
            .is_some(),
        "not confirmed without a request signed with the new secret"
    );
}

#[tokio::test]
async fn a_paused_bot_is_answered_503_and_its_update_is_stored_once_resumed() {
    let t = harness(&[]).await;
    let kv = bucket(&t).await;
    let bot = 9004;
    kv.add(&BotRecord::new(BotId(bot), "pause-secret"))
        .await
        .unwrap();
    let post = |id: i64| t.send(webhook(bot, Some("pause-secret"), text_update(id, 3, "p")));
    eventually(
        Duration::from_secs(5),
        "the added bot is served",
        || async { post(1).await == StatusCode::OK },
    )
    .await;
    kv.modify(BotId(bot), |r| {
        r.state = BotState::Paused;
        true
    })
    .await
    .unwrap();
    eventually(
        Duration::from_secs(2),
        "the paused bot is answered 503",
        || async { post(2).await == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;
    // A wrong secret is still a 401: a paused bot tells nothing to strangers.
    assert_eq!(
        t.send(webhook(bot, Some("wrong"), text_update(2, 3, "p")))
            .await,
        StatusCode::UNAUTHORIZED
    );
    kv.modify(BotId(bot), |r| {
        r.state = BotState::Active;
        true
    })
    .await
    .unwrap();
    // Telegram's retry of update 2 is stored once the bot is resumed.
    eventually(
        Duration::from_secs(2),
        "the resumed bot is served",
        || async { post(2).await == StatusCode::OK },
    )
    .await;
    let mine: Vec<_> = t
        .stored()
        .await
        .into_iter()
        .filter(|m| m.subject.starts_with("tg.9004."))
        .collect();
    assert_eq!(mine.len(), 2, "updates 1 and 2, each once");
}

#[tokio::test]
async fn a_removed_bot_is_answered_404() {
    let t = harness(&[]).await;
    let kv = bucket(&t).await;
    let bot = 9005;
    kv.add(&BotRecord::new(BotId(bot), "gone-secret"))
        .await
        .unwrap();
    let post = || t.send(webhook(bot, Some("gone-secret"), text_update(1, 3, "p")));
    eventually(
        Duration::from_secs(5),
        "the added bot is served",
        || async { post().await == StatusCode::OK },
    )
    .await;
    kv.modify(BotId(bot), |r| {
        r.state = BotState::Removed;
        true
    })
    .await
    .unwrap();
    eventually(
        Duration::from_secs(2),
        "the removed bot is answered 404",
        || async { post().await == StatusCode::NOT_FOUND },
    )
    .await;
    // A key deleted outright is the same.
    kv.add(&BotRecord::new(BotId(9006), "s2")).await.unwrap();
    let post6 = || t.send(webhook(9006, Some("s2"), text_update(1, 3, "p")));
    eventually(
        Duration::from_secs(5),
        "the added bot is served",
        || async { post6().await == StatusCode::OK },
    )
    .await;
    // Deleted in the main bucket, then by the writer's next pass over the bot.
    kv.bots().delete("9006").await.unwrap();
    assert!(kv.publish(BotId(9006)).await.unwrap());
    eventually(
        Duration::from_secs(2),
        "the deleted bot is answered 404",
        || async { post6().await == StatusCode::NOT_FOUND },
    )
    .await;
}

#[tokio::test]
async fn malformed_records_are_skipped_and_other_bots_served_with_unknown_fields_kept() {
    let t = harness(&[]).await;
    let kv = bucket(&t).await;
    let good = BotRecord::new(BotId(9012), "good-secret");
    let mut with_extra: serde_json::Value = serde_json::from_slice(&good.to_json()).unwrap();
    with_extra["plan"] = "gold".into();
    // A newer version's field in the webhook record (what a newer ingress would read).
    let mut hook_extra = serde_json::to_value(WebhookRecord::of(&good, None)).unwrap();
    hook_extra["rate"] = 30.into();
    let hooks = kv.webhooks();
    hooks.put("9010", "not json".into()).await.unwrap();
    hooks.put(
        "9011",
        serde_json::to_vec(&serde_json::json!({"id": 9011, "state": "hibernating", "secret": with_extra["secret"]}))
            .unwrap()
            .into(),
    )
    .await
    .unwrap();
    hooks.put("not-a-bot", "{}".into()).await.unwrap();
    kv.bots()
        .put("9012", serde_json::to_vec(&with_extra).unwrap().into())
        .await
        .unwrap();
    hooks
        .put("9012", serde_json::to_vec(&hook_extra).unwrap().into())
        .await
        .unwrap();
    let post = |bot: u64| t.send(webhook(bot, Some("good-secret"), text_update(1, 3, "p")));
    eventually(
        Duration::from_secs(5),
        "the readable bot is served",
        || async { post(9012).await == StatusCode::OK },
    )
    .await;
    assert_eq!(post(9010).await, StatusCode::NOT_FOUND);
    assert_eq!(post(9011).await, StatusCode::NOT_FOUND);
    // The static bots are unaffected.
    assert_eq!(t.post(text_update(1, 1, "x")).await, StatusCode::OK);

    // A change through the registry keeps the fields this version does not know, each
    // in its bucket: the main record's are never copied to what the ingress reads.
    kv.modify(BotId(9012), |r| {
        r.state = BotState::Paused;
        true
    })
    .await
    .unwrap();
    let stored: serde_json::Value =
        serde_json::from_slice(&kv.bots().get("9012").await.unwrap().unwrap()).unwrap();
    assert_eq!(stored["plan"], "gold");
    assert_eq!(stored["state"], "paused");
    let hook: serde_json::Value =
        serde_json::from_slice(&hooks.get("9012").await.unwrap().unwrap()).unwrap();
    assert_eq!(hook["rate"], 30);
    assert_eq!(hook["state"], "paused");
    assert!(hook.get("plan").is_none(), "{hook}");
    eventually(
        Duration::from_secs(2),
        "the paused bot is answered 503",
        || async { post(9012).await == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;

    // A readable record overwritten by an unreadable one: the last readable one stays.
    hooks
        .put("9012", "{\"id\": 9012, \"state\": ".into())
        .await
        .unwrap();
    let marker = BotRecord::new(BotId(9013), "marker");
    kv.add(&marker).await.unwrap();
    eventually(
        Duration::from_secs(2),
        "the bot added after the unreadable record is served",
        || async {
            t.send(webhook(9013, Some("marker"), text_update(1, 3, "p")))
                .await
                == StatusCode::OK
        },
    )
    .await;
    assert_eq!(post(9012).await, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn an_ingress_upgraded_before_provisioning_answered_404_for_every_registry_bot() {
    // The chart's provisioning Job runs after the new pods start: an ingress that reads
    // only the webhooks bucket found none and served its static bots only. It reads the
    // main bucket until the webhooks bucket is made and filled, then switches to it.
    let nats = tgpipe_testkit::NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    tgpipe_shared::stream::provision_streams(&js, &Default::default())
        .await
        .unwrap();
    let settings = RegistrySettings::default();
    // What a version without the webhooks bucket left: the main bucket only.
    let main = tgpipe_shared::registry::bucket(&js, &settings, 1, true)
        .await
        .unwrap();
    tgpipe_shared::registry::add(&main, &BotRecord::new(BotId(9020), "upgrade-secret"))
        .await
        .unwrap();
    let url = nats.url();
    let config = tgpipe_ingress::IngressConfig::from_flags([
        "--nats-url",
        &url,
        "--allowed-cidrs",
        "any",
        "--provision",
        "false",
    ])
    .unwrap();
    let state =
        tgpipe_ingress::AppState::new(&config, config.nats.connect("upgrade-test").await.unwrap());
    let send = |secret: &'static str, id: i64| {
        let state = state.clone();
        async move {
            tower::ServiceExt::oneshot(
                tgpipe_ingress::app(state),
                webhook(9020, Some(secret), text_update(id, 1, "x")),
            )
            .await
            .unwrap()
            .status()
        }
    };
    eventually(
        Duration::from_secs(5),
        "the bot of the main bucket is served before provisioning",
        || async { send("upgrade-secret", 1).await == StatusCode::OK },
    )
    .await;
    // `provision` makes and fills the webhooks bucket; a change made through it (a
    // pause) reaches the ingress: it reads the webhooks bucket now.
    let (reg, _) = Registry::provision(&js, &settings, 1).await.unwrap();
    reg.webhooks()
        .put(
            "9020",
            serde_json::to_vec(&serde_json::json!({"id": 9020, "state": "paused",
                "secret": serde_json::to_value(tgpipe_shared::registry::SecretDigest::of(b"upgrade-secret")).unwrap()}))
            .unwrap()
            .into(),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the ingress switched to the webhooks bucket",
        || async { send("upgrade-secret", 2).await == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;
}
