//! DESIGN.md's HTTP contract, row by row, and every bad input, against a real nats-server.

mod common;

use std::num::NonZeroU16;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use tgpipe_shared::{OrderingKey, Shard, UpdateKind, extract_keys, headers as h};
use tgpipe_testkit::eventually;

#[tokio::test]
async fn stored_bytes_subject_and_headers_are_as_specified() {
    let t = harness(&[]).await;
    // Odd spacing and key order on purpose: the stored body must be these bytes.
    let body = "{ \"update_id\" : 10,\n \"message\":{\"message_id\":5,\"date\":0,\"chat\":{\"type\":\"group\",\"id\":-42},\"from\":{\"id\":7,\"is_bot\":false,\"first_name\":\"A\"},\"text\":\"hi\"} }";
    assert_eq!(t.post(body).await, StatusCode::OK);
    let stored = t.stored().await;
    assert_eq!(stored.len(), 1);
    let m = &stored[0];
    assert_eq!(m.payload.as_ref(), body.as_bytes());
    let shard = Shard::of(OrderingKey::Chat(-42), NonZeroU16::new(64).unwrap());
    assert_eq!(m.subject.as_str(), format!("tg.{BOT}.message.{shard}"));
    assert_eq!(header(m, h::MSG_ID), Some(format!("{BOT}:10").as_str()));
    assert_eq!(header(m, h::BOT_ID), Some(BOT.to_string().as_str()));
    assert_eq!(header(m, h::UPDATE_TYPE), Some("message"));
    assert_eq!(header(m, h::CHAT_ID), Some("-42"));
    assert_eq!(header(m, h::USER_ID), Some("7"));
    let received: u128 = header(m, h::RECEIVED_AT).unwrap().parse().unwrap();
    assert!(received > 1_600_000_000_000);
}

#[tokio::test]
async fn duplicate_update_id_is_200_and_stored_once() {
    let t = harness(&[]).await;
    let body = text_update(5, 1, "once");
    assert_eq!(t.post(body.clone()).await, StatusCode::OK);
    assert_eq!(t.post(body.clone()).await, StatusCode::OK);
    assert_eq!(t.stored().await.len(), 1);
    // The same update_id for another bot is another update.
    assert_eq!(
        t.send(webhook(OTHER_BOT, Some(OTHER_SECRET), body)).await,
        StatusCode::OK
    );
    assert_eq!(t.stored().await.len(), 2);
}

#[tokio::test]
async fn the_whole_corpus_round_trips_byte_for_byte() {
    let t = harness(&[]).await;
    let corpus = tgpipe_testkit::corpus();
    assert_eq!(corpus.len(), 150);
    let mut sent = Vec::new();
    for (i, record) in corpus.iter().enumerate() {
        // The corpus repeats update_ids; give each record its own, changing nothing else.
        let keys = extract_keys(record.as_bytes()).unwrap();
        let old = format!("\"update_id\":{}", keys.update_id);
        assert!(
            record.starts_with(&format!("{{{old}")),
            "record {i} starts with its update_id"
        );
        let body = record.replacen(&old, &format!("\"update_id\":{}", 1000 + i), 1);
        assert_eq!(t.post(body.clone()).await, StatusCode::OK, "record {i}");
        sent.push(body);
    }
    let stored = t.stored().await;
    assert_eq!(stored.len(), sent.len(), "every record stored once");
    let shards = NonZeroU16::new(64).unwrap();
    for (m, body) in stored.iter().zip(&sent) {
        assert_eq!(m.payload.as_ref(), body.as_bytes());
        let keys = extract_keys(body.as_bytes()).unwrap();
        let shard = Shard::of(keys.ordering_key(), shards);
        assert_eq!(
            m.subject.as_str(),
            format!("tg.{BOT}.{}.{shard}", keys.kind)
        );
        assert_eq!(header(m, h::UPDATE_TYPE), Some(keys.kind.as_str()));
        assert_eq!(
            header(m, h::CHAT_ID).map(|c| c.parse::<i64>().unwrap()),
            keys.chat_id
        );
    }
    // The corpus covers every kind, plus the unknown `key`.
    let kinds: std::collections::BTreeSet<String> = stored
        .iter()
        .map(|m| header(m, h::UPDATE_TYPE).unwrap().to_owned())
        .collect();
    for kind in UpdateKind::ALL {
        assert!(kinds.contains(kind.as_str()), "{kind} missing");
    }
    assert!(kinds.contains("key"));
}

