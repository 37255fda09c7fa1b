//! The framework's semantics, one test each, named after the semantic.

mod common;

use common::{Log, bot, text_update};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use frankenstein::inline_mode::InlineQuery;
use frankenstein::types::{CallbackQuery, Message};
use tgpipe::ErrorEvent;
use tgpipe::filter::{Command, CommandObject, ErrorIs, FilterExt, from_async, not, text};
use tgpipe::{
    Bot, BuildError, Context, Dep, Dispatcher, Next, ObserverKey, Outcome, Router, Update,
};
use tgpipe_shared::UpdateKind;

fn callback_update() -> Bytes {
    Bytes::from_static(br#"{"update_id":2,"callback_query":{"id":"q1","from":{"id":5,"is_bot":false,"first_name":"A"},"chat_instance":"c","data":"x"}}"#)
}

async fn run(router: Router, log: &Log, update: Bytes) -> (tgpipe::Result<Outcome>, Vec<String>) {
    let dp = Dispatcher::builder(router)
        .state(log.clone())
        .build()
        .expect("builds");
    let outcome = dp.feed_raw(&bot(), update).await;
    (outcome, log.take())
}

fn named(
    name: &'static str,
) -> impl Fn(Dep<Log>) -> std::future::Ready<()> + Clone + Send + Sync + 'static {
    move |Dep(log): Dep<Log>| {
        log.push(name);
        std::future::ready(())
    }
}

#[tokio::test]
async fn registration_order() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(named("first"));
    r.message(named("second"));
    let (outcome, got) = run(r, &log, text_update("hi")).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)));
    assert_eq!(got, ["first"]);
}

#[tokio::test]
async fn nested_routers_depth_first() {
    let log = Log::default();
    let mut root = Router::new("root");
    root.message(named("root")).filter(text::equals("root"));
    let mut a = Router::new("a");
    let mut a1 = Router::new("a1");
    a1.message(named("a1")).filter(text::equals("deep"));
    a.include_router(a1);
    let mut b = Router::new("b");
    b.message(named("b"));
    root.include_router(a);
    root.include_router(b);
    // a's child a1 is tried before b: depth first.
    let (_, got) = run(root.clone(), &log, text_update("deep")).await;
    assert_eq!(got, ["a1"]);
    let (_, got) = run(root, &log, text_update("other")).await;
    assert_eq!(got, ["b"]);
}

#[tokio::test]
async fn handler_decline_continues_the_search() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(|Dep(log): Dep<Log>| async move {
        log.push("declined");
        Outcome::Skipped
    });
    r.message(named("taken"));
    let (outcome, got) = run(r, &log, text_update("x")).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)));
    assert_eq!(got, ["declined", "taken"]);
}

#[tokio::test]
async fn no_handler_is_unhandled() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(named("never")).filter(text::equals("nope"));
    let (outcome, got) = run(r, &log, text_update("x")).await;
    assert!(matches!(outcome, Ok(Outcome::Skipped)));
    assert!(got.is_empty());
}

fn tag_mw(
    tag: &'static str,
) -> impl Fn(Context, Next) -> tgpipe::handler::BoxFuture<'static, tgpipe::middleware::MiddlewareResult>
+ Send
+ Sync
+ 'static {
    move |cx: Context, next: Next| {
        Box::pin(async move {
            let log = cx.get::<Log>().unwrap().clone();
            log.push(format!("{tag}:before"));
            let r = next.run(cx).await;
            log.push(format!("{tag}:after"));
            r
        })
    }
}

#[tokio::test]
async fn outer_middleware_sees_every_update_inner_only_matched_ones() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.outer_middleware(UpdateKind::Message, tag_mw("outer"));
    r.inner_middleware(UpdateKind::Message, tag_mw("inner"));
    r.message(named("handler")).filter(text::equals("match"));
    let (_, got) = run(r.clone(), &log, text_update("match")).await;
    assert_eq!(
        got,
        [
            "outer:before",
            "inner:before",
            "handler",
            "inner:after",
            "outer:after"
        ]
    );
    let (_, got) = run(r, &log, text_update("no match")).await;
    assert_eq!(got, ["outer:before", "outer:after"]);
}

