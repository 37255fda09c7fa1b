//! The HTTP server: plain or TLS, with read timeouts, an idle timeout, a connection cap
//! and a graceful drain.
//!
//! axum's own `serve` cannot set hyper's header read timeout, which is what stops a
//! slow client from holding a connection open by trickling its headers, so connections
//! are accepted here and handed to hyper directly. hyper has no idle timeout for a
//! keep-alive connection waiting for its next request (the header timeout starts with
//! the first byte) nor for HTTP/2, so each connection's I/O records when bytes last
//! moved and the connection is closed gracefully once it was quiet too long.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::client_ip::IpPolicy;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Limit on receiving a request's headers.
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take after shutdown begins.
    pub grace: Duration,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS acceptor from PEM files (TLS 1.2 and 1.3, as Telegram requires at least 1.2).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, &e))?;
    if certs.is_empty() {
        return Err(pem_err(cert, &"no certificate found"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How connections are limited and wound down, beyond the read timeouts of
/// [`ServeOptions`].
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// After shutdown begins, keep accepting and serving this long before the listener
    /// closes (`TGPIPE_DRAIN_DELAY`): readiness is already false, and Kubernetes needs a
    /// moment to take the endpoint out of the Service. Until then Telegram still connects
    /// here, and a closed port would be a failed delivery.
    pub drain_delay: Duration,
    /// A connection with no bytes in either direction for this long is closed
    /// (`TGPIPE_IDLE_TIMEOUT`), HTTP/1 keep-alive and HTTP/2 alike; a request in flight is
    /// finished first.
    pub idle_timeout: Duration,
    /// Connections served at once (`TGPIPE_MAX_CONNECTIONS`); more wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
    /// Which peers a connection is served for (`TGPIPE_ALLOWED_CIDRS` and
    /// `TGPIPE_TRUSTED_PROXIES`): any other is closed as soon as it is accepted, so that
    /// it never holds one of the `max_connections` slots.
    pub admit: IpPolicy,
    /// Connections served at once for one peer address, trusted proxies excepted
    /// (`TGPIPE_MAX_CONNECTIONS_PER_IP`; 0: no cap): one more is closed at accept.
    pub max_per_ip: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            drain_delay: Duration::ZERO,
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            admit: IpPolicy::allow_any(),
            max_per_ip: 0,
        }
    }
}

/// Streams one HTTP/2 connection may have open at once. Telegram speaks HTTP/1.1 and
/// opens at most 100 connections per bot; this only bounds what one client can make the
/// server hold.
const H2_MAX_CONCURRENT_STREAMS: u32 = 128;

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and
/// gives open connections up to `options.grace` to finish their requests, with the
/// default [`ConnectionLimits`] (no drain delay).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(
        listener,
        app,
        tls,
        options,
        ConnectionLimits::default(),
        shutdown,
    )
    .await;
}

