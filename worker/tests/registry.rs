//! The bot registry end to end: `bots` commands against real NATS and the Bot API
//! stand-in, the ingress in process, and `tgpipe-example-bot` workers that know the
//! added bots only from the registry.

mod stack;

use std::time::{Duration, Instant};

use stack::{Stack, header, text, text_of};
use tgpipe_shared::BotId;
use tgpipe_shared::registry::{BotState, Registry, RegistrySettings};
use tgpipe_testkit::{eventually, eventually_ok, eventually_some};
use tgpipe_worker::runtime::{BotsCommand, run_bots_command};

const NEW_BOT: u64 = 5151;
const NEW_TOKEN: &str = "5151:registry-token-AAAAAAAAAAAAAAAA";

async fn kv(s: &Stack) -> Registry {
    Registry::open(&s.js, &RegistrySettings::default(), 1, false)
        .await
        .expect("the ingress created the registry's buckets")
}

async fn bots(s: &Stack, command: BotsCommand) -> String {
    let mut out = Vec::new();
    run_bots_command(&kv(s).await, &s.sink.url(), &[], command, &mut out)
        .await
        .expect("bots command");
    String::from_utf8(out).expect("utf-8")
}

/// `bots add` as an operator runs it; returns the secret it gave `setWebhook`.
async fn add(s: &Stack) -> String {
    let out = bots(
        s,
        BotsCommand::Add {
            token: NEW_TOKEN.parse().unwrap(),
            url: "https://hooks.example.com".into(),
            allowed_updates: Some(vec!["message".into()]),
        },
    )
    .await;
    assert!(out.contains("bot 5151"), "{out}");
    let set = s.calls_of("setWebhook");
    let call = set.last().expect("setWebhook was called");
    assert_eq!(call.bot_id, Some(NEW_BOT));
    assert_eq!(call.params["url"], "https://hooks.example.com/webhook/5151");
    assert_eq!(
        call.params["allowed_updates"],
        serde_json::json!(["message"])
    );
    call.params["secret_token"]
        .as_str()
        .expect("a secret")
        .to_owned()
}

