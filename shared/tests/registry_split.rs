//! The registry's two buckets against a real nats-server: the webhooks bucket (what the
//! ingress reads) never holds a token, follows every change of the main bucket, and
//! catches up after a writer died between the two writes or an upgrade that added it.

use tgpipe_shared::BotId;
use tgpipe_shared::registry::{
    self, BotRecord, BotState, BotToken, Registry, RegistrySettings, SecretDigest, WebhookRecord,
};
use tgpipe_testkit::NatsServer;

const TOKEN: &str = "7001:TOPSECRET-TOKEN-VALUE-AAAAAAAA";

async fn js(nats: &NatsServer) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap())
}

async fn hook(reg: &Registry, bot: u64) -> Option<WebhookRecord> {
    let raw = reg.webhooks().get(bot.to_string()).await.unwrap()?;
    Some(serde_json::from_slice(&raw).unwrap())
}

fn with_token(id: u64, secret: &str) -> BotRecord {
    let mut r = BotRecord::new(BotId(id), secret);
    r.token = Some(BotToken::new(TOKEN));
    r.webhook_url = Some(format!("https://hooks.example.com/webhook/{id}"));
    r
}

#[tokio::test]
async fn the_ingress_could_read_every_bots_token() {
    // The ingress read the bucket that holds the tokens. Now it reads one that holds
    // states and digests only; a newer version's unknown field of the main record (it
    // may be as secret as a token) is not copied either.
    let nats = NatsServer::start();
    let reg = Registry::open(&js(&nats).await, &RegistrySettings::default(), 1, true)
        .await
        .unwrap();
    let mut record = with_token(7001, "s1");
    record
        .extra
        .insert("payment_token".into(), "TOPSECRET-PAYMENT".into());
    reg.add(&record).await.unwrap();
    let raw = reg.webhooks().get("7001").await.unwrap().expect("written");
    let text = String::from_utf8(raw.to_vec()).unwrap();
    assert!(!text.contains("TOPSECRET"), "{text}");
    assert!(!text.contains("hooks.example.com"), "{text}");
    let h: WebhookRecord = serde_json::from_slice(&raw).unwrap();
    assert_eq!((h.id, h.state), (BotId(7001), BotState::Active));
    assert!(h.secret.matches(&SecretDigest::of(b"s1")));
    // The main record keeps everything (the workers read it; an older ingress too).
    let (main, _) = reg.get(BotId(7001)).await.unwrap();
    assert_eq!(main.token.unwrap().expose(), TOKEN);
    assert_eq!(main.extra["payment_token"], "TOPSECRET-PAYMENT");
    assert_eq!(
        reg.webhooks().stream.get_info().await.unwrap().config.name,
        "KV_tgpipe_bots_webhooks"
    );
}

#[tokio::test]
async fn a_writer_that_died_between_the_two_writes_left_the_ingress_behind_until_a_rerun() {
    let nats = NatsServer::start();
    let reg = Registry::open(&js(&nats).await, &RegistrySettings::default(), 1, true)
        .await
        .unwrap();
    // `bots add` stored the main record and died: the ingress does not know the bot.
    registry::add(reg.bots(), &with_token(7002, "s"))
        .await
        .unwrap();
    assert!(hook(&reg, 7002).await.is_none());
    // Its rerun finds the bot there, and brings the webhook record up to date anyway.
    assert!(matches!(
        reg.add(&with_token(7002, "s")).await,
        Err(registry::RegistryError::Exists(_))
    ));
    assert_eq!(hook(&reg, 7002).await.unwrap().state, BotState::Active);

    // `bots pause` changed the main record and died: provisioning catches up.
    registry::modify(reg.bots(), BotId(7002), |r: &mut BotRecord| {
        r.state = BotState::Paused;
        true
    })
    .await
    .unwrap();
    assert_eq!(hook(&reg, 7002).await.unwrap().state, BotState::Active);
    let done = reg.backfill().await.unwrap();
    assert_eq!((done.written, done.deleted), (1, 0));
    assert_eq!(hook(&reg, 7002).await.unwrap().state, BotState::Paused);
    // Nothing left to do: a rerun writes nothing.
    assert_eq!(reg.backfill().await.unwrap(), registry::Backfill::default());
    // A bot deleted from the main bucket by hand goes from the webhooks bucket too.
    reg.bots().delete("7002").await.unwrap();
    assert_eq!(reg.backfill().await.unwrap().deleted, 1);
    assert!(hook(&reg, 7002).await.is_none());
}

