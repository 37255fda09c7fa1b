//! `getUpdates` polling into the dispatcher and into JetStream, against the stand-in
//! and a real nats-server.

use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{Value, json};
use tgpipe::frankenstein::types::Message;
use tgpipe::{Bot, BotError, Dispatcher, Router};
use tgpipe_shared::stream::{StreamSettings, provision_streams};
use tgpipe_shared::{headers as h, publish::Publisher};
use tgpipe_testkit::sink::{Fault, Sink, SinkConfig, SinkHandle};
use tgpipe_testkit::{NatsServer, text_update as update};
use tgpipe_worker::poll::{DispatchSink, JetStreamSink, PollArgs, PollConfig, PollError, poll};

fn config(dp: &Dispatcher) -> PollConfig {
    PollConfig {
        timeout: Duration::from_secs(1),
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        ..PollConfig::new(&dp.used_update_kinds())
    }
}

fn echo() -> Dispatcher {
    let mut r = Router::new("echo");
    r.message(|m: Arc<Message>, bot: Bot| async move {
        bot.send_text(m.chat.id, m.text.as_deref().unwrap_or_default())
            .await?;
        Ok::<_, BotError>(())
    });
    Dispatcher::builder(r).build().unwrap()
}

async fn wait_for(
    sink: &SinkHandle,
    method: &str,
    n: usize,
) -> Vec<tgpipe_testkit::sink::RecordedCall> {
    sink.wait_for_method(method, n, Duration::from_secs(10))
        .await
}

#[tokio::test]
async fn polling_feeds_the_dispatcher_and_confirms_offsets() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let dp = echo();
    sink.push_update(update(10, 5, "one"));
    sink.push_update(update(11, 6, "two"));
    // One garbled answer on the way: backed off and polled again. (A 5xx would be
    // retried inside the client already.)
    sink.push_fault("getUpdates", Fault::malformed());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = config(&dp);
    let sink_dp = DispatchSink::new(dp.clone());
    let task = {
        let bot = bot.clone();
        tokio::spawn(async move {
            poll(&bot, &sink_dp, &cfg, async {
                let _ = stopped.await;
            })
            .await
        })
    };
    let sent = wait_for(&sink, "sendMessage", 2).await;
    assert_eq!(
        sent.iter()
            .map(|c| c.params["text"].clone())
            .collect::<Vec<_>>(),
        [json!("one"), json!("two")]
    );
    // An update queued while the poll waits arrives without waiting for the timeout.
    sink.push_update(update(12, 5, "three"));
    let sent = wait_for(&sink, "sendMessage", 3).await;
    assert_eq!(sent[2].params["text"], json!("three"));
    stop.send(()).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops on shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(
        (stats.updates, stats.offset, stats.errors),
        (3, Some(13), 1)
    );

    let polls: Vec<_> = sink
        .calls()
        .into_iter()
        .filter(|c| c.method == "getUpdates")
        .collect();
    assert_eq!(polls[0].status, 200);
    assert!(polls[0].params.get("offset").is_none());
    assert_eq!(polls[1].params["allowed_updates"], json!(["message"]));
    assert_eq!(polls[1].params["timeout"], json!(1));
    // The last call confirms the offset.
    assert_eq!(polls.last().unwrap().params["offset"], json!(13));
}

#[tokio::test]
async fn polling_stops_when_a_webhook_is_set() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let _: bool = bot
        .call("setWebhook", &json!({"url": "https://h/webhook/123"}))
        .await
        .unwrap();
    let dp = echo();
    let e = poll(
        &bot,
        &DispatchSink::new(dp.clone()),
        &config(&dp),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, PollError::Bot(BotError::Conflict(_))), "{e}");

    // `poll --delete-webhook` clears the way first.
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        poll: PollArgs,
    }
    let args = Cli::parse_from(["w", "--delete-webhook", "--timeout", "0"]).poll;
    sink.push_update(update(30, 5, "after the webhook"));
    let stats = tgpipe_worker::poll::run_poll(&bot, dp.clone(), &args, None, async {
        tokio::time::sleep(Duration::from_millis(500)).await;
    })
    .await
    .unwrap();
    assert_eq!(sink.webhook_url(), "");
    assert_eq!(stats.updates, 1);
    let publish = Cli::parse_from(["w", "--publish"]).poll;
    let e = tgpipe_worker::poll::run_poll(&bot, dp, &publish, None, std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(e, PollError::NoPublisher));
}

#[tokio::test]
async fn polling_publishes_into_jetstream_like_the_ingress() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let settings = StreamSettings::named("TG_UPDATES");
    let js = jetstream::new(client.clone());
    provision_streams(&js, &settings).await.unwrap();
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let updates = [update(20, -55, "g"), update(21, 5, "p")];
    for u in &updates {
        sink.push_update(u.clone());
    }
    let shards = NonZeroU16::new(64).unwrap();
    let out = JetStreamSink::new(
        Publisher::new(client.clone(), Duration::from_secs(5)),
        shards,
    );
    let dp = echo();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = config(&dp);
    let task = {
        let bot = bot.clone();
        tokio::spawn(async move {
            poll(&bot, &out, &cfg, async {
                let _ = stopped.await;
            })
            .await
        })
    };

    let stream = js.get_stream("TG_UPDATES").await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    for u in &updates {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("published")
            .unwrap()
            .unwrap();
        // Exactly what the ingress would publish for these bytes.
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(&body, u);
        let env =
            tgpipe_shared::Envelope::from_body(bot.id(), m.payload.clone(), shards, 0).unwrap();
        assert_eq!(m.subject.as_str(), env.subject());
        let headers = m.headers.as_ref().unwrap();
        let expected = env.headers();
        for name in [
            h::MSG_ID,
            h::BOT_ID,
            h::UPDATE_TYPE,
            h::CHAT_ID,
            h::USER_ID,
            h::THREAD_ID,
            h::ENVELOPE,
        ] {
            assert_eq!(headers.get(name), expected.get(name), "{name}");
        }
        assert!(headers.get(h::RECEIVED_AT).is_some());
        m.ack().await.unwrap();
    }
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.updates, 2);
    // Fetched again (a poller restarted before confirming): the same message id, so
    // JetStream stores it once.
    let raw = bytes::Bytes::from(updates[0].to_string());
    let (subject, headers, raw) = tgpipe_shared::Envelope::from_body(bot.id(), raw, shards, 0)
        .unwrap()
        .into_message();
    let duplicate = Publisher::new(client.clone(), Duration::from_secs(5))
        .publish(subject, headers, raw)
        .await
        .unwrap();
    assert!(duplicate);
}

#[test]
fn poll_args_parse() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        poll: PollArgs,
    }
    let cli = Cli::try_parse_from([
        "w",
        "--timeout",
        "10",
        "--allowed-updates",
        "message,poll",
        "--publish",
    ])
    .unwrap();
    let cfg = cli.poll.config(&[]);
    assert_eq!(cfg.timeout, Duration::from_secs(10));
    assert_eq!(cfg.allowed_updates, ["message", "poll"]);
    assert!(cli.poll.publish);
    assert!(Cli::try_parse_from(["w", "--timeout", "60"]).is_err());
}