async fn post_until_stored(s: &Stack, secret: &str, update: i64, chat: i64, limit: Duration) {
    let body = text(update, chat, "hi registry").to_string();
    eventually_ok(limit, "the update is stored", || async {
        match s.post_as(NEW_BOT, secret, body.clone()).await {
            200 => Ok(()),
            status => Err(status),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_added_with_bots_add_is_answered_by_a_running_worker_without_a_restart() {
    let s = Stack::start().await;
    let _w = s.worker(&[]).await;
    let secret = add(&s).await;
    let added = Instant::now();
    post_until_stored(&s, &secret, 1, 601, Duration::from_secs(2)).await;
    // The worker, started before the bot existed, answers with the registry's token.
    let call = eventually_some(
        Duration::from_secs(10),
        "the added bot's update is answered",
        || {
            let sent = s.calls_of("sendMessage");
            std::future::ready(sent.into_iter().find(|c| c.bot_id == Some(NEW_BOT)))
        },
    )
    .await;
    assert_eq!(text_of(&call), "hi registry");
    eprintln!(
        "first update of the added bot answered {:?} after `bots add`",
        added.elapsed()
    );

    // `bots list` never shows the token in full.
    let list = bots(&s, BotsCommand::List).await;
    assert!(list.contains("5151") && list.contains("active"), "{list}");
    assert!(!list.contains("registry-token"), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_secret_keeps_both_secrets_until_the_new_one_arrives_then_refuses_the_old() {
    let s = Stack::start().await;
    let old = add(&s).await;
    post_until_stored(&s, &old, 1, 602, Duration::from_secs(2)).await;
    bots(
        &s,
        BotsCommand::RotateSecret {
            id: NEW_BOT,
            settle: Duration::from_millis(1500),
        },
    )
    .await;
    let new = s.calls_of("setWebhook").last().unwrap().params["secret_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    // Telegram may still be delivering with the old secret: accepted.
    assert_eq!(
        s.post_as(NEW_BOT, &old, text(2, 602, "a").to_string())
            .await,
        200
    );
    // The first update with the new one confirms it ...
    assert_eq!(
        s.post_as(NEW_BOT, &new, text(3, 602, "b").to_string())
            .await,
        200
    );
    // ... and the old one is refused from then on.
    eventually(
        Duration::from_secs(3),
        "the old secret is refused",
        || async {
            s.post_as(NEW_BOT, &old, text(4, 602, "c").to_string())
                .await
                == 401
        },
    )
    .await;
    let list = bots(&s, BotsCommand::List).await;
    assert!(list.contains("confirmed"), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_bots_stored_updates_are_dead_lettered_with_the_reason() {
    let s = Stack::start().await;
    let secret = add(&s).await;
    // Stored while no worker runs, then the bot is removed.
    post_until_stored(&s, &secret, 1, 603, Duration::from_secs(2)).await;
    post_until_stored(&s, &secret, 2, 604, Duration::from_secs(2)).await;
    let out = bots(
        &s,
        BotsCommand::Remove {
            id: NEW_BOT,
            keep_webhook: false,
        },
    )
    .await;
    assert!(out.contains("webhook deleted"), "{out}");
    assert!(
        s.calls_of("deleteWebhook")
            .iter()
            .any(|c| c.bot_id == Some(NEW_BOT))
    );
    // The ingress refuses it from now on.
    eventually(
        Duration::from_secs(2),
        "the removed bot is refused",
        || async {
            s.post_as(NEW_BOT, &secret, text(3, 603, "x").to_string())
                .await
                == 404
        },
    )
    .await;
    let _w = s.worker(&[]).await;
    let letters = s.wait_dead_letters(2).await;
    for letter in &letters {
        let error = header(letter, "Tg-Error");
        assert!(
            error.contains("bot 5151 was removed from the registry"),
            "{error}"
        );
    }
    assert!(
        s.calls_of("sendMessage")
            .iter()
            .all(|c| c.bot_id != Some(NEW_BOT)),
        "nothing answered for the removed bot"
    );
    let (record, _) = kv(&s).await.get(BotId(NEW_BOT)).await.unwrap();
    assert_eq!(record.state, BotState::Removed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_drain_policy_a_removed_bots_stored_updates_are_answered() {
    let s = Stack::start().await;
    let secret = add(&s).await;
    post_until_stored(&s, &secret, 1, 605, Duration::from_secs(2)).await;
    bots(
        &s,
        BotsCommand::Remove {
            id: NEW_BOT,
            keep_webhook: true,
        },
    )
    .await;
    let _w = s.worker(&[("TGPIPE_REMOVED_POLICY", "drain")]).await;
    eventually(
        Duration::from_secs(10),
        "the removed bot's update is drained",
        || async {
            s.calls_of("sendMessage")
                .iter()
                .any(|c| c.bot_id == Some(NEW_BOT))
        },
    )
    .await;
    assert_eq!(s.dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_bot_is_answered_503_and_its_update_handled_once_resumed() {
    let s = Stack::start().await;
    let _w = s.worker(&[]).await;
    let secret = add(&s).await;
    post_until_stored(&s, &secret, 1, 606, Duration::from_secs(2)).await;
    bots(&s, BotsCommand::Pause { id: NEW_BOT }).await;
    eventually(
        Duration::from_secs(2),
        "the paused bot is answered 503",
        || async {
            s.post_as(NEW_BOT, &secret, text(2, 606, "held").to_string())
                .await
                == 503
        },
    )
    .await;
    bots(&s, BotsCommand::Resume { id: NEW_BOT }).await;
    // Telegram retries update 2; once resumed it is stored and answered.
    post_until_stored(&s, &secret, 2, 606, Duration::from_secs(2)).await;
    eventually(
        Duration::from_secs(10),
        "the retried update is answered",
        || async {
            s.calls_of("sendMessage")
                .iter()
                .any(|c| c.bot_id == Some(NEW_BOT) && text_of(c) == "held")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_bots_webhook_changed_behind_its_back_stayed_changed() {
    let s = Stack::start().await;
    let old = add(&s).await;
    s.sink
        .change_webhook_behind_the_bots_back(NEW_BOT, "https://elsewhere.example/hook");
    let _w = s.worker(&[("TGPIPE_WEBHOOK_CHECK_INTERVAL", "1s")]).await;
    let want = "https://hooks.example.com/webhook/5151";
    eventually(Duration::from_secs(15), "the webhook is set again", || {
        std::future::ready(s.sink.webhook_url_of(NEW_BOT) == want)
    })
    .await;
    // Set again with a new secret (the old one is stored nowhere), which the ingress
    // takes: the bot's updates flow again.
    let set = s.calls_of("setWebhook");
    let new = set.last().unwrap().params["secret_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    assert_eq!(
        set.last().unwrap().params["allowed_updates"],
        serde_json::json!(["message"])
    );
    post_until_stored(&s, &new, 7, 607, Duration::from_secs(5)).await;
    eventually(Duration::from_secs(10), "the bot is answered", || {
        std::future::ready(
            s.calls_of("sendMessage")
                .iter()
                .any(|c| c.bot_id == Some(NEW_BOT)),
        )
    })
    .await;
}
