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

use stack::{
    Stack, Verdict, Worker, balanced, gauge, longest_gap, msg, owners, partition_of, replies, text,
};
use tgpipe_testkit::eventually;

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

/// Waits (up to `limit`) until a burst of `per_chat` texts to each of `chats` is
/// answered; then checks the order.
async fn burst_answered(
    s: &Stack,
    tag: &str,
    chats: std::ops::Range<i64>,
    per_chat: usize,
    limit: Duration,
) -> Verdict {
    let posted: BTreeMap<i64, usize> = chats.map(|c| (c, per_chat)).collect();
    stack::answered_in_order(s, tag, &posted, limit).await
}

async fn join(posts: Vec<tokio::task::JoinHandle<()>>) {
    for p in posts {
        p.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_on_a_cluster_answer_every_chat_in_order_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Arc::new(Stack::cluster(Duration::from_millis(50)).await);
    let _w = workers(&s, &["a", "b", "c"]).await;
    balanced(&s, &["a", "b", "c"]).await;
    join(burst(&s, "o", 100_000, 10_000..10_100, 10)).await;
    let v = burst_answered(&s, "o", 10_000..10_100, 10, Duration::from_secs(60)).await;
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
    balanced(&s, &["a", "b", "c"]).await;
    let chats = 20_000..20_090;
    let posts = burst(&s, "k", 200_000, chats.clone(), 30);
    // Mid-burst: some chats answered, most of each chat still to come.
    s.wait_for("sendMessage", 300, Duration::from_secs(30))
        .await;
    // Read now: the lane's plan may have moved partitions by their backlog.
    let before = owners(&s).await;
    workers[0].kill9();
    let killed = SystemTime::now();
    join(posts).await;
    let v = burst_answered(&s, "k", chats.clone(), 30, Duration::from_secs(90)).await;
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
    stack::held_over(&s, &["b", "c"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_partitions_over_without_waiting_for_the_lease_ttl() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Arc::new(Stack::cluster(Duration::from_millis(50)).await);
    let mut workers = workers(&s, &["a", "b"]).await;
    balanced(&s, &["a", "b"]).await;
    let chats = 30_000..30_060;
    let posts = burst(&s, "t", 300_000, chats.clone(), 40);
    s.wait_for("sendMessage", 200, Duration::from_secs(30))
        .await;
    // Read now: the lane's plan may have moved partitions by their backlog.
    let before = owners(&s).await;
    let stopping = SystemTime::now();
    let status = workers[0].terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    join(posts).await;
    let v = burst_answered(&s, "t", chats.clone(), 40, Duration::from_secs(90)).await;
    assert_eq!(v.duplicates, 0, "a drain repeats nothing");
    let moved: Vec<i64> = chats
        .filter(|c| before[&partition_of(*c)].starts_with("a-"))
        .collect();
    let gap = longest_gap(&s, "t", &moved, stopping);
    eprintln!("SIGTERM: longest pause of the handed-over chats {gap:?}");
    // The promise is a gap under 2 s (measured 1.3 to 1.8 s here); this test runs debug
    // builds of three nats-servers, two workers and the load on 2 shared cores, where a
    // handover has measured up to 4.2 s (the new owner reading the window the old one
    // left, at up to 280 ms a message on the starved cluster), so it fails only past
    // 4.5 s: a handover that waited for the lease TTL (5 s) or the pin timeout (30 s)
    // would still fail it.
    assert!(gap < Duration::from_millis(4500), "handover gap {gap:?}");
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
    // Mid-burst the lane's plan moves partitions by their backlog, so the split is not
    // an even count (the test once waited for 32/32 and saw 33/31): the new pod takes
    // its share, about half, and every partition is held.
    let quarter = usize::from(stack::PARTITIONS) / 4;
    tgpipe_testkit::eventually_ok(Duration::from_secs(30), "b takes its share", || async {
        let o = stack::held_over(&s, &["a", "b"]).await;
        match o.values().filter(|m| m.starts_with("b-")).count() {
            b if b >= quarter => Ok(()),
            b => Err(format!("b holds {b}: {o:?}")),
        }
    })
    .await;
    join(posts).await;
    let v = burst_answered(&s, "j", chats, 25, Duration::from_secs(90)).await;
    assert_eq!(v.duplicates, 0, "a handover repeats nothing");
    assert_eq!(s.dead_letters().await, 0);
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
    let v = burst_answered(&s, "l", chats, 20, Duration::from_secs(90)).await;
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
    let v = burst_answered(&s, "g", chats, 15, Duration::from_secs(60)).await;
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
    burst_answered(&s, "x", 61_000..61_200, 1, Duration::from_secs(10)).await;
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

/// Two pods on a cluster with 4 run slots each and a stand-in answering after 100 ms
/// (40 replies/s a pod); 48 chats of 10 updates whose partitions hashing gave to pod
/// `a`. Pods `a` and `b` run with `TGPIPE_BALANCE` `balance[0]` and `balance[1]`.
/// Returns the updates each pod handled, and the partitions moved by a plan.
async fn backlog_hashed_onto_one_pod(balance: [&str; 2], tag: &str) -> (f64, f64, f64) {
    let s = Arc::new(Stack::cluster(Duration::from_millis(100)).await);
    let mut w = Vec::new();
    for (name, balance) in ["a", "b"].into_iter().zip(balance) {
        w.push(
            s.worker(&[
                ("TGPIPE_LEASE_TTL", "5s"),
                ("TGPIPE_CONCURRENCY", "4"),
                ("TGPIPE_BALANCE", balance),
                ("TGPIPE_MEMBER", name),
            ])
            .await,
        );
    }
    let owners = balanced(&s, &["a", "b"]).await;
    let chats: Vec<i64> = (80_000..)
        .filter(|c| owners[&partition_of(*c)].starts_with("a-"))
        .take(48)
        .collect();
    let posts = chats
        .iter()
        .map(|&chat| {
            let s = Arc::clone(&s);
            let tag = tag.to_owned();
            tokio::spawn(async move {
                for i in 0..10 {
                    let id = 800_000 + i as i64 * 1000 + (chat - 80_000);
                    let status = s.post(&text(id, chat, &msg(&tag, chat, i))).await;
                    assert_eq!(status, 200, "the ingress stores every update");
                }
            })
        })
        .collect();
    join(posts).await;
    let posted: BTreeMap<i64, usize> = chats.iter().map(|c| (*c, 10)).collect();
    let v = stack::answered_in_order(&s, tag, &posted, Duration::from_secs(60)).await;
    assert_eq!(v.duplicates, 0, "a move repeats nothing: {v:?}");
    assert_eq!(s.dead_letters().await, 0);
    let handled = |m: &str| {
        m.lines()
            .filter(|l| {
                l.starts_with("tgpipe_worker_outcomes_total") && l.contains("outcome=\"handled\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let (ma, mb) = (w[0].metrics().await, w[1].metrics().await);
    let moves = gauge(&ma, "tgpipe_worker_backlog_moves_total")
        + gauge(&mb, "tgpipe_worker_backlog_moves_total");
    (handled(&ma), handled(&mb), moves)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_hashed_onto_one_pod_is_shared_with_the_idle_pod_in_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (a, b, moves) = backlog_hashed_onto_one_pod(["backlog"; 2], "bl").await;
    eprintln!("handled: a {a}, b {b}; partitions moved {moves}");
    assert_eq!(a + b, 480.0);
    assert!(moves >= 1.0, "the planner moved partitions");
    // Alone, `a` would take 12 s; the plan comes within about 2 s and moves about half.
    assert!(
        b >= 120.0,
        "the idle pod took a share of the backlog: a {a}, b {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tgpipe_balance_count_a_backlog_hashed_onto_one_pod_stays_there() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (a, b, moves) = backlog_hashed_onto_one_pod(["count"; 2], "bc").await;
    eprintln!("handled: a {a}, b {b}; partitions moved {moves}");
    assert_eq!((a, b, moves), (480.0, 0.0, 0.0));
}

/// The planner `a` balances by backlog, but `b` does not follow plans (as a pod of an
/// older version in a rolling upgrade): the lane keeps to hashing, and no partition is
/// left without an owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_with_a_pod_that_does_not_follow_plans_keeps_hashing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (a, b, moves) = backlog_hashed_onto_one_pod(["backlog", "count"], "bm").await;
    eprintln!("handled: a {a}, b {b}; partitions moved {moves}");
    assert_eq!((a, b, moves), (480.0, 0.0, 0.0));
}
