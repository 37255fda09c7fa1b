//! One update is one trace: the ingress's request span, its publish into the stream,
//! the worker's span for the update, the handlers' span and each Bot API call they make,
//! linked parent to child through the W3C context in the message's headers, as an
//! OTLP/HTTP collector receives them.
//!
//! The ingress runs in this test's process (its spans exported by this process's
//! subscriber, the only test of this binary); the worker is a real `tgpipe-example-bot`
//! process exporting to the same receiver.

mod stack;

use std::time::Duration;

use stack::{BOT, Stack, text};
use tgpipe_shared::config::{LogFormat, TelemetryArgs};
use tgpipe_testkit::otlp::{OtlpReceiver, ReceivedSpan};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

fn one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    pick: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "expected one {what}, got {found:#?}");
    found[0]
}

fn child_of<'a>(spans: &'a [ReceivedSpan], parent: &ReceivedSpan, name: &str) -> &'a ReceivedSpan {
    one(spans, name, |s| {
        s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id && s.name == name
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_update_is_one_trace_from_the_webhook_to_each_bot_api_call() {
    let receiver = OtlpReceiver::start().await;
    let guard = tgpipe_shared::telemetry::init(
        "tgpipe-ingress",
        &TelemetryArgs {
            log_format: LogFormat::Text,
            otlp_endpoint: Some(receiver.endpoint()),
            trace_filter: "info".to_owned(),
        },
    )
    .expect("telemetry");
    let stack = Stack::start().await;
    let endpoint = receiver.endpoint();
    let worker = stack
        .worker(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ])
        .await;

    // Without a caller's context the ingress starts the trace; with a valid one (a
    // tracing proxy in front) it continues it; a malformed one is ignored.
    assert_eq!(stack.post(&text(9001, 501, "plain")).await, 200);
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let status = stack
        .post_with_headers(
            &text(9002, 502, "proxied"),
            &[
                ("traceparent", format!("00-{caller_trace}-{caller_span}-01")),
                ("tracestate", "vendor=1".to_owned()),
            ],
        )
        .await;
    assert_eq!(status, 200);
    let status = stack
        .post_with_headers(
            &text(9003, 503, "garbled"),
            &[("traceparent", "00-nothex-00f067aa0ba902b7-01".to_owned())],
        )
        .await;
    assert_eq!(status, 200);
    let replies = stack
        .wait_for("sendMessage", 3, Duration::from_secs(30))
        .await;
    assert_eq!(replies.len(), 3, "every update answered");

    // The ingress's spans are flushed when its telemetry stops.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
    let spans = receiver
        .wait_for(Duration::from_secs(30), |spans| {
            spans
                .iter()
                .filter(|s| s.name == "sendMessage" && s.service == "tgpipe-worker")
                .count()
                >= 3
                && spans
                    .iter()
                    .filter(|s| s.service == "tgpipe-ingress")
                    .count()
                    >= 6
                // An update's span ends after its reply's: it may come a batch later.
                && spans.iter().filter(|s| s.kind == CONSUMER).count() >= 3
        })
        .await;
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
    drop(worker);

    for (update_id, caller) in [
        (9001, None),
        (9002, Some((caller_trace, caller_span))),
        (9003, None),
    ] {
        let id = update_id.to_string();
        let request = one(&spans, "webhook span", |s| {
            s.service == "tgpipe-ingress" && s.attr("tg.update_id") == Some(&id)
        });
        assert_eq!(request.name, "POST /webhook/{bot_id}");
        assert_eq!(request.kind, SERVER);
        assert_eq!(request.attr("http.response.status_code"), Some("200"));
        assert_eq!(request.attr("tg.bot"), Some(BOT.to_string().as_str()));
        assert_eq!(request.attr("tg.kind"), Some("message"));
        match caller {
            Some((trace, span)) => {
                assert_eq!(request.trace_id, trace, "the caller's trace continues");
                assert_eq!(request.parent_span_id, span);
            }
            None => assert!(request.parent_span_id.is_empty(), "a root: {request:#?}"),
        }
        let publish = one(&spans, "publish span", |s| {
            s.parent_span_id == request.span_id
        });
        assert_eq!(publish.kind, PRODUCER);
        assert_eq!(publish.attr("messaging.system"), Some("nats"));
        let subject = publish
            .attr("messaging.destination.name")
            .expect("the subject");
        assert!(
            subject.starts_with(&format!("tg.{BOT}.message.")),
            "{subject}"
        );
        assert_eq!(publish.trace_id, request.trace_id);

        let update = one(&spans, "update span", |s| {
            s.parent_span_id == publish.span_id
        });
        assert_eq!(update.service, "tgpipe-worker");
        assert_eq!(update.kind, CONSUMER);
        assert_eq!(
            update.trace_id, request.trace_id,
            "one trace through the stream"
        );
        assert_eq!(update.attr("update_id"), Some(id.as_str()));
        assert_eq!(update.attr("outcome"), Some("handled"));
        assert_eq!(update.attr("messaging.destination.name"), Some(subject));

        let handle = child_of(&spans, update, "handle");
        let call = child_of(&spans, handle, "sendMessage");
        assert_eq!(call.kind, CLIENT);
        assert_eq!(call.attr("method"), Some("sendMessage"));
        assert_eq!(call.attr("status"), Some("ok"));

        // Nothing of this update is in another trace.
        let elsewhere: Vec<_> = spans
            .iter()
            .filter(|s| {
                s.trace_id != request.trace_id
                    && (s.attr("tg.update_id") == Some(&id) || s.attr("update_id") == Some(&id))
            })
            .collect();
        assert!(elsewhere.is_empty(), "{elsewhere:#?}");
    }
    let traces: std::collections::BTreeSet<_> = spans
        .iter()
        .filter(|s| s.name == "sendMessage")
        .map(|s| &s.trace_id)
        .collect();
    assert_eq!(traces.len(), 3, "three updates, three traces");
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, a worker at `RUST_LOG=warn` exported nothing:
/// the log filter also filtered the spans. Span export has its own filter now
/// (`TGPIPE_TRACE_FILTER`, default `info`), and `TGPIPE_TRACE_FILTER=off` stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_vanished_with_the_log_level_at_rust_log_warn() {
    let stack = Stack::start().await;
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let worker = stack
        .worker(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("RUST_LOG", "warn"),
        ])
        .await;
    assert_eq!(stack.post(&text(9101, 601, "quiet")).await, 200);
    stack
        .wait_for("sendMessage", 1, Duration::from_secs(30))
        .await;
    // The update's span ends after its reply's (it settles the update first), so it
    // may come in a later export batch: wait for both.
    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            spans
                .iter()
                .any(|s| s.service == "tgpipe-worker" && s.name == "sendMessage")
                && spans.iter().any(|s| s.kind == CONSUMER)
        })
        .await;
    let update = one(&spans, "update span", |s| s.kind == CONSUMER);
    assert_eq!(update.attr("update_id"), Some("9101"));
    assert_eq!(update.attr("outcome"), Some("handled"));
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
    drop(worker);

    // The span filter is a real filter: `off` exports nothing, whatever `RUST_LOG` says.
    let quiet = OtlpReceiver::start().await;
    let off = quiet.endpoint();
    let silent = stack
        .worker(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", off.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("RUST_LOG", "info"),
            ("TGPIPE_TRACE_FILTER", "off"),
        ])
        .await;
    assert_eq!(stack.post(&text(9102, 602, "silent")).await, 200);
    stack
        .wait_for("sendMessage", 2, Duration::from_secs(30))
        .await;
    // Five batch delays: spans made for the reply would have been sent by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(silent);
    assert!(quiet.spans().is_empty(), "{:#?}", quiet.spans());
}
