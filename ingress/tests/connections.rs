//! The real server's connection handling: the drain on SIGTERM, idle timeouts for HTTP/1
//! and HTTP/2, and the connection cap.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tgpipe_ingress::serve::{ConnectionLimits, ServeOptions, bind, serve_with};
use tgpipe_testkit::{eventually, eventually_some};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(t: &Harness, limits: ConnectionLimits) -> SocketAddr {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = ServeOptions {
        header_read_timeout: Duration::from_secs(5),
        grace: Duration::from_secs(5),
    };
    tokio::spawn(serve_with(
        listener,
        tgpipe_ingress::app(t.state.clone()),
        None,
        options,
        limits,
        std::future::pending(),
    ));
    addr
}

/// Reads until the server closes the connection; the time it took, or `None` if it
/// stayed open for `limit`.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

fn keep_alive_request(body: &str) -> String {
    format!(
        "POST /webhook/{BOT} HTTP/1.1\r\nHost: x\r\nX-Telegram-Bot-Api-Secret-Token: {SECRET}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn idle_http1_keep_alive_connections_are_closed_after_the_idle_timeout() {
    // 4000 idle HTTP/1 connections were all still open after 35 s: the header timeout
    // starts only with a request's first byte.
    let t = harness(&["--allowed-cidrs", "127.0.0.0/8"]).await;
    let limits = ConnectionLimits {
        idle_timeout: Duration::from_millis(700),
        ..ConnectionLimits::default()
    };
    let addr = start(&t, limits).await;
    // One request, then silence on a keep-alive connection.
    let mut used = TcpStream::connect(addr).await.unwrap();
    used.write_all(keep_alive_request(&text_update(1, 1, "a")).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = used.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // And a connection that never sends a byte.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let quiet_since = Instant::now();
    for conn in [&mut used, &mut silent] {
        closed_within(conn, Duration::from_secs(10))
            .await
            .expect("idle connection still open after 10 s");
    }
    let took = quiet_since.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn idle_http2_connections_are_closed_after_the_idle_timeout() {
    let t = harness(&["--allowed-cidrs", "127.0.0.0/8"]).await;
    let limits = ConnectionLimits {
        idle_timeout: Duration::from_millis(700),
        ..ConnectionLimits::default()
    };
    let addr = start(&t, limits).await;
    // An HTTP/2 connection (prior knowledge): the preface and an empty SETTINGS frame.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let took = closed_within(&mut conn, Duration::from_secs(10)).await;
    assert!(
        took.is_some(),
        "idle HTTP/2 connection still open after 10 s"
    );
    // An active HTTP/2 client is served meanwhile.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .post(format!("http://{addr}/webhook/{BOT}"))
        .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
        .body(text_update(2, 1, "h2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_one_closes() {
    let t = harness(&["--allowed-cidrs", "127.0.0.0/8"]).await;
    let limits = ConnectionLimits {
        max_connections: 2,
        ..ConnectionLimits::default()
    };
    let addr = start(&t, limits).await;
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    // Both taken (give the server a moment to accept them).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(keep_alive_request(&text_update(3, 1, "c")).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(
        tokio::time::timeout(Duration::from_millis(700), third.read(&mut buf))
            .await
            .is_err(),
        "a third connection was served over a cap of 2"
    );
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// The real binary, so that the signal handling of `main` is what is tested.
struct Ingress {
    child: Child,
    webhook: SocketAddr,
    ops: SocketAddr,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn local_addr() -> SocketAddr {
    let port = tgpipe_testkit::free_port();
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn start_binary(nats: &str, drain_delay: &str) -> Ingress {
    let (webhook, ops) = (local_addr(), local_addr());
    let child = Command::new(env!("CARGO_BIN_EXE_tgpipe-ingress"))
        .env_clear()
        .env("NATS_URL", nats)
        .env("TGPIPE_LISTEN", webhook.to_string())
        .env("TGPIPE_OPS_LISTEN", ops.to_string())
        .env("TGPIPE_BOTS", format!("{BOT}:{SECRET}"))
        .env("TGPIPE_ALLOWED_CIDRS", "127.0.0.0/8")
        .env("TGPIPE_DRAIN_DELAY", drain_delay)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run tgpipe-ingress");
    Ingress {
        child,
        webhook,
        ops,
    }
}

async fn status(client: &reqwest::Client, url: String) -> Option<u16> {
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test]
async fn on_sigterm_readiness_goes_false_first_and_every_request_sent_during_the_drain_delay_is_answered()
 {
    // The listener used to close at once on SIGTERM: Telegram got "connection refused"
    // until the endpoint left the Service.
    let nats = tgpipe_testkit::NatsServer::start();
    let mut ingress = start_binary(&nats.url(), "3s");
    let ops = reqwest::Client::new();
    let readyz = format!("http://{}/readyz", ingress.ops);
    eventually(Duration::from_secs(20), "the ingress is ready", || async {
        status(&ops, readyz.clone()).await == Some(200)
    })
    .await;
    // Like Telegram: a new connection per request (no pooling), so that the listener,
    // not only an open connection, is what keeps answering.
    let telegram = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("http://{}/webhook/{BOT}", ingress.webhook);
    let post = |id: i64| {
        telegram
            .post(url.clone())
            .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
            .body(text_update(id, id, "drain"))
            .send()
    };
    assert_eq!(post(0).await.unwrap().status(), 200);

    let term = Command::new("kill")
        .args(["-TERM", &ingress.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let signalled = Instant::now();
    eventually(
        Duration::from_secs(1),
        "readiness goes false on SIGTERM",
        || async { status(&ops, readyz.clone()).await == Some(503) },
    )
    .await;
    let mut sent = 0;
    while signalled.elapsed() < Duration::from_millis(2500) {
        sent += 1;
        let answer = post(sent).await;
        assert!(
            matches!(&answer, Ok(r) if r.status() == 200),
            "request {sent}, {:?} after SIGTERM: {answer:?}",
            signalled.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sent > 20, "only {sent} requests during the drain delay");
    // After the drain delay the listener closes and the process exits.
    let code = eventually_some(
        Duration::from_secs(15),
        "the ingress exits after SIGTERM",
        || std::future::ready(ingress.child.try_wait().unwrap()),
    )
    .await;
    assert!(code.success(), "exit status {code}");
    assert!(signalled.elapsed() >= Duration::from_secs(3));
    assert!(TcpStream::connect(ingress.webhook).await.is_err());
}

/// A connection took one of the `TGPIPE_MAX_CONNECTIONS` slots before its source was
/// checked, and any byte kept it: one host outside Telegram's ranges could hold them
/// all (Telegram was then served only once the idle timeout, 60 s, freed a slot). Now a
/// peer outside the allowed ranges is closed at accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_a_disallowed_address_do_not_stop_telegram_from_being_served() {
    // 127.0.0.1 stands for Telegram's ranges, 127.0.0.2 for anyone else.
    let t = harness(&["--allowed-cidrs", "127.0.0.1/32"]).await;
    let limits = ConnectionLimits {
        admit: tgpipe_ingress::client_ip::IpPolicy::new("127.0.0.1/32", "").unwrap(),
        ..ConnectionLimits::default()
    };
    let addr = start(&t, limits).await;
    let from = |ip: [u8; 4]| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((ip, 0))).unwrap();
        socket.connect(addr).await
    };
    let started = Instant::now();
    let mut idle = Vec::with_capacity(5000);
    for _ in 0..5000 {
        if let Ok(conn) = from([127, 0, 0, 2]).await {
            idle.push(conn);
        }
    }
    assert!(idle.len() >= 4097, "more than the cap: {}", idle.len());
    // Telegram is served at once.
    let mut telegram = from([127, 0, 0, 1]).await.unwrap();
    telegram
        .write_all(keep_alive_request(&text_update(9, 1, "from telegram")).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), telegram.read(&mut buf))
        .await
        .expect("served within 5 s")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let took = started.elapsed();
    eprintln!(
        "{} idle connections from 127.0.0.2, then 127.0.0.1 answered, in {took:?}",
        idle.len()
    );
    assert!(
        took < Duration::from_secs(20),
        "{took:?}: it waited for slots"
    );
    // And the others were closed, not held.
    let last = idle.last_mut().unwrap();
    assert!(closed_within(last, Duration::from_secs(2)).await.is_some());
}

/// One address could hold every connection slot (4096) with idle connections: past its
/// own cap, one more from it is closed at accept, and other addresses are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let t = harness(&["--allowed-cidrs", "127.0.0.0/8"]).await;
    let limits = ConnectionLimits {
        admit: tgpipe_ingress::client_ip::IpPolicy::new("127.0.0.0/8", "").unwrap(),
        max_per_ip: 2,
        ..ConnectionLimits::default()
    };
    let addr = start(&t, limits).await;
    let from = |ip: [u8; 4]| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((ip, 0))).unwrap();
        socket.connect(addr).await.unwrap()
    };
    let first = from([127, 0, 0, 2]).await;
    let _second = from([127, 0, 0, 2]).await;
    let mut third = from([127, 0, 0, 2]).await;
    assert!(
        closed_within(&mut third, Duration::from_secs(2))
            .await
            .is_some(),
        "the third connection of one address is closed"
    );
    // Another address is served meanwhile.
    let mut other = from([127, 0, 0, 3]).await;
    other
        .write_all(keep_alive_request(&text_update(11, 1, "other")).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = other.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A connection that closes gives its address's slot back.
    drop(first);
    let again = eventually_some(Duration::from_secs(5), "a slot given back", || async {
        let mut conn = from([127, 0, 0, 2]).await;
        conn.write_all(keep_alive_request(&text_update(12, 1, "again")).as_bytes())
            .await
            .ok()?;
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(1), conn.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        String::from_utf8_lossy(&buf[..n])
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
    let () = again;
}

/// Any byte used to count as activity: an HTTP/2 client sending a PING now and then (a
/// client library's keep-alive does, every 59 s) held its connection, and its slot,
/// forever. PINGs keep the connection alive at the protocol level only.
#[tokio::test]
async fn http2_pings_do_not_keep_an_idle_connection_open() {
    let t = harness(&["--allowed-cidrs", "127.0.0.0/8"]).await;
    let limits = ConnectionLimits {
        idle_timeout: Duration::from_millis(700),
        ..ConnectionLimits::default()
    };
    let addr = start(&t, limits).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let (mut read, mut write) = conn.into_split();
    let pinging = tokio::spawn(async move {
        // A PING every 200 ms: length 8, type 6, no flags, stream 0, 8 bytes of data.
        let ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingpong";
        while write.write_all(ping).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    let closed = loop {
        // The PING acks keep coming while it is open: bounded as a whole.
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Err(_) => break None,
            Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    };
    pinging.abort();
    let took = closed.expect("an HTTP/2 connection sending only PINGs is still open after 5 s");
    assert!(
        took >= Duration::from_millis(500),
        "closed too early: {took:?}"
    );
}
