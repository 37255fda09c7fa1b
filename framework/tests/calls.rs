//! Calls bound to the event (`message.answer(..)`, `query.answer()`), sent through the
//! Bot API stand-in with the bot of the update being dispatched.

mod common;

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tgpipe::prelude::*;
use tgpipe_testkit::sink::{RecordedCall, Sink};

async fn dispatch(router: Router, sink_url: &str, update: Bytes) -> tgpipe::Result<Outcome> {
    let bot = Bot::with_api_url("123:TEST", sink_url).unwrap();
    let dp = Dispatcher::builder(router).build().unwrap();
    dp.feed_raw(&bot, update).await
}

async fn calls(sink: &tgpipe_testkit::sink::SinkHandle, n: usize) -> Vec<RecordedCall> {
    sink.wait_for_calls(n, Duration::from_secs(10)).await
}

#[tokio::test]
async fn message_answer_sends_into_the_chat_with_the_updates_bot_and_a_keyboard() {
    let sink = Sink::start(Default::default()).await.unwrap();
    let mut r = Router::new("r");
    r.message(|message: Arc<Message>| async move {
        let kb = InlineKeyboardBuilder::new()
            .button("Yes", "yes")
            .as_markup()?;
        message.answer("Sure?").reply_markup(kb).await?;
        message.reply("(yours)").await?;
        Ok::<_, HandlerError>(())
    });
    let outcome = dispatch(r, &sink.url(), common::text_update("hi")).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)), "{outcome:?}");
    let calls = calls(&sink, 2).await;
    assert_eq!(calls[0].method, "sendMessage");
    assert_eq!(calls[0].params["chat_id"], json!(5));
    assert_eq!(calls[0].params["text"], json!("Sure?"));
    assert_eq!(
        calls[0].params["reply_markup"]["inline_keyboard"][0][0]["callback_data"],
        json!("yes")
    );
    assert_eq!(calls[1].params["reply_parameters"]["message_id"], json!(1));
}

#[tokio::test]
async fn callback_answer_text_and_alert_then_the_buttons_message_is_edited() {
    let sink = Sink::start(Default::default()).await.unwrap();
    let mut r = Router::new("r");
    r.callback_query(|query: Arc<CallbackQuery>| async move {
        assert_eq!(query.chat_id(), Some(5));
        assert!(query.accessible_message().is_some());
        query.answer().text("Noted").show_alert().await?;
        query.edit_text("done").await?;
        Ok::<_, HandlerError>(())
    });
    let update = json!({"update_id": 3, "callback_query": {
        "id": "q1", "from": {"id": 5, "is_bot": false, "first_name": "A"},
        "chat_instance": "c", "data": "yes",
        "message": {"message_id": 9, "date": 0, "chat": {"id": 5, "type": "private"}, "text": "Sure?"}
    }});
    let outcome = dispatch(r, &sink.url(), Bytes::from(update.to_string())).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)), "{outcome:?}");
    let calls = calls(&sink, 2).await;
    assert_eq!(calls[0].method, "answerCallbackQuery");
    assert_eq!(
        calls[0].params,
        json!({"callback_query_id": "q1", "text": "Noted", "show_alert": true})
    );
    assert_eq!(calls[1].method, "editMessageText");
    assert_eq!(
        calls[1].params,
        json!({"chat_id": 5, "message_id": 9, "text": "done"})
    );
}

#[tokio::test]
async fn a_member_updates_answer_and_user_need_no_match_on_the_six_variants() {
    let sink = Sink::start(Default::default()).await.unwrap();
    let mut r = Router::new("r");
    r.chat_member(
        |update: Arc<tgpipe::frankenstein::types::ChatMemberUpdated>| async move {
            let name = update.member().first_name.clone();
            update.answer(format!("Welcome, {name}!")).await?;
            Ok::<_, HandlerError>(())
        },
    );
    let user = json!({"id": 7, "is_bot": false, "first_name": "Bo"});
    let update = json!({"update_id": 4, "chat_member": {
        "chat": {"id": -100, "type": "supergroup", "title": "G"}, "from": user, "date": 0,
        "old_chat_member": {"status": "left", "user": user},
        "new_chat_member": {"status": "member", "user": user}
    }});
    let outcome = dispatch(r, &sink.url(), Bytes::from(update.to_string())).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)), "{outcome:?}");
    let calls = calls(&sink, 1).await;
    assert_eq!(
        calls[0].params,
        json!({"chat_id": -100, "text": "Welcome, Bo!"})
    );
}

