//! A large bot registry with the real binaries: a fresh `tgpipe-ingress` and a fresh
//! `tgpipe-example-bot` worker serve the last bot added within 30 s, and neither
//! restarts its registry watch on the way.
//!
//! The watch used to call itself stalled when its first replay had not caught up 300 ms
//! after it started, and to replay again from zero: with 100,000 records an idle pod got
//! there after a restart, a busy one not at all (404 at the ingress, "no token" at the
//! workers). Timed: each test fills both buckets first, then times the start.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tgpipe_shared::BotId;
use tgpipe_shared::registry::{
    self, BotRecord, BotToken, Registry, RegistrySettings, StoredRecord, WebhookRecord,
};
use tgpipe_testkit::sink::{Sink, SinkConfig};
use tgpipe_testkit::{NatsServer, RedisServer, free_port};

/// The ids of the bots: `FIRST + 1 ..= FIRST + n`.
const FIRST: u64 = 1_000_000;
const SECRET: &str = "a-webhook-secret";
/// What a watch logs when it restarts; never to appear.
const STALLED: &str = "bot registry watch stalled";

/// Bot `id`'s record: a copy of `template` (the secret's digest is computed once; in a
/// debug build 600,000 SHA-256s take longer than the writes).
fn record(template: &BotRecord, id: u64) -> BotRecord {
    let mut record = template.clone();
    record.id = BotId(id);
    record.token = Some(BotToken::new(format!("{id}:registry-scale-token")));
    record
}

/// Writes `n` records to both buckets, as `bots add` would: the two buckets at once,
/// 4000 writes in flight each.
async fn fill(reg: &Registry, n: u64) {
    let started = Instant::now();
    let template = BotRecord::new(BotId(FIRST), SECRET);
    let write = |store: async_nats::jetstream::kv::Store, hooks: bool| {
        let template = template.clone();
        async move {
            let ids: Vec<u64> = (FIRST + 1..=FIRST + n).collect();
            for chunk in ids.chunks(4000) {
                let puts = chunk.iter().map(|id| {
                    let r = record(&template, *id);
                    let value = if hooks {
                        WebhookRecord::of(&r, None).to_json()
                    } else {
                        r.to_json()
                    };
                    store.put(registry::key(BotId(*id)), value)
                });
                futures::future::try_join_all(puts).await.unwrap();
            }
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(write(reg.bots().clone(), false)),
        tokio::spawn(write(reg.webhooks().clone(), true)),
    );
    a.unwrap();
    b.unwrap();
    eprintln!(
        "{n} records written to both buckets in {:?}",
        started.elapsed()
    );
}

/// A child process that is killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(bin: &Path, env: &[(&str, String)], log: &Path) -> Process {
    let out = std::fs::File::create(log).unwrap();
    Process(
        Command::new(bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display())),
    )
}

/// Starts both binaries on a registry of `n` bots (with `busy` processes spinning on
/// the cores meanwhile) and returns how long until the last bot's update was answered.
async fn serve_the_last_of(n: u64, busy: usize) -> Duration {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let sink = Sink::start(SinkConfig::default()).await.expect("stand-in");
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let reg = Registry::open(&js, &RegistrySettings::default(), 1, true)
        .await
        .unwrap();
    fill(&reg, n).await;
    let logs = tempfile::tempdir().unwrap();
    // Other processes keep the cores busy (a rollout, a noisy neighbour).
    let _spinners: Vec<Process> = (0..busy)
        .map(|_| {
            Process(
                Command::new("yes")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("spawn yes"),
            )
        })
        .collect();

    let (web, ops, worker_ops) = (free_port(), free_port(), free_port());
    let started = Instant::now();
    let ingress_log = logs.path().join("ingress.log");
    let _ingress = spawn(
        &tgpipe_testkit::workspace_bin("tgpipe-ingress", "tgpipe-ingress"),
        &[
            ("NATS_URL", nats.url()),
            ("TGPIPE_ALLOWED_CIDRS", "any".into()),
            ("TGPIPE_LISTEN", format!("127.0.0.1:{web}")),
            ("TGPIPE_OPS_LISTEN", format!("127.0.0.1:{ops}")),
            ("RUST_LOG", "info".into()),
        ],
        &ingress_log,
    );
    let worker_log = logs.path().join("worker.log");
    let _worker = spawn(
        &tgpipe_testkit::workspace_bin("tgpipe-example-bot", "tgpipe-example-bot"),
        &[
            ("NATS_URL", nats.url()),
            ("REDIS_URL", redis.url()),
            ("TGPIPE_API_URL", sink.url()),
            ("TGPIPE_LISTEN", format!("127.0.0.1:{worker_ops}")),
            ("TGPIPE_RATE_LIMITS", "off".into()),
            ("TGPIPE_RETRY_DELAY", "100ms".into()),
            ("RUST_LOG", "info".into()),
        ],
        &worker_log,
    );

    let last = FIRST + n;
    let http = reqwest::Client::new();
    let update = json!({"update_id": 1, "message": {"message_id": 1, "date": 0,
        "chat": {"id": 77, "type": "private"}, "from": {"id": 77, "is_bot": false, "first_name": "A"},
        "text": "the last bot"}});
    let logs_of = || {
        format!(
            "ingress:\n{}\nworker:\n{}",
            tail(&ingress_log),
            tail(&worker_log)
        )
    };
    // 404 until the ingress has the bot, then 200 once the update is stored.
    let mut status = 0;
    while status != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the ingress answered {status} for bot {last} after 30 s\n{}",
            logs_of()
        );
        status = http
            .post(format!("http://127.0.0.1:{web}/webhook/{last}"))
            .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
            .header("Content-Type", "application/json")
            .body(update.to_string())
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
        if status != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let accepted = started.elapsed();
    let left = Duration::from_secs(30).saturating_sub(accepted);
    let answered = sink.wait_for_method("sendMessage", 1, left).await;
    let took = started.elapsed();
    assert!(
        answered.iter().any(|c| c.bot_id == Some(last)),
        "no answer for bot {last} within 30 s: {answered:?}\n{}",
        logs_of()
    );
    eprintln!(
        "{n} bots, {busy} busy processes: the ingress took bot {last}'s update after {accepted:?}, the worker answered after {took:?}"
    );
    // A stall found late would restart a watch after the answer: give it the time.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for log in [&ingress_log, &worker_log] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            !text.contains(STALLED),
            "a registry watch restarted:\n{}",
            logs_of()
        );
    }
    took
}

/// The end of a log, for a failure's message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_and_a_worker_serve_the_last_of_300000_registry_bots_within_30_s() {
    serve_the_last_of(300_000, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_and_a_worker_serve_the_last_of_100000_registry_bots_on_busy_cores_within_30_s()
{
    serve_the_last_of(100_000, 2).await;
}
