//! The whole local stack for the runtime's end-to-end tests: a private nats-server and
//! redis-server, the ingress (in process, on a local port), the Bot API stand-in, and
//! worker processes of `tgpipe-example-bot` that can be killed and restarted.

// Each test file uses a part of it.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use async_nats::jetstream::message::StreamMessage;
use serde_json::{Value, json};
use tgpipe_testkit::sink::{RecordedCall, Sink, SinkConfig, SinkHandle};
use tgpipe_testkit::{
    NatsCluster, NatsServer, RedisServer, eventually, eventually_some_blocking, free_port,
};

pub const BOT: u64 = 4242;
pub const TOKEN: &str = "4242:example-token";
pub const SECRET: &str = "e2e_Secret-1";
/// A second bot, for stacks that serve two ([`Stack::two_bots`]).
pub const BOT_B: u64 = 4343;
pub const TOKEN_B: &str = "4343:example-token-b";
pub const SECRET_B: &str = "e2e_Secret-2";

/// The broker under a stack: one server, or a 3-node cluster whose streams have three
/// replicas.
pub enum Broker {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Broker {
    pub fn url(&self) -> String {
        match self {
            Broker::Single(s) => s.url(),
            Broker::Cluster(c) => c.url(),
        }
    }

    pub fn cluster(&mut self) -> &mut NatsCluster {
        match self {
            Broker::Cluster(c) => c,
            Broker::Single(_) => panic!("not a cluster"),
        }
    }

    fn replicas(&self) -> &'static str {
        match self {
            Broker::Single(_) => "1",
            Broker::Cluster(_) => "3",
        }
    }
}

/// Aggregate state of a lane's partition consumers.
#[derive(Debug, Default)]
pub struct LaneInfo {
    pub consumers: usize,
    pub num_pending: u64,
    pub num_ack_pending: usize,
    pub num_redelivered: usize,
    pub delivered: u64,
}

pub struct Stack {
    pub nats: Broker,
    pub redis: RedisServer,
    pub sink: SinkHandle,
    pub ingress: SocketAddr,
    pub js: jetstream::Context,
    http: reqwest::Client,
    stop_ingress: Option<tokio::sync::oneshot::Sender<()>>,
    /// `TGPIPE_BOT_TOKENS` of its workers.
    tokens: String,
    /// `TGPIPE_BOTS` of its ingress.
    bots: String,
}

impl Stack {
    /// NATS, Redis, the stand-in and a ready ingress.
    pub async fn start() -> Stack {
        Stack::start_with(SinkConfig::default()).await
    }

    /// A stack whose Bot API stand-in answers after `latency`, to keep updates in flight.
    pub async fn with_latency(latency: Duration) -> Stack {
        Stack::start_with(SinkConfig {
            latency,
            ..SinkConfig::default()
        })
        .await
    }

    pub async fn start_with(sink: SinkConfig) -> Stack {
        Stack::start_on(Broker::Single(NatsServer::start()), sink).await
    }

    /// A stack on a 3-node cluster (streams with three replicas), the stand-in answering
    /// after `latency`.
    pub async fn cluster(latency: Duration) -> Stack {
        let cluster = tokio::task::spawn_blocking(NatsCluster::start)
            .await
            .unwrap();
        Stack::start_on(
            Broker::Cluster(cluster),
            SinkConfig {
                latency,
                ..SinkConfig::default()
            },
        )
        .await
    }

    pub async fn start_on(nats: Broker, sink: SinkConfig) -> Stack {
        Stack::start_bots(nats, sink, &[(BOT, SECRET, TOKEN)]).await
    }

    /// A stack (one server) whose ingress and workers serve [`BOT`] and [`BOT_B`].
    pub async fn two_bots(sink: SinkConfig) -> Stack {
        Stack::start_bots(
            Broker::Single(NatsServer::start()),
            sink,
            &[(BOT, SECRET, TOKEN), (BOT_B, SECRET_B, TOKEN_B)],
        )
        .await
    }