#[tokio::test]
async fn a_bound_call_outside_a_dispatch_needs_a_bot() {
    let update =
        tgpipe::Update::parse(tgpipe_shared::BotId(123), common::text_update("hi")).unwrap();
    let message = update.event.message().unwrap().clone();
    let err = message.answer("x").send().await.unwrap_err();
    assert!(
        matches!(err, BotError::InvalidRequest(ref why) if why.contains(".bot(&bot)")),
        "{err}"
    );
    // Awaited as a handler's result: the same error, classified.
    let err = message.answer("x").await.unwrap_err();
    assert!(err.is::<BotError>() && !err.is_transient(), "{err}");

    let sink = Sink::start(Default::default()).await.unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let sent = message.answer("x").bot(&bot).send().await.unwrap();
    assert_eq!(sent.chat.id, 5);
    assert_eq!(calls(&sink, 1).await[0].params["text"], json!("x"));
}

#[tokio::test]
async fn a_handler_returns_one_error_type_for_anything() {
    let mut r = Router::new("r");
    r.message(|message: Arc<Message>| async move {
        let _: u8 = message.text_or_caption().parse()?;
        Ok::<_, HandlerError>(())
    });
    let outcome = dispatch(r, "http://127.0.0.1:9", common::text_update("abc")).await;
    let Err(e) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(e.is::<std::num::ParseIntError>());
    assert!(!e.is_transient());
}

tgpipe::states! { enum Form { Name, Age } }

#[tokio::test]
async fn a_state_is_a_filter_and_a_tuple_of_filters_must_all_pass() {
    let sink = Sink::start(Default::default()).await.unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let mut r = Router::new("form");
    r.message(|m: Arc<Message>, fsm: FsmContext| async move {
        fsm.set_value("name", m.text_or_caption()).await?;
        fsm.set_state(Form::Age).await?;
        m.answer("age?").await
    })
    .filter((Form::Name, text::plain()));
    r.message(|m: Arc<Message>, fsm: FsmContext| async move {
        let name: String = fsm.get_value("name").await?.unwrap_or_default();
        m.answer(format!("{name} is {}", m.text_or_caption())).await
    })
    .filter((Form::Age, text::plain()));
    let dp = Dispatcher::builder(r)
        .fsm(tgpipe::Fsm::new(tgpipe::fsm::MemoryStorage::new()))
        .build()
        .unwrap();
    // No state: neither passes.
    let outcome = dp.feed_raw(&bot, common::text_update("Ada")).await;
    assert!(matches!(outcome, Ok(Outcome::Skipped)), "{outcome:?}");
    let key = tgpipe::KeyStrategy::default()
        .key(&tgpipe::Update::parse(bot.id(), common::text_update("x")).unwrap())
        .unwrap();
    let fsm = FsmContext::new(Arc::clone(dp.fsm().unwrap().storage()), key);
    fsm.set_state(Form::Name).await.unwrap();
    // A command in the state is not plain text: the tuple's second filter rejects it.
    let outcome = dp.feed_raw(&bot, common::text_update("/start")).await;
    assert!(matches!(outcome, Ok(Outcome::Skipped)), "{outcome:?}");
    for text in ["Ada", "36"] {
        let outcome = dp.feed_raw(&bot, common::text_update(text)).await;
        assert!(matches!(outcome, Ok(Outcome::Handled)), "{outcome:?}");
    }
    let calls = calls(&sink, 2).await;
    assert_eq!(calls[0].params["text"], json!("age?"));
    assert_eq!(calls[1].params["text"], json!("Ada is 36"));
}
