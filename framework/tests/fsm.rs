//! The FSM: every `FsmContext` method on both storages, Redis layout and TTL, key
//! strategies, isolation across dispatchers sharing one Redis (increments, crashed and
//! slow holders), failures (Redis down, undecodable data), and the classic bots.

mod common;

use common::{Log, bot};

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use frankenstein::types::Message;
use serde::{Deserialize, Serialize};
use tgpipe::error::ErrorEvent;
use tgpipe::filter::{Command, ErrorIs};
use tgpipe::fsm::{
    Fsm, FsmContext, FsmError, FsmKey, FsmStorage, HISTORY_CAP, Isolation, KeyStrategy,
    MemoryStorage, RedisStorage, Scene, SceneContext, Scenes, StateFilter, StatesGroup,
};
use tgpipe::{Bot, BuildError, Dep, Dispatcher, Outcome, Router, Update};
use tgpipe_testkit::sink::{Sink, SinkHandle};
use tgpipe_testkit::{RedisServer, eventually_some};

tgpipe::states! {
    /// The sign-up form.
    enum Form { Name, Age }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    age: Option<u32>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Counter {
    count: u64,
}

fn message(chat: i64, user: i64, text: &str) -> Bytes {
    let chat_type = if chat < 0 { "supergroup" } else { "private" };
    Bytes::from(
        serde_json::json!({"update_id": 1, "message": {"message_id": 1, "date": 0,
            "chat": {"id": chat, "type": chat_type, "title": "T", "first_name": "A"},
            "from": {"id": user, "is_bot": false, "first_name": "A"},
            "text": text}})
        .to_string(),
    )
}

fn topic_message(chat: i64, user: i64, thread: i64, text: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({"update_id": 1, "message": {"message_id": 1, "date": 0,
            "chat": {"id": chat, "type": "supergroup", "title": "T", "is_forum": true},
            "from": {"id": user, "is_bot": false, "first_name": "A"},
            "message_thread_id": thread, "is_topic_message": true,
            "text": text}})
        .to_string(),
    )
}

fn poll() -> Bytes {
    Bytes::from_static(
        br#"{"update_id":3,"poll":{"id":"p","question":"q","options":[],"total_voter_count":0,"is_closed":false,"is_anonymous":true,"type":"regular","allows_multiple_answers":false}}"#,
    )
}

fn parse(raw: Bytes) -> Update {
    Update::parse(bot().id(), raw).expect("an update")
}

async fn redis_storage(server: &RedisServer) -> RedisStorage {
    RedisStorage::connect(&server.url()).await.expect("redis")
}

async fn raw_redis(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

// ---------------------------------------------------------------- FsmContext methods

async fn every_method(storage: Arc<dyn FsmStorage>) {
    let fsm = FsmContext::new(storage, FsmKey::new(1, 5, 5));
    assert_eq!(fsm.state().await.unwrap(), None);
    fsm.set_state(Form::Name).await.unwrap();
    assert_eq!(fsm.state().await.unwrap().as_deref(), Some("Form:Name"));
    assert!(fsm.is_in(Form::Name).await.unwrap());
    assert!(!fsm.is_in(Form::Age).await.unwrap());

    assert_eq!(fsm.data::<Profile>().await.unwrap(), Profile::default());
    assert_eq!(fsm.get_value::<String>("name").await.unwrap(), None);
    let alice = Profile {
        name: "Alice".into(),
        age: None,
    };
    fsm.set_data(&alice).await.unwrap();
    assert_eq!(fsm.data::<Profile>().await.unwrap(), alice);
    assert_eq!(
        fsm.get_value::<String>("name").await.unwrap().as_deref(),
        Some("Alice")
    );
    assert_eq!(fsm.get_value::<u32>("missing").await.unwrap(), None);

    let updated = fsm
        .update_data(|p: &mut Profile| p.age = Some(30))
        .await
        .unwrap();
    assert_eq!(updated.age, Some(30));
    assert_eq!(fsm.get_value::<u32>("age").await.unwrap(), Some(30));
    assert_eq!(fsm.data::<Profile>().await.unwrap().name, "Alice");

    // A fresh context reads what was written (no cache across contexts).
    let again = FsmContext::new(Arc::clone(fsm.storage()), fsm.key().clone());
    assert_eq!(again.state().await.unwrap().as_deref(), Some("Form:Name"));

    fsm.remove_state().await.unwrap();
    assert_eq!(fsm.state().await.unwrap(), None);
    assert_eq!(fsm.data::<Profile>().await.unwrap().name, "Alice");

    fsm.set_state("Custom:State").await.unwrap();
    fsm.clear().await.unwrap();
    assert_eq!(fsm.state().await.unwrap(), None);
    assert_eq!(fsm.data::<Profile>().await.unwrap(), Profile::default());
    let fresh = FsmContext::new(Arc::clone(fsm.storage()), fsm.key().clone());
    assert_eq!(fresh.state().await.unwrap(), None);

    // Another key is another record.
    let other = FsmContext::new(Arc::clone(fsm.storage()), FsmKey::new(1, 5, 6));
    fsm.set_state(Form::Age).await.unwrap();
    assert_eq!(other.state().await.unwrap(), None);
}

#[tokio::test]
async fn every_method_on_redis() {
    let server = RedisServer::start();
    every_method(Arc::new(redis_storage(&server).await)).await;
}

#[tokio::test]
async fn every_method_in_memory() {
    every_method(Arc::new(MemoryStorage::new())).await;
}

async fn locks(storage: Arc<dyn FsmStorage>) {
    let key = FsmKey::new(1, 5, 5);
    storage.set_state(&key, Some("S:A")).await.unwrap();
    let lease = Duration::from_secs(5);
    let first = storage.try_lock(&key, "a", lease).await.unwrap().unwrap();
    assert_eq!(
        first.state.as_deref(),
        Some("S:A"),
        "the state comes with the lock"
    );
    assert!(storage.try_lock(&key, "b", lease).await.unwrap().is_none());
    // Side records share the lock.
    let side = key.clone().with_destiny("scenes");
    assert!(storage.try_lock(&side, "b", lease).await.unwrap().is_none());
    assert!(storage.renew_lock(&key, "a", lease).await.unwrap());
    assert!(!storage.renew_lock(&key, "b", lease).await.unwrap());
    assert!(!storage.unlock(&key, "b").await.unwrap(), "only the holder");
    assert!(storage.unlock(&key, "a").await.unwrap());
    let second = storage.try_lock(&key, "b", lease).await.unwrap().unwrap();
    assert!(second.fence > first.fence, "fencing tokens increase");
    assert!(storage.unlock(&key, "b").await.unwrap());
}

/// Without `TGPIPE_FSM_TTL` the lock's fencing counters had no TTL: one key per user
/// ever seen, forever.
#[tokio::test]
async fn lock_fence_counters_expire_without_fsm_ttl() {
    let server = RedisServer::start();
    let storage = redis_storage(&server).await;
    let mut conn = raw_redis(&server).await;
    let key = FsmKey::new(1, 5, 5);
    let lease = Duration::from_secs(5);
    let grant = storage.try_lock(&key, "a", lease).await.unwrap().unwrap();
    assert!(storage.unlock(&key, "a").await.unwrap());
    let fence_key = format!("{}:fence", RedisStorage::lock_key(&key));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&fence_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let day = 24 * 3600 * 1000;
    // A day, and an hour more than the epoch hash its tokens are written to.
    let hour = 3600 * 1000;
    assert!(
        pttl > day + hour - 60_000 && pttl <= day + hour,
        "PTTL {pttl}"
    );
    // Renewed with every lock; the counter keeps rising while it lives.
    let _: () = redis::cmd("PEXPIRE")
        .arg(&fence_key)
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let next = storage.try_lock(&key, "b", lease).await.unwrap().unwrap();
    assert_eq!(next.fence, grant.fence + 1);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&fence_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > day - 60_000, "renewed: PTTL {pttl}");
    // A TTL longer than a day is the counter's too.
    let week = Duration::from_secs(7 * 24 * 3600);
    let storage = redis_storage(&server).await.ttl(Some(week));
    let other = FsmKey::new(1, 6, 6);
    storage.try_lock(&other, "c", lease).await.unwrap().unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}:fence", RedisStorage::lock_key(&other)))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > day * 6, "PTTL {pttl}");
}