#[tokio::test]
async fn middleware_drop_stops_the_update() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.outer_middleware(UpdateKind::Message, |cx: Context, _next: Next| async move {
        cx.get::<Log>().unwrap().push("dropped");
        Ok(Outcome::Handled)
    });
    r.message(named("handler"));
    let (outcome, got) = run(r, &log, text_update("x")).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)));
    assert_eq!(got, ["dropped"]);
}

#[tokio::test]
async fn post_processing_runs_after_the_handler() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(named("handler"));
    let dp = Dispatcher::builder(r)
        .state(log.clone())
        .update_middleware(tag_mw("update"))
        .build()
        .unwrap();
    dp.feed_raw(&bot(), text_update("x")).await.unwrap();
    assert_eq!(log.take(), ["update:before", "handler", "update:after"]);
}

#[tokio::test]
async fn filters_and_or_not() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(named("and"))
        .filter(text::starts_with("a").and(text::contains("z")));
    r.message(named("or"))
        .filter(text::equals("x").or(text::equals("y")));
    r.message(named("not")).filter(not(text::contains("q")));
    r.message(named("rest"));
    for (input, want) in [("abz", "and"), ("ab", "not"), ("y", "or"), ("qq", "rest")] {
        let (_, got) = run(r.clone(), &log, text_update(input)).await;
        assert_eq!(got, [want], "{input}");
    }
}

#[tokio::test]
async fn several_filters_on_one_registration_are_and_two_registrations_are_or() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(named("h"))
        .filter(text::starts_with("a"))
        .filter(text::contains("z"));
    r.message(named("h")).filter(text::equals("alt"));
    for (input, hit) in [("az", true), ("a", false), ("alt", true), ("z", false)] {
        let (_, got) = run(r.clone(), &log, text_update(input)).await;
        assert_eq!(!got.is_empty(), hit, "{input}");
    }
}

#[tokio::test]
async fn async_filters() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(named("slow"))
        .filter(from_async(|cx: Context| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            cx.update().chat_id == Some(5)
        }));
    let (_, got) = run(r, &log, text_update("x")).await;
    assert_eq!(got, ["slow"]);
}

#[tokio::test]
async fn filter_data_reaches_the_handler() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(|cmd: CommandObject, Dep(log): Dep<Log>| async move {
        log.push(format!("{}|{:?}", cmd.command, cmd.args));
    })
    .filter(Command::new(["start"]));
    let (_, got) = run(r, &log, text_update("/start payload here")).await;
    assert_eq!(got, ["start|Some(\"payload here\")"]);
}

#[tokio::test]
async fn the_ghost_handler_catches_everything() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(named("ghost"));
    for t in ["", "/cmd", "anything"] {
        let (outcome, got) = run(r.clone(), &log, text_update(t)).await;
        assert!(matches!(outcome, Ok(Outcome::Handled)));
        assert_eq!(got, ["ghost"]);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("quota exceeded")]
struct QuotaExceeded;

#[derive(Debug, thiserror::Error)]
#[error("something else")]
struct SomethingElse;

#[tokio::test]
async fn errors_observer_with_error_type_filter() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(|m: Arc<Message>| async move {
        if m.text.as_deref() == Some("quota") {
            Err::<(), _>(anyhow_like(QuotaExceeded))
        } else {
            Err(anyhow_like(SomethingElse))
        }
    });
    r.errors(
        |e: ErrorEvent, Dep(log): Dep<Log>| async move { log.push(format!("handled: {}", e.0)) },
    )
    .filter(ErrorIs::<QuotaExceeded>::new());
    let (outcome, got) = run(r.clone(), &log, text_update("quota")).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)));
    assert_eq!(got, ["handled: quota exceeded"]);
    let (outcome, got) = run(r, &log, text_update("other")).await;
    let Err(e) = outcome else {
        panic!("unhandled error must fail")
    };
    assert!(e.is::<SomethingElse>() && !e.is_transient());
    assert!(got.is_empty());
}

fn anyhow_like<E: std::error::Error + Send + Sync + 'static>(e: E) -> tgpipe::HandlerError {
    e.into()
}

