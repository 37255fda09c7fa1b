//! [`TcpProxy`]: a TCP proxy in front of a real server that can turn into a black hole.
//!
//! It forwards until [`TcpProxy::black_hole`]: from then on its connections stay open,
//! what clients send is read and thrown away, and nothing is answered or closed, as
//! with a pod that moved away behind a stable Service address or a host that died
//! without an RST. [`TcpProxy::forward`] forwards new connections again; the old ones
//! stay black holes, exactly as a moved pod's old connections do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// A proxy on a local port in front of `upstream`; stopped (every connection closed)
/// on `Drop`. It runs on the Tokio runtime it was started on.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

#[derive(Debug)]
struct State {
    upstream: SocketAddr,
    /// New connections are black holes.
    holing: AtomicBool,
    /// How many times the proxy turned into a black hole: a connection accepted when
    /// this was `n` is a black hole once it is more than `n`.
    holes: AtomicU64,
    /// Milliseconds each answer is held back before it is passed on.
    delay_ms: AtomicU64,
    open: AtomicUsize,
}

impl TcpProxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(State {
            upstream,
            holing: AtomicBool::new(false),
            holes: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            open: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept(listener, Arc::clone(&state)));
        TcpProxy {
            addr,
            state,
            accept,
        }
    }

    /// A proxy in front of a `redis://host:port` URL (a [`crate::RedisServer`]'s).
    pub async fn redis(url: &str) -> TcpProxy {
        let upstream = url
            .strip_prefix("redis://")
            .and_then(|a| a.trim_end_matches('/').parse().ok())
            .expect("a redis://<ip>:<port> URL");
        TcpProxy::start(upstream).await
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy as a Redis URL, `redis://127.0.0.1:<port>`.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Turns every open connection and every new one into a black hole.
    pub fn black_hole(&self) {
        self.state.holing.store(true, Ordering::SeqCst);
        self.state.holes.fetch_add(1, Ordering::SeqCst);
    }

    /// Forwards new connections again; those open now stay black holes.
    pub fn forward(&self) {
        self.state.holing.store(false, Ordering::SeqCst);
    }

    /// Holds every answer back `delay` before passing it on (zero: no delay), as a slow
    /// server that still answers.
    pub fn delay_answers(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// How many client connections are open (black holes included).
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks: aborting it closes them all.
        self.accept.abort();
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let born = state.holes.load(Ordering::SeqCst);
                let holing = state.holing.load(Ordering::SeqCst);
                connections.spawn(connection(client, Arc::clone(&state), born, holing));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Counts a connection open while it lives.
struct Open(Arc<State>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(client: TcpStream, state: Arc<State>, born: u64, holing: bool) {
    state.open.fetch_add(1, Ordering::SeqCst);
    let _open = Open(Arc::clone(&state));
    let (from_client, to_client) = client.into_split();
    if holing {
        // Kept (not dropped) so that the client's socket stays open.
        let _to_client = to_client;
        swallow(from_client).await;
        return;
    }
    let Ok(server) = TcpStream::connect(state.upstream).await else {
        return;
    };
    let (from_server, to_server) = server.into_split();
    let holed = || state.holes.load(Ordering::SeqCst) > born;
    tokio::select! {
        () = requests(from_client, to_server, &holed) => {}
        () = answers(from_server, to_client, &state, &holed) => {}
    }
}

/// Passes what the client sends on to the server, or throws it away once the connection
/// is a black hole; ends when the client closes.
async fn requests(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, holed: &impl Fn() -> bool) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !holed() && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Passes the server's answers on, each `delay` after it came (a slower server, not a
/// narrower one), or throws them away once the connection is a black hole. A server
/// that closes a black-holed connection does not close the client's: nothing ever
/// comes back.
async fn answers(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    state: &State,
    holed: &impl Fn() -> bool,
) {
    let (due, mut next) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) if holed() => std::future::pending().await,
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let delay = Duration::from_millis(state.delay_ms.load(Ordering::SeqCst));
            if due
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                return;
            }
        }
    };
    let write = async move {
        while let Some((at, bytes)) = next.recv().await {
            tokio::time::sleep_until(at).await;
            if !holed() && to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(read, write);
}

/// Reads and throws away what a black-holed client sends, until it closes.
async fn swallow(mut from: OwnedReadHalf) {
    let mut buf = vec![0; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server: the simplest upstream to tell forwarded from swallowed bytes.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream) -> bool {
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        matches!(
            tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        )
    }

    #[tokio::test]
    async fn a_black_hole_keeps_old_connections_silent_and_open_after_forwarding_resumes() {
        let proxy = TcpProxy::start(echo().await).await;
        let mut old = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut old).await, "forwards");

        proxy.black_hole();
        assert!(
            !round_trip(&mut old).await,
            "an open connection goes silent"
        );
        let mut during = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(!round_trip(&mut during).await, "a new one is silent too");

        proxy.forward();
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            round_trip(&mut new).await,
            "new connections are forwarded again"
        );
        assert!(!round_trip(&mut old).await, "the old ones stay black holes");
        assert!(!round_trip(&mut during).await);
        assert_eq!(proxy.open_connections(), 3, "nothing was closed");

        drop(old);
        crate::eventually(Duration::from_secs(5), "a closed client is let go", || {
            std::future::ready(proxy.open_connections() == 2)
        })
        .await;
    }

    #[tokio::test]
    async fn delayed_answers_still_arrive() {
        let proxy = TcpProxy::start(echo().await).await;
        proxy.delay_answers(Duration::from_millis(100));
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let started = std::time::Instant::now();
        assert!(round_trip(&mut s).await);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
