//! The built-in request middleware records every call (its own test binary: the
//! metrics recorder is process-wide).

use std::time::Duration;

use tgpipe_bot::Bot;
use tgpipe_bot::RetryPolicy;
use tgpipe_testkit::sink::{Fault, Sink, SinkConfig};

#[tokio::test]
async fn calls_are_counted_by_method_and_status_and_timed() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let bot = Bot::builder("123:TEST")
        .api_url(&sink.url())
        .retry(RetryPolicy {
            backoff: Duration::from_millis(10),
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    bot.send_text(1, "a").await.unwrap();
    bot.send_text(2, "b").await.unwrap();
    sink.push_fault("sendMessage", Fault::forbidden());
    bot.send_text(3, "c").await.unwrap_err();
    sink.push_fault("getMe", Fault::server(502));
    bot.me().await.unwrap();

    let text = handle.render();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in\n{text}"))
            .to_owned()
    };
    assert!(
        line(r#"tgpipe_bot_api_calls_total{method="sendMessage",status="ok"}"#).ends_with(" 2")
    );
    assert!(
        line(r#"tgpipe_bot_api_calls_total{method="sendMessage",status="403"}"#).ends_with(" 1")
    );
    // A retried call counts once, by its outcome; the retry is counted apart.
    assert!(line(r#"tgpipe_bot_api_calls_total{method="getMe",status="ok"}"#).ends_with(" 1"));
    assert!(line(r#"tgpipe_bot_api_retries_total{method="getMe",reason="5xx"}"#).ends_with(" 1"));
    assert!(
        line(r#"tgpipe_bot_api_call_duration_seconds_count{method="sendMessage"}"#).ends_with(" 3")
    );
}
