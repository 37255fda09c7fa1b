//! `tgpipe-testkit`: the harness every tgpipe test uses.
//!
//! - a private `nats-server` (JetStream; [`NatsServer`], or a 3-node [`NatsCluster`] on
//!   loopback) or `redis-server` ([`RedisServer`]) per test, on a free port, with its
//!   own temporary storage, stopped and removed on `Drop`;
//! - [`sink`]: the Bot API stand-in, an HTTP server that answers every method like
//!   Telegram, records every call and injects faults;
//! - [`otlp`]: an OTLP/HTTP trace receiver that decodes what the exporters send;
//! - [`eventually`], [`eventually_some`], [`eventually_ok`] (and the blocking
//!   [`eventually_blocking`], [`eventually_some_blocking`]): wait for a condition with a
//!   deadline, and panic naming it;
//! - [`text_update`]: a text message update as Telegram sends it;
//! - [`corpus`]: the fixture corpus of real updates; [`workspace_bin`]: a binary of
//!   another workspace package (the example bot the end-to-end tests run).
//!
//! Tests run against the real servers, never mocks. Each test gets its own process
//! because JetStream streams cannot share subjects and some tests stop and restart the
//! broker. Binaries are found through `TGPIPE_NATS_SERVER` / `TGPIPE_REDIS_SERVER`
//! (set by the project's test command) or on `PATH`. The NATS server must be 2.10 or
//! newer (multi-subject consumer filters).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released: another process could take it in
/// between, which the servers below detect and retry).
///
/// Drawn at random from 20000-32767, below Linux's ephemeral range: the kernel's own
/// `bind(0)` (every listener a test opens on port 0) never hands these out, and a port a
/// test just released (a broker stopped to be restarted on the same port) is unlikely to
/// be drawn by another test meanwhile. The kernel's choice reuses released ports soon,
/// and another test's client then reconnected to the wrong broker.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let seed = std::collections::hash_map::RandomState::new();
    for attempt in 0u64..1000 {
        let mut h = seed.build_hasher();
        h.write_u64(attempt);
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_768) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in 20000-32767");
}

