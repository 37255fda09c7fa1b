//! The everyday middleware: handler flags, the chat action while a handler works, and
//! callback queries answered when their handler did not, through the Bot API stand-in.

mod common;

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tgpipe::callback_answer::CallbackAnswer;
use tgpipe::chat_action::ChatActionMiddleware;
use tgpipe::prelude::*;
use tgpipe_testkit::sink::{Sink, SinkHandle};

fn methods(sink: &SinkHandle) -> Vec<String> {
    sink.calls().into_iter().map(|c| c.method).collect()
}

#[tokio::test]
async fn a_handlers_flags_reach_the_inner_middleware_and_the_handler() {
    let log = common::Log::default();
    let mut r = Router::new("r");
    r.message(|flags: Flags, Dep(log): Dep<common::Log>| async move {
        log.push(format!("handler {:?}", flags.get("throttle")));
    })
    .filter(Command::new("a"))
    .flag("throttle", "slow");
    r.message(|Dep(log): Dep<common::Log>| async move { log.push("plain") });
    r.inner_middleware(UpdateKind::Message, |cx: Context, next: Next| async move {
        let seen = format!("mw {}", Flags::of(&cx).is_set("throttle"));
        cx.get::<common::Log>().unwrap().push(seen);
        next.run(cx).await
    });
    let dp = Dispatcher::builder(r).state(log.clone()).build().unwrap();
    dp.feed_raw(&common::bot(), common::text_update("/a"))
        .await
        .unwrap();
    dp.feed_raw(&common::bot(), common::text_update("b"))
        .await
        .unwrap();
    assert_eq!(
        log.take(),
        ["mw true", "handler Some(\"slow\")", "mw false", "plain"]
    );
}

#[tokio::test]
async fn a_chat_action_shows_while_a_flagged_handler_works_and_only_then() {
    let sink = Sink::start(Default::default()).await.unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let mut r = Router::new("r");
    r.message(|m: Arc<Message>| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        m.answer("report").await
    })
    .filter(Command::new("report"))
    .flag("chat_action", "upload_document");
    r.message(|m: Arc<Message>| async move { m.answer("quick").await });
    r.inner_middleware(UpdateKind::Message, ChatActionMiddleware);
    let dp = Dispatcher::builder(r).build().unwrap();
    dp.feed_raw(&bot, common::text_update("/report"))
        .await
        .unwrap();
    let calls = sink.wait_for_calls(2, Duration::from_secs(10)).await;
    assert_eq!(calls[0].method, "sendChatAction");
    assert_eq!(
        calls[0].params,
        json!({"chat_id": 5, "action": "upload_document"})
    );
    assert_eq!(calls[1].params["text"], json!("report"));
    sink.clear();
    dp.feed_raw(&bot, common::text_update("hello"))
        .await
        .unwrap();
    sink.wait_for_calls(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(methods(&sink), ["sendMessage"]);
}

fn callback(data: &str) -> Bytes {
    Bytes::from(
        json!({"update_id": 3, "callback_query": {
            "id": "q1", "from": {"id": 5, "is_bot": false, "first_name": "A"},
            "chat_instance": "c", "data": data
        }})
        .to_string(),
    )
}

fn data_is(want: &'static str) -> impl Fn(&Context) -> bool + Send + Sync + 'static {
    move |cx: &Context| matches!(cx.event(), Event::CallbackQuery(q) if q.data.as_deref() == Some(want))
}

#[tokio::test]
async fn callback_queries_are_answered_once_whether_or_not_their_handler_did() {
    let sink = Sink::start(Default::default()).await.unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let mut r = Router::new("r");
    r.callback_query(|| async {}).filter(data_is("silent"));
    r.callback_query(|q: Arc<CallbackQuery>| async move { q.answer().text("mine").await })
        .filter(data_is("answers"));
    r.callback_query(|| async {}).flag("callback_answer", "off");
    r.inner_middleware(UpdateKind::CallbackQuery, CallbackAnswer::new().text("ok"));
    let dp = Dispatcher::builder(r).build().unwrap();

    dp.feed_raw(&bot, callback("silent")).await.unwrap();
    let calls = sink.wait_for_calls(1, Duration::from_secs(10)).await;
    assert_eq!(
        calls[0].params,
        json!({"callback_query_id": "q1", "text": "ok"})
    );
    sink.clear();
    dp.feed_raw(&bot, callback("answers")).await.unwrap();
    let calls = sink.wait_for_calls(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sink.calls().len(), 1, "answered once: {calls:?}");
    assert_eq!(calls[0].params["text"], json!("mine"));
    sink.clear();
    dp.feed_raw(&bot, callback("flagged off")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sink.calls().is_empty());
}

#[derive(Clone)]
struct Admins(Vec<u64>);

async fn admins_only(
    message: Arc<Message>,
    Dep(admins): Dep<Admins>,
    cx: Context,
    next: Next,
) -> MiddlewareResult {
    let from = message.from.as_ref().map(|u| u.id);
    if from.is_some_and(|id| admins.0.contains(&id)) {
        return next.run(cx).await;
    }
    Ok(Outcome::Handled)
}

#[tokio::test]
async fn middleware_from_fn_takes_extractors_and_passes_updates_it_cannot_read() {
    let log = common::Log::default();
    let mut r = Router::new("r");
    r.message(|Dep(log): Dep<common::Log>| async move { log.push("message") });
    r.callback_query(|Dep(log): Dep<common::Log>| async move { log.push("callback") });
    let build = |admins: Vec<u64>| {
        Dispatcher::builder(r.clone())
            .state(log.clone())
            .state(Admins(admins))
            .update_middleware(tgpipe::middleware::from_fn(admins_only))
            .build()
            .unwrap()
    };
    // The text update's sender is user 5.
    build(vec![5])
        .feed_raw(&common::bot(), common::text_update("hi"))
        .await
        .unwrap();
    build(vec![6])
        .feed_raw(&common::bot(), common::text_update("hi"))
        .await
        .unwrap();
    // A callback query has no message to extract: the middleware lets it by.
    build(vec![6])
        .feed_raw(&common::bot(), callback("x"))
        .await
        .unwrap();
    assert_eq!(log.take(), ["message", "callback"]);
}
