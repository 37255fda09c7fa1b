//! Durable timers in the framework: what `Timers` asks its backend for, how a fired timer
//! is routed, the state timeout's filter, and how timer errors are classified. (The
//! worker's backend on JetStream is tested in worker/tests/timers.rs.)

mod common;

use common::{Log, bot, text_update};

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use frankenstein::types::Message;
use tgpipe::filter::Command;
use tgpipe::fsm::{Fsm, FsmContext, MemoryStorage};
use tgpipe::handler::BoxFuture;
use tgpipe::timer::{
    self, STATE_TIMEOUT, Timer, TimerBackend, TimerError, TimerRequest, TimerScope, TimerService,
    Timers,
};
use tgpipe::{BuildError, Dep, Dispatcher, HandlerError, Outcome, Router};
use tgpipe_shared::BotId;
use tgpipe_shared::timer::TimerBody;

tgpipe::states! { enum Form { Name, Age } }

/// Keeps what it is asked, in order.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<TimerRequest>>>);

impl TimerBackend for Recorder {
    fn schedule(&self, timer: TimerRequest) -> BoxFuture<'static, Result<(), TimerError>> {
        self.0
            .lock()
            .unwrap()
            .push(format!("schedule {}", timer.name));
        self.1.lock().unwrap().push(timer);
        Box::pin(async { Ok(()) })
    }

    fn cancel(&self, _: TimerScope, name: String) -> BoxFuture<'static, Result<(), TimerError>> {
        self.0.lock().unwrap().push(format!("cancel {name}"));
        Box::pin(async { Ok(()) })
    }
}

/// A timer's body as the stream delivers it.
fn fired(name: &str, chat: i64, payload: serde_json::Value) -> Bytes {
    let scope = TimerScope {
        bot: BotId(123),
        chat_id: Some(chat),
        user_id: Some(chat),
        thread_id: None,
    };
    let body = TimerBody::new(-42, &scope, name, 1_000, 500, payload);
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

#[tokio::test]
async fn a_handler_schedules_and_cancels_for_its_chat_and_user() {
    async fn remind(timers: Timers) -> Result<(), TimerError> {
        timers
            .after("tea", Duration::from_secs(60), ("green", 2))
            .await?;
        timers.cancel("coffee").await
    }
    let rec = Recorder::default();
    let mut router = Router::new("main");
    router.message(remind).filter(Command::new("remind"));
    let dp = Dispatcher::builder(router)
        .state(TimerService::new(rec.clone()))
        .build()
        .unwrap();
    let before = SystemTime::now();
    let outcome = dp.feed_raw(&bot(), text_update("/remind")).await.unwrap();
    assert_eq!(outcome, Outcome::Handled);
    assert_eq!(*rec.0.lock().unwrap(), ["schedule tea", "cancel coffee"]);
    let req = rec.1.lock().unwrap()[0].clone();
    assert_eq!(
        req.scope,
        TimerScope {
            bot: BotId(123),
            chat_id: Some(5),
            user_id: Some(5),
            thread_id: None
        }
    );
    assert_eq!(req.payload, serde_json::json!(["green", 2]));
    let wait = req.due_at.duration_since(before).unwrap();
    assert!(
        wait >= Duration::from_secs(60) && wait < Duration::from_secs(61),
        "{wait:?}"
    );
}

#[test]
fn a_handler_taking_timers_without_a_timer_service_is_refused_at_build() {
    async fn remind(_: Timers) {}
    let mut router = Router::new("main");
    router.message(remind);
    let err = Dispatcher::builder(router).build().unwrap_err();
    assert!(matches!(err, BuildError::MissingDependency { .. }), "{err}");
    assert!(err.to_string().contains("TimerService"), "{err}");
}

#[tokio::test]
async fn a_fired_timer_reaches_timer_handlers_by_name_with_its_payload() {
    async fn tea(timer: Arc<Timer>, Dep(log): Dep<Log>) -> Result<(), HandlerError> {
        let (kind, n): (String, u32) = timer.payload().map_err(HandlerError::permanent)?;
        log.push(format!(
            "{} {} {kind} {n} {:?}",
            timer.name, timer.id, timer.chat_id
        ));
        assert_eq!(timer.due_at, UNIX_EPOCH + Duration::from_secs(1));
        Ok(())
    }
    async fn message(_: Arc<Message>, Dep(log): Dep<Log>) {
        log.push("message");
    }
    let log = Log::default();
    let mut router = Router::new("main");
    router.message(message);
    router.timer(tea).filter(timer::named("tea"));
    let dp = Dispatcher::builder(router)
        .state(log.clone())
        .build()
        .unwrap();
    let outcome = dp
        .feed_raw(&bot(), fired("tea", 5, serde_json::json!(["green", 2])))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Handled);
    assert_eq!(log.take(), ["tea -42 green 2 Some(5)"]);
    // Another name: no handler takes it, and message handlers never see timers.
    let outcome = dp
        .feed_raw(&bot(), fired("coffee", 5, serde_json::json!(null)))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Skipped);
    assert!(log.take().is_empty());
}