#[test]
fn command_parsing_matrix() {
    let cmd = Command::new(["start", "go"]);
    let me = Some("my_bot");
    let ok = |c: &Command, t: &str| c.parse(t, me).map(|o| (o.command, o.mention, o.args));
    assert_eq!(ok(&cmd, "/start"), Some(("start".into(), None, None)));
    assert_eq!(
        ok(&cmd, "/go now please"),
        Some(("go".into(), None, Some("now please".into())))
    );
    assert_eq!(
        ok(&cmd, "/start@my_bot x"),
        Some(("start".into(), Some("my_bot".into()), Some("x".into())))
    );
    assert_eq!(
        ok(&cmd, "/start@MY_BOT"),
        Some(("start".into(), Some("MY_BOT".into()), None))
    );
    assert_eq!(
        ok(&cmd, "/start@other_bot"),
        None,
        "a command for another bot"
    );
    assert_eq!(ok(&cmd, "/START"), None, "case matters by default");
    assert_eq!(
        ok(&cmd.clone().ignore_case(), "/START"),
        Some(("START".into(), None, None))
    );
    assert_eq!(ok(&cmd, "!start"), None, "prefix");
    assert_eq!(
        ok(&cmd.clone().prefixes("/!"), "!start"),
        Some(("start".into(), None, None))
    );
    assert_eq!(ok(&cmd, "/stop"), None);
    assert_eq!(ok(&cmd, "start"), None);
    assert_eq!(ok(&cmd, "/"), None);
    assert_eq!(
        ok(&cmd, "/start\npayload"),
        Some(("start".into(), None, Some("payload".into())))
    );
    assert_eq!(
        ok(&cmd.clone().ignore_mention(), "/start@other_bot"),
        Some(("start".into(), Some("other_bot".into()), None))
    );
    assert_eq!(
        Command::new(["start"]).parse("/start@bot", None),
        None,
        "unknown username: mentions cannot match"
    );
}

#[tokio::test]
async fn extractor_errors_fail_the_update_instead_of_panicking() {
    let log = Log::default();
    let mut r = Router::new("r");
    // A Message argument on the callback query observer.
    r.callback_query(|_m: Arc<Message>| async {});
    let (outcome, _) = run(r, &log, callback_update()).await;
    let Err(e) = outcome else {
        panic!("expected a failure")
    };
    assert!(e.to_string().contains("callback_query"), "{e}");
    assert!(!e.is_transient());
}

#[tokio::test]
async fn a_missing_dependency_is_a_build_error() {
    #[derive(Clone)]
    struct Db;
    let mut r = Router::new("main");
    r.message(|_db: Dep<Db>| async {});
    let err = Dispatcher::builder(r.clone()).build().unwrap_err();
    assert!(
        matches!(&err, BuildError::MissingDependency { router, observer, index: 0, .. } if router == "main" && observer == "message")
    );
    assert!(err.to_string().contains("Db"), "{err}");
    assert!(Dispatcher::builder(r.clone()).state(Db).build().is_ok());
    // A middleware may declare that it provides it.
    r.provides::<Db>();
    assert!(Dispatcher::builder(r).build().is_ok());
    // CommandObject is provided by a Command filter, and only there.
    let mut r = Router::new("c");
    r.message(|_c: CommandObject| async {});
    assert!(Dispatcher::builder(r.clone()).build().is_err());
    let mut r = Router::new("c");
    r.message(|_c: CommandObject| async {})
        .filter(Command::new(["x"]));
    assert!(Dispatcher::builder(r).build().is_ok());
}

#[tokio::test]
async fn duplicate_router_names_are_refused() {
    let mut root = Router::new("same");
    root.include_router(Router::new("same"));
    assert_eq!(
        Dispatcher::builder(root).build().unwrap_err(),
        BuildError::DuplicateRouter("same".into())
    );
}

#[tokio::test]
async fn unknown_kind_is_routed_raw() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(named("message"));
    r.raw(|u: Arc<Update>, Dep(log): Dep<Log>| async move { log.push(format!("raw {}", u.kind)) });
    let (outcome, got) = run(
        r,
        &log,
        Bytes::from_static(br#"{"update_id":1,"key":"value"}"#),
    )
    .await;
    assert!(matches!(outcome, Ok(Outcome::Handled)));
    assert_eq!(got, ["raw key"]);
}

