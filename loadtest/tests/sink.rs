//! The Bot API stand-in, over HTTP, as a client would see it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tgpipe_testkit::sink::{Sink, SinkConfig, SinkHandle};

const TOKEN: &str = "123456:TEST-token_secret";

async fn sink(config: SinkConfig) -> SinkHandle {
    Sink::start(config).await.expect("stand-in starts")
}

async fn post_json(s: &SinkHandle, method: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/bot{TOKEN}/{method}", s.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn send_message_returns_a_real_message_and_is_recorded() {
    let s = sink(SinkConfig::default()).await;
    let (status, body) =
        post_json(&s, "sendMessage", json!({"chat_id": 42, "text": "hello"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], json!(true));
    let m = &body["result"];
    assert_eq!(
        (
            m["chat"]["id"].clone(),
            m["chat"]["type"].clone(),
            m["text"].clone()
        ),
        (json!(42), json!("private"), json!("hello"))
    );
    assert_eq!(m["message_id"], json!(1));
    assert_eq!(m["from"]["is_bot"], json!(true));
    assert!(m["date"].as_u64().unwrap() > 1_600_000_000);
    // Ids grow per chat.
    let (_, again) = post_json(&s, "sendMessage", json!({"chat_id": 42, "text": "again"})).await;
    assert_eq!(again["result"]["message_id"], json!(2));
    let (_, other) = post_json(
        &s,
        "sendMessage",
        json!({"chat_id": -100500, "text": "group"}),
    )
    .await;
    assert_eq!(
        (
            other["result"]["message_id"].clone(),
            other["result"]["chat"]["type"].clone()
        ),
        (json!(1), json!("group"))
    );
    let calls = s.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(
        (calls[0].bot_id, calls[0].method.as_str(), calls[0].status),
        (Some(123456), "sendMessage", 200)
    );
    assert_eq!(calls[0].params["text"], json!("hello"));
    // The token's secret part is never kept.
    assert!(!serde_json::to_string(&calls).unwrap().contains("secret"));
}

#[tokio::test]
async fn get_me_is_a_full_user() {
    let s = sink(SinkConfig {
        bot_username: "my_bot".into(),
        ..Default::default()
    })
    .await;
    let (status, body) = post_json(&s, "getMe", json!({})).await;
    assert_eq!(status, 200);
    let me = &body["result"];
    assert_eq!(
        (
            me["id"].clone(),
            me["is_bot"].clone(),
            me["username"].clone()
        ),
        (json!(123456), json!(true), json!("my_bot"))
    );
    for field in [
        "first_name",
        "can_join_groups",
        "can_read_all_group_messages",
        "supports_inline_queries",
    ] {
        assert!(me.get(field).is_some(), "{field}");
    }
}

#[tokio::test]
async fn urlencoded_query_and_multipart_bodies_are_understood() {
    let s = sink(SinkConfig::default()).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/bot{TOKEN}/sendMessage", s.url()))
        .form(&[("chat_id", "7"), ("text", "form body")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!(
            "{}/bot{TOKEN}/sendMessage?chat_id=8&text=query%20string",
            s.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cert = reqwest::multipart::Part::bytes(b"-----BEGIN CERTIFICATE-----\nabc\n".to_vec())
        .file_name("cert.pem")
        .mime_str("application/x-pem-file")
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .text("url", "https://bot.example.com/webhook/123456")
        .text("secret_token", "abc_DEF-1")
        .text("allowed_updates", r#"["message","callback_query"]"#)
        .part("certificate", cert);
    let r = client
        .post(format!("{}/bot{TOKEN}/setWebhook", s.url()))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let calls = s.calls();
    assert_eq!(calls[0].params["text"], json!("form body"));
    assert_eq!(calls[1].params["text"], json!("query string"));
    assert_eq!(calls[2].files.len(), 1);
    assert_eq!(calls[2].files[0].field, "certificate");
    assert_eq!(calls[2].files[0].file_name.as_deref(), Some("cert.pem"));
    assert_eq!(
        calls[2].files[0].size,
        "-----BEGIN CERTIFICATE-----\nabc\n".len()
    );
    let (_, info) = post_json(&s, "getWebhookInfo", json!({})).await;
    let info = &info["result"];
    assert_eq!(info["url"], json!("https://bot.example.com/webhook/123456"));
    assert_eq!(info["has_custom_certificate"], json!(true));
    assert_eq!(
        info["allowed_updates"],
        json!(["message", "callback_query"])
    );
    assert_eq!(info["max_connections"], json!(40));
    // While a webhook is set, getUpdates is refused, as Telegram does.
    let (status, _) = post_json(&s, "getUpdates", json!({})).await;
    assert_eq!(status, 409);
    post_json(&s, "deleteWebhook", json!({})).await;
    let (_, info) = post_json(&s, "getWebhookInfo", json!({})).await;
    assert_eq!(info["result"]["url"], json!(""));
}

#[tokio::test]
async fn get_updates_serves_queued_updates_and_confirms_by_offset() {
    let s = sink(SinkConfig::default()).await;
    s.push_update(json!({"update_id": 10, "message": {"text": "a"}}));
    s.push_update(json!({"update_id": 11, "message": {"text": "b"}}));
    let (_, got) = post_json(&s, "getUpdates", json!({"offset": 0})).await;
    assert_eq!(got["result"].as_array().unwrap().len(), 2);
    let (_, got) = post_json(&s, "getUpdates", json!({"offset": 11})).await;
    assert_eq!(
        got["result"],
        json!([{"update_id": 11, "message": {"text": "b"}}])
    );
    let (_, got) = post_json(&s, "getUpdates", json!({"offset": 12})).await;
    assert_eq!(got["result"], json!([]));
}

#[tokio::test]
async fn errors_look_like_telegrams() {
    let s = sink(SinkConfig {
        max_body: 1024,
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::new();
    let (status, body) = post_json(&s, "noSuchMethod", json!({})).await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"ok": false, "error_code": 404, "description": "Not Found"})
        )
    );
    let (status, body) = post_json(&s, "sendMessage", json!({"chat_id": 1})).await;
    assert_eq!(
        (status, body["description"].clone()),
        (400, json!("Bad Request: message text is empty"))
    );
    let (status, _) = post_json(&s, "sendMessage", json!({"text": "x"})).await;
    assert_eq!(status, 400);
    let (status, _) = post_json(
        &s,
        "sendMessage",
        json!({"chat_id": 1, "text": "x".repeat(4097)}),
    )
    .await;
    assert!(status == 400 || status == 413);
    // Malformed, non-object and oversized bodies.
    let r = client
        .post(format!("{}/bot{TOKEN}/sendMessage", s.url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client
        .post(format!("{}/bot{TOKEN}/sendMessage", s.url()))
        .body("[1,2]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client
        .post(format!("{}/bot{TOKEN}/sendMessage", s.url()))
        .body("x".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Bad tokens and paths.
    let r = client
        .post(format!("{}/botnot-a-token/getMe", s.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{}/{TOKEN}/getMe", s.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(s.stats().by_status.get(&401), Some(&1));
}

#[tokio::test]
async fn faults_are_injected_on_request() {
    let s = sink(SinkConfig {
        every_429: Some(3),
        retry_after: 7,
        ..Default::default()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, body) = post_json(&s, "sendMessage", json!({"chat_id": 1, "text": "x"})).await;
        if status == 429 {
            assert_eq!(body["parameters"]["retry_after"], json!(7));
            assert_eq!(
                body["description"],
                json!("Too Many Requests: retry after 7")
            );
        }
        statuses.push(status);
    }
    assert_eq!(statuses, vec![200, 200, 429, 200, 200, 429]);

    let s = sink(SinkConfig {
        error_rate: 1.0,
        ..Default::default()
    })
    .await;
    assert_eq!(post_json(&s, "getMe", json!({})).await.0, 500);

    let s = sink(SinkConfig {
        migrate_chat: Some(-4321),
        ..Default::default()
    })
    .await;
    let (status, body) = post_json(&s, "sendMessage", json!({"chat_id": -4321, "text": "x"})).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["parameters"]["migrate_to_chat_id"],
        json!(-1_000_000_004_321i64)
    );
    assert_eq!(
        post_json(
            &s,
            "sendMessage",
            json!({"chat_id": -1_000_000_004_321i64, "text": "x"})
        )
        .await
        .0,
        200
    );

    let s = sink(SinkConfig {
        latency: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let started = Instant::now();
    post_json(&s, "getMe", json!({})).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn control_api_and_waiting_for_calls() {
    let s = sink(SinkConfig::default()).await;
    let url = s.url();
    let waiter = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for i in 0..3 {
            client
                .post(format!("{url}/bot{TOKEN}/sendMessage"))
                .json(&json!({"chat_id": 1, "text": format!("m{i}")}))
                .send()
                .await
                .unwrap();
        }
    });
    let calls = s.wait_for_calls(3, Duration::from_secs(10)).await;
    assert_eq!(calls.len(), 3);
    waiter.await.unwrap();
    let client = reqwest::Client::new();
    let since: Vec<Value> = client
        .get(format!("{}/_sink/calls?since=1", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(since.len(), 2);
    assert_eq!(since[0]["params"]["text"], json!("m1"));
    let stats: Value = client
        .get(format!("{}/_sink/stats", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["by_method"]["sendMessage"], json!(3));
    let queued: Value = client
        .post(format!("{}/_sink/updates", s.url()))
        .json(&json!([{"update_id": 1}]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(queued["queued"], json!(1));
    assert_eq!(
        client
            .post(format!("{}/_sink/updates", s.url()))
            .body("nope")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        client
            .post(format!("{}/_sink/reset", s.url()))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert!(s.calls().is_empty());
    // A wait that cannot be met returns what there is at the deadline.
    assert!(
        s.wait_for_calls(1, Duration::from_millis(200))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn queued_faults_answer_exactly_the_calls_they_are_for() {
    use tgpipe_testkit::sink::Fault;
    let s = sink(SinkConfig::default()).await;
    s.push_fault("sendMessage", Fault::retry_after(4));
    s.push_fault("sendmessage", Fault::migrate(-1009));
    s.push_fault("*", Fault::forbidden());
    assert_eq!(s.pending_faults(), 3);
    let msg = json!({"chat_id": 1, "text": "x"});
    let (status, body) = post_json(&s, "sendMessage", msg.clone()).await;
    assert_eq!(
        (status, &body["parameters"]["retry_after"]),
        (429, &json!(4))
    );
    let (status, body) = post_json(&s, "sendMessage", msg.clone()).await;
    assert_eq!(
        (status, &body["parameters"]["migrate_to_chat_id"]),
        (400, &json!(-1009))
    );
    let (status, body) = post_json(&s, "getMe", json!({})).await;
    assert_eq!((status, &body["error_code"]), (403, &json!(403)));
    let (status, _) = post_json(&s, "sendMessage", msg.clone()).await;
    assert_eq!(status, 200);

    // Through the control API: a slow answer, then a body that is not JSON.
    let r = reqwest::Client::new()
        .post(format!("{}/_sink/faults", s.url()))
        .json(&json!([
            {"method": "getMe", "fault": {"kind": "slow", "ms": 300}},
            {"method": "getMe", "fault": {"kind": "malformed", "status": 502, "body": "<html>"}}
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    let (status, _) = post_json(&s, "getMe", json!({})).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let r = reqwest::Client::new()
        .post(format!("{}/bot{TOKEN}/getMe", s.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.text().await.unwrap(), "<html>");
    assert_eq!(s.pending_faults(), 0);
    assert_eq!(s.calls().len(), 6);
}

#[tokio::test]
async fn get_updates_long_polls_until_an_update_is_queued() {
    let s = sink(SinkConfig::default()).await;
    let started = Instant::now();
    let (_, body) = post_json(&s, "getUpdates", json!({"timeout": 1})).await;
    assert_eq!(body["result"], json!([]));
    assert!(started.elapsed() >= Duration::from_millis(900));
    let url = s.url();
    let waiting = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/bot{TOKEN}/getUpdates"))
            .json(&json!({"timeout": 10}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    s.push_update(json!({"update_id": 5, "message": {"message_id": 1, "date": 0, "chat": {"id": 1, "type": "private"}}}));
    let body = waiting.await.unwrap();
    assert_eq!(body["result"][0]["update_id"], json!(5));
    assert!(started.elapsed() < Duration::from_secs(2));
}
