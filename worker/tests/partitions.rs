//! Partitioned consumption end to end: a 3-node NATS cluster with R3 streams (or one
//! server where replication is beside the point), the ingress in process, the Bot API
//! stand-in answering after a delay, and several `tgpipe-example-bot` worker processes.
//! Each test checks the promises of `docs/operations.md`: every chat's replies in stream
//! order across pods, nothing lost or dead-lettered, duplicates only from a killed pod's
//! in-flight updates, fast failover, short handovers, no head-of-line blocking.

mod stack;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use stack::{Stack, Worker, balanced, chat_of, gauge, owners, partition_of, text, text_of};
use tgpipe_testkit::sink::RecordedCall;
use tgpipe_testkit::{eventually, eventually_ok};

/// One test at a time in this binary under `cargo test` (nextest runs them one at a time
/// through its `cluster` test group): each runs a cluster and several workers, and
/// measures times that two at once on two cores would stretch.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Worker settings of these tests: a short lease so that failover is quick to observe
/// (the default is 5 s too), and enough chats at once for the bursts.
const WORKER: &[(&str, &str)] = &[("TGPIPE_LEASE_TTL", "5s"), ("TGPIPE_CONCURRENCY", "64")];

/// Worker processes named `names` (their member ids start with the name), started one
/// after the other.
async fn workers(s: &Stack, names: &[&str]) -> Vec<Worker> {
    let mut out = Vec::new();
    for name in names {
        let mut env = WORKER.to_vec();
        env.push(("TGPIPE_MEMBER", name));
        out.push(s.worker(&env).await);
    }
    out
}

/// The text of update `i` of chat `chat` in a burst tagged `tag`.
fn msg(tag: &str, chat: i64, i: usize) -> String {
    format!("{tag}{chat}-{i}")
}

/// Posts `per_chat` texts to each of `chats` the way Telegram does: a chat's next update
/// only after the ingress answered the previous one; chats in parallel.
fn burst(
    s: &Arc<Stack>,
    tag: &'static str,
    first_id: i64,
    chats: std::ops::Range<i64>,
    per_chat: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let n = chats.end - chats.start;
    chats
        .map(|chat| {
            let s = Arc::clone(s);
            tokio::spawn(async move {
                for i in 0..per_chat {
                    let id = first_id + i as i64 * n + (chat % n);
                    let status = s.post(&text(id, chat, &msg(tag, chat, i))).await;
                    assert_eq!(status, 200, "the ingress stores every update");
                }
            })
        })
        .collect()
}

/// Replies of a burst per chat, in the order the stand-in received them.
fn replies(s: &Stack, tag: &str) -> BTreeMap<i64, Vec<RecordedCall>> {
    let mut per_chat: BTreeMap<i64, Vec<RecordedCall>> = BTreeMap::new();
    for call in s.calls_of("sendMessage") {
        if text_of(&call).starts_with(tag) {
            per_chat.entry(chat_of(&call)).or_default().push(call);
        }
    }
    per_chat
}

/// What a burst's replies say.
#[derive(Debug, Default)]
struct Verdict {
    /// Chats whose replies, repeats collapsed, are not exactly the updates in order.
    out_of_order: Vec<i64>,
    /// Updates not answered yet.
    missing: usize,
    /// Replies beyond the first of an update (each one right after its first: a repeat of
    /// an update whose pod died after replying, before acknowledging).
    duplicates: usize,
}

fn judge(s: &Stack, tag: &str, chats: std::ops::Range<i64>, per_chat: usize) -> Verdict {
    let got = replies(s, tag);
    let mut v = Verdict::default();
    for chat in chats {
        let texts: Vec<String> = got
            .get(&chat)
            .map(|c| c.iter().map(text_of).collect())
            .unwrap_or_default();
        let mut collapsed = texts.clone();
        collapsed.dedup();
        v.duplicates += texts.len() - collapsed.len();
        let want: Vec<String> = (0..per_chat).map(|i| msg(tag, chat, i)).collect();
        if collapsed.len() < want.len() {
            v.missing += want.len() - collapsed.len();
        }
        if collapsed.len() > want.len() || want[..collapsed.len()] != collapsed[..] {
            v.out_of_order.push(chat);
        }
    }
    v
}