#[tokio::test]
async fn the_whole_corpus_routes_to_the_right_observer_with_nothing_lost() {
    let log = Log::default();
    let mut r = Router::new("all");
    for kind in UpdateKind::ALL {
        let k = kind.clone();
        r.on(kind.clone(), move |Dep(log): Dep<Log>| {
            let k = k.clone();
            async move { log.push(k.to_string()) }
        });
    }
    r.raw(|u: Arc<Update>, Dep(log): Dep<Log>| async move { log.push(format!("raw:{}", u.kind)) });
    let dp = Dispatcher::builder(r).state(log.clone()).build().unwrap();
    let corpus = tgpipe_testkit::corpus();
    for line in &corpus {
        let outcome = dp.feed_raw(&bot(), Bytes::from(line.clone())).await;
        assert!(matches!(outcome, Ok(Outcome::Handled)), "{line}");
    }
    let got = log.take();
    assert_eq!(got.len(), corpus.len(), "every update handled exactly once");
    for (line, handled) in corpus.iter().zip(&got) {
        let kind = tgpipe_shared::extract_keys(line.as_bytes()).unwrap().kind;
        // Typed where the model reads it; raw (with its kind) otherwise: never lost.
        assert!(
            handled == kind.as_str() || handled == &format!("raw:{kind}"),
            "{handled} for {line}"
        );
    }
    let raw: Vec<&String> = got.iter().filter(|g| g.starts_with("raw:")).collect();
    assert!(raw.contains(&&"raw:key".to_string()));
    // Only the unknown kind goes raw: the two records the fixtures call
    // off-specification (`rich_message` with `html`, a managed-bot payload with `user`)
    // reach their typed handlers, the inner objects that do not fit left out.
    assert_eq!(raw, [&"raw:key".to_string()]);
}

#[tokio::test]
async fn used_update_kinds_lists_the_observed_kinds() {
    let mut r = Router::new("r");
    r.message(|| async {});
    let mut child = Router::new("child");
    child.callback_query(|_q: Arc<CallbackQuery>| async {});
    child.inline_query(|_q: Arc<InlineQuery>| async {});
    r.include_router(child);
    let dp = Dispatcher::builder(r).build().unwrap();
    assert_eq!(
        dp.used_update_kinds(),
        vec![
            UpdateKind::Message,
            UpdateKind::InlineQuery,
            UpdateKind::CallbackQuery
        ]
    );
}

#[tokio::test]
async fn a_handler_replies_through_the_bot_api() {
    let sink = tgpipe_testkit::sink::Sink::start(Default::default())
        .await
        .unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let mut r = Router::new("echo");
    r.message(|m: Arc<Message>, bot: Bot| async move {
        bot.send_text(m.chat.id, m.text.as_deref().unwrap_or_default())
            .await?;
        Ok::<_, tgpipe::BotError>(())
    });
    let dp = Dispatcher::builder(r).build().unwrap();
    assert!(matches!(
        dp.feed_raw(&bot, text_update("echo me")).await,
        Ok(Outcome::Handled)
    ));
    let calls = sink.wait_for_calls(1, Duration::from_secs(10)).await;
    assert_eq!(calls[0].method, "sendMessage");
    assert_eq!(calls[0].params["text"], serde_json::json!("echo me"));
    assert_eq!(calls[0].params["chat_id"], serde_json::json!(5));
    // getMe fills the username the Command filter checks mentions against.
    let me = bot.me().await.unwrap();
    assert_eq!(bot.username(), me.username.as_deref());
}