#[tokio::test]
async fn a_state_timeout_passes_only_while_the_state_is_the_one_it_was_set_in() {
    async fn timed_out(_: Arc<Timer>, fsm: FsmContext, Dep(log): Dep<Log>) -> tgpipe::Result {
        log.push(format!("timed out in {:?}", fsm.state().await?));
        fsm.clear().await?;
        Ok(())
    }
    let storage = MemoryStorage::new();
    let log = Log::default();
    let mut router = Router::new("form");
    router.timer(timed_out).filter(timer::state_timed_out());
    let dp = Dispatcher::builder(router)
        .state(log.clone())
        .fsm(Fsm::new(storage.clone()))
        .build()
        .unwrap();
    let key = tgpipe::FsmKey::new(123, 5, 5);
    use tgpipe::fsm::FsmStorage;
    // Scheduled in Name; the user answered since (the state is Age): nothing happens.
    storage.set_state(&key, Some("Form:Age")).await.unwrap();
    let stale = fired(STATE_TIMEOUT, 5, serde_json::json!("Form:Name"));
    assert_eq!(dp.feed_raw(&bot(), stale).await.unwrap(), Outcome::Skipped);
    // Scheduled in Age and still there: it times out, once.
    let current = fired(STATE_TIMEOUT, 5, serde_json::json!("Form:Age"));
    assert_eq!(
        dp.feed_raw(&bot(), current.clone()).await.unwrap(),
        Outcome::Handled
    );
    assert_eq!(log.take(), ["timed out in Some(\"Form:Age\")"]);
    assert_eq!(
        dp.feed_raw(&bot(), current).await.unwrap(),
        Outcome::Skipped
    );
    let _ = (Form::Name, Form::Age);
}

#[test]
fn a_store_that_did_not_answer_is_retried_and_the_rest_is_not() {
    let store = HandlerError::from(TimerError::Store("no acknowledgement".into()));
    assert!(store.is_transient());
    for e in [
        TimerError::Unavailable("no schedules".into()),
        TimerError::NoScope("poll".into()),
        TimerError::Name(0),
        TimerError::TooFar {
            wait: Duration::from_secs(90_000),
            max: Duration::from_secs(86_340),
        },
    ] {
        let text = e.to_string();
        assert!(!HandlerError::from(e).is_transient(), "{text}");
    }
}

#[tokio::test]
async fn a_timer_body_that_does_not_parse_fails_for_good_and_is_kept() {
    let mut router = Router::new("main");
    router.timer(|| async {});
    let dp = Dispatcher::builder(router).build().unwrap();
    for body in [
        r#"{"update_id":-1,"timer":"junk"}"#,
        r#"{"update_id":-1,"timer":{"name":"x"}}"#,
        r#"{"update_id":-1,"timer":{"name":7,"due_at":1,"scheduled_at":1}}"#,
    ] {
        let err = dp
            .feed_raw(&bot(), Bytes::from_static(body.as_bytes()))
            .await
            .unwrap_err();
        // Permanent: dead-lettered with the body, never dropped.
        assert!(!err.is_transient(), "{body}: {err}");
        assert!(err.to_string().contains("timer"), "{body}: {err}");
    }
}