#[tokio::test]
async fn the_same_chat_always_lands_on_the_same_shard() {
    let t = harness(&[]).await;
    for i in 0..20 {
        assert_eq!(
            t.post(text_update(100 + i, -1001234, "x")).await,
            StatusCode::OK
        );
    }
    let subjects: std::collections::BTreeSet<String> = t
        .stored()
        .await
        .iter()
        .map(|m| m.subject.to_string())
        .collect();
    assert_eq!(subjects.len(), 1, "{subjects:?}");
}

#[tokio::test]
async fn unknown_update_kinds_are_published_under_their_own_name() {
    let t = harness(&[]).await;
    assert_eq!(
        t.post(r#"{"update_id":1,"key":"value"}"#).await,
        StatusCode::OK
    );
    assert_eq!(
        t.post(r#"{"update_id":2,"hologram":{"chat":{"id":9}}}"#)
            .await,
        StatusCode::OK
    );
    assert_eq!(
        t.post(r#"{"update_id":3,"a.b>*":{}}"#).await,
        StatusCode::OK
    );
    assert_eq!(t.post(r#"{"update_id":4}"#).await, StatusCode::OK);
    let subjects: Vec<String> = t
        .stored()
        .await
        .iter()
        .map(|m| m.subject.to_string())
        .collect();
    let nine = Shard::of(OrderingKey::Chat(9), NonZeroU16::new(64).unwrap());
    assert_eq!(
        subjects,
        vec![
            format!("tg.{BOT}.key.0"),
            format!("tg.{BOT}.hologram.{nine}"),
            format!("tg.{BOT}._invalid.0"),
            format!("tg.{BOT}._none.0"),
        ]
    );
}

#[tokio::test]
async fn secrets_are_checked() {
    let t = harness(&[]).await;
    let body = text_update(1, 1, "x");
    assert_eq!(
        t.send(webhook(BOT, None, body.clone())).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        t.send(webhook(BOT, Some("wrong"), body.clone())).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        t.send(webhook(BOT, Some(""), body.clone())).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        t.send(webhook(BOT, Some(&format!("{SECRET}x")), body.clone()))
            .await,
        StatusCode::UNAUTHORIZED
    );
    // Another bot's secret does not open this bot's webhook.
    assert_eq!(
        t.send(webhook(BOT, Some(OTHER_SECRET), body.clone())).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(t.stored().await.is_empty());
}

#[tokio::test]
async fn unknown_bots_are_404() {
    let t = harness(&[]).await;
    let body = text_update(1, 1, "x");
    assert_eq!(
        t.send(webhook(999, Some(SECRET), body.clone())).await,
        StatusCode::NOT_FOUND
    );
    for path in [
        "/webhook/abc",
        "/webhook/-1",
        "/webhook/0",
        "/webhook/123456789012345678901234",
    ] {
        let req = Request::post(path)
            .header("x-telegram-bot-api-secret-token", SECRET)
            .body(Body::from(body.clone()))
            .unwrap();
        assert_eq!(
            t.send(with_peer(req, TELEGRAM_IP)).await,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let req = Request::post("/webhook").body(Body::from(body)).unwrap();
    assert_eq!(
        t.send(with_peer(req, TELEGRAM_IP)).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bodies_that_are_not_updates_are_400() {
    let t = harness(&[]).await;
    for bad in [
        "",
        "not json",
        "[1,2]",
        "\"update\"",
        "42",
        "null",
        "{",
        r#"{"message":{}}"#,
        r#"{"update_id":"5","message":{}}"#,
        r#"{"update_id":5.5}"#,
        r#"{"update_id":null}"#,
        r#"{"update_id":1}trailing"#,
        "\u{feff}{\"update_id\":1}",
    ] {
        assert_eq!(t.post(bad).await, StatusCode::BAD_REQUEST, "{bad:?}");
    }
    assert_eq!(
        t.post(vec![0xff, 0xfe, 0x00]).await,
        StatusCode::BAD_REQUEST
    );
    assert!(t.stored().await.is_empty());
}

#[tokio::test]
async fn oversized_bodies_are_413_with_or_without_a_length() {
    let t = harness(&["--max-body", "1024"]).await;
    let big = format!(
        r#"{{"update_id":1,"message":{{"text":"{}"}}}}"#,
        "x".repeat(2000)
    );
    assert_eq!(t.post(big.clone()).await, StatusCode::PAYLOAD_TOO_LARGE);
    // Streamed without Content-Length: the limit holds while reading.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = big
        .as_bytes()
        .chunks(100)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let body = Body::from_stream(futures::stream::iter(chunks));
    assert_eq!(
        t.send(webhook(BOT, Some(SECRET), body)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // A lying Content-Length over the limit is refused before reading.
    let mut req = webhook(BOT, Some(SECRET), "{}");
    req.headers_mut()
        .insert("content-length", "99999999".parse().unwrap());
    assert_eq!(t.send(req).await, StatusCode::PAYLOAD_TOO_LARGE);
    // Exactly at the limit is fine.
    let pad = 1024 - text_update(2, 1, "").len();
    assert_eq!(
        t.post(text_update(2, 1, &"y".repeat(pad))).await,
        StatusCode::OK
    );
    assert_eq!(t.stored().await.len(), 1);
}

#[tokio::test]
async fn only_post_is_allowed() {
    let t = harness(&[]).await;
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let req = Request::builder()
            .method(method)
            .uri(format!("/webhook/{BOT}"))
            .header("x-telegram-bot-api-secret-token", SECRET)
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            t.send(with_peer(req, TELEGRAM_IP)).await,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
    }
}

#[tokio::test]
async fn content_type_is_tolerated_as_telegram_does() {
    let t = harness(&[]).await;
    for (i, ct) in [
        None,
        Some("text/plain"),
        Some("application/json; charset=utf-8"),
        Some("garbage"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut b = Request::post(format!("/webhook/{BOT}"))
            .header("x-telegram-bot-api-secret-token", SECRET);
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        let req = with_peer(
            b.body(Body::from(text_update(i as i64, 1, "x"))).unwrap(),
            TELEGRAM_IP,
        );
        assert_eq!(t.send(req).await, StatusCode::OK, "{ct:?}");
    }
}

#[tokio::test]
async fn sources_outside_the_allowed_ranges_are_403() {
    let t = harness(&[]).await;
    let req = with_peer(
        webhook(BOT, Some(SECRET), text_update(1, 1, "x")),
        "8.8.8.8:1234",
    );
    assert_eq!(t.send(req).await, StatusCode::FORBIDDEN);
    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let mut req = with_peer(
        webhook(BOT, Some(SECRET), text_update(2, 1, "x")),
        "8.8.8.8:1234",
    );
    req.headers_mut()
        .insert("x-forwarded-for", "149.154.167.220".parse().unwrap());
    assert_eq!(t.send(req).await, StatusCode::FORBIDDEN);
    // The source check comes first: an outsider learns nothing about bots or secrets.
    let req = with_peer(webhook(999, None, "garbage"), "8.8.8.8:1234");
    assert_eq!(t.send(req).await, StatusCode::FORBIDDEN);
    assert!(t.stored().await.is_empty());
}

#[tokio::test]
async fn trusted_proxies_forward_the_client_address() {
    let t = harness(&["--trusted-proxies", "10.0.0.0/8"]).await;
    let mut req = with_peer(
        webhook(BOT, Some(SECRET), text_update(1, 1, "x")),
        "10.1.2.3:5000",
    );
    req.headers_mut()
        .insert("x-forwarded-for", "149.154.167.220".parse().unwrap());
    assert_eq!(t.send(req).await, StatusCode::OK);
    // A client that prepends Telegram's address is still itself.
    let mut req = with_peer(
        webhook(BOT, Some(SECRET), text_update(2, 1, "x")),
        "10.1.2.3:5000",
    );
    req.headers_mut().insert(
        "x-forwarded-for",
        "149.154.167.220, 6.6.6.6".parse().unwrap(),
    );
    assert_eq!(t.send(req).await, StatusCode::FORBIDDEN);
    let mut req = with_peer(
        webhook(BOT, Some(SECRET), text_update(3, 1, "x")),
        "10.1.2.3:5000",
    );
    req.headers_mut()
        .insert("x-forwarded-for", "garbage".parse().unwrap());
    assert_eq!(t.send(req).await, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let t = harness(&[]).await;
    let get = |path: &str| {
        with_peer(
            Request::get(path).body(Body::empty()).unwrap(),
            "10.0.0.1:1",
        )
    };
    assert_eq!(t.send_ops(get("/healthz")).await, StatusCode::OK);
    assert_eq!(t.send_ops(get("/readyz")).await, StatusCode::OK);
    // Not on the public webhook port.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(t.send(get(path)).await, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(t.post(text_update(1, 1, "x")).await, StatusCode::OK);
    assert_eq!(
        t.send(webhook(BOT, Some("nope"), "{}")).await,
        StatusCode::UNAUTHORIZED
    );
    let response = tgpipe_ingress::ops_app(t.state.clone())
        .oneshot_metrics()
        .await;
    assert!(
        response.contains(&format!(
            "tgpipe_ingress_requests_total{{bot=\"{BOT}\",status=\"200\"}}"
        )),
        "{response}"
    );
    assert!(response.contains(&format!(
        "tgpipe_ingress_requests_total{{bot=\"{BOT}\",status=\"401\"}}"
    )));
    assert!(response.contains("tgpipe_ingress_publish_seconds_bucket"));
    assert!(response.contains("tgpipe_ingress_in_flight"));
    assert!(!response.contains(SECRET));
}

/// `oneshot` for `/metrics` returning the body as text.
trait MetricsExt {
    async fn oneshot_metrics(self) -> String;
}

impl MetricsExt for axum::Router {
    async fn oneshot_metrics(self) -> String {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let req = with_peer(
            Request::get("/metrics").body(Body::empty()).unwrap(),
            "10.0.0.1:1",
        );
        let res = self.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }
}

#[tokio::test]
async fn without_provisioning_a_missing_stream_is_not_ready() {
    let nats = tgpipe_testkit::NatsServer::start();
    let url = nats.url();
    let config = tgpipe_ingress::IngressConfig::from_flags([
        "--bots",
        "1:abc",
        "--nats-url",
        &url,
        "--provision",
        "false",
    ])
    .unwrap();
    let client = config.nats.connect("t").await.unwrap();
    let state = tgpipe_ingress::AppState::new(&config, client.clone());
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(!state.is_ready());
    // Once someone provisions it, the ingress becomes ready.
    let js = async_nats::jetstream::new(client);
    tgpipe_shared::stream::provision_streams(&js, &config.stream)
        .await
        .unwrap();
    eventually(
        std::time::Duration::from_secs(10),
        "the ingress is ready once provisioned",
        || async { state.is_ready() },
    )
    .await;
}