#[tokio::test]
async fn bot_api_errors_are_classified_for_the_runtime() {
    let sink = tgpipe_testkit::sink::Sink::start(tgpipe_testkit::sink::SinkConfig {
        every_429: Some(1),
        retry_after: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    // No retries: the 429 goes straight to the handler.
    let bot = Bot::builder("123:TEST")
        .api_url(&sink.url())
        .retry(tgpipe::bot::RetryPolicy::none())
        .build()
        .unwrap();
    let mut r = Router::new("r");
    r.message(|bot: Bot| async move {
        bot.send_text(5, "x").await?;
        Ok::<_, tgpipe::BotError>(())
    });
    let dp = Dispatcher::builder(r).build().unwrap();
    let Err(e) = dp.feed_raw(&bot, text_update("x")).await else {
        panic!("429 must fail")
    };
    assert!(e.is_transient(), "429 is retried later");
    let api = e.downcast_ref::<tgpipe::BotError>().unwrap();
    assert_eq!(
        api,
        &tgpipe::BotError::RetryAfter(std::time::Duration::from_secs(3))
    );
}

#[tokio::test]
async fn bodies_that_are_not_updates_fail_permanently() {
    let dp = Dispatcher::builder(Router::new("r")).build().unwrap();
    let Err(e) = dp.feed_raw(&bot(), Bytes::from_static(b"[1]")).await else {
        panic!()
    };
    assert!(!e.is_transient());
}

fn supergroup_update(update_id: i64, text: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({"update_id": update_id, "message": {"message_id": update_id, "date": 0,
            "chat": {"id": -1001, "type": "supergroup", "title": "G"},
            "from": {"id": 5, "is_bot": false, "first_name": "A"}, "text": text}})
        .to_string(),
    )
}

/// Regression: nothing called `getMe`, so `Command` had no username and `/start@my_bot`
/// (what Telegram clients send in groups) never matched. The bot asks `getMe` the first
/// time a command mentions a bot, once, and keeps the answer.
#[tokio::test]
async fn start_at_botname_in_a_supergroup_is_handled() {
    let sink = tgpipe_testkit::sink::Sink::start(tgpipe_testkit::sink::SinkConfig {
        bot_username: "OurBot".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    assert_eq!(bot.username(), None);
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(|Dep(log): Dep<Log>, c: CommandObject| async move {
        log.push(format!("{} {:?}", c.command, c.mention));
    })
    .filter(Command::new(["start"]));
    let dp = Dispatcher::builder(r).state(log.clone()).build().unwrap();
    let outcomes = [
        ("/start@OurBot", true),
        ("/start@ourbot payload", true),
        ("/start@OURBOT", true),
        ("/start@other_bot", false),
        ("/start", true),
    ];
    for (i, (text, handled)) in outcomes.into_iter().enumerate() {
        let outcome = dp.feed_raw(&bot, supergroup_update(i as i64, text)).await;
        assert_eq!(
            matches!(outcome, Ok(Outcome::Handled)),
            handled,
            "{text}: {outcome:?}"
        );
    }
    assert_eq!(
        log.take(),
        [
            r#"start Some("OurBot")"#,
            r#"start Some("ourbot")"#,
            r#"start Some("OURBOT")"#,
            "start None"
        ]
    );
    assert_eq!(bot.username(), Some("OurBot"));
    let get_me = sink.calls().iter().filter(|c| c.method == "getMe").count();
    assert_eq!(get_me, 1, "getMe is asked once per bot");
    // Explicitly: the cached answer, no second call.
    assert_eq!(bot.me().await.unwrap().username.as_deref(), Some("OurBot"));
    assert_eq!(
        sink.calls().iter().filter(|c| c.method == "getMe").count(),
        1
    );
}

/// A command without a mention never needs `getMe`.
#[tokio::test]
async fn commands_without_a_mention_do_not_call_get_me() {
    let sink = tgpipe_testkit::sink::Sink::start(Default::default())
        .await
        .unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let mut r = Router::new("r");
    r.message(|| async {}).filter(Command::new(["help"]));
    let dp = Dispatcher::builder(r).build().unwrap();
    let outcome = dp.feed_raw(&bot, supergroup_update(1, "/help")).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)));
    assert!(sink.calls().is_empty());
}

/// aiogram collects inner middleware along the router chain: a parent router's inner
/// middleware wraps the handlers of its nested routers (outermost first).
#[tokio::test]
async fn inner_middleware_is_collected_along_the_router_chain() {
    let log = Log::default();
    let mut root = Router::new("root");
    root.inner_middleware(UpdateKind::Message, tag_mw("root"));
    let mut child = Router::new("child");
    child.inner_middleware(UpdateKind::Message, tag_mw("child"));
    let mut grandchild = Router::new("grandchild");
    grandchild.message(named("handler"));
    child.include_router(grandchild);
    root.include_router(child);
    let (outcome, got) = run(root, &log, text_update("x")).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)));
    assert_eq!(
        got,
        [
            "root:before",
            "child:before",
            "handler",
            "child:after",
            "root:after"
        ]
    );
}

/// A sibling's inner middleware does not wrap another router's handlers.
#[tokio::test]
async fn inner_middleware_of_a_sibling_router_does_not_apply() {
    let log = Log::default();
    let mut root = Router::new("root");
    let mut a = Router::new("a");
    a.inner_middleware(UpdateKind::Message, tag_mw("a"));
    a.message(named("a")).filter(text::equals("a"));
    let mut b = Router::new("b");
    b.message(named("b"));
    root.include_router(a);
    root.include_router(b);
    let (_, got) = run(root, &log, text_update("x")).await;
    assert_eq!(got, ["b"]);
}