    /// A stack serving `bots`: (id, webhook secret, token).
    pub async fn start_bots(nats: Broker, sink: SinkConfig, bots: &[(u64, &str, &str)]) -> Stack {
        let redis = RedisServer::start();
        let sink = Sink::start(sink).await.expect("stand-in");
        let tokens = bots
            .iter()
            .map(|(_, _, token)| *token)
            .collect::<Vec<_>>()
            .join(",");
        let bots = bots
            .iter()
            .map(|(id, secret, _)| format!("{id}:{secret}"))
            .collect::<Vec<_>>()
            .join(",");
        let url = nats.url();
        let config = tgpipe_ingress::IngressConfig::from_flags([
            "--bots",
            &bots,
            "--nats-url",
            &url,
            "--allowed-cidrs",
            "any",
            "--replicas",
            nats.replicas(),
        ])
        .expect("ingress config");
        let client = config.nats.connect("e2e-ingress").await.expect("connect");
        let state = tgpipe_ingress::AppState::new(&config, client.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ingress = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = tgpipe_ingress::app(state.clone());
        tokio::spawn(tgpipe_ingress::serve::serve(
            listener,
            app,
            None,
            tgpipe_ingress::serve::ServeOptions {
                header_read_timeout: Duration::from_secs(10),
                grace: Duration::from_secs(1),
            },
            async move {
                let _ = rx.await;
            },
        ));
        eventually(Duration::from_secs(40), "the ingress is ready", || async {
            state.is_ready()
        })
        .await;
        Stack {
            nats,
            redis,
            sink,
            ingress,
            js: jetstream::new(client),
            http: reqwest::Client::new(),
            stop_ingress: Some(tx),
            tokens,
            bots,
        }
    }

    /// Posts an update the way Telegram does; returns the HTTP status.
    pub async fn post(&self, update: &Value) -> u16 {
        self.post_raw(update.to_string()).await
    }

    pub async fn post_raw(&self, body: String) -> u16 {
        self.post_raw_with_headers(BOT, SECRET, body, &[]).await
    }

    /// Posts an update with extra request headers (a tracing proxy's, for example).
    pub async fn post_with_headers(&self, update: &Value, extra: &[(&str, String)]) -> u16 {
        self.post_raw_with_headers(BOT, SECRET, update.to_string(), extra)
            .await
    }

    /// Posts as Telegram does for another bot, with its secret.
    pub async fn post_as(&self, bot: u64, secret: &str, body: String) -> u16 {
        self.post_raw_with_headers(bot, secret, body, &[]).await
    }

    async fn post_raw_with_headers(
        &self,
        bot: u64,
        secret: &str,
        body: String,
        extra: &[(&str, String)],
    ) -> u16 {
        let mut request = self
            .http
            .post(format!("http://{}/webhook/{bot}", self.ingress))
            .header("X-Telegram-Bot-Api-Secret-Token", secret)
            .header("Content-Type", "application/json");
        for (name, value) in extra {
            request = request.header(*name, value);
        }
        request
            .body(body)
            .send()
            .await
            .expect("ingress answers")
            .status()
            .as_u16()
    }

    /// Starts another ingress, as a process of its own (`tgpipe-ingress`), once ready.
    pub async fn ingress_process(&self) -> IngressProcess {
        let (web, ops) = (free_port(), free_port());
        let child = Command::new(tgpipe_testkit::workspace_bin(
            "tgpipe-ingress",
            "tgpipe-ingress",
        ))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs([
            ("TGPIPE_BOTS", self.bots.clone()),
            ("NATS_URL", self.nats.url()),
            ("TGPIPE_ALLOWED_CIDRS", "any".to_owned()),
            ("TGPIPE_LISTEN", format!("127.0.0.1:{web}")),
            ("TGPIPE_OPS_LISTEN", format!("127.0.0.1:{ops}")),
            ("TGPIPE_STREAM_REPLICAS", self.nats.replicas().to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the ingress");
        let ingress = IngressProcess {
            child,
            web: SocketAddr::from(([127, 0, 0, 1], web)),
            http: reqwest::Client::new(),
        };
        let readyz = format!("http://127.0.0.1:{ops}/readyz");
        eventually(
            Duration::from_secs(30),
            "the ingress process is ready",
            || async { reqwest::get(&readyz).await.is_ok_and(|r| r.status() == 200) },
        )
        .await;
        ingress
    }

    /// The environment of a worker process on this stack.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        [
            ("TGPIPE_BOT_TOKENS", self.tokens.clone()),
            ("TGPIPE_API_URL", self.sink.url()),
            ("NATS_URL", self.nats.url()),
            ("REDIS_URL", self.redis.url()),
            ("TGPIPE_ACK_WAIT", "3s".to_owned()),
            // The stand-in does not limit; the limits have their own tests (bot_api.rs).
            ("TGPIPE_RATE_LIMITS", "off".to_owned()),
            ("TGPIPE_RETRY_DELAY", "100ms".to_owned()),
            // A short handler timeout, so that the drain's default grace (the timeout
            // + 10 s) stays short too.
            ("TGPIPE_HANDLER_TIMEOUT", "5s".to_owned()),
            ("TGPIPE_STREAM_REPLICAS", self.nats.replicas().to_owned()),
            // The webhook watchdog's calls would take faults queued for the tests' own
            // calls; its tests turn it on (webhook_watch.rs).
            ("TGPIPE_WEBHOOK_CHECK_INTERVAL", "0".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Runs a `tgpipe-example-bot` worker with extra environment to its exit (one that
    /// refuses its settings): its status and output.
    pub fn run_to_exit(&self, extra: &[(&str, &str)]) -> std::process::Output {
        self.run_command(&[], extra)
    }

    /// Runs `tgpipe-example-bot <args>` with the stack's worker environment and `extra`
    /// to its exit: its status and output.
    pub fn run_command(&self, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
        Command::new(tgpipe_testkit::workspace_bin(
            "tgpipe-example-bot",
            "tgpipe-example-bot",
        ))
        .envs(self.worker_env())
        .env("TGPIPE_LISTEN", "127.0.0.1:0")
        .envs(extra.iter().map(|(k, v)| (*k, *v)))
        .args(args)
        .output()
        .expect("run the example bot")
    }

    /// Starts a `tgpipe-example-bot` worker with extra environment, once ready.
    pub async fn worker(&self, extra: &[(&str, &str)]) -> Worker {
        self.worker_unset(extra, &[]).await
    }

    /// Starts a worker with extra environment and without the stack's settings named in
    /// `unset` (their defaults apply), once ready.
    pub async fn worker_unset(&self, extra: &[(&str, &str)], unset: &[&str]) -> Worker {
        let ops = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(tgpipe_testkit::workspace_bin(
            "tgpipe-example-bot",
            "tgpipe-example-bot",
        ));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(
                self.worker_env()
                    .into_iter()
                    .filter(|(k, _)| !unset.contains(&k.as_str())),
            )
            .env("TGPIPE_LISTEN", ops.to_string())
            .envs(extra.iter().map(|(k, v)| (*k, *v)))
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().expect("spawn the example bot");
        let w = Worker {
            child: Some(child),
            ops,
        };
        w.wait_ready().await;
        w
    }

    /// The stand-in's calls of `method`.
    pub fn calls_of(&self, method: &str) -> Vec<RecordedCall> {
        self.sink
            .calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }

    /// Waits until the stand-in has at least `n` calls of `method`.
    pub async fn wait_for(&self, method: &str, n: usize, limit: Duration) -> Vec<RecordedCall> {
        self.sink.wait_for_method(method, n, limit).await
    }

    /// The state of a lane's partition consumers, added up.
    pub async fn lane_info(&self, lane: &str) -> LaneInfo {
        use futures::TryStreamExt;
        let stream = self
            .js
            .get_stream("TG_UPDATES")
            .await
            .expect("the update stream");
        let prefix = format!("tgpipe-lane-{lane}-p");
        let mut all = stream.consumers();
        let mut out = LaneInfo::default();
        while let Some(info) = all.try_next().await.expect("consumer list") {
            if !info.name.starts_with(&prefix) {
                continue;
            }
            out.consumers += 1;
            out.num_pending += info.num_pending;
            out.num_ack_pending += info.num_ack_pending;
            out.num_redelivered += info.num_redelivered;
            out.delivered += info.delivered.stream_sequence;
        }
        out
    }

    /// Messages stored in the update stream.
    pub async fn stored(&self) -> u64 {
        self.js
            .get_stream("TG_UPDATES")
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap()
            .state
            .messages
    }

    /// Waits (up to 20 s) until the dead-letter stream holds `n` letters; returns them in
    /// order.
    pub async fn wait_dead_letters(&self, n: u64) -> Vec<StreamMessage> {
        eventually(
            Duration::from_secs(20),
            &format!("{n} dead letters"),
            || async { self.dead_letters().await >= n },
        )
        .await;
        let dlq = self.js.get_stream("TG_DLQ").await.expect("the DLQ");
        let mut letters = Vec::new();
        for seq in 1..=n {
            letters.push(dlq.get_raw_message(seq).await.expect("a dead letter"));
        }
        letters
    }

    /// Messages in the dead-letter stream.
    pub async fn dead_letters(&self) -> u64 {
        match self.js.get_stream("TG_DLQ").await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_ingress.take() {
            let _ = tx.send(());
        }
    }
}

/// An ingress process ([`Stack::ingress_process`]); killed when dropped.
pub struct IngressProcess {
    child: Child,
    pub web: SocketAddr,
    http: reqwest::Client,
}

impl IngressProcess {
    /// Posts an update as Telegram does for [`BOT`]; returns the HTTP status.
    pub async fn post(&self, update: &Value) -> u16 {
        self.http
            .post(format!("http://{}/webhook/{BOT}", self.web))
            .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
            .header("Content-Type", "application/json")
            .body(update.to_string())
            .send()
            .await
            .expect("the ingress answers")
            .status()
            .as_u16()
    }
}

impl Drop for IngressProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which member holds each partition of the default lane now, from the ownership
/// bucket.
pub async fn owners(s: &Stack) -> std::collections::BTreeMap<u16, String> {
    use futures::StreamExt;
    let kv = s.js.get_key_value("tgpipe_groups").await.expect("bucket");
    let mut keys = kv.keys().await.expect("keys");
    let mut out = std::collections::BTreeMap::new();
    while let Some(Ok(key)) = keys.next().await {
        if let Some(p) = key.strip_prefix("TG_UPDATES.default.owners.")
            && let Ok(Some(v)) = kv.get(&key).await
        {
            out.insert(p.parse().unwrap(), String::from_utf8_lossy(&v).into_owned());
        }
    }
    out
}

/// Waits until the partitions are held by the members named `names`, evenly (loads
/// differ by one at most).
pub async fn balanced(s: &Stack, names: &[&str]) -> std::collections::BTreeMap<u16, String> {
    balanced_over(s, names, PARTITIONS).await
}

/// As [`balanced`], for a lane of `partitions` partitions.
pub async fn balanced_over(
    s: &Stack,
    names: &[&str],
    partitions: u16,
) -> std::collections::BTreeMap<u16, String> {
    use std::collections::BTreeSet;
    let what = format!("the partitions are balanced over {names:?}");
    tgpipe_testkit::eventually_ok(Duration::from_secs(30), &what, || async {
        let o = owners(s).await;
        let holders: BTreeSet<&str> = o.values().map(String::as_str).collect();
        let every = names
            .iter()
            .all(|n| holders.iter().any(|h| h.starts_with(&format!("{n}-"))));
        let all = usize::from(partitions);
        let (lo, hi) = (all / names.len(), all.div_ceil(names.len()));
        let even = holders
            .iter()
            .all(|h| (lo..=hi).contains(&o.values().filter(|m| m == h).count()));
        if o.len() == all && every && holders.len() == names.len() && even {
            Ok(o)
        } else {
            Err(format!("{o:?}"))
        }
    })
    .await
}

/// Waits until every partition of the default lane is held, each by one of the members
/// named `names`. Their counts may differ: after a load, the lane's plan puts partitions
/// where the backlog was, not an even count on each pod.
pub async fn held_over(s: &Stack, names: &[&str]) -> std::collections::BTreeMap<u16, String> {
    held_over_of(s, names, PARTITIONS).await
}

/// [`held_over`] for a lane of `partitions` partitions.
pub async fn held_over_of(
    s: &Stack,
    names: &[&str],
    partitions: u16,
) -> std::collections::BTreeMap<u16, String> {
    let what = format!("every partition is held by one of {names:?}");
    tgpipe_testkit::eventually_ok(Duration::from_secs(30), &what, || async {
        let o = owners(s).await;
        let ours = o
            .values()
            .all(|h| names.iter().any(|n| h.starts_with(&format!("{n}-"))));
        if o.len() == usize::from(partitions) && ours {
            Ok(o)
        } else {
            Err(format!("{o:?}"))
        }
    })
    .await
}

/// The value of the first sample of `name` (a metric name with its labels, as the
/// exposition writes it) in a Prometheus text, 0 when absent.
pub fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A worker process.
pub struct Worker {
    child: Option<Child>,
    pub ops: SocketAddr,
}

impl Worker {
    pub async fn wait_ready(&self) {
        let readyz = format!("http://{}/readyz", self.ops);
        eventually(
            Duration::from_secs(30),
            &format!("the worker at {} is ready", self.ops),
            || async { reqwest::get(&readyz).await.is_ok_and(|r| r.status() == 200) },
        )
        .await;
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.ops))
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit (at most `limit`; past it the panic drops the
    /// worker, which kills it).
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let c = self.child.as_mut().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let status = eventually_some_blocking(limit, "the worker stops after SIGTERM", || {
            c.try_wait().unwrap()
        });
        self.child = None;
        status
    }
}

impl Worker {
    /// Sends SIGTERM and returns at once (see [`Worker::wait_exit`]).
    pub fn sigterm(&self) {
        let c = self.child.as_ref().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }

    /// Waits (without blocking the runtime) for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let c = self.child.as_mut().expect("running");
        let status = tgpipe_testkit::eventually_some(limit, "the worker exits", || {
            std::future::ready(c.try_wait().unwrap())
        })
        .await;
        self.child = None;
        status
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn user(id: i64, name: &str) -> Value {
    json!({"id": id, "is_bot": false, "first_name": name})
}

fn private(id: i64, name: &str) -> Value {
    json!({"id": id, "type": "private", "first_name": name})
}

/// A text message from Ann in her private chat (the test kit's builder).
pub use tgpipe_testkit::text_update as text;

/// The partitions of the default lane by default: one per shard.
pub const PARTITIONS: u16 = 64;

/// The partition of a chat with the default 64 shards and partitions.
pub fn partition_of(chat: i64) -> u16 {
    tgpipe_shared::subject::Shard::of(
        tgpipe_shared::OrderingKey::Chat(chat),
        std::num::NonZeroU16::new(64).unwrap(),
    )
    .0 % PARTITIONS
}

/// A press of an inline button under message 77 of a private chat.
pub fn callback(update_id: i64, chat: i64, data: &str) -> Value {
    json!({"update_id": update_id, "callback_query": {
        "id": format!("cq{update_id}"), "from": user(chat, "Ann"), "chat_instance": "ci",
        "data": data, "message": {"message_id": 77, "date": 1_732_400_000,
        "chat": private(chat, "Ann"), "text": "What would you like?",
        "from": {"id": BOT, "is_bot": true, "first_name": "Bot"}}}})
}

/// A user joining a group.
pub fn joined(update_id: i64, group: i64, name: &str) -> Value {
    let joiner = user(99, name);
    json!({"update_id": update_id, "chat_member": {
        "chat": {"id": group, "type": "group", "title": "Rustaceans"},
        "from": joiner, "date": 1_732_400_000,
        "old_chat_member": {"status": "left", "user": joiner},
        "new_chat_member": {"status": "member", "user": joiner}}})
}

/// The `text` parameter of a call.
pub fn text_of(call: &RecordedCall) -> String {
    call.params["text"].as_str().unwrap_or_default().to_owned()
}

/// The `chat_id` parameter of a call.
pub fn chat_of(call: &RecordedCall) -> i64 {
    match &call.params["chat_id"] {
        Value::Number(n) => n.as_i64().unwrap_or_default(),
        Value::String(s) => s.parse().unwrap_or_default(),
        _ => 0,
    }
}

/// A header of a stored message, or "" when absent.
pub fn header(m: &StreamMessage, name: &str) -> String {
    m.headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

// Loads of numbered texts per chat, and what their replies say.

/// The text of update `i` of chat `chat` in a load tagged `tag`.
pub fn msg(tag: &str, chat: i64, i: usize) -> String {
    format!("{tag}{chat}-{i}")
}

/// Replies of a load per chat, in the order the stand-in received them.
pub fn replies(s: &Stack, tag: &str) -> BTreeMap<i64, Vec<RecordedCall>> {
    let mut per_chat: BTreeMap<i64, Vec<RecordedCall>> = BTreeMap::new();
    for call in s.calls_of("sendMessage") {
        if text_of(&call).starts_with(tag) {
            per_chat.entry(chat_of(&call)).or_default().push(call);
        }
    }
    per_chat
}

/// What a load's replies say.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Chats whose replies, repeats collapsed, are not exactly the updates in order.
    pub out_of_order: Vec<i64>,
    /// Updates not answered yet.
    pub missing: usize,
    /// Replies beyond the first of an update (each one right after its first: a repeat of
    /// an update whose pod died after replying, before acknowledging).
    pub duplicates: usize,
}

/// Judges the replies of a load that posted `posted[chat]` updates to each chat.
pub fn judge(s: &Stack, tag: &str, posted: &BTreeMap<i64, usize>) -> Verdict {
    let got = replies(s, tag);
    let mut v = Verdict::default();
    for (&chat, &n) in posted {
        let texts: Vec<String> = got
            .get(&chat)
            .map(|c| c.iter().map(text_of).collect())
            .unwrap_or_default();
        let mut collapsed = texts.clone();
        collapsed.dedup();
        v.duplicates += texts.len() - collapsed.len();
        let want: Vec<String> = (0..n).map(|i| msg(tag, chat, i)).collect();
        if collapsed.len() < want.len() {
            v.missing += want.len() - collapsed.len();
        }
        if collapsed.len() > want.len() || want[..collapsed.len()] != collapsed[..] {
            v.out_of_order.push(chat);
        }
    }
    v
}

/// Waits (up to `limit`) until a load is answered; then checks the order.
pub async fn answered_in_order(
    s: &Stack,
    tag: &str,
    posted: &BTreeMap<i64, usize>,
    limit: Duration,
) -> Verdict {
    tgpipe_testkit::eventually_ok(limit, "the load is answered", || {
        let v = judge(s, tag, posted);
        assert!(
            v.out_of_order.is_empty(),
            "chats answered out of order: {:?}",
            v.out_of_order
        );
        std::future::ready(match v.missing {
            0 => Ok(()),
            missing => Err(format!("{missing} updates not answered")),
        })
    })
    .await;
    // Late repeats would show now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v = judge(s, tag, posted);
    assert!(v.out_of_order.is_empty(), "{v:?}");
    v
}

/// The longest pause between consecutive replies of one chat, over `chats`, counted
/// from `since` (a chat's first reply after it counts from it).
pub fn longest_gap(s: &Stack, tag: &str, chats: &[i64], since: SystemTime) -> Duration {
    let got = replies(s, tag);
    let mut worst = Duration::ZERO;
    for chat in chats {
        let Some(calls) = got.get(chat) else {
            continue;
        };
        let mut last = since;
        for c in calls.iter().filter(|c| c.at >= since) {
            let gap = c.at.duration_since(last).unwrap_or_default();
            if gap > worst {
                worst = gap;
                eprintln!(
                    "chat {chat} (shard {}): {gap:?} before `{}`",
                    tgpipe_shared::subject::Shard::of(
                        tgpipe_shared::OrderingKey::Chat(*chat),
                        std::num::NonZeroU16::new(64).unwrap(),
                    )
                    .0,
                    text_of(c)
                );
            }
            last = c.at;
        }
    }
    worst
}
