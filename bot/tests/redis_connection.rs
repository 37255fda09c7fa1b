//! [`RedisConnection`] against a real `redis-server` behind a proxy that can black-hole:
//! a connection that stops answering is replaced once and dropped; a slow one is kept.

use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use tgpipe_bot::RedisConnection;
use tgpipe_testkit::{RedisServer, TcpProxy, eventually, eventually_ok};

const TIMEOUT: Duration = Duration::from_millis(300);

async fn connect(proxy: &TcpProxy) -> RedisConnection {
    let client = redis::Client::open(proxy.redis_url()).unwrap();
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(TIMEOUT))
        .set_connection_timeout(Some(TIMEOUT))
        .set_number_of_retries(0);
    RedisConnection::connect(client, config).await.unwrap()
}

async fn get(redis: &RedisConnection) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET")
        .arg("k")
        .query_async(&mut redis.clone())
        .await
}

/// redis-rs's connection manager kept a connection whose calls all timed out: a Redis
/// gone without an RST failed every call until TCP gave up.
#[tokio::test]
async fn a_connection_that_stopped_answering_is_replaced_once_and_dropped() {
    let server = RedisServer::start();
    let proxy = TcpProxy::redis(&server.url()).await;
    let redis = connect(&proxy).await;
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut redis.clone())
        .await
        .unwrap();

    proxy.black_hole();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let redis = redis.clone();
            tokio::spawn(async move { get(&redis).await })
        })
        .collect();
    for call in calls {
        let e = call
            .await
            .unwrap()
            .expect_err("a black hole answers nothing");
        assert!(e.is_timeout(), "{e}");
    }
    assert_eq!(
        redis.replaced(),
        1,
        "one new connection for 20 failed calls"
    );

    proxy.forward();
    let answer = eventually_ok(Duration::from_secs(2), "answers again", || async {
        get(&redis).await
    })
    .await;
    assert_eq!(answer.as_deref(), Some("v"));
    assert_eq!(redis.replaced(), 1);
    eventually(
        Duration::from_secs(5),
        "the dead connection is closed",
        || std::future::ready(proxy.open_connections() == 1),
    )
    .await;
}

/// A caller that gives up before the response timeout (its own `timeout`) never sees
/// the connection's timeout; its call is still finished and judged.
#[tokio::test]
async fn calls_given_up_by_their_callers_still_get_a_dead_connection_replaced() {
    let server = RedisServer::start();
    let proxy = TcpProxy::redis(&server.url()).await;
    let redis = connect(&proxy).await;
    get(&redis).await.unwrap();

    proxy.black_hole();
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let redis = redis.clone();
            tokio::spawn(async move { tokio::time::timeout(TIMEOUT / 3, get(&redis)).await })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap().is_err(), "the caller gave up");
    }
    assert_eq!(redis.replaced(), 0, "not before the response timeout");
    eventually(Duration::from_secs(2), "the connection is replaced", || {
        std::future::ready(redis.replaced() == 1)
    })
    .await;
    proxy.forward();
    eventually_ok(Duration::from_secs(2), "answers again", || async {
        get(&redis).await
    })
    .await;
}

/// A slow Redis that answers within the response timeout is not a dead one: no call
/// reconnects, however many wait together.
#[tokio::test]
async fn a_slow_answer_within_the_timeout_keeps_the_connection() {
    let server = RedisServer::start();
    let proxy = TcpProxy::redis(&server.url()).await;
    let redis = connect(&proxy).await;
    proxy.delay_answers(TIMEOUT / 2);
    for _ in 0..5 {
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let redis = redis.clone();
                tokio::spawn(async move { get(&redis).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().expect("a slow answer is an answer");
        }
    }
    assert_eq!(redis.replaced(), 0);
    assert_eq!(proxy.open_connections(), 1, "one connection all along");
}

/// A `ConnectionManager` given as it is cannot be made again, so it is never replaced:
/// redis-rs alone keeps the dead connection (the defect this type exists for).
#[tokio::test]
async fn a_connection_manager_given_as_it_is_stays_on_its_dead_connection() {
    let server = RedisServer::start();
    let proxy = TcpProxy::redis(&server.url()).await;
    let client = redis::Client::open(proxy.redis_url()).unwrap();
    let config = ConnectionManagerConfig::new().set_response_timeout(Some(TIMEOUT));
    let manager = redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .unwrap();
    let redis = RedisConnection::from(manager);
    get(&redis).await.unwrap();

    proxy.black_hole();
    get(&redis).await.expect_err("a black hole answers nothing");
    proxy.forward();
    for _ in 0..5 {
        let e = get(&redis).await.expect_err("still the dead connection");
        assert!(e.is_timeout(), "{e}");
    }
    assert_eq!(redis.replaced(), 0);
}

/// A call that times out while its connection answers others is not on a dead
/// connection: Redis is there, a new connection would only wait its turn. Here a quick
/// `GET` is answered (150 ms late) while a 250 ms script sent after it times out.
#[tokio::test]
async fn a_timeout_while_the_connection_answers_others_keeps_the_connection() {
    const BUSY_250MS: &str = "local t = redis.call('TIME') \
        local start = t[1] * 1000000 + t[2] \
        repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 250000 \
        return 1";
    let server = RedisServer::start();
    let proxy = TcpProxy::redis(&server.url()).await;
    let redis = connect(&proxy).await;
    proxy.delay_answers(TIMEOUT / 2);
    let quick = tokio::spawn({
        let redis = redis.clone();
        async move { get(&redis).await }
    });
    // Apart, so that Redis reads (and answers) the GET before it starts the script.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let slow = redis::cmd("EVAL")
        .arg(BUSY_250MS)
        .arg(0)
        .query_async::<i64>(&mut redis.clone())
        .await;
    quick.await.unwrap().expect("the GET is answered");
    let e = slow.expect_err("the script's answer comes after the timeout");
    assert!(e.is_timeout(), "{e}");
    assert_eq!(redis.replaced(), 0);
    get(&redis).await.expect("the same connection answers");
    assert_eq!(redis.replaced(), 0);
    assert_eq!(proxy.open_connections(), 1);
}