fn binary(env: &str, name: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(name))
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("{what} on port {port} exited early: {status}");
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A private JetStream-enabled `nats-server`.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free port with a fresh store. Panics if it cannot start.
    pub fn start() -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = Self::spawn(port, &store) {
                return NatsServer {
                    child: Some(child),
                    port,
                    store,
                };
            }
        }
        panic!("nats-server did not start (set TGPIPE_NATS_SERVER to a nats-server >= 2.10)");
    }

    fn spawn(port: u16, store: &tempfile::TempDir) -> Option<Child> {
        let mut child = Command::new(binary("TGPIPE_NATS_SERVER", "nats-server"))
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run nats-server (set TGPIPE_NATS_SERVER or put it on PATH)");
        // nats-server accepts connections a moment before JetStream is ready; it logs
        // "Server is ready" once both are, so wait for that line.
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(15)).is_ok()
            && wait_for_port(port, &mut child, "nats-server")
        {
            Some(child)
        } else {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (its store is kept, so [`NatsServer::restart`] brings the same
    /// streams back).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(child) = Self::spawn(self.port, &self.store) {
                self.child = Some(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("nats-server did not restart on port {}", self.port);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private 3-node NATS cluster (JetStream, routes between three local servers), for
/// tests of replication, ownership and failover: streams created on it may have 3
/// replicas, and any node can be killed and restarted with its store.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
}

#[derive(Debug)]
struct ClusterNode {
    name: String,
    port: u16,
    cluster_port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts three nodes and waits until they have elected a JetStream meta leader.
    /// Panics if they cannot.
    pub fn start() -> NatsCluster {
        for _ in 0..3 {
            let mut nodes: Vec<ClusterNode> = (0..3)
                .map(|i| ClusterNode {
                    name: format!("n{i}"),
                    port: free_port(),
                    cluster_port: free_port(),
                    store: tempfile::tempdir().expect("temp dir for a JetStream store"),
                    child: None,
                })
                .collect();
            let routes: Vec<String> = nodes
                .iter()
                .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
                .collect();
            let (tx, rx) = std::sync::mpsc::channel();
            let mut ok = true;
            for node in &mut nodes {
                match node.spawn(&routes, Some(tx.clone())) {
                    Some(child) => node.child = Some(child),
                    None => ok = false,
                }
            }
            if ok && rx.recv_timeout(Duration::from_secs(30)).is_ok() {
                return NatsCluster { nodes };
            }
        }
        panic!("the 3-node NATS cluster did not elect a JetStream leader");
    }

    /// Every node's client URL, comma separated (what `NATS_URL` takes).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The server name of node `i` (`n0`, `n1`, `n2`), as JetStream names a leader.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The node whose server name is `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The node that leads `stream` now: its server name and index.
    pub async fn leader_of(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
    ) -> (String, usize) {
        let leader = js
            .get_stream(stream)
            .await
            .expect("the stream")
            .get_info()
            .await
            .expect("its info")
            .cluster
            .and_then(|c| c.leader)
            .expect("the stream has a leader");
        let node = self.index_of(&leader).expect("a node of this cluster");
        (leader, node)
    }

    /// Kills node `i` (`kill -9`); its store is kept.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its ports with its store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let routes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(child) = self.nodes[i].spawn(&routes, None) {
                self.nodes[i].child = Some(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("cluster node {i} did not restart");
    }
}

impl ClusterNode {
    /// Starts the node; `leader` hears once when any node logs the meta leader's election.
    fn spawn(
        &self,
        routes: &[String],
        leader: Option<std::sync::mpsc::Sender<()>>,
    ) -> Option<Child> {
        let mut child = Command::new(binary("TGPIPE_NATS_SERVER", "nats-server"))
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-n"])
            .arg(&self.name)
            .arg("-sd")
            .arg(self.store.path())
            .args(["--cluster_name", "tgpipe-test", "--cluster"])
            .arg(format!("nats://127.0.0.1:{}", self.cluster_port))
            .arg("--routes")
            .arg(routes.join(","))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run nats-server (set TGPIPE_NATS_SERVER or put it on PATH)");
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = ready_tx.send(());
                }
                if (line.contains("JetStream cluster new metadata leader")
                    || line.contains("Self is new JetStream cluster metadata leader"))
                    && let Some(tx) = &leader
                {
                    let _ = tx.send(());
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(15)).is_ok()
            && wait_for_port(self.port, &mut child, "nats-server")
        {
            Some(child)
        } else {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A private `redis-server` that keeps nothing on disk.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port. Panics if it cannot start.
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = Self::spawn(port, dir.path()) {
                return RedisServer {
                    child: Some(child),
                    port,
                    _dir: dir,
                };
            }
        }
        panic!("redis-server did not start");
    }

    fn spawn(port: u16, dir: &std::path::Path) -> Option<Child> {
        let mut child = Command::new(binary("TGPIPE_REDIS_SERVER", "redis-server"))
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run redis-server (set TGPIPE_REDIS_SERVER or put it on PATH)");
        if wait_for_port(port, &mut child, "redis-server") {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Starts the server again on the same port, empty (it keeps nothing on disk).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(child) = Self::spawn(self.port, self._dir.path()) {
                self.child = Some(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// The client URL, `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Freezes the server (`SIGSTOP`): connections stay open and nothing answers, as
    /// with a hung host or a long failover. [`RedisServer::resume`] thaws it; dropping
    /// a paused server resumes it first so that it can be stopped.
    pub fn pause(&mut self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (`SIGCONT`); it answers what was sent meanwhile.
    pub fn resume(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = Command::new("kill")
            .arg(which)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {which} failed");
    }

    /// Kills the server (its data is lost: it keeps nothing on disk).
    pub fn stop(&mut self) {
        if self.child.is_some() {
            self.resume();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The fixture corpus of real updates, one JSON object per line
/// (`../shared/fixtures/updates/corpus.jsonl` beside the repository; override with
/// `TGPIPE_FIXTURES`).
pub fn corpus() -> Vec<String> {
    let path = std::env::var_os("TGPIPE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/fixtures/updates/corpus.jsonl")
        });
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the fixture corpus {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// How often the `eventually` helpers look again: soon enough that a wait ends within a
/// few milliseconds of its condition, seldom enough that the probe adds little load.
const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` every 20 ms until it holds, or panics after `limit` naming `what`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::{Duration, Instant};
/// let started = Instant::now();
/// tgpipe_testkit::eventually(Duration::from_secs(5), "50 ms passed", || async {
///     started.elapsed() >= Duration::from_millis(50)
/// })
/// .await;
/// # }
/// ```
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_some(limit, what, move || {
        let fut = cond();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `probe` every 20 ms until it gives a value, and returns it; panics after
/// `limit` naming `what`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// let mut polls = 0;
/// let third = tgpipe_testkit::eventually_some(Duration::from_secs(5), "a third poll", || {
///     polls += 1;
///     let n = polls;
///     async move { (n == 3).then_some(n) }
/// })
/// .await;
/// assert_eq!(third, 3);
/// # }
/// ```
pub async fn eventually_some<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let polled = poll_until_ok(limit, move || {
        let fut = probe();
        async move { fut.await.ok_or(()) }
    });
    match polled.await {
        Ok(v) => v,
        Err(()) => panic!("{what}: not within {limit:?}"),
    }
}

/// Polls `probe` every 20 ms until it gives `Ok`, and returns the value; panics after
/// `limit` naming `what` and the last `Err`, which says what the probe saw instead
/// (how many of the updates were answered, which partitions were held).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// let mut answered = 0;
/// let all = tgpipe_testkit::eventually_ok(Duration::from_secs(5), "10 answers", || {
///     answered += 5;
///     let n = answered;
///     async move { if n >= 10 { Ok(n) } else { Err(format!("{n} of 10 answered")) } }
/// })
/// .await;
/// assert_eq!(all, 10);
/// # }
/// ```
pub async fn eventually_ok<T, E, F, Fut>(limit: Duration, what: &str, probe: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    match poll_until_ok(limit, probe).await {
        Ok(v) => v,
        Err(last) => panic!("{what}: not within {limit:?} ({last})"),
    }
}

/// Polls `probe` until it gives `Ok` or `limit` has passed; then the last answer.
async fn poll_until_ok<T, E, F, Fut>(limit: Duration, mut probe: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match probe().await {
            Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
            answer => return answer,
        }
    }
}

/// [`eventually`] for code that is not async (a child process to wait for, a test with
/// no runtime): polls `cond` every 20 ms, blocking the thread, until it holds, or
/// panics after `limit` naming `what`.
///
/// ```
/// use std::time::{Duration, Instant};
/// let started = Instant::now();
/// tgpipe_testkit::eventually_blocking(Duration::from_secs(5), "50 ms passed", || {
///     started.elapsed() >= Duration::from_millis(50)
/// });
/// ```
pub fn eventually_blocking(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    eventually_some_blocking(limit, what, || cond().then_some(()))
}

/// [`eventually_some`] for code that is not async: polls `probe` every 20 ms, blocking
/// the thread, until it gives a value, and returns it; panics after `limit` naming
/// `what`.
///
/// ```
/// use std::process::Command;
/// use std::time::Duration;
/// let mut child = Command::new("true").spawn().unwrap();
/// let status = tgpipe_testkit::eventually_some_blocking(
///     Duration::from_secs(5),
///     "`true` exits",
///     || child.try_wait().unwrap(),
/// );
/// assert!(status.success());
/// ```
pub fn eventually_some_blocking<T>(
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {limit:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// A text message update as Telegram sends it, as JSON (`.to_string()` is a webhook
/// body): update `update_id` carries message `update_id`, `text` from the user Ann, in
/// her private chat `chat` (a private chat's id is its user's), or in the group `chat`
/// when `chat` is negative, as groups' ids are (Ann is then user 7). A leading
/// `/command` carries its `bot_command` entity, as Telegram's do.
///
/// ```
/// let update = tgpipe_testkit::text_update(10, 5, "/start ref-42");
/// assert_eq!(update["message"]["chat"]["type"], "private");
/// assert_eq!(update["message"]["from"]["id"], 5);
/// assert_eq!(update["message"]["entities"][0]["length"], 6);
/// let group = tgpipe_testkit::text_update(11, -55, "hi");
/// assert_eq!(group["message"]["chat"]["type"], "group");
/// ```
pub fn text_update(update_id: i64, chat: i64, text: &str) -> serde_json::Value {
    use serde_json::json;
    let entities = if text.starts_with('/') {
        let len = text.find(' ').unwrap_or(text.len());
        json!([{"type": "bot_command", "offset": 0, "length": len}])
    } else {
        json!([])
    };
    let (chat, user) = if chat < 0 {
        (
            json!({"id": chat, "type": "group", "title": "Rustaceans"}),
            7,
        )
    } else {
        (
            json!({"id": chat, "type": "private", "first_name": "Ann"}),
            chat,
        )
    };
    json!({"update_id": update_id, "message": {
        "message_id": update_id, "date": 1_732_400_000, "chat": chat,
        "from": {"id": user, "is_bot": false, "first_name": "Ann"}, "text": text,
        "entities": entities}})
}

/// The path of a binary built from another package of the workspace (cargo gives a test
/// only its own package's binaries, `CARGO_BIN_EXE_<name>`), beside the test's own
/// executable in the target directory. `cargo test --workspace` and `cargo nextest run
/// --workspace` build it; alone, the package must be built first, and the panic says
/// how.
pub fn workspace_bin(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's executable");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is not built: run `cargo build -p {package}` (or test the whole workspace)",
        bin.display()
    );
    bin
}

pub mod otlp;
pub mod sink;
