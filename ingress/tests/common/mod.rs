//! Shared set-up for the ingress's integration tests: a private nats-server, an
//! `AppState` on it, requests as Telegram sends them, and a reader of what got stored.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream::{self, message::StreamMessage};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use tgpipe_ingress::{AppState, IngressConfig, app};
use tgpipe_testkit::{NatsServer, eventually};
use tower::ServiceExt;

pub const BOT: u64 = 123456;
pub const SECRET: &str = "s3cret-Token_1";
pub const OTHER_BOT: u64 = 777;
pub const OTHER_SECRET: &str = "other-secret";
pub const TELEGRAM_IP: &str = "149.154.167.220:443";

pub struct Harness {
    pub nats: NatsServer,
    pub state: AppState,
    pub js: jetstream::Context,
}

/// An ingress on a fresh nats-server with the default checks (Telegram's ranges) plus
/// `extra` flags, once ready.
pub async fn harness(extra: &[&str]) -> Harness {
    let nats = NatsServer::start();
    let bots = format!("{BOT}:{SECRET},{OTHER_BOT}:{OTHER_SECRET}");
    let mut flags = vec!["--bots", &bots, "--nats-url", ""];
    let url = nats.url();
    flags[3] = &url;
    flags.extend_from_slice(extra);
    let config = IngressConfig::from_flags(flags).expect("valid test config");
    let client = config.nats.connect("ingress-test").await.expect("connect");
    let state = AppState::new(&config, client.clone());
    let js = jetstream::new(client);
    let h = Harness { nats, state, js };
    h.wait_ready().await;
    h
}

impl Harness {
    pub async fn wait_ready(&self) {
        eventually(Duration::from_secs(20), "the ingress is ready", || async {
            self.state.is_ready()
        })
        .await;
    }

    pub async fn send(&self, req: Request<Body>) -> StatusCode {
        app(self.state.clone())
            .oneshot(req)
            .await
            .expect("infallible")
            .status()
    }

    /// A request to the operations port's routes (`/healthz`, `/readyz`, `/metrics`).
    pub async fn send_ops(&self, req: Request<Body>) -> StatusCode {
        tgpipe_ingress::ops_app(self.state.clone())
            .oneshot(req)
            .await
            .expect("infallible")
            .status()
    }

    pub async fn post(&self, body: impl Into<Body>) -> StatusCode {
        self.send(webhook(BOT, Some(SECRET), body)).await
    }

    /// Every message in the update stream, in order.
    pub async fn stored(&self) -> Vec<StreamMessage> {
        let stream = self
            .js
            .get_stream("TG_UPDATES")
            .await
            .expect("stream exists");
        let last = stream.get_info().await.expect("info").state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(m) = stream.get_raw_message(seq).await {
                out.push(m);
            }
        }
        out
    }
}

/// A webhook POST as Telegram sends it, from a Telegram address.
pub fn webhook(bot: u64, secret: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::post(format!("/webhook/{bot}")).header("content-type", "application/json");
    if let Some(s) = secret {
        b = b.header("x-telegram-bot-api-secret-token", s);
    }
    with_peer(b.body(body.into()).expect("request"), TELEGRAM_IP)
}

pub fn with_peer(mut req: Request<Body>, peer: &str) -> Request<Body> {
    let peer: SocketAddr = peer.parse().expect("socket address");
    req.extensions_mut().insert(ConnectInfo(peer));
    req
}

/// [`tgpipe_testkit::text_update`] as a request body.
pub fn text_update(update_id: i64, chat: i64, text: &str) -> String {
    tgpipe_testkit::text_update(update_id, chat, text).to_string()
}

pub fn header<'a>(m: &'a StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}
