//! The real server: slow clients, TLS, graceful shutdown.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tgpipe_ingress::serve::{ServeOptions, bind, serve, tls_acceptor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(
    t: &Harness,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: Duration,
    grace: Duration,
) -> Server {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let app = tgpipe_ingress::app(t.state.clone());
    let options = ServeOptions {
        header_read_timeout: header_timeout,
        grace,
    };
    let task = tokio::spawn(serve(listener, app, tls, options, async {
        let _ = rx.await;
    }));
    Server {
        addr,
        stop: Some(tx),
        task,
    }
}

#[tokio::test]
async fn a_client_trickling_headers_is_disconnected() {
    let t = harness(&["--allowed-cidrs", "127.0.0.0/8"]).await;
    let s = start(&t, None, Duration::from_millis(500), Duration::from_secs(5)).await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(b"POST /webhook/1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Never finish the headers: the server must give up on us.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "connection still open long after the header timeout"
    );
}

#[tokio::test]
async fn a_body_that_never_arrives_is_408() {
    let t = harness(&[
        "--allowed-cidrs",
        "127.0.0.0/8",
        "--body-read-timeout",
        "500ms",
    ])
    .await;
    let s = start(&t, None, Duration::from_secs(5), Duration::from_secs(5)).await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /webhook/{BOT} HTTP/1.1\r\nHost: x\r\nX-Telegram-Bot-Api-Secret-Token: {SECRET}\r\nContent-Length: 100\r\n\r\n{{\"update_id\""
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&buf[..n]);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
}

#[tokio::test]
async fn https_with_a_self_signed_certificate() {
    let t = harness(&["--allowed-cidrs", "127.0.0.0/8"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    tgpipe_ingress::cert::write("127.0.0.1", 30, &cert, &key).unwrap();
    let s = start(
        &t,
        Some(tls_acceptor(&cert, &key).unwrap()),
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let response = client
        .post(format!("https://127.0.0.1:{}/webhook/{BOT}", s.addr.port()))
        .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
        .body(text_update(1, 1, "over tls"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(t.stored().await.len(), 1);
    // Plain HTTP to the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", s.addr.port()))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let t = harness(&[
        "--allowed-cidrs",
        "127.0.0.0/8",
        "--body-read-timeout",
        "10s",
    ])
    .await;
    let mut s = start(&t, None, Duration::from_secs(5), Duration::from_secs(10)).await;
    // A request whose body is still arriving when shutdown begins.
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let body = text_update(77, 1, "in flight");
    let head = format!(
        "POST /webhook/{BOT} HTTP/1.1\r\nHost: x\r\nX-Telegram-Bot-Api-Secret-Token: {SECRET}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused once shutdown began.
    assert!(TcpStream::connect(s.addr).await.is_err());
    conn.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    tokio::time::timeout(Duration::from_secs(10), s.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.stored().await.len(), 1);
}