#[tokio::test]
async fn lock_primitives_on_redis() {
    let server = RedisServer::start();
    locks(Arc::new(redis_storage(&server).await)).await;
}

#[tokio::test]
async fn lock_primitives_in_memory() {
    locks(Arc::new(MemoryStorage::new())).await;
}

// ---------------------------------------------------------------- Redis layout

#[tokio::test]
async fn ttl_applies_to_state_and_data() {
    let server = RedisServer::start();
    let storage = redis_storage(&server)
        .await
        .ttl(Some(Duration::from_secs(60)));
    let key = FsmKey::new(1, 5, 5);
    let fsm = FsmContext::new(Arc::new(storage), key.clone());
    let mut conn = raw_redis(&server).await;
    let pttl = async |conn: &mut redis::aio::MultiplexedConnection, k: String| -> i64 {
        redis::cmd("PTTL").arg(k).query_async(conn).await.unwrap()
    };

    fsm.set_state(Form::Name).await.unwrap();
    let t = pttl(&mut conn, RedisStorage::state_key(&key)).await;
    assert!(t > 55_000 && t <= 60_000, "state PTTL {t}");
    fsm.set_data(&Counter { count: 1 }).await.unwrap();
    let t = pttl(&mut conn, RedisStorage::data_key(&key)).await;
    assert!(t > 55_000 && t <= 60_000, "data PTTL {t}");
    let _: () = redis::cmd("PERSIST")
        .arg(RedisStorage::data_key(&key))
        .query_async(&mut conn)
        .await
        .unwrap();
    fsm.update_data(|c: &mut Counter| c.count += 1)
        .await
        .unwrap();
    let t = pttl(&mut conn, RedisStorage::data_key(&key)).await;
    assert!(
        t > 55_000 && t <= 60_000,
        "update_data refreshes the TTL: {t}"
    );

    // No TTL by default.
    let plain = FsmContext::new(Arc::new(redis_storage(&server).await), FsmKey::new(1, 6, 6));
    plain.set_state(Form::Age).await.unwrap();
    let t = pttl(&mut conn, RedisStorage::state_key(plain.key())).await;
    assert_eq!(t, -1);
}

#[test]
fn key_shapes_per_strategy() {
    let group = parse(topic_message(-100, 7, 3, "hi"));
    let private = parse(message(7, 7, "hi"));
    let cases = [
        (KeyStrategy::UserInChat, &group, "{123:-100:7}"),
        (KeyStrategy::Chat, &group, "{123:-100:-100}"),
        (KeyStrategy::GlobalUser, &group, "{123:7:7}"),
        (KeyStrategy::UserInTopic, &group, "{123:-100:7:3}"),
        (KeyStrategy::ChatTopic, &group, "{123:-100:-100:3}"),
        (KeyStrategy::UserInChat, &private, "{123:7:7}"),
        // No topic: the topic strategies fall back to the chat's key.
        (KeyStrategy::UserInTopic, &private, "{123:7:7}"),
    ];
    for (strategy, update, tag) in cases {
        let key = Fsm::new(MemoryStorage::new())
            .strategy(strategy)
            .key(update)
            .unwrap();
        assert_eq!(
            RedisStorage::state_key(&key),
            format!("tgpipe:fsm:{tag}:state"),
            "{strategy}"
        );
        assert_eq!(
            RedisStorage::data_key(&key),
            format!("tgpipe:fsm:{tag}:data")
        );
        assert_eq!(RedisStorage::lock_key(&key), format!("tgpipe:lock:{tag}"));
    }
    let business = parse(Bytes::from(
        serde_json::json!({"update_id": 1, "business_message": {"message_id": 1, "date": 0,
            "chat": {"id": 9, "type": "private", "first_name": "C"},
            "from": {"id": 9, "is_bot": false, "first_name": "C"},
            "business_connection_id": "bc1", "text": "hi"}})
        .to_string(),
    ));
    let key = KeyStrategy::UserInChat.key(&business).unwrap();
    assert_eq!(
        RedisStorage::state_key(&key),
        "tgpipe:fsm:{123:9:9:biz:bc1}:state"
    );
    for strategy in [
        KeyStrategy::UserInChat,
        KeyStrategy::Chat,
        KeyStrategy::GlobalUser,
    ] {
        assert_eq!(strategy.key(&parse(poll())), None, "a poll has no FSM key");
    }
}