/// aiogram merges each filter's data into the handler's data before calling the next
/// filter: `Command("pay")` followed by a filter reading `CommandObject.args`.
#[tokio::test]
async fn each_filter_sees_the_data_of_the_filters_before_it() {
    let log = Log::default();
    let mut r = Router::new("r");
    let has_amount = |cx: &Context| {
        cx.get::<CommandObject>()
            .and_then(|c| c.args.as_deref())
            .is_some_and(|a| a.parse::<u64>().is_ok())
    };
    r.message(|Dep(log): Dep<Log>, c: CommandObject| async move {
        log.push(format!("pay {}", c.args.unwrap_or_default()));
    })
    .filter(Command::new(["pay"]))
    .filter(has_amount);
    r.message(named("no amount")).filter(Command::new(["pay"]));
    let (_, got) = run(r.clone(), &log, text_update("/pay 30")).await;
    assert_eq!(got, ["pay 30"]);
    let (_, got) = run(r.clone(), &log, text_update("/pay lots")).await;
    assert_eq!(got, ["no amount"]);
    // The same inside `and`.
    let mut r = Router::new("r");
    r.message(named("and"))
        .filter(Command::new(["pay"]).and(has_amount));
    let (_, got) = run(r, &log, text_update("/pay 30")).await;
    assert_eq!(got, ["and"]);
}

/// aiogram's `router.message.filter(...)`: a router-wide condition, checked before the
/// router's handlers; when it rejects, the router's nested routers are not tried either,
/// and the search goes on with the next router.
#[tokio::test]
async fn observer_filters_gate_the_router_and_its_nested_routers() {
    let log = Log::default();
    let mut root = Router::new("root");
    let mut admin = Router::new("admin");
    admin.message_filter(text::starts_with("!"));
    admin.message(named("admin")).filter(text::equals("!ban"));
    let mut admin_child = Router::new("admin child");
    admin_child.message(named("admin child"));
    admin.include_router(admin_child);
    let mut rest = Router::new("rest");
    rest.message(named("rest"));
    root.include_router(admin);
    root.include_router(rest);
    let (_, got) = run(root.clone(), &log, text_update("!ban")).await;
    assert_eq!(got, ["admin"]);
    let (_, got) = run(root.clone(), &log, text_update("!kick")).await;
    assert_eq!(got, ["admin child"]);
    let (_, got) = run(root, &log, text_update("hello")).await;
    assert_eq!(got, ["rest"]);
}

/// Values an observer filter provides reach the router's handlers and nested routers,
/// and the build-time check knows it.
#[tokio::test]
async fn observer_filter_values_reach_handlers_of_nested_routers() {
    let log = Log::default();
    let mut root = Router::new("root");
    root.message_filter(Command::new(["pay"]));
    let mut child = Router::new("child");
    child.message(|Dep(log): Dep<Log>, c: CommandObject| async move {
        log.push(format!("args {:?}", c.args));
    });
    root.include_router(child);
    let (_, got) = run(root, &log, text_update("/pay 5")).await;
    assert_eq!(got, [r#"args Some("5")"#]);
}

/// Middleware attaches to every observer, `raw` and `errors` included.
#[tokio::test]
async fn middleware_on_the_raw_and_errors_observers() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.outer_middleware(ObserverKey::Raw, tag_mw("raw outer"));
    r.inner_middleware(ObserverKey::Raw, tag_mw("raw inner"));
    r.raw(named("raw"));
    r.outer_middleware(ObserverKey::Errors, tag_mw("errors outer"));
    r.inner_middleware(ObserverKey::Errors, tag_mw("errors inner"));
    r.message(|| async { Err::<(), _>(std::io::Error::other("boom")) });
    r.errors(named("errors"));
    let (_, got) = run(
        r.clone(),
        &log,
        Bytes::from_static(br#"{"update_id":1,"key":"value"}"#),
    )
    .await;
    assert_eq!(
        got,
        [
            "raw outer:before",
            "raw inner:before",
            "raw",
            "raw inner:after",
            "raw outer:after"
        ]
    );
    let (outcome, got) = run(r, &log, text_update("x")).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)));
    assert_eq!(
        got,
        [
            "errors outer:before",
            "errors inner:before",
            "errors",
            "errors inner:after",
            "errors outer:after"
        ]
    );
}