/// Serves `app` on `listener`. When `shutdown` completes, it keeps accepting and serving
/// for `limits.drain_delay`, then closes the listener, asks every connection to finish
/// (HTTP/1 closes after its current response, HTTP/2 sends GOAWAY) and waits up to
/// `options.grace` for them.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    options: ServeOptions,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    let builder = Arc::new(builder);
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let (stop, stopping) = watch::channel(false);
    let per_ip = Arc::new(PerIp::default());
    tokio::pin!(shutdown);
    let mut accept_until: Option<tokio::time::Instant> = None;
    loop {
        let stop_accepting = async {
            match accept_until {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        // The peer is checked before a slot is taken: a slot used to be taken first, so
        // that anyone could hold them all with idle connections.
        let next = async {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) if !limits.admit.admits_peer(peer.ip()) => {
                        metrics::counter!("tgpipe_ingress_connections_refused_total", "reason" => "source").increment(1);
                        tracing::debug!(%peer, "connection from outside the allowed ranges closed");
                        drop(stream);
                    }
                    Ok((stream, peer)) => {
                        let capped =
                            limits.max_per_ip > 0 && !limits.admit.is_trusted_proxy(peer.ip());
                        let Some(held) = (if capped {
                            PerIp::take(&per_ip, peer.ip(), limits.max_per_ip)
                        } else {
                            Some(PerIpSlot::none())
                        }) else {
                            metrics::counter!("tgpipe_ingress_connections_refused_total", "reason" => "per_ip").increment(1);
                            tracing::debug!(%peer, "connection over the per-address cap closed");
                            drop(stream);
                            continue;
                        };
                        let permit = Arc::clone(&permits).acquire_owned().await;
                        return (permit, Ok((stream, peer, held)));
                    }
                    Err(e) => {
                        let permit = Arc::clone(&permits).acquire_owned().await;
                        return (permit, Err(e));
                    }
                }
            }
        };
        let (permit, accepted) = tokio::select! {
            biased;
            () = stop_accepting => break,
            () = &mut shutdown, if accept_until.is_none() => {
                accept_until = Some(tokio::time::Instant::now() + limits.drain_delay);
                tracing::info!(drain_delay = ?limits.drain_delay, "shutdown requested: not ready; still serving until the endpoint is removed");
                continue;
            }
            next = next => next,
        };
        // The semaphore is never closed.
        let Ok(permit) = permit else { break };
        let (stream, peer, held) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small writes (a 200 with no body) must leave at once.
        let _ = stream.set_nodelay(true);
        let service = app_for(&app, peer);
        let builder = Arc::clone(&builder);
        let stopping = stopping.clone();
        let idle = limits.idle_timeout;
        match &tls {
            None => {
                tokio::spawn(async move {
                    serve_connection(stream, &builder, service, idle, stopping, peer).await;
                    drop((permit, held));
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let tls_stream = match tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    serve_connection(tls_stream, &builder, service, idle, stopping, peer).await;
                    drop((permit, held));
                });
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    tracing::info!(grace = ?options.grace, "no longer accepting; draining in-flight requests");
    // Every connection holds a permit until it ends: all of them back means all closed.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(options.grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
}

/// Connections open per peer address (those under the cap only).
#[derive(Default)]
struct PerIp(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection counted against its address until it is dropped.
struct PerIpSlot(Option<(Arc<PerIp>, std::net::IpAddr)>);

impl PerIpSlot {
    fn none() -> PerIpSlot {
        PerIpSlot(None)
    }
}

impl PerIp {
    /// Counts a connection of `ip`, unless it has `max` already.
    fn take(me: &Arc<PerIp>, ip: std::net::IpAddr, max: usize) -> Option<PerIpSlot> {
        let mut open = me.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIpSlot(Some((Arc::clone(me), ip))))
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        if let Some((per_ip, ip)) = self.0.take() {
            let mut open = per_ip.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

/// Serves one connection until it ends: closed gracefully when shutdown reaches the
/// drain phase or when no byte moved for `idle`.
async fn serve_connection<I>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    service: WithPeer,
    idle: Duration,
    mut stopping: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new(io);
    let last = activity.last_activity();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(activity), service);
    tokio::pin!(conn);
    let mut closing = *stopping.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    // A graceful close of an idle connection can wait on the client (HTTP/2 waits for
    // the ack of its GOAWAY ping); a client that never answers is cut off after another
    // idle period.
    let mut cut_off: Option<tokio::time::Instant> = None;
    loop {
        let idle_deadline = last.deadline(idle);
        let cut = async {
            match cut_off {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cut => {
                tracing::debug!(%peer, "idle connection did not close gracefully; dropping it");
                return;
            }
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            changed = stopping.changed(), if !closing => {
                if changed.is_err() || *stopping.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep_until(idle_deadline), if !closing => {
                // Bytes may have moved since the deadline was computed.
                if last.deadline(idle) <= tokio::time::Instant::now() {
                    tracing::debug!(%peer, ?idle, "closing an idle connection");
                    closing = true;
                    cut_off = Some(tokio::time::Instant::now() + idle);
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// When a connection last moved a byte, in milliseconds since it opened.
#[derive(Debug, Clone)]
struct LastActivity {
    opened: tokio::time::Instant,
    millis: Arc<AtomicU64>,
}

impl LastActivity {
    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.store(ms, Ordering::Relaxed);
    }

    fn deadline(&self, idle: Duration) -> tokio::time::Instant {
        self.opened + Duration::from_millis(self.millis.load(Ordering::Relaxed)) + idle
    }
}

/// An I/O stream that records when it was last used (for the idle timeout): for HTTP/1
/// when bytes last moved; for HTTP/2 when the client last sent a frame that carries a
/// request (HEADERS, DATA, CONTINUATION), so that PINGs, SETTINGS and WINDOW_UPDATEs
/// (and the server's answers to them) do not keep an idle connection open.
struct Activity<I> {
    inner: I,
    last: LastActivity,
    frames: Frames,
}

/// What the client's bytes are, as far as the idle timeout cares.
#[derive(Debug)]
enum Frames {
    /// Not known yet: how many bytes of the HTTP/2 preface matched so far.
    Preface(usize),
    /// HTTP/1: every byte counts.
    Http1,
    /// HTTP/2: the frame header being read (bytes so far), then the payload left.
    Http2 {
        header: [u8; 9],
        have: usize,
        payload_left: usize,
    },
}

/// The client connection preface of HTTP/2 (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Frames {
    /// Reads `bytes` sent by the client; whether they carried a request.
    fn read(&mut self, mut bytes: &[u8]) -> bool {
        let mut request = false;
        while !bytes.is_empty() {
            match self {
                Frames::Http1 => return true,
                Frames::Preface(matched) => {
                    let want = &H2_PREFACE[*matched..];
                    let n = want.len().min(bytes.len());
                    if bytes[..n] != want[..n] {
                        *self = Frames::Http1;
                        return true;
                    }
                    *matched += n;
                    bytes = &bytes[n..];
                    if *matched == H2_PREFACE.len() {
                        *self = Frames::Http2 {
                            header: [0; 9],
                            have: 0,
                            payload_left: 0,
                        };
                    }
                }
                Frames::Http2 {
                    header,
                    have,
                    payload_left,
                } => {
                    if *payload_left > 0 {
                        let n = (*payload_left).min(bytes.len());
                        *payload_left -= n;
                        bytes = &bytes[n..];
                        continue;
                    }
                    let n = (9 - *have).min(bytes.len());
                    header[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == 9 {
                        *have = 0;
                        *payload_left = usize::from(header[0]) << 16
                            | usize::from(header[1]) << 8
                            | usize::from(header[2]);
                        // DATA, HEADERS, CONTINUATION.
                        request |= matches!(header[3], 0x0 | 0x1 | 0x9);
                    }
                }
            }
        }
        request
    }

    fn http2(&self) -> bool {
        matches!(self, Frames::Http2 { .. })
    }
}

impl<I> Activity<I> {
    fn new(inner: I) -> Activity<I> {
        Activity {
            inner,
            last: LastActivity {
                opened: tokio::time::Instant::now(),
                millis: Arc::new(AtomicU64::new(0)),
            },
            frames: Frames::Preface(0),
        }
    }

    fn last_activity(&self) -> LastActivity {
        self.last.clone()
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Activity<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let me = &mut *self;
        if buf.filled().len() > before && me.frames.read(&buf.filled()[before..]) {
            me.last.touch();
        }
        result
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Activity<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        // HTTP/2: what the server sends answers the client's frames (a response is
        // finished before an idle close in any case).
        if !self.frames.http2() && matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.last.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if !self.frames.http2() && matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.last.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as a hyper service for one connection, adding the peer's address to each
/// request as `ConnectInfo` (what the webhook's source check reads).
#[derive(Clone)]
struct WithPeer {
    app: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for WithPeer {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = axum::routing::future::RouteFuture<std::convert::Infallible>;

    fn call(&self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        // Cloning a Router is two reference-count increments.
        tower::Service::call(&mut self.app.clone(), req)
    }
}

fn app_for(app: &Router, peer: SocketAddr) -> WithPeer {
    WithPeer {
        app: app.clone(),
        peer,
    }
}

/// Binds the listener (separate so callers can learn the port before serving).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