#[tokio::test]
async fn an_upgrade_fills_the_new_webhooks_bucket_from_the_main_one() {
    // A registry written by a version without the webhooks bucket: the main one only.
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let settings = RegistrySettings::default();
    let main = registry::bucket(&js, &settings, 1, true).await.unwrap();
    for id in 1..=500u64 {
        registry::add(&main, &with_token(10_000 + id, "s"))
            .await
            .unwrap();
    }
    let mut removed = with_token(20_000, "s");
    removed.state = BotState::Removed;
    registry::add(&main, &removed).await.unwrap();
    main.put("20001", "not json".into()).await.unwrap();
    // The provisioning Job (or a pod that provisions) creates and fills it.
    let (reg, done) = Registry::provision(&js, &settings, 1).await.unwrap();
    assert_eq!(done.written, 501);
    for id in [10_001, 10_250, 10_500] {
        assert_eq!(hook(&reg, id).await.unwrap().state, BotState::Active);
    }
    assert_eq!(hook(&reg, 20_000).await.unwrap().state, BotState::Removed);
    assert!(
        hook(&reg, 20_001).await.is_none(),
        "an unreadable record is not copied"
    );
    // Opening with `create` fills only an empty webhooks bucket: here, nothing to do.
    let again = Registry::open(&js, &settings, 1, true).await.unwrap();
    assert!(hook(&again, 10_001).await.is_some());
}

#[tokio::test]
async fn a_rotation_the_ingress_confirmed_came_back_with_the_next_change() {
    // The ingress confirms in the webhooks bucket; the main record still lists the
    // previous secret. A later `bots pause` copied it back (the old secret accepted
    // again), and a later rotation kept the oldest secret as the previous one.
    let nats = NatsServer::start();
    let reg = Registry::open(&js(&nats).await, &RegistrySettings::default(), 1, true)
        .await
        .unwrap();
    reg.add(&with_token(7003, "a")).await.unwrap();
    reg.modify(BotId(7003), |r| {
        r.rotate("b");
        true
    })
    .await
    .unwrap();
    assert!(hook(&reg, 7003).await.unwrap().previous_secret.is_some());
    assert!(
        registry::confirm_rotation(reg.webhooks(), BotId(7003), &SecretDigest::of(b"b"))
            .await
            .unwrap()
    );
    assert!(hook(&reg, 7003).await.unwrap().previous_secret.is_none());
    // Provisioning keeps the confirmation...
    reg.backfill().await.unwrap();
    assert!(hook(&reg, 7003).await.unwrap().previous_secret.is_none());
    // ... and so does the next change, which folds it into the main record.
    reg.modify(BotId(7003), |r| {
        r.state = BotState::Paused;
        true
    })
    .await
    .unwrap();
    let h = hook(&reg, 7003).await.unwrap();
    assert_eq!((h.state, h.previous_secret), (BotState::Paused, None));
    assert_eq!(reg.get(BotId(7003)).await.unwrap().0.previous_secret, None);
    // The next rotation accepts "b" (what Telegram sends now) until "c" is confirmed.
    reg.modify(BotId(7003), |r| {
        r.rotate("c");
        true
    })
    .await
    .unwrap();
    let h = hook(&reg, 7003).await.unwrap();
    assert!(h.previous_secret.unwrap().matches(&SecretDigest::of(b"b")));
    assert!(h.secret.matches(&SecretDigest::of(b"c")));
}