#[tokio::test]
async fn the_dispatcher_writes_the_documented_redis_keys() {
    let server = RedisServer::start();
    let mut conn = raw_redis(&server).await;
    for (strategy, tag) in [
        (KeyStrategy::UserInChat, "{123:-100:7}"),
        (KeyStrategy::Chat, "{123:-100:-100}"),
        (KeyStrategy::GlobalUser, "{123:7:7}"),
        (KeyStrategy::UserInTopic, "{123:-100:7:3}"),
        (KeyStrategy::ChatTopic, "{123:-100:-100:3}"),
    ] {
        let mut r = Router::new("r");
        r.message(|fsm: FsmContext| async move {
            fsm.set_state(Form::Name).await?;
            fsm.set_data(&Counter { count: 1 }).await
        });
        let dp = Dispatcher::builder(r)
            .fsm(Fsm::new(redis_storage(&server).await).strategy(strategy))
            .build()
            .unwrap();
        let outcome = dp.feed_raw(&bot(), topic_message(-100, 7, 3, "x")).await;
        assert!(matches!(outcome, Ok(Outcome::Handled)), "{strategy}");
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("tgpipe:fsm:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.sort();
        // The fence: the lock's fencing token, checked on every write.
        assert_eq!(
            keys,
            [
                format!("tgpipe:fsm:{tag}:data"),
                format!("tgpipe:fsm:{tag}:fence"),
                format!("tgpipe:fsm:{tag}:state")
            ],
            "{strategy}"
        );
        let lock: bool = redis::cmd("EXISTS")
            .arg(format!("tgpipe:lock:{tag}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!lock, "released after dispatch");
        let fence: i64 = redis::cmd("GET")
            .arg(format!("tgpipe:lock:{tag}:fence"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(fence, 1);
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    }
}

#[tokio::test]
async fn updates_without_a_key_have_no_fsm() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.poll(|Dep(log): Dep<Log>| async move { log.push("idle poll") })
        .filter(StateFilter::none());
    r.poll(|_fsm: FsmContext| async {});
    let dp = Dispatcher::builder(r)
        .state(log.clone())
        .fsm(Fsm::new(MemoryStorage::new()))
        .build()
        .unwrap();
    let Err(e) = dp.feed_raw(&bot(), poll()).await else {
        panic!("FsmContext cannot be extracted")
    };
    assert!(log.take().is_empty(), "the State filter does not match");
    assert!(!e.is_transient());
    assert!(e.to_string().contains("no FSM key"), "{e}");
}

#[test]
fn handlers_taking_the_fsm_need_one_configured() {
    let mut r = Router::new("r");
    r.message(|| async {});
    r.message(|_s: SceneContext| async {});
    let err = Dispatcher::builder(r).build().unwrap_err();
    assert_eq!(
        err,
        BuildError::FsmNotConfigured {
            router: "r".into(),
            observer: "message".into(),
            index: 1
        }
    );
    assert!(err.to_string().contains(".fsm(Fsm::new(storage))"));
}

// ---------------------------------------------------------------- state filter

#[tokio::test]
async fn state_filters_route_by_state() {
    let log = Log::default();
    let named = |name: &'static str| {
        move |Dep(log): Dep<Log>, fsm: FsmContext| async move {
            log.push(name);
            fsm.set_state(Form::Name).await
        }
    };
    let mut r = Router::new("r");
    r.message(named("age")).filter(StateFilter::is(Form::Age));
    r.message(named("name or age"))
        .filter(StateFilter::any_of([Form::Name, Form::Age]));
    r.message(named("other form state"))
        .filter(StateFilter::in_group::<Form>());
    r.message(named("any")).filter(StateFilter::any());
    r.message(named("none")).filter(StateFilter::none());
    let storage = MemoryStorage::new();
    let dp = Dispatcher::builder(r)
        .state(log.clone())
        .fsm(Fsm::new(storage.clone()))
        .build()
        .unwrap();
    let key = FsmKey::new(123, 5, 5);
    for (state, expected) in [
        (None, "none"),
        (Some("Form:Age"), "age"),
        (Some("Form:Name"), "name or age"),
        (Some("Other:X"), "any"),
    ] {
        storage.set_state(&key, state).await.unwrap();
        dp.feed_raw(&bot(), message(5, 5, "x")).await.unwrap();
        assert_eq!(log.take(), [expected], "{state:?}");
    }
    assert_eq!(Form::from_name("Form:Age"), Some(Form::Age));
}

// ---------------------------------------------------------------- isolation

fn counting_router() -> Router {
    let mut r = Router::new("count");
    r.message(|fsm: FsmContext| async move {
        fsm.update_data(|c: &mut Counter| c.count += 1).await?;
        Ok::<_, FsmError>(())
    });
    r
}

async fn increments(isolation: Isolation) {
    let server = RedisServer::start();
    let dispatchers: Vec<Dispatcher> = futures::future::join_all((0..2).map(|_| async {
        Dispatcher::builder(counting_router())
            .fsm(Fsm::new(redis_storage(&server).await).isolation(isolation))
            .build()
            .unwrap()
    }))
    .await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let dp = dispatchers[i % 2].clone();
            tokio::spawn(async move { dp.feed_raw(&bot(), message(5, 5, "+1")).await })
        })
        .collect();
    for t in tasks {
        let outcome = t.await.unwrap();
        assert!(matches!(outcome, Ok(Outcome::Handled)), "{outcome:?}");
    }
    let fsm = FsmContext::new(
        Arc::new(redis_storage(&server).await),
        FsmKey::new(123, 5, 5),
    );
    assert_eq!(fsm.data::<Counter>().await.unwrap().count, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_increments_from_two_dispatchers_end_at_200() {
    increments(Isolation::default().wait(Duration::from_secs(60))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_data_is_atomic_without_isolation_too() {
    increments(Isolation::disabled()).await;
}

#[tokio::test]
async fn a_crashed_holders_lock_expires_and_is_taken_over() {
    let server = RedisServer::start();
    let storage = redis_storage(&server).await;
    // A holder that took the lock and died: no renewal, no release.
    let key = FsmKey::new(123, 5, 5);
    let lease = Duration::from_millis(500);
    assert!(
        storage
            .try_lock(&key, "crashed", lease)
            .await
            .unwrap()
            .is_some()
    );
    let started = Instant::now();
    let dp = Dispatcher::builder(counting_router())
        .fsm(Fsm::new(storage).isolation(Isolation::default().lease(lease)))
        .build()
        .unwrap();
    let outcome = dp.feed_raw(&bot(), message(5, 5, "+1")).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)), "{outcome:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "waited for the lease to expire, took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_lock_held_past_the_wait_fails_transiently() {
    let storage = MemoryStorage::new();
    let key = FsmKey::new(123, 5, 5);
    storage
        .try_lock(&key, "other", Duration::from_secs(30))
        .await
        .unwrap();
    let dp = Dispatcher::builder(counting_router())
        .fsm(Fsm::new(storage).isolation(Isolation::default().wait(Duration::from_millis(100))))
        .build()
        .unwrap();
    let Err(e) = dp.feed_raw(&bot(), message(5, 5, "+1")).await else {
        panic!("must fail")
    };
    assert!(e.is_transient());
    assert!(matches!(
        e.downcast_ref::<FsmError>(),
        Some(FsmError::LockTimeout { .. })
    ));
}

#[tokio::test]
async fn a_cancelled_dispatch_releases_its_lock() {
    let storage = MemoryStorage::new();
    let mut r = Router::new("r");
    r.message(|_fsm: FsmContext| async { tokio::time::sleep(Duration::from_secs(60)).await });
    let dp = Dispatcher::builder(r)
        .fsm(Fsm::new(storage.clone()))
        .build()
        .unwrap();
    let stuck = tokio::spawn(async move { dp.feed_raw(&bot(), message(5, 5, "x")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let key = FsmKey::new(123, 5, 5);
    assert!(
        storage
            .try_lock(&key, "t", Duration::from_secs(1))
            .await
            .unwrap()
            .is_none()
    );
    stuck.abort();
    let _ = stuck.await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        storage
            .try_lock(&key, "t", Duration::from_secs(1))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_handler_keeps_its_lease() {
    let server = RedisServer::start();
    let log = Log::default();
    let lease = Duration::from_millis(300);
    let make = async |log: Log| {
        let mut r = Router::new("slow");
        r.message(|m: Arc<Message>, Dep(log): Dep<Log>| async move {
            let who = m.text.clone().unwrap_or_default();
            log.push(format!("{who} in"));
            if who == "slow" {
                // Three leases long: only renewal keeps the lock.
                tokio::time::sleep(Duration::from_millis(900)).await;
            }
            log.push(format!("{who} out"));
        });
        Dispatcher::builder(r)
            .state(log)
            .fsm(
                Fsm::new(redis_storage(&server).await).isolation(
                    Isolation::default()
                        .lease(lease)
                        .wait(Duration::from_secs(10)),
                ),
            )
            .build()
            .unwrap()
    };
    let (a, b) = (make(log.clone()).await, make(log.clone()).await);
    let slow = tokio::spawn(async move { a.feed_raw(&bot(), message(5, 5, "slow")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fast = b.feed_raw(&bot(), message(5, 5, "fast")).await;
    assert!(matches!(fast, Ok(Outcome::Handled)));
    assert!(matches!(slow.await.unwrap(), Ok(Outcome::Handled)));
    assert_eq!(log.take(), ["slow in", "slow out", "fast in", "fast out"]);
}

#[tokio::test]
async fn a_lost_lease_refuses_further_writes() {
    let server = RedisServer::start();
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(|fsm: FsmContext, Dep(log): Dep<Log>| async move {
        fsm.set_state(Form::Name).await?;
        log.push("first write");
        // Meanwhile the lease is taken from under us (a stall longer than a lease).
        tokio::time::sleep(Duration::from_millis(400)).await;
        fsm.set_state(Form::Age).await
    });
    let dp = Dispatcher::builder(r)
        .state(log.clone())
        .fsm(
            Fsm::new(redis_storage(&server).await)
                .isolation(Isolation::default().lease(Duration::from_millis(150))),
        )
        .build()
        .unwrap();
    let handling = tokio::spawn(async move { dp.feed_raw(&bot(), message(5, 5, "x")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut conn = raw_redis(&server).await;
    let lock = RedisStorage::lock_key(&FsmKey::new(123, 5, 5));
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg("someone else")
        .query_async(&mut conn)
        .await
        .unwrap();
    let Err(e) = handling.await.unwrap() else {
        panic!("the second write must be refused")
    };
    assert!(e.is_transient());
    assert!(matches!(
        e.downcast_ref::<FsmError>(),
        Some(FsmError::LeaseLost { .. })
    ));
    assert_eq!(log.take(), ["first write"]);
    let state: Option<String> = redis::cmd("GET")
        .arg(RedisStorage::state_key(&FsmKey::new(123, 5, 5)))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(state.as_deref(), Some("Form:Name"));
    let holder: String = redis::cmd("GET")
        .arg(&lock)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        holder, "someone else",
        "release never deletes another's lock"
    );
}

// ---------------------------------------------------------------- failures

#[tokio::test]
async fn redis_down_fails_transiently_without_running_the_handler() {
    for isolation in [Isolation::default(), Isolation::disabled()] {
        let mut server = RedisServer::start();
        let log = Log::default();
        let mut r = Router::new("r");
        r.message(|Dep(log): Dep<Log>, fsm: FsmContext| async move {
            log.push("ran");
            fsm.set_state(Form::Name).await
        });
        let dp = Dispatcher::builder(r)
            .state(log.clone())
            .fsm(Fsm::new(redis_storage(&server).await).isolation(isolation))
            .build()
            .unwrap();
        server.stop();
        let started = Instant::now();
        let Err(e) = dp.feed_raw(&bot(), message(5, 5, "x")).await else {
            panic!("must fail")
        };
        assert!(e.is_transient(), "{e}");
        assert!(matches!(
            e.downcast_ref::<FsmError>(),
            Some(FsmError::Storage(_))
        ));
        assert!(log.take().is_empty(), "the handler must not run");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

#[derive(Serialize)]
struct OldCounter {
    count: &'static str,
}

#[tokio::test]
async fn undecodable_data_is_a_permanent_error_for_the_errors_observer() {
    let server = RedisServer::start();
    let storage = redis_storage(&server).await;
    FsmContext::new(Arc::new(storage.clone()), FsmKey::new(123, 5, 5))
        .set_data(&OldCounter { count: "many" })
        .await
        .unwrap();
    let log = Log::default();
    let mut r = counting_router();
    r.errors(|e: ErrorEvent, Dep(log): Dep<Log>| async move {
        let Some(FsmError::Decode { type_name, .. }) = e.0.downcast_ref::<FsmError>() else {
            panic!("a decode error")
        };
        log.push(format!("transient={} type={type_name}", e.0.is_transient()));
    })
    .filter(ErrorIs::<FsmError>::new());
    let dp = Dispatcher::builder(r)
        .state(log.clone())
        .fsm(Fsm::new(storage.clone()))
        .build()
        .unwrap();
    let outcome = dp.feed_raw(&bot(), message(5, 5, "+1")).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)));
    assert_eq!(log.take(), ["transient=false type=fsm::Counter"]);

    // Without an errors handler the update fails for good.
    let dp = Dispatcher::builder(counting_router())
        .fsm(Fsm::new(storage))
        .build()
        .unwrap();
    let Err(e) = dp.feed_raw(&bot(), message(5, 5, "+1")).await else {
        panic!("must fail")
    };
    assert!(!e.is_transient());
    assert!(
        e.to_string().contains("does not decode as `fsm::Counter`"),
        "{e}"
    );
}

// ---------------------------------------------------------------- classic bots

async fn reply(bot: &Bot, m: &Message, text: &str) -> Result<(), tgpipe::BotError> {
    bot.send_text(m.chat.id, text).await.map(drop)
}

#[derive(Debug, thiserror::Error)]
enum BotFail {
    #[error("FSM")]
    Fsm(#[from] FsmError),
    #[error("Bot API")]
    Api(#[from] tgpipe::BotError),
}

fn form_router() -> Router {
    let mut r = Router::new("form");
    r.message(|m: Arc<Message>, bot: Bot, fsm: FsmContext| async move {
        fsm.clear().await?;
        reply(&bot, &m, "Cancelled.").await?;
        Ok::<_, BotFail>(())
    })
    .filter(Command::new(["cancel"]));
    r.message(|m: Arc<Message>, bot: Bot, fsm: FsmContext| async move {
        fsm.set_state(Form::Name).await?;
        reply(&bot, &m, "What is your name?").await?;
        Ok::<_, BotFail>(())
    })
    .filter(Command::new(["form"]));
    r.message(|m: Arc<Message>, bot: Bot, fsm: FsmContext| async move {
        let name = m.text.clone().unwrap_or_default();
        fsm.update_data(|p: &mut Profile| p.name = name.clone())
            .await?;
        fsm.set_state(Form::Age).await?;
        reply(&bot, &m, "How old are you?").await?;
        Ok::<_, BotFail>(())
    })
    .filter(StateFilter::is(Form::Name));
    r.message(|m: Arc<Message>, bot: Bot, fsm: FsmContext| async move {
        let Ok(age) = m.text.as_deref().unwrap_or_default().trim().parse::<u32>() else {
            reply(&bot, &m, "Age must be a number.").await?;
            return Ok(());
        };
        let profile = fsm.data::<Profile>().await?;
        fsm.clear().await?;
        reply(&bot, &m, &format!("{}, {age}", profile.name)).await?;
        Ok::<_, BotFail>(())
    })
    .filter(StateFilter::is(Form::Age));
    r
}

async fn sink_bot() -> (SinkHandle, Bot) {
    let sink = Sink::start(Default::default()).await.unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    (sink, bot)
}

async fn say(dp: &Dispatcher, bot: &Bot, sink: &SinkHandle, user: i64, text: &str) -> String {
    sink.clear();
    let outcome = dp.feed_raw(bot, message(user, user, text)).await;
    assert!(
        matches!(outcome, Ok(Outcome::Handled)),
        "{text}: {outcome:?}"
    );
    let calls = sink.wait_for_calls(1, Duration::from_secs(10)).await;
    calls[0].params["text"].as_str().unwrap().to_owned()
}

async fn classic_form(storage: Arc<dyn FsmStorage>) {
    let (sink, bot) = sink_bot().await;
    let dp = Dispatcher::builder(form_router())
        .fsm(Fsm::from_arc(Arc::clone(&storage)))
        .build()
        .unwrap();
    let fsm = FsmContext::new(storage, FsmKey::new(123, 5, 5));
    assert_eq!(
        say(&dp, &bot, &sink, 5, "/form").await,
        "What is your name?"
    );
    assert_eq!(fsm.state().await.unwrap().as_deref(), Some("Form:Name"));
    // Another user's conversation is apart.
    assert!(matches!(
        dp.feed_raw(&bot, message(6, 6, "Bob")).await,
        Ok(Outcome::Skipped)
    ));
    assert_eq!(say(&dp, &bot, &sink, 5, "Alice").await, "How old are you?");
    assert_eq!(
        FsmContext::new(Arc::clone(fsm.storage()), fsm.key().clone())
            .state()
            .await
            .unwrap()
            .as_deref(),
        Some("Form:Age")
    );
    assert_eq!(
        say(&dp, &bot, &sink, 5, "old").await,
        "Age must be a number."
    );
    assert_eq!(say(&dp, &bot, &sink, 5, "30").await, "Alice, 30");
    let after = FsmContext::new(Arc::clone(fsm.storage()), fsm.key().clone());
    assert_eq!(after.state().await.unwrap(), None);
    assert_eq!(after.data::<Profile>().await.unwrap(), Profile::default());

    assert_eq!(
        say(&dp, &bot, &sink, 5, "/form").await,
        "What is your name?"
    );
    assert_eq!(say(&dp, &bot, &sink, 5, "/cancel").await, "Cancelled.");
    let after = FsmContext::new(Arc::clone(fsm.storage()), fsm.key().clone());
    assert_eq!(after.state().await.unwrap(), None);
    assert!(matches!(
        dp.feed_raw(&bot, message(5, 5, "Alice")).await,
        Ok(Outcome::Skipped)
    ));
}

#[tokio::test]
async fn classic_form_on_redis() {
    let server = RedisServer::start();
    classic_form(Arc::new(redis_storage(&server).await)).await;
}

#[tokio::test]
async fn classic_form_in_memory() {
    classic_form(Arc::new(MemoryStorage::new())).await;
}

async fn count_bot(storage: Arc<dyn FsmStorage>) {
    let (sink, bot) = sink_bot().await;
    let mut r = Router::new("count");
    r.message(|m: Arc<Message>, bot: Bot, fsm: FsmContext| async move {
        let c = fsm.update_data(|c: &mut Counter| c.count += 1).await?;
        reply(&bot, &m, &format!("count: {}", c.count)).await?;
        Ok::<_, BotFail>(())
    })
    .filter(Command::new(["count"]));
    let dp = Dispatcher::builder(r)
        .fsm(Fsm::from_arc(storage).strategy(KeyStrategy::Chat))
        .build()
        .unwrap();
    for (user, expected) in [(7, "count: 1"), (8, "count: 2"), (7, "count: 3")] {
        sink.clear();
        // Two members of one group share the chat's counter.
        let outcome = dp.feed_raw(&bot, message(-100, user, "/count")).await;
        assert!(matches!(outcome, Ok(Outcome::Handled)));
        let calls = sink.wait_for_calls(1, Duration::from_secs(10)).await;
        assert_eq!(calls[0].params["text"], serde_json::json!(expected));
        assert_eq!(calls[0].params["chat_id"], serde_json::json!(-100));
    }
}

#[tokio::test]
async fn count_on_redis() {
    let server = RedisServer::start();
    count_bot(Arc::new(redis_storage(&server).await)).await;
}

#[tokio::test]
async fn count_in_memory() {
    count_bot(Arc::new(MemoryStorage::new())).await;
}

// ---------------------------------------------------------------- scenes

const MENU: Scene = Scene::new("menu");
const SETTINGS: Scene = Scene::new("settings");
const ABOUT: Scene = Scene::new("about");

async fn scenes(storage: Arc<dyn FsmStorage>) {
    let fsm = FsmContext::new(storage, FsmKey::new(1, 5, 5));
    let scenes = SceneContext::new(fsm.clone());
    assert_eq!(scenes.current().await.unwrap(), None);
    scenes.enter(MENU).await.unwrap();
    scenes.enter(SETTINGS).await.unwrap();
    scenes.enter(ABOUT).await.unwrap();
    assert_eq!(scenes.current().await.unwrap().as_deref(), Some("about"));
    assert_eq!(fsm.state().await.unwrap().as_deref(), Some("scene:about"));
    assert_eq!(scenes.history().await.unwrap(), ["menu", "settings"]);
    // The scene's own data does not touch the history.
    fsm.set_data(&Counter { count: 9 }).await.unwrap();
    assert_eq!(scenes.back().await.unwrap().as_deref(), Some("settings"));
    assert_eq!(scenes.current().await.unwrap().as_deref(), Some("settings"));
    assert_eq!(scenes.history().await.unwrap(), ["menu"]);
    scenes.leave().await.unwrap();
    assert_eq!(scenes.current().await.unwrap(), None);
    assert_eq!(scenes.history().await.unwrap(), ["menu"]);
    assert_eq!(fsm.data::<Counter>().await.unwrap().count, 9);
    assert_eq!(scenes.back().await.unwrap().as_deref(), Some("menu"));
    assert_eq!(scenes.back().await.unwrap(), None);
    assert_eq!(scenes.current().await.unwrap(), None);

    // The history is capped, oldest dropped first.
    for _ in 0..HISTORY_CAP {
        scenes.enter(MENU).await.unwrap();
        scenes.enter(SETTINGS).await.unwrap();
    }
    let history = scenes.history().await.unwrap();
    assert_eq!(history.len(), HISTORY_CAP);
    assert_eq!(history.last().map(String::as_str), Some("menu"));

    scenes.exit().await.unwrap();
    assert_eq!(scenes.current().await.unwrap(), None);
    assert!(scenes.history().await.unwrap().is_empty());
    assert_eq!(fsm.data::<Counter>().await.unwrap().count, 0);
}

/// Fails the next state write once, as a Redis blip would.
struct FailingStateWrite {
    inner: MemoryStorage,
    armed: std::sync::atomic::AtomicBool,
}

impl FailingStateWrite {
    fn fail(&self) -> Result<(), FsmError> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(FsmError::storage("connection reset"));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl FsmStorage for FailingStateWrite {
    async fn get_state(&self, key: &FsmKey) -> Result<Option<String>, FsmError> {
        self.inner.get_state(key).await
    }
    async fn set_state(&self, key: &FsmKey, state: Option<&str>) -> Result<(), FsmError> {
        self.fail()?;
        self.inner.set_state(key, state).await
    }
    async fn get_data(&self, key: &FsmKey) -> Result<Option<Vec<u8>>, FsmError> {
        self.inner.get_data(key).await
    }
    async fn set_data(&self, key: &FsmKey, data: Option<&[u8]>) -> Result<(), FsmError> {
        self.inner.set_data(key, data).await
    }
    async fn update_data(
        &self,
        key: &FsmKey,
        update: &mut tgpipe::fsm::DataUpdate<'_>,
    ) -> Result<Vec<u8>, FsmError> {
        self.inner.update_data(key, update).await
    }
    async fn set_state_and_update_side(
        &self,
        key: &FsmKey,
        state: Option<&str>,
        side: &FsmKey,
        update: &mut tgpipe::fsm::DataUpdate<'_>,
        fence: Option<&tgpipe::fsm::OwnerFence>,
    ) -> Result<Vec<u8>, FsmError> {
        self.fail()?;
        self.inner
            .set_state_and_update_side(key, state, side, update, fence)
            .await
    }
    async fn clear(&self, key: &FsmKey) -> Result<(), FsmError> {
        self.inner.clear(key).await
    }
    async fn try_lock(
        &self,
        key: &FsmKey,
        token: &str,
        lease: Duration,
    ) -> Result<Option<tgpipe::fsm::LockGrant>, FsmError> {
        self.inner.try_lock(key, token, lease).await
    }
    async fn renew_lock(
        &self,
        key: &FsmKey,
        token: &str,
        lease: Duration,
    ) -> Result<bool, FsmError> {
        self.inner.renew_lock(key, token, lease).await
    }
    async fn unlock(&self, key: &FsmKey, token: &str) -> Result<bool, FsmError> {
        self.inner.unlock(key, token).await
    }
}

/// The history used to be pushed before the state was written: a failed state write,
/// retried, pushed the scene twice (and `back` popped twice).
#[tokio::test]
async fn a_failed_state_write_does_not_push_the_scene_twice() {
    let storage = Arc::new(FailingStateWrite {
        inner: MemoryStorage::new(),
        armed: false.into(),
    });
    let fsm = FsmContext::new(storage.clone(), FsmKey::new(1, 5, 5));
    let scenes = SceneContext::new(fsm.clone());
    scenes.enter(MENU).await.unwrap();
    storage
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = scenes.enter(SETTINGS).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(
        scenes.history().await.unwrap().is_empty(),
        "nothing written"
    );
    assert_eq!(scenes.current().await.unwrap().as_deref(), Some("menu"));
    scenes.enter(SETTINGS).await.unwrap();
    assert_eq!(scenes.history().await.unwrap(), ["menu"]);
    scenes.enter(ABOUT).await.unwrap();
    storage
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(scenes.back().await.is_err());
    assert_eq!(scenes.history().await.unwrap(), ["menu", "settings"]);
    assert_eq!(scenes.current().await.unwrap().as_deref(), Some("about"));
    assert_eq!(scenes.back().await.unwrap().as_deref(), Some("settings"));
    assert_eq!(scenes.history().await.unwrap(), ["menu"]);
}

/// The history used to be written outside the lease and the partition fence: a pod that
/// lost the partition still pushed onto the new owner's history.
#[tokio::test]
async fn scene_history_is_written_under_the_partition_fence() {
    use tgpipe::fsm::{OwnerFence, with_owner_fence};
    let server = RedisServer::start();
    let storage = redis_storage(&server).await;
    let mut router = Router::new("scenes");
    router.message(|m: Arc<Message>, scenes: SceneContext| async move {
        let scene = match m.text.as_deref() {
            Some("menu") => MENU,
            Some("settings") => SETTINGS,
            _ => ABOUT,
        };
        scenes.enter(scene).await
    });
    let dispatcher = Dispatcher::builder(router)
        .fsm(Fsm::new(storage.clone()))
        .build()
        .unwrap();
    let bot = bot();
    let run = |epoch: u64, text: &str| {
        with_owner_fence(
            OwnerFence::new("chat", 3, epoch),
            dispatcher.feed_raw(&bot, message(7, 7, text)),
        )
    };
    assert!(matches!(run(20, "menu").await, Ok(Outcome::Handled)));
    assert!(matches!(run(20, "settings").await, Ok(Outcome::Handled)));
    match run(10, "about").await {
        Err(e) => assert!(e.is_transient(), "{e}"),
        other => panic!("the stale owner's scene change went through: {other:?}"),
    }
    let key = FsmKey::new(bot.id().0, 7, 7);
    let history = SceneContext::new(FsmContext::new(Arc::new(storage.clone()), key));
    assert_eq!(history.history().await.unwrap(), ["menu"]);
    assert_eq!(
        history.current().await.unwrap().as_deref(),
        Some("settings")
    );
}

#[tokio::test]
async fn scenes_on_redis() {
    let server = RedisServer::start();
    scenes(Arc::new(redis_storage(&server).await)).await;
}

#[tokio::test]
async fn scenes_in_memory() {
    scenes(Arc::new(MemoryStorage::new())).await;
}

#[tokio::test]
async fn scene_handlers_are_routed_by_scene() {
    let log = Log::default();
    let mut r = Router::new("scenes");
    r.message(|s: SceneContext, Dep(log): Dep<Log>| async move {
        log.push("menu -> settings");
        s.enter(SETTINGS).await
    })
    .filter(MENU.filter());
    r.message(|s: SceneContext, Dep(log): Dep<Log>| async move {
        log.push("settings -> back");
        s.back().await.map(drop)
    })
    .filter(SETTINGS.filter());
    r.message(|s: SceneContext, Dep(log): Dep<Log>| async move {
        log.push("enter menu");
        s.enter(MENU).await
    });
    let dp = Dispatcher::builder(r)
        .state(log.clone())
        .fsm(Fsm::new(MemoryStorage::new()))
        .build()
        .unwrap();
    for _ in 0..4 {
        dp.feed_raw(&bot(), message(5, 5, "x")).await.unwrap();
    }
    assert_eq!(
        log.take(),
        [
            "enter menu",
            "menu -> settings",
            "settings -> back",
            "menu -> settings"
        ]
    );
}

#[tokio::test]
async fn scene_hooks_run_on_enter_and_leave() {
    let log = Log::default();
    let hook = |what: &'static str| {
        move |Dep(log): Dep<Log>, m: Arc<Message>| async move {
            log.push(format!(
                "{what} ({})",
                m.text.as_deref().unwrap_or_default()
            ))
        }
    };
    let scenes = Scenes::new()
        .on_enter(MENU, hook("enter menu"))
        .on_leave(MENU, hook("leave menu"))
        .on_enter(SETTINGS, hook("enter settings"));
    let mut r = Router::new("scenes");
    r.message(|s: SceneContext| async move { s.exit().await })
        .filter(Command::new(["exit"]));
    r.message(|s: SceneContext| async move { s.enter(SETTINGS).await })
        .filter(MENU.filter());
    r.message(|s: SceneContext| async move { s.back().await.map(drop) })
        .filter(SETTINGS.filter());
    r.message(|s: SceneContext| async move { s.enter(MENU).await });
    let dp = Dispatcher::builder(r)
        .state(log.clone())
        .state(scenes)
        .fsm(Fsm::new(MemoryStorage::new()))
        .build()
        .unwrap();
    for text in ["a", "b", "c", "/exit"] {
        let outcome = dp.feed_raw(&bot(), message(5, 5, text)).await;
        assert!(matches!(outcome, Ok(Outcome::Handled)), "{outcome:?}");
    }
    assert_eq!(
        log.take(),
        [
            "enter menu (a)",
            "leave menu (b)",
            "enter settings (b)",
            "enter menu (c)",
            "leave menu (/exit)"
        ]
    );
}

#[test]
fn a_dispatcher_needs_the_fsm_when_a_handler_or_a_filter_anywhere_in_the_tree_does() {
    let plain = || {
        let mut r = Router::new("plain");
        r.message(|| async {}).filter(Command::new(["start"]));
        r
    };
    assert!(!Dispatcher::builder(plain()).needs_fsm());

    let mut by_filter = plain();
    by_filter.message(|| async {}).filter(StateFilter::none());
    assert!(Dispatcher::builder(by_filter).needs_fsm());

    let mut child = Router::new("child");
    child.callback_query(|_fsm: FsmContext| async {});
    let mut root = plain();
    root.include_router(child);
    let builder = Dispatcher::builder(root);
    assert!(builder.needs_fsm(), "a handler two levels down");
    // Without an FSM such a dispatcher does not build, and says why.
    assert!(matches!(
        builder.build(),
        Err(BuildError::FsmNotConfigured { .. })
    ));
}

/// Partition ownership stands in for the lease: a dispatch under an owner fence takes no
/// lock, and a pod that lost the partition (an older epoch of the same lane) cannot
/// overwrite what the new owner wrote.
#[tokio::test]
async fn a_worker_that_lost_its_partition_cannot_overwrite_the_new_owners_fsm_state() {
    use tgpipe::fsm::{OwnerFence, with_owner_fence};
    let server = RedisServer::start();
    let storage = redis_storage(&server).await;
    let mut router = Router::new("form");
    router.message(|m: Arc<Message>, fsm: FsmContext| async move {
        let text = m.text.clone().unwrap_or_default();
        fsm.set_state(text).await?;
        fsm.update_data(|c: &mut Counter| c.count += 1).await?;
        Ok::<_, FsmError>(())
    });
    let dispatcher = Dispatcher::builder(router)
        .fsm(Fsm::new(storage.clone()))
        .build()
        .unwrap();
    let bot = bot();
    let key = FsmKey::new(bot.id().0, 7, 7);
    let run = |epoch: u64, lane: &str, text: &str| {
        with_owner_fence(
            OwnerFence::new(lane, 3, epoch),
            dispatcher.feed_raw(&bot, message(7, 7, text)),
        )
    };
    // The new owner (epoch 20) writes first ...
    assert!(matches!(
        run(20, "chat", "Form:Age").await,
        Ok(Outcome::Handled)
    ));
    // ... then the old one (epoch 10), late: refused, transiently (it gives the update up).
    match run(10, "chat", "Form:Name").await {
        Err(e) => {
            assert!(e.is_transient(), "{e}");
            assert!(e.to_string().contains("later owner"), "{e}");
        }
        other => panic!("the stale write went through: {other:?}"),
    }
    assert_eq!(
        storage.get_state(&key).await.unwrap().as_deref(),
        Some("Form:Age")
    );
    let data: Counter =
        rmp_serde::from_slice(&storage.get_data(&key).await.unwrap().unwrap()).unwrap();
    assert_eq!(data.count, 1, "the stale update_data was refused too");
    // The owner itself and a later one write on; another lane's epochs are its own.
    assert!(matches!(
        run(20, "chat", "Form:Age").await,
        Ok(Outcome::Handled)
    ));
    assert!(matches!(
        run(5, "buttons", "Form:Name").await,
        Ok(Outcome::Handled)
    ));
    // No lease was taken for a key inside one chat under ownership.
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let locks: Vec<String> = redis::cmd("KEYS")
        .arg("tgpipe:lock:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(locks.is_empty(), "{locks:?}");
}

/// Redis storage whose lock renewals never answer (a holder stalled, or cut off from
/// Redis, without knowing it) or fail.
struct Renewals {
    inner: RedisStorage,
    hang: bool,
}

#[async_trait::async_trait]
impl FsmStorage for Renewals {
    async fn get_state(&self, key: &FsmKey) -> Result<Option<String>, FsmError> {
        self.inner.get_state(key).await
    }
    async fn set_state(&self, key: &FsmKey, state: Option<&str>) -> Result<(), FsmError> {
        self.inner.set_state(key, state).await
    }
    async fn get_data(&self, key: &FsmKey) -> Result<Option<Vec<u8>>, FsmError> {
        self.inner.get_data(key).await
    }
    async fn set_data(&self, key: &FsmKey, data: Option<&[u8]>) -> Result<(), FsmError> {
        self.inner.set_data(key, data).await
    }
    async fn update_data(
        &self,
        key: &FsmKey,
        update: &mut tgpipe::fsm::DataUpdate<'_>,
    ) -> Result<Vec<u8>, FsmError> {
        self.inner.update_data(key, update).await
    }
    async fn clear(&self, key: &FsmKey) -> Result<(), FsmError> {
        self.inner.clear(key).await
    }
    async fn set_state_fenced(
        &self,
        key: &FsmKey,
        state: Option<&str>,
        fence: &tgpipe::fsm::OwnerFence,
    ) -> Result<(), FsmError> {
        self.inner.set_state_fenced(key, state, fence).await
    }
    async fn try_lock(
        &self,
        key: &FsmKey,
        token: &str,
        lease: Duration,
    ) -> Result<Option<tgpipe::fsm::LockGrant>, FsmError> {
        self.inner.try_lock(key, token, lease).await
    }
    async fn renew_lock(&self, _: &FsmKey, _: &str, _: Duration) -> Result<bool, FsmError> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        Err(FsmError::storage("connection reset"))
    }
    async fn unlock(&self, key: &FsmKey, token: &str) -> Result<bool, FsmError> {
        self.inner.unlock(key, token).await
    }
}

/// One holder's state write, then (on `go`) a second one, under a 300 ms lease.
fn two_writes(storage: Renewals, go: tokio::sync::oneshot::Receiver<()>) -> Dispatcher {
    let go = Arc::new(tokio::sync::Mutex::new(Some(go)));
    let mut r = Router::new("r");
    r.message(move |fsm: FsmContext| {
        let go = Arc::clone(&go);
        async move {
            fsm.set_state(Form::Name).await?;
            if let Some(go) = go.lock().await.take() {
                let _ = go.await;
            }
            fsm.set_state(Form::Age).await
        }
    });
    Dispatcher::builder(r)
        .fsm(Fsm::new(storage).isolation(Isolation::default().lease(Duration::from_millis(300))))
        .build()
        .unwrap()
}

/// The lock's fencing token was handed out but not checked on write: a holder whose
/// lease lapsed without it knowing (its renewals stuck) overwrote the next holder.
#[tokio::test]
async fn a_lock_holder_whose_lease_lapsed_unnoticed_cannot_overwrite_the_next_holder() {
    let server = RedisServer::start();
    let key = FsmKey::new(123, 5, 5);
    let (go, wait) = tokio::sync::oneshot::channel();
    let stale = two_writes(
        Renewals {
            inner: redis_storage(&server).await,
            hang: true,
        },
        wait,
    );
    let handling = tokio::spawn(async move { stale.feed_raw(&bot(), message(5, 5, "x")).await });
    // The stale holder took the lock and wrote; its lease lapses; the next holder takes
    // the lock and writes.
    let storage = redis_storage(&server).await;
    eventually_some(Duration::from_secs(5), "the first holder's write", || {
        let (storage, key) = (storage.clone(), key.clone());
        async move {
            (storage.get_state(&key).await.unwrap().as_deref() == Some("Form:Name")).then_some(())
        }
    })
    .await;
    let grant = eventually_some(Duration::from_secs(5), "the lapsed lock taken", || {
        let storage = storage.clone();
        let key = key.clone();
        async move {
            storage
                .try_lock(&key, "next holder", Duration::from_secs(10))
                .await
                .unwrap()
        }
    })
    .await;
    let next = tgpipe::fsm::OwnerFence::new("~lock", 0, grant.fence);
    storage
        .set_state_fenced(&key, Some("Next:Holder"), &next)
        .await
        .unwrap();
    // The stale holder goes on with its second write.
    let _ = go.send(());
    let Err(e) = handling.await.unwrap() else {
        panic!("the stale write must be refused")
    };
    assert!(
        matches!(e.downcast_ref::<FsmError>(), Some(FsmError::Fenced { .. })),
        "{e:?}"
    );
    assert_eq!(
        storage.get_state(&key).await.unwrap().as_deref(),
        Some("Next:Holder")
    );
}

/// Renewal errors were logged and nothing more: a holder whose renewals failed for a
/// whole lease went on writing as if it still held the key.
#[tokio::test]
async fn renewals_failing_for_a_whole_lease_lose_it() {
    let server = RedisServer::start();
    let (go, wait) = tokio::sync::oneshot::channel();
    let dp = two_writes(
        Renewals {
            inner: redis_storage(&server).await,
            hang: false,
        },
        wait,
    );
    let handling = tokio::spawn(async move { dp.feed_raw(&bot(), message(5, 5, "x")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = go.send(());
    let Err(e) = handling.await.unwrap() else {
        panic!("the write after the lease must be refused")
    };
    assert!(e.is_transient());
    assert!(
        matches!(
            e.downcast_ref::<FsmError>(),
            Some(FsmError::LeaseLost { .. })
        ),
        "{e:?}"
    );
}
