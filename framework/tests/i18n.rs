//! Translations: catalogs checked when built, the locale from the user's language with
//! a fallback, and a chat's choice kept in the FSM (a real redis-server).

mod common;

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tgpipe::fsm::RedisStorage;
use tgpipe::i18n::{I18n, I18nError, Tr};
use tgpipe::prelude::*;
use tgpipe::t;
use tgpipe_testkit::RedisServer;
use tgpipe_testkit::sink::Sink;

const EN: &str = "hello = Hello, { $name }!\nswitched = Language: English.\n";
const DE: &str = "hello = Hallo, { $name }!\nswitched = Sprache: Deutsch.\n";

fn i18n() -> tgpipe::i18n::I18nBuilder {
    I18n::builder("en").add("en", EN).add("de", DE)
}

fn text_from(text: &str, language: Option<&str>) -> Bytes {
    let mut from = json!({"id": 5, "is_bot": false, "first_name": "Ada"});
    if let Some(l) = language {
        from["language_code"] = json!(l);
    }
    Bytes::from(
        json!({"update_id": 1, "message": {"message_id": 1, "date": 0,
            "chat": {"id": 5, "type": "private"}, "from": from, "text": text}})
        .to_string(),
    )
}

#[test]
fn catalogs_are_checked_when_built() {
    let broken = I18n::builder("en").add("en", "hello = {").build();
    assert!(
        matches!(broken, Err(I18nError::Catalog { ref locale, .. }) if locale == "en"),
        "{broken:?}"
    );
    let missing = I18n::builder("en")
        .add("en", EN)
        .add("de", "hello = Hallo!\n")
        .build();
    match missing {
        Err(I18nError::Missing {
            locale, missing, ..
        }) => {
            assert_eq!(
                (locale.as_str(), missing),
                ("de", vec!["switched".to_owned()])
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        I18n::builder("fr").add("en", EN).build(),
        Err(I18nError::NoFallback(_))
    ));
    assert!(matches!(
        I18n::builder("en").add("not a tag!", EN).build(),
        Err(I18nError::Locale { .. })
    ));
    let ok = i18n().build().unwrap();
    assert_eq!(ok.get("de", "hello", &[("name", "Bo")]), "Hallo, Bo!");
    assert_eq!(ok.resolve(Some("de-AT")), "de");
    assert_eq!(ok.resolve(Some("fr")), "en");
    assert_eq!(
        ok.get("de", "nope", &[]),
        "nope",
        "a missing id shows itself"
    );
}

#[tokio::test]
async fn the_locale_is_the_users_language_else_the_fallback_and_a_chats_choice_wins() {
    let server = RedisServer::start();
    let sink = Sink::start(Default::default()).await.unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let mut r = Router::new("i18n");
    r.message(|m: Arc<Message>, mut tr: Tr, fsm: FsmContext| async move {
        tr.set_locale(&fsm, "de").await?;
        m.answer(t!(tr, "switched")).await
    })
    .filter(Command::new("deutsch"));
    r.message(|m: Arc<Message>, tr: Tr| async move {
        m.answer(t!(tr, "hello", name = m.first_name())).await
    });
    let storage = RedisStorage::connect(&server.url()).await.unwrap();
    let dp = Dispatcher::builder(r)
        .provide(i18n().locale_in_fsm().build().unwrap().provider())
        .fsm(Fsm::new(storage))
        .build()
        .unwrap();
    dp.feed_raw(&bot, text_from("hi", Some("de-AT")))
        .await
        .unwrap();
    dp.feed_raw(&bot, text_from("hi", Some("fr")))
        .await
        .unwrap();
    dp.feed_raw(&bot, text_from("hi", None)).await.unwrap();
    dp.feed_raw(&bot, text_from("/deutsch", Some("en")))
        .await
        .unwrap();
    // The chat's choice, kept in Redis, beats the user's English from now on.
    dp.feed_raw(&bot, text_from("hi", Some("en")))
        .await
        .unwrap();
    let texts: Vec<_> = sink
        .wait_for_calls(5, Duration::from_secs(10))
        .await
        .into_iter()
        .map(|c| c.params["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        texts,
        [
            "Hallo, Ada!",
            "Hello, Ada!",
            "Hello, Ada!",
            "Sprache: Deutsch.",
            "Hallo, Ada!"
        ]
    );
}

#[test]
fn a_handler_taking_tr_without_the_provider_is_refused_at_build() {
    let mut r = Router::new("i18n");
    r.message(|_tr: Tr| async {});
    assert!(Dispatcher::builder(r).build().is_err());
}
