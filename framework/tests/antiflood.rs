//! Anti-flood against a real redis-server: the count is shared by every dispatcher of a
//! bot, so the limit holds for their sum.

mod common;

use std::time::Duration;

use common::Log;
use tgpipe::antiflood::AntiFlood;
use tgpipe::prelude::*;
use tgpipe_testkit::RedisServer;

fn pod(flood: AntiFlood, log: &Log) -> Dispatcher {
    let mut r = Router::new("pod");
    r.message(|Dep(log): Dep<Log>| async move { log.push("handled") });
    Dispatcher::builder(r)
        .state(log.clone())
        .update_middleware(flood)
        .build()
        .unwrap()
}

#[tokio::test]
async fn two_dispatchers_sharing_redis_hold_the_limit_for_their_sum() {
    let server = RedisServer::start();
    let limit = AntiFlood::per_user(5, Duration::from_secs(600));
    // Two pods: their own connections, the same Redis.
    let log = Log::default();
    let a = pod(limit.clone().shared(&server.url()).await.unwrap(), &log);
    let b = pod(limit.shared(&server.url()).await.unwrap(), &log);
    let bot = common::bot();
    for i in 0..12 {
        let pod = if i % 2 == 0 { &a } else { &b };
        let outcome = pod.feed_raw(&bot, common::text_update("hi")).await;
        // Dropped updates are consumed (acknowledged), not failed.
        assert!(matches!(outcome, Ok(Outcome::Handled)), "{outcome:?}");
    }
    assert_eq!(log.take().len(), 5, "5 in all, not 5 a pod");
    // Another user has a count of their own.
    let other = tgpipe_testkit::text_update(2, 6, "hi").to_string();
    a.feed_raw(&bot, other.into()).await.unwrap();
    assert_eq!(log.take(), ["handled"]);
}

#[tokio::test]
async fn per_process_counts_do_not_add_up_across_dispatchers() {
    // The contrast: without Redis each dispatcher counts alone.
    let log = Log::default();
    let limit = AntiFlood::per_user(5, Duration::from_secs(600));
    let a = pod(limit.clone(), &log);
    let b = pod(AntiFlood::per_user(5, Duration::from_secs(600)), &log);
    let bot = common::bot();
    for i in 0..12 {
        let pod = if i % 2 == 0 { &a } else { &b };
        pod.feed_raw(&bot, common::text_update("hi")).await.unwrap();
    }
    assert_eq!(log.take().len(), 10);
}

#[tokio::test]
async fn over_the_limit_the_first_update_gets_the_reply_and_the_rest_none() {
    let sink = tgpipe_testkit::sink::Sink::start(Default::default())
        .await
        .unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let log = Log::default();
    let dp = pod(
        AntiFlood::per_chat(2, Duration::from_secs(600)).reply("Slow down."),
        &log,
    );
    for _ in 0..5 {
        dp.feed_raw(&bot, common::text_update("hi")).await.unwrap();
    }
    assert_eq!(log.take().len(), 2);
    let calls = sink.wait_for_calls(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sink.calls().len(), 1, "{calls:?}");
    assert_eq!(calls[0].params["text"], serde_json::json!("Slow down."));
}

#[tokio::test]
async fn the_window_starts_again_after_it_ends() {
    let server = RedisServer::start();
    let log = Log::default();
    let flood = AntiFlood::per_user(1, Duration::from_millis(300));
    let dp = pod(flood.shared(&server.url()).await.unwrap(), &log);
    let bot = common::bot();
    dp.feed_raw(&bot, common::text_update("a")).await.unwrap();
    dp.feed_raw(&bot, common::text_update("b")).await.unwrap();
    assert_eq!(log.take().len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    dp.feed_raw(&bot, common::text_update("c")).await.unwrap();
    assert_eq!(log.take().len(), 1);
}
