//! `webhook set / info / delete` against the stand-in, checked on the wire.

use std::sync::Arc;

use serde_json::json;
use tgpipe::frankenstein::types::{CallbackQuery, Message};
use tgpipe::{Bot, BotError, Dispatcher, Router};
use tgpipe_testkit::sink::{Sink, SinkConfig};
use tgpipe_worker::set_webhook::{
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
    let info: tgpipe_worker::set_webhook::WebhookInfo =
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

/// `webhook set` of the example bot's binary, for bot 4242 on `api`, with `env` only.
fn webhook_set_with(api: &str, env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(tgpipe_testkit::workspace_bin(
        "tgpipe-example-bot",
        "tgpipe-example-bot",
    ))
    .args(["webhook", "set", "--bot-id", "4242"])
    .args(["--url", "https://bot.example.com/webhook/4242"])
    .env_clear()
    .env("TGPIPE_BOT_TOKENS", "4242:example-token")
    .env("TGPIPE_API_URL", api)
    .envs(env.iter().copied())
    .output()
    .expect("run the example bot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_refuses_a_malformed_tgpipe_bots_entry_instead_of_skipping_it() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    // The ingress refuses this list at start (entry #1's secret breaks Telegram's rule);
    // `webhook set` used to skip past it and set bot 4242's secret regardless.
    let bad = "77:not a secret!,4242:the_Secret-1";
    for (var, value, setting) in [
        ("TGPIPE_BOTS", bad.to_owned(), "TGPIPE_BOTS (--bots)"),
        (
            "TGPIPE_BOTS",
            "4242:first-one,4242:second-one".to_owned(),
            "TGPIPE_BOTS (--bots)",
        ),
    ] {
        let out = webhook_set_with(&sink.url(), &[(var, &value)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(&format!("{setting}: ")), "{stderr}");
        for secret in ["not a secret", "the_Secret-1", "first-one", "second-one"] {
            assert!(!stderr.contains(secret), "a secret in the error: {stderr}");
        }
    }
    let out = webhook_set_with(&sink.url(), &[("TGPIPE_BOTS", bad)]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("entry #1 (bot 77)"),
        "the bad entry is named"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bots");
    std::fs::write(
        &file,
        format!("# the ingress's list\n{}\n", bad.replace(',', "\n")),
    )
    .unwrap();
    let out = webhook_set_with(&sink.url(), &[("TGPIPE_BOTS_FILE", file.to_str().unwrap())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("TGPIPE_BOTS_FILE (--bots-file): entry #1 (bot 77)"),
        "{stderr}"
    );
    assert!(sink.calls().is_empty(), "refused before calling Telegram");

    // The same list without the bad entry is used as before.
    let out = webhook_set_with(&sink.url(), &[("TGPIPE_BOTS", "4242:the_Secret-1")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = sink.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].params["secret_token"], "the_Secret-1");
}

/// `webhook set --url https://host:8444/...` was sent to Telegram, which posts to 443,
/// 80, 88 and 8443 only: it is refused here, naming the port, before any call.
#[tokio::test]
async fn webhook_set_accepted_ports_telegram_refuses() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let dp = dispatcher();
    let e = run(
        &bot,
        &dp,
        WebhookCommand::Set(set("https://bot.example.com:8444/webhook/123", "abc")),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, WebhookCommandError::BadPort { .. }), "{e}");
    assert!(e.to_string().contains("not 8444"), "{e}");
    assert!(sink.calls().is_empty(), "{:?}", sink.calls());
    for port in [443, 80, 88, 8443] {
        let url = format!("https://bot.example.com:{port}/webhook/123");
        let out = run(&bot, &dp, WebhookCommand::Set(set(&url, "abc")))
            .await
            .unwrap();
        assert!(out.contains(&url), "{out}");
    }
    assert_eq!(sink.calls().len(), 4);
}