/// Waits (up to `limit`) until a burst is answered; then checks the order.
async fn answered_in_order(
    s: &Stack,
    tag: &str,
    chats: std::ops::Range<i64>,
    per_chat: usize,
    limit: Duration,
) -> Verdict {
    eventually_ok(limit, "the burst is answered", || {
        let v = judge(s, tag, chats.clone(), per_chat);
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
    let v = judge(s, tag, chats, per_chat);
    assert!(v.out_of_order.is_empty(), "{v:?}");
    v
}

async fn join(posts: Vec<tokio::task::JoinHandle<()>>) {
    for p in posts {
        p.await.unwrap();
    }
}

/// The longest pause between consecutive replies of one chat, over `chats`, counted
/// from `since` (a chat's first reply after it counts from it).
fn longest_gap(s: &Stack, tag: &str, chats: &[i64], since: SystemTime) -> Duration {
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
                    "chat {chat} (partition p{:03}): {gap:?} before `{}`",
                    partition_of(*chat),
                    text_of(c)
                );
            }
            last = c.at;
        }
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_on_a_cluster_answer_every_chat_in_order_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Arc::new(Stack::cluster(Duration::from_millis(50)).await);
    let _w = workers(&s, &["a", "b", "c"]).await;
    balanced(&s, &["a", "b", "c"]).await;
    join(burst(&s, "o", 100_000, 10_000..10_100, 10)).await;
    let v = answered_in_order(&s, "o", 10_000..10_100, 10, Duration::from_secs(60)).await;
    assert_eq!(v.duplicates, 0, "every update answered once");
    assert_eq!(s.dead_letters().await, 0);
    // Streams replicated three times, and each pod had a share.
    let info =
        s.js.get_stream("TG_UPDATES")
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap();
    assert_eq!(info.config.num_replicas, 3);
    for w in &_w {
        let m = w.metrics().await;
        assert!(gauge(&m, "tgpipe_worker_partitions_owned") >= 5.0, "{m}");
        assert!(m.contains("tgpipe_worker_rebalances_total"), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_worker_mid_burst_fails_over_within_10s_in_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Arc::new(Stack::cluster(Duration::from_millis(50)).await);
    let mut workers = workers(&s, &["a", "b", "c"]).await;
    let before = balanced(&s, &["a", "b", "c"]).await;
    let chats = 20_000..20_090;
    let posts = burst(&s, "k", 200_000, chats.clone(), 30);
    // Mid-burst: some chats answered, most of each chat still to come.
    s.wait_for("sendMessage", 300, Duration::from_secs(30))
        .await;
    workers[0].kill9();
    let killed = SystemTime::now();
    join(posts).await;
    let v = answered_in_order(&s, "k", chats.clone(), 30, Duration::from_secs(90)).await;
    // Repeats only of what the dead pod had in flight: at most one per chat it ran.
    let dead: Vec<i64> = chats
        .clone()
        .filter(|c| before[&partition_of(*c)].starts_with("a-"))
        .collect();
    assert!(!dead.is_empty());
    assert!(
        v.duplicates <= dead.len(),
        "{} duplicates for {} chats of the killed pod",
        v.duplicates,
        dead.len()
    );
    let gap = longest_gap(&s, "k", &dead, killed);
    eprintln!("kill -9: longest pause of the dead pod's chats {gap:?}, {v:?}");
    assert!(gap < Duration::from_secs(10), "failover took {gap:?}");
    assert_eq!(s.dead_letters().await, 0);
    balanced(&s, &["b", "c"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_partitions_over_without_waiting_for_the_lease_ttl() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Arc::new(Stack::cluster(Duration::from_millis(50)).await);
    let mut workers = workers(&s, &["a", "b"]).await;
    let before = balanced(&s, &["a", "b"]).await;
    let chats = 30_000..30_060;
    let posts = burst(&s, "t", 300_000, chats.clone(), 40);
    s.wait_for("sendMessage", 200, Duration::from_secs(30))
        .await;
    let stopping = SystemTime::now();
    let status = workers[0].terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    join(posts).await;
    let v = answered_in_order(&s, "t", chats.clone(), 40, Duration::from_secs(90)).await;
    assert_eq!(v.duplicates, 0, "a drain repeats nothing");
    let moved: Vec<i64> = chats
        .filter(|c| before[&partition_of(*c)].starts_with("a-"))
        .collect();
    let gap = longest_gap(&s, "t", &moved, stopping);
    eprintln!("SIGTERM: longest pause of the handed-over chats {gap:?}");
    // The promise is a gap under 2 s (measured 1.3 to 1.8 s here); this test runs debug
    // builds of three nats-servers, two workers and the load on 2 shared cores, where a
    // handover has measured up to 2.1 s, so it fails only past 3 s: a handover that
    // waited for the lease TTL (5 s) or the pin timeout would still fail it.
    assert!(gap < Duration::from_secs(3), "handover gap {gap:?}");
    assert_eq!(s.dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_added_mid_run_takes_partitions_and_order_holds() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Arc::new(Stack::cluster(Duration::from_millis(50)).await);
    let _a = workers(&s, &["a"]).await;
    balanced(&s, &["a"]).await;
    let chats = 40_000..40_080;
    let posts = burst(&s, "j", 400_000, chats.clone(), 25);
    s.wait_for("sendMessage", 200, Duration::from_secs(30))
        .await;
    let _b = workers(&s, &["b"]).await;
    let after = balanced(&s, &["a", "b"]).await;
    join(posts).await;
    let v = answered_in_order(&s, "j", chats, 25, Duration::from_secs(90)).await;
    assert_eq!(v.duplicates, 0, "a handover repeats nothing");
    assert_eq!(s.dead_letters().await, 0);
    let b = after.values().filter(|m| m.starts_with("b-")).count();
    assert_eq!(
        b,
        usize::from(stack::PARTITIONS) / 2,
        "the new pod took its share: {after:?}"
    );
}

/// Posts `body`, again while the ingress answers 503 (a stream electing a new leader):
/// what Telegram does.
async fn post_retrying(s: &Stack, body: &serde_json::Value) {
    eventually(Duration::from_secs(60), "the ingress recovers", || async {
        s.post(body).await == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_stream_leader_mid_burst_loses_nothing_and_keeps_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut s = Stack::cluster(Duration::from_millis(20)).await;
    let (leader, node) = s.nats.cluster().leader_of(&s.js, "TG_UPDATES").await;
    let _w = workers(&s, &["a", "b"]).await;
    let chats = 50_000..50_040i64;
    let round = |i: usize, chat: i64| {
        text(
            500_000 + i as i64 * 40 + (chat - 50_000),
            chat,
            &msg("l", chat, i),
        )
    };
    for i in 0..6 {
        for chat in chats.clone() {
            post_retrying(&s, &round(i, chat)).await;
        }
    }
    s.wait_for("sendMessage", 100, Duration::from_secs(30))
        .await;
    // The ingress and the workers reconnect to the other nodes; the stream, its
    // consumers and the ownership bucket elect new leaders.
    s.nats.cluster().kill(node);
    for i in 6..20 {
        for chat in chats.clone() {
            post_retrying(&s, &round(i, chat)).await;
        }
    }
    let v = answered_in_order(&s, "l", chats, 20, Duration::from_secs(90)).await;
    eprintln!("stream leader {leader} killed: {v:?}");
    assert_eq!(s.dead_letters().await, 0);
}

/// A leader election of the ownership bucket can outlast the lease TTL, so every pod
/// loses its leases; a pod whose watch then stalled (a lost leader can leave a KV watch
/// silent without an error) kept its own lapsed leases in its view and never claimed its
/// partitions again: their chats waited forever. Now a lapsed lease leaves the view, and
/// a failed write makes the pod read the bucket again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_leases_lapsed_in_a_leader_election_takes_them_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut s = Stack::cluster(Duration::from_millis(20)).await;
    let _w = workers(&s, &["a", "b"]).await;
    let (leader, node) = s.nats.cluster().leader_of(&s.js, "KV_tgpipe_groups").await;
    let chats = 52_000..52_040i64;
    let round = |i: usize, chat: i64| {
        text(
            520_000 + i as i64 * 40 + (chat - 52_000),
            chat,
            &msg("g", chat, i),
        )
    };
    for i in 0..5 {
        for chat in chats.clone() {
            post_retrying(&s, &round(i, chat)).await;
        }
    }
    s.nats.cluster().kill(node);
    for i in 5..15 {
        for chat in chats.clone() {
            post_retrying(&s, &round(i, chat)).await;
        }
    }
    let v = answered_in_order(&s, "g", chats, 15, Duration::from_secs(60)).await;
    eprintln!("ownership bucket leader {leader} killed: {v:?}");
    // Every partition has an owner again.
    let owned = owners(&s).await;
    assert_eq!(owned.len(), usize::from(stack::PARTITIONS), "{owned:?}");
    assert_eq!(s.dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_chat_with_1000_queued_updates_does_not_delay_200_other_chats() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Arc::new(Stack::with_latency(Duration::from_millis(50)).await);
    let _w = s.worker(&[("TGPIPE_CONCURRENCY", "32")]).await;
    // 1000 updates of one chat reach the stream first; at 50 ms a reply they take 50 s.
    join(burst(&s, "h", 600_000, 60_000..60_001, 1000)).await;
    let started = Instant::now();
    join(burst(&s, "x", 700_000, 61_000..61_200, 1)).await;
    answered_in_order(&s, "x", 61_000..61_200, 1, Duration::from_secs(10)).await;
    let took = started.elapsed();
    let hot = replies(&s, "h").get(&60_000).map_or(0, Vec::len);
    eprintln!("200 other chats answered in {took:?} while the busy chat had {hot} of 1000");
    assert!(hot < 500, "the busy chat was still queued: {hot}");
    assert!(took < Duration::from_secs(5), "other chats waited {took:?}");
}

/// The settings of partition 0's consumer of the default lane.
async fn first_partition(s: &Stack) -> async_nats::jetstream::consumer::Info {
    s.js.get_stream("TG_UPDATES")
        .await
        .unwrap()
        .consumer_info("tgpipe-lane-default-p000")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_without_replicas_leaves_r3_streams_at_r3() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stack::cluster(Duration::ZERO).await;
    let stream = |s: &Stack| {
        let js = s.js.clone();
        async move {
            js.get_stream("TG_UPDATES")
                .await
                .unwrap()
                .get_info()
                .await
                .unwrap()
        }
    };
    assert_eq!(stream(&s).await.config.num_replicas, 3);
    // The first worker creates the lane's consumers (ack wait 3 s, the stack's).
    let _first = s.worker(&[]).await;
    // The stack's workers say 3 replicas; this one says 1, as a pod without the setting
    // would, and another ack wait.
    let _w = s
        .worker(&[("TGPIPE_STREAM_REPLICAS", "1"), ("TGPIPE_ACK_WAIT", "9s")])
        .await;
    assert_eq!(stream(&s).await.config.num_replicas, 3, "not downgraded");
    let consumer = first_partition(&s).await;
    assert_eq!(
        consumer.config.ack_wait,
        Duration::from_secs(3),
        "consumer left as it was"
    );
    // `provision --apply` is how an operator changes them.
    let out = s.run_command(&["provision", "--apply"], &[("TGPIPE_ACK_WAIT", "9s")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let consumer = first_partition(&s).await;
    assert_eq!(consumer.config.ack_wait, Duration::from_secs(9));
    assert_eq!(stream(&s).await.config.num_replicas, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_kind_typo_stops_the_worker_with_exit_64() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stack::start().await;
    let out = s.run_to_exit(&[("TGPIPE_LANE_KINDS", "message,bogus")]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`bogus`") && stderr.contains("custom:bogus"),
        "{stderr}"
    );
}