#[derive(Clone, Debug, PartialEq)]
struct Locale(&'static str);

/// A provided value is declared and inserted in one step (`Router::provide`,
/// `DispatcherBuilder::provide`, `filter::provide`), so the build-time dependency check
/// knows exactly what runs, per observer.
#[tokio::test]
async fn a_provided_value_is_declared_and_inserted_in_one_step() {
    async fn locale(_cx: Context) -> Result<Locale, tgpipe::HandlerError> {
        Ok(Locale("en"))
    }
    let log = Log::default();
    let mut root = Router::new("root");
    root.provide(UpdateKind::Message, locale);
    let mut child = Router::new("child");
    child.message(|Dep(log): Dep<Log>, Dep(l): Dep<Locale>| async move {
        log.push(l.0);
    });
    root.include_router(child);
    let (_, got) = run(root.clone(), &log, text_update("x")).await;
    assert_eq!(got, ["en"]);

    // Provided for messages only: a callback handler taking it does not build.
    root.callback_query(|Dep(_): Dep<Locale>| async {});
    let e = Dispatcher::builder(root)
        .state(log.clone())
        .build()
        .unwrap_err();
    assert!(
        matches!(&e, BuildError::MissingDependency { observer, .. } if observer == "callback_query"),
        "{e}"
    );

    // Update-wide, for every observer.
    let mut r = Router::new("r");
    r.callback_query(|Dep(log): Dep<Log>, Dep(l): Dep<Locale>| async move {
        log.push(format!("callback {}", l.0));
    });
    let dp = Dispatcher::builder(r)
        .state(log.clone())
        .provide(locale)
        .build()
        .unwrap();
    dp.feed_raw(&bot(), callback_update()).await.unwrap();
    assert_eq!(log.take(), ["callback en"]);

    // From a filter.
    let mut r = Router::new("r");
    r.message(|Dep(log): Dep<Log>, Dep(l): Dep<Locale>| async move {
        log.push(format!("filter {}", l.0));
    })
    .filter(tgpipe::filter::provide(|cx: &Context| {
        tgpipe::filter::message_text(cx)
            .filter(|t| *t == "de")
            .map(|_| Locale("de"))
    }));
    let (_, got) = run(r, &log, text_update("de")).await;
    assert_eq!(got, ["filter de"]);
}

#[tokio::test]
async fn an_expired_update_reaches_only_expired_handlers_with_how_late_it_is() {
    use tgpipe::expired::Expired;
    async fn stale(q: Arc<frankenstein::types::CallbackQuery>, e: Expired, Dep(log): Dep<Log>) {
        log.push(format!(
            "expired {} {}s/{}s",
            q.id,
            e.age.as_secs(),
            e.deadline.as_secs()
        ));
    }
    async fn press(Dep(log): Dep<Log>) {
        log.push("pressed");
    }
    let log = Log::default();
    let mut router = Router::new("main");
    router.callback_query(press);
    router.expired(stale);
    let dp = Dispatcher::builder(router)
        .state(log.clone())
        .build()
        .unwrap();
    assert!(dp.handles_expired());
    let body = br#"{"update_id":9,"callback_query":{"id":"cq9","from":{"id":5,"is_bot":false,"first_name":"A"},"chat_instance":"c","data":"x"}}"#;
    let update =
        tgpipe::Update::parse(tgpipe_shared::BotId(123), Bytes::from_static(body)).unwrap();
    let expired = Expired {
        age: Duration::from_secs(212),
        deadline: Duration::from_secs(150),
    };
    let outcome = dp
        .feed_expired(&bot(), update.clone(), expired, tgpipe::Extensions::new())
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Handled);
    assert_eq!(log.take(), ["expired cq9 212s/150s"]);
    // Fed as usual, it reaches the kind's handlers.
    dp.feed_update(&bot(), update.clone()).await.unwrap();
    assert_eq!(log.take(), ["pressed"]);
    // A tree without `expired` handlers skips it.
    let mut plain = Router::new("plain");
    plain.callback_query(press);
    let dp = Dispatcher::builder(plain)
        .state(log.clone())
        .build()
        .unwrap();
    assert!(!dp.handles_expired());
    let outcome = dp
        .feed_expired(&bot(), update, expired, tgpipe::Extensions::new())
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Skipped);
    assert!(log.take().is_empty());
}
