//! `webhook set / info / delete` against the stand-in, checked on the wire.

use std::sync::Arc;

use serde_json::json;
use tgpipe::frankenstein::types::{CallbackQuery, Message};
use tgpipe::{Bot, BotError, Dispatcher, Router};
use tgpipe_testkit::sink::{Sink, SinkConfig};
use tgpipe_worker::webhook::{
    SetWebhookArgs, WebhookCommand, WebhookCommandError, kinds_of, new_secret_token,
    run_webhook_command,
};

fn dispatcher() -> Dispatcher {
    let mut r = Router::new("r");
    r.message(|_m: Arc<Message>| async {});
    r.callback_query(|_q: Arc<CallbackQuery>| async {});
    Dispatcher::builder(r).build().unwrap()
}

fn set(url: &str, secret: &str) -> SetWebhookArgs {
    SetWebhookArgs {
        url: url.into(),
        secret: Some(secret.into()),
        certificate: None,
        ip_address: None,
        max_connections: None,
        drop_pending_updates: false,
        allowed_updates: None,
    }
}

async fn run(
    bot: &Bot,
    dp: &Dispatcher,
    cmd: WebhookCommand,
) -> Result<String, WebhookCommandError> {
    let mut out = Vec::new();
    run_webhook_command(bot, &dp.used_update_kinds(), cmd, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn set_uploads_the_certificate_as_multipart() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let dp = dispatcher();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    std::fs::write(&cert, pem).unwrap();
    let secret = new_secret_token();
    let args = SetWebhookArgs {
        certificate: Some(cert),
        ip_address: Some("203.0.113.7".into()),
        max_connections: Some(80),
        drop_pending_updates: true,
        ..set("https://bot.example.com/webhook/123", &secret)
    };
    let out = run(&bot, &dp, WebhookCommand::Set(args)).await.unwrap();
    assert!(
        out.contains("webhook set: https://bot.example.com/webhook/123"),
        "{out}"
    );
    assert!(out.contains("certificate:      uploaded"), "{out}");
    assert!(!out.contains(&secret), "the secret is not printed");

    let calls = sink.calls();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.method, "setWebhook");
    assert_eq!(c.files.len(), 1);
    assert_eq!(
        (
            c.files[0].field.as_str(),
            c.files[0].file_name.as_deref(),
            c.files[0].size
        ),
        ("certificate", Some("cert.pem"), pem.len())
    );
    // A form: every parameter is text, nested ones JSON text.
    assert_eq!(
        c.params["url"],
        json!("https://bot.example.com/webhook/123")
    );
    assert_eq!(c.params["secret_token"], json!(secret));
    assert_eq!(c.params["ip_address"], json!("203.0.113.7"));
    assert_eq!(c.params["max_connections"], json!("80"));
    assert_eq!(c.params["drop_pending_updates"], json!("true"));
    let allowed: Vec<String> =
        serde_json::from_str(c.params["allowed_updates"].as_str().unwrap()).unwrap();
    assert_eq!(allowed, ["message", "callback_query"]);

    let out = run(&bot, &dp, WebhookCommand::Info).await.unwrap();
    assert!(
        out.contains("url:              https://bot.example.com/webhook/123"),
        "{out}"
    );
    assert!(out.contains("certificate:      custom (uploaded"), "{out}");
    assert!(out.contains("max connections:  80"), "{out}");
    assert!(
        out.contains("allowed updates:  message, callback_query"),
        "{out}"
    );
    assert!(out.contains("pending updates:  0"), "{out}");
    assert!(out.contains("last error:       none"), "{out}");
    println!("{out}");
}

#[tokio::test]
async fn allowed_updates_are_the_kinds_the_handlers_use_unless_overridden() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let dp = dispatcher();
    run(
        &bot,
        &dp,
        WebhookCommand::Set(set("https://h/webhook/123", "s3cr3t")),
    )
    .await
    .unwrap();
    let c = &sink.calls()[0];
    assert!(c.files.is_empty(), "no certificate: a JSON body");
    assert_eq!(
        c.params["allowed_updates"],
        json!(["message", "callback_query"])
    );
    let info: tgpipe_worker::webhook::WebhookInfo =
        bot.call("getWebhookInfo", &json!({})).await.unwrap();
    assert_eq!(
        kinds_of(&info.allowed_updates.unwrap()),
        dp.used_update_kinds()
    );

    let args = SetWebhookArgs {
        allowed_updates: Some(vec!["message".into(), "chat_member".into()]),
        ..set("https://h/webhook/123", "s3cr3t")
    };
    run(&bot, &dp, WebhookCommand::Set(args)).await.unwrap();
    assert_eq!(
        sink.calls()[2].params["allowed_updates"],
        json!(["message", "chat_member"])
    );
}

#[tokio::test]
async fn delete_only_when_asked_and_errors_are_reported() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let dp = dispatcher();
    run(
        &bot,
        &dp,
        WebhookCommand::Set(set("https://h/webhook/123", "abc")),
    )
    .await
    .unwrap();
    assert_eq!(sink.webhook_url(), "https://h/webhook/123");
    let out = run(
        &bot,
        &dp,
        WebhookCommand::Delete {
            drop_pending_updates: true,
        },
    )
    .await
    .unwrap();
    assert!(out.starts_with("webhook deleted"), "{out}");
    assert_eq!(sink.webhook_url(), "");
    let c = sink.calls().pop().unwrap();
    assert_eq!(
        (c.method.as_str(), &c.params["drop_pending_updates"]),
        ("deleteWebhook", &json!(true))
    );
    let out = run(&bot, &dp, WebhookCommand::Info).await.unwrap();
    assert!(out.contains("(none: no webhook is set"), "{out}");

    // Refused before calling Telegram.
    let n = sink.calls().len();
    let e = run(
        &bot,
        &dp,
        WebhookCommand::Set(set("https://h/webhook/123", "not ok!")),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, WebhookCommandError::BadSecret));
    let args = SetWebhookArgs {
        certificate: Some("/nonexistent/cert.pem".into()),
        ..set("https://h/webhook/123", "abc")
    };
    let e = run(&bot, &dp, WebhookCommand::Set(args)).await.unwrap_err();
    assert!(matches!(e, WebhookCommandError::Certificate { .. }), "{e}");
    assert_eq!(sink.calls().len(), n);
    // Refused by Telegram.
    let e = run(
        &bot,
        &dp,
        WebhookCommand::Set(set("http://h/webhook/123", "abc")),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, WebhookCommandError::Bot(BotError::BadRequest(_))),
        "{e}"
    );
}
