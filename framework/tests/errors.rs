//! How handler errors come out of a dispatch: wrapped transient errors, application
//! error types that know, and the Bot API's everyday refusals (a user who blocked the
//! bot). Calls go to the Bot API stand-in.

mod common;

use std::time::Duration;

use frankenstein::types::Message;
use std::sync::Arc;
use tgpipe::bot::{ForbiddenReason, RetryPolicy};
use tgpipe::error::ErrorEvent;
use tgpipe::error::Transient;
use tgpipe::filter::forbidden;
use tgpipe::{Bot, BotError, Dep, Dispatcher, Outcome, Router};
use tgpipe_testkit::sink::{Fault, Sink, SinkConfig, SinkHandle};

use common::{Log, text_update};

async fn sink() -> SinkHandle {
    Sink::start(SinkConfig::default()).await.unwrap()
}

fn bot(sink: &SinkHandle) -> Bot {
    Bot::builder("123:TEST")
        .api_url(&sink.url())
        .retry(RetryPolicy::none())
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// An application error enum as docs/framework.md shows it: the framework's errors are
/// its causes (a message, not `transparent`, which would hide them from the chain).
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("replying")]
    Api(#[from] BotError),
    #[allow(dead_code)]
    #[error("reading the form")]
    Fsm(#[from] tgpipe::FsmError),
}

async fn reply(bot: Bot, message: Arc<Message>) -> Result<(), Error> {
    bot.send_text(message.chat.id, "reply").await?;
    Ok(())
}

fn failed(outcome: tgpipe::Result<Outcome>) -> tgpipe::HandlerError {
    match outcome {
        Err(e) => e,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Regression: `classify` downcast only the outer error, so this 502 was permanent and the
/// update was dead-lettered on its first delivery.
#[tokio::test]
async fn a_handler_returning_the_documented_enum_with_a_wrapped_502_fails_transiently() {
    let s = sink().await;
    s.push_fault("sendMessage", Fault::server(502));
    let mut r = Router::new("r");
    r.message(reply);
    let dp = Dispatcher::builder(r).build().unwrap();
    let e = failed(dp.feed_raw(&bot(&s), text_update("hi")).await);
    assert!(e.is_transient(), "{e:?}");

    // A permanent error wrapped the same way stays permanent.
    s.push_fault("sendMessage", Fault::bad_request("message text is empty"));
    let e = failed(dp.feed_raw(&bot(&s), text_update("hi")).await);
    assert!(!e.is_transient(), "{e:?}");
}

/// An application error that decides for itself, registered once with the builder.
#[derive(Debug, thiserror::Error)]
#[error("the payment provider said {0}")]
struct ProviderError(&'static str);

impl Transient for ProviderError {
    fn is_transient(&self) -> bool {
        self.0 == "busy"
    }
}

/// Wraps it with a message (not `transparent`, which would hide it from the chain).
#[derive(Debug, thiserror::Error)]
enum PayError {
    #[error("paying: {0}")]
    Provider(#[from] ProviderError),
}

#[tokio::test]
async fn a_registered_transient_error_type_is_asked_even_when_wrapped() {
    async fn pay(message: Arc<Message>) -> Result<(), PayError> {
        let answer = if message.text.as_deref() == Some("busy") {
            "busy"
        } else {
            "no"
        };
        Err(ProviderError(answer).into())
    }
    let s = sink().await;
    let mut r = Router::new("r");
    r.message(pay);
    let registered = Dispatcher::builder(r.clone())
        .transient_errors::<ProviderError>()
        .build()
        .unwrap();
    assert!(failed(registered.feed_raw(&bot(&s), text_update("busy")).await).is_transient());
    assert!(!failed(registered.feed_raw(&bot(&s), text_update("declined")).await).is_transient());
    // Unregistered, nothing in the chain knows: permanent.
    let plain = Dispatcher::builder(r).build().unwrap();
    assert!(!failed(plain.feed_raw(&bot(&s), text_update("busy")).await).is_transient());
}

/// Regression: a user who blocked the bot gave an ERROR and a dead letter.
#[test]
fn a_user_who_blocked_the_bot_does_not_fail_the_update() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = sink().await;
            let mut r = Router::new("r");
            r.message(reply);
            let dp = Dispatcher::builder(r).build().unwrap();
            for fault in [
                Fault::forbidden(),
                Fault::error(403, "Forbidden: user is deactivated"),
                Fault::error(403, "Forbidden: bot was kicked from the supergroup chat"),
            ] {
                s.push_fault("sendMessage", fault);
                let outcome = dp.feed_raw(&bot(&s), text_update("hi")).await;
                assert!(matches!(outcome, Ok(Outcome::Handled)), "{outcome:?}");
            }
            // A refusal that is the bot's own problem still fails.
            s.push_fault(
                "sendMessage",
                Fault::error(
                    403,
                    "Forbidden: not enough rights to send text messages to the chat",
                ),
            );
            let e = failed(dp.feed_raw(&bot(&s), text_update("hi")).await);
            assert_eq!(e.forbidden_reason(), Some(ForbiddenReason::Other));
        });
    });
    let text = handle.render();
    for (reason, n) in [("blocked", 1), ("deactivated", 1), ("kicked", 1)] {
        let needle = format!(r#"tgpipe_bot_api_forbidden_total{{reason="{reason}"}} {n}"#);
        assert!(
            text.lines().any(|l| l == needle),
            "no `{needle}` in\n{text}"
        );
    }
    assert!(!text.contains(r#"reason="other""#), "{text}");
}

#[tokio::test]
async fn an_errors_handler_filtered_on_forbidden_gets_the_reason() {
    async fn forget(Dep(reason): Dep<ForbiddenReason>, Dep(log): Dep<Log>, _e: ErrorEvent) {
        log.push(format!("forget: {}", reason.label()));
    }
    let s = sink().await;
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(reply);
    r.errors(forget)
        .filter(forbidden().reasons([ForbiddenReason::BlockedByUser]));
    let dp = Dispatcher::builder(r).state(log.clone()).build().unwrap();
    s.push_fault("sendMessage", Fault::forbidden());
    let outcome = dp.feed_raw(&bot(&s), text_update("hi")).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)));
    assert_eq!(log.take(), ["forget: blocked"]);
    // Another reason does not pass the filter (and the default policy handles it).
    s.push_fault(
        "sendMessage",
        Fault::error(403, "Forbidden: user is deactivated"),
    );
    let outcome = dp.feed_raw(&bot(&s), text_update("hi")).await;
    assert!(matches!(outcome, Ok(Outcome::Handled)));
    assert!(log.take().is_empty());
}
