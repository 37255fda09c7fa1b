//! Private `nats-server` (one server or a 3-node cluster) and `redis-server` processes:
//! each on a free port with its own temporary storage, stopped and removed on `Drop`.

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
