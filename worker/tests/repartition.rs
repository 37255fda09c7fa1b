//! A rolling change of a lane's partition count, end to end: on a 3-node cluster, under
//! load, `tgpipe-example-bot` workers are replaced one by one by workers with another
//! `TGPIPE_PARTITIONS`. The lane keeps its consumers' layout while a pod of the old count
//! lives, then switches; every chat's replies stay in order, none lost or dead-lettered.

mod stack;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::TryStreamExt;
use stack::{
    Stack, Worker, answered_in_order, balanced_over, gauge, held_over_of, longest_gap, msg, owners,
    text,
};
use tgpipe_testkit::eventually_ok;

/// One test at a time in this binary under `cargo test` (nextest runs them one at a time
/// through its test group): each runs a cluster, up to six workers and a steady load, and
/// measures pauses that two at once on two cores would stretch.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Worker settings of these tests: the lease TTL written out, because the kill test's
/// switch waits for the dead pod's membership to expire (5 s is also the default), and
/// enough chats at once for the load.
const WORKER: &[(&str, &str)] = &[("TGPIPE_LEASE_TTL", "5s"), ("TGPIPE_CONCURRENCY", "64")];

/// Shards of the update subjects (the default `TGPIPE_SHARDS`, the stack's).
const SHARDS: u16 = 64;

/// The partition counts of the roll: the default, and the one the lane moves to.
const OLD: u16 = 16;
const NEW: u16 = 64;

/// How long a chat of the load waits between its updates. 120 chats at this pace make
/// up to 480 updates a second, which debug builds of the whole stack keep up with on two
/// shared cores; a pause of a chat longer than this is the switch's.
const PACE: Duration = Duration::from_millis(250);

/// How long the lane may take to switch once its last pod of the old count is gone (a
/// kill -9 adds the lease TTL, 5 s).
const SWITCH_LIMIT: Duration = Duration::from_secs(30);

/// The update stream, where the lane's consumers live (the stack's).
const STREAM: &str = "TG_UPDATES";

/// The name prefix of the default lane's partition consumers.
const CONSUMER_PREFIX: &str = "tgpipe-lane-default-p";

/// A worker process named `name` (its member id starts with it) with
/// `TGPIPE_PARTITIONS=partitions`, once ready.
async fn worker(s: &Stack, name: &str, partitions: u16) -> Worker {
    let partitions = partitions.to_string();
    let mut env = WORKER.to_vec();
    env.push(("TGPIPE_MEMBER", name));
    env.push(("TGPIPE_PARTITIONS", &partitions));
    s.worker(&env).await
}

/// Workers named `names`, all with `partitions`, started one after the other.
async fn workers(s: &Stack, names: &[&str], partitions: u16) -> Vec<Worker> {
    let mut out = Vec::new();
    for name in names {
        out.push(worker(s, name, partitions).await);
    }
    out
}

/// A steady load: each chat posts numbered updates the way Telegram does (the next only
/// after the ingress accepted the previous), one every [`PACE`], until stopped.
struct Load {
    chats: std::ops::Range<i64>,
    stop: Arc<AtomicBool>,
    /// Updates the ingress accepted, per chat (indexed from `chats.start`).
    posted: Arc<Vec<AtomicUsize>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts posting to `chats`, update ids from `first_id` on.
    fn start(
        s: &Arc<Stack>,
        tag: &'static str,
        first_id: i64,
        chats: std::ops::Range<i64>,
    ) -> Load {
        let n = chats.end - chats.start;
        let stop = Arc::new(AtomicBool::new(false));
        let posted: Arc<Vec<AtomicUsize>> =
            Arc::new(chats.clone().map(|_| AtomicUsize::new(0)).collect());
        let tasks = chats
            .clone()
            .map(|chat| {
                let (s, stop, posted) = (Arc::clone(s), Arc::clone(&stop), Arc::clone(&posted));
                let k = chat - chats.start;
                tokio::spawn(async move {
                    // Chats spread over the pace, not all at once.
                    tokio::time::sleep(PACE * k as u32 / n as u32).await;
                    let mut tick = tokio::time::interval(PACE);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    for i in 0.. {
                        tick.tick().await;
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let id = first_id + i as i64 * n + k;
                        let status = s.post(&text(id, chat, &msg(tag, chat, i))).await;
                        assert_eq!(status, 200, "the ingress stores every update");
                        posted[k as usize].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            chats,
            stop,
            posted,
            tasks,
        }
    }

    fn posted(&self) -> BTreeMap<i64, usize> {
        self.chats
            .clone()
            .zip(self.posted.iter())
            .map(|(chat, n)| (chat, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Waits (up to `limit`) until every chat has posted `more` updates beyond what it
    /// has now.
    async fn more(&self, more: usize, limit: Duration) {
        let now = self.posted();
        eventually_ok(limit, &format!("every chat posts {more} more"), || {
            assert!(
                self.tasks.iter().all(|t| !t.is_finished()),
                "a chat stopped posting: the ingress refused an update"
            );
            let behind = self
                .posted()
                .iter()
                .filter(|(chat, n)| **n < now[chat] + more)
                .count();
            std::future::ready(match behind {
                0 => Ok(()),
                behind => Err(format!("{behind} chats behind")),
            })
        })
        .await;
    }

    /// Stops posting: how many updates each chat posted.
    async fn stop(self) -> BTreeMap<i64, usize> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.chats
            .zip(self.posted.iter())
            .map(|(chat, n)| (chat, n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// The shard of a chat (its partition once a lane has as many partitions as shards).
fn shard_of(chat: i64) -> u16 {
    tgpipe_shared::subject::Shard::of(
        tgpipe_shared::OrderingKey::Chat(chat),
        std::num::NonZeroU16::new(SHARDS).unwrap(),
    )
    .0
}

/// A partition consumer of the default lane, as the stream has it.
#[derive(Debug)]
struct Consumer {
    /// The shards its filter subjects take (`tg.*.<kind>.<shard>`), in order.
    shards: Vec<u16>,
    /// Its `tgpipe.partitions` metadata: the partition count it is laid out for.
    partitions: Option<String>,
}

/// The default lane's partition consumers on the update stream, by name.
async fn consumers(s: &Stack) -> Result<BTreeMap<String, Consumer>, String> {
    let stream = s.js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
    let mut all = stream.consumers();
    let mut out = BTreeMap::new();
    while let Some(info) = all.try_next().await.map_err(|e| e.to_string())? {
        if !info.name.starts_with(CONSUMER_PREFIX) {
            continue;
        }
        let config = &info.config;
        let mut shards: Vec<u16> = config
            .filter_subjects
            .iter()
            .chain(Some(&config.filter_subject).filter(|f| !f.is_empty()))
            .filter_map(|f| f.rsplit('.').next()?.parse().ok())
            .collect();
        shards.sort_unstable();
        let partitions = config.metadata.get("tgpipe.partitions").cloned();
        out.insert(info.name.clone(), Consumer { shards, partitions });
    }
    Ok(out)
}

/// Whether the lane's consumers are exactly those of `partitions` partitions: `p000` to
/// the last, each filtering the shards `s` with `s % partitions` equal to its index and
/// saying `tgpipe.partitions` = `partitions` in its metadata.
async fn laid_out_for(s: &Stack, partitions: u16) -> Result<(), String> {
    let got = consumers(s).await?;
    let want: Vec<String> = (0..partitions)
        .map(|p| format!("{CONSUMER_PREFIX}{p:03}"))
        .collect();
    if !got.keys().eq(want.iter()) {
        let names: Vec<&str> = got
            .keys()
            .map(|n| n.trim_start_matches("tgpipe-lane-default-"))
            .collect();
        return Err(format!("{} consumers: {names:?}", names.len()));
    }
    for (p, name) in (0..partitions).zip(&want) {
        let c = &got[name];
        let shards: Vec<u16> = (p..SHARDS).step_by(usize::from(partitions)).collect();
        if c.shards != shards || c.partitions.as_deref() != Some(&*partitions.to_string()) {
            return Err(format!("{name} is not laid out for {partitions}: {c:?}"));
        }
    }
    Ok(())
}

/// The partitions each worker says it owns (`tgpipe_worker_partitions_owned`).
async fn owned(workers: &[&Worker]) -> Vec<usize> {
    let mut out = Vec::new();
    for w in workers {
        out.push(gauge(&w.metrics().await, "tgpipe_worker_partitions_owned") as usize);
    }
    out
}

/// Waits (up to [`SWITCH_LIMIT`]) until the lane runs on `partitions` partitions: its
/// consumers are laid out for them and `workers` own them all, each some. (Hashing gives
/// each pod an even count first; the lane's plan may then move partitions by backlog.)
/// Returns when it saw that.
async fn switched(s: &Stack, workers: &[&Worker], partitions: u16) -> Instant {
    let what = format!("the lane switches to {partitions} partitions");
    eventually_ok(SWITCH_LIMIT, &what, || async {
        laid_out_for(s, partitions).await?;
        let owned = owned(workers).await;
        let total = usize::from(partitions);
        if owned.iter().sum::<usize>() == total && owned.iter().all(|n| *n > 0) {
            Ok(Instant::now())
        } else {
            Err(format!("the workers own {owned:?}"))
        }
    })
    .await
}

/// The rolling upgrade up to its last step: for each old worker, a new one named after
/// `names` with `TGPIPE_PARTITIONS` = [`NEW`] is started and, once it is ready, the old
/// one is stopped with SIGTERM, but the last old one, which the caller stops. While an
/// old one lives, the lane keeps the old layout and balances it over the old and the new.
async fn roll_up_to_the_last(s: &Stack, old: &mut [Worker], names: &[&str]) -> Vec<Worker> {
    let mut new = Vec::new();
    for (i, name) in names.iter().enumerate() {
        new.push(worker(s, name, NEW).await);
        if i + 1 == old.len() {
            break;
        }
        old[i].sigterm();
        let status = old[i].wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "{status:?}");
        laid_out_for(s, OLD).await.unwrap();
    }
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_change_from_16_to_64_partitions_under_load_keeps_every_chat_in_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Arc::new(Stack::cluster(Duration::from_millis(20)).await);
    let mut old = workers(&s, &["a", "b", "c"], OLD).await;
    balanced_over(&s, &["a", "b", "c"], OLD).await;
    laid_out_for(&s, OLD).await.unwrap();
    let load = Load::start(&s, "r", 1_000_000, 10_000..10_120);
    load.more(4, Duration::from_secs(30)).await;
    let new = roll_up_to_the_last(&s, &mut old, &["x", "y", "z"]).await;
    // Under load the lane's plan may move partitions by their backlog: held, not even.
    held_over_of(&s, &["c", "x", "y", "z"], OLD).await;
    let stopping = SystemTime::now();
    let signalled = Instant::now();
    old[2].sigterm();
    let status = old[2].wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    let at = switched(&s, &new.iter().collect::<Vec<_>>(), NEW).await;
    eprintln!(
        "the lane runs on {NEW} partitions {:?} after the last {OLD}-pod's SIGTERM",
        at - signalled
    );
    load.more(5, Duration::from_secs(30)).await;
    let posted = load.stop().await;
    let v = answered_in_order(&s, "r", &posted, Duration::from_secs(60)).await;
    assert_eq!(v.duplicates, 0, "a graceful switch repeats nothing");
    assert_eq!(s.dead_letters().await, 0);
    let chats: Vec<i64> = posted.keys().copied().collect();
    let gap = longest_gap(&s, "r", &chats, stopping);
    eprintln!(
        "rolling {OLD} -> {NEW}: {} updates of {} chats, one every {PACE:?} per chat; \
         longest pause of a chat from the last {OLD}-pod's SIGTERM on: {gap:?}",
        posted.values().sum::<usize>(),
        chats.len()
    );
    // About 3 s measured on a quiet machine; 6 s with the machine busy.
    assert!(gap < Duration::from_secs(12), "a chat paused {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_killed_during_a_rolling_change_of_partitions_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Arc::new(Stack::cluster(Duration::from_millis(20)).await);
    let mut old = workers(&s, &["a", "b", "c"], OLD).await;
    balanced_over(&s, &["a", "b", "c"], OLD).await;
    let load = Load::start(&s, "q", 2_000_000, 20_000..20_120);
    load.more(4, Duration::from_secs(30)).await;
    let new = roll_up_to_the_last(&s, &mut old, &["x", "y", "z"]).await;
    // Under load the lane's plan may move partitions by their backlog: held, not even.
    held_over_of(&s, &["c", "x", "y", "z"], OLD).await;
    // The chats the last old pod runs: each may see its in-flight update twice. Read
    // now: the lane's plan may have moved partitions by their backlog.
    let before = owners(&s).await;
    let dead: Vec<i64> = (20_000..20_120)
        .filter(|c| before[&(shard_of(*c) % OLD)].starts_with("c-"))
        .collect();
    assert!(!dead.is_empty(), "{before:?}");
    let killed = SystemTime::now();
    let kill = Instant::now();
    old[2].kill9();
    let at = switched(&s, &new.iter().collect::<Vec<_>>(), NEW).await;
    eprintln!(
        "the lane runs on {NEW} partitions {:?} after the last {OLD}-pod's kill -9 \
         (lease TTL 5 s)",
        at - kill
    );
    load.more(5, Duration::from_secs(30)).await;
    let posted = load.stop().await;
    let v = answered_in_order(&s, "q", &posted, Duration::from_secs(60)).await;
    assert!(
        v.duplicates <= dead.len(),
        "{} duplicates for {} chats of the killed pod",
        v.duplicates,
        dead.len()
    );
    assert_eq!(s.dead_letters().await, 0);
    let chats: Vec<i64> = posted.keys().copied().collect();
    let gap = longest_gap(&s, "q", &chats, killed);
    eprintln!(
        "rolling {OLD} -> {NEW}, last {OLD}-pod killed: {} updates, {v:?}; \
         longest pause of a chat from the kill on: {gap:?}",
        posted.values().sum::<usize>()
    );
    // The dead pod's membership and leases expire first (5 s); then the switch.
    assert!(gap < Duration::from_secs(25), "a chat paused {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_the_old_count_keeps_the_lane_on_it_until_it_leaves() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Arc::new(Stack::cluster(Duration::from_millis(20)).await);
    // The first worker lays the lane out for the old count.
    let mut old = worker(&s, "a", OLD).await;
    let x = worker(&s, "x", NEW).await;
    let y = worker(&s, "y", NEW).await;
    balanced_over(&s, &["a", "x", "y"], OLD).await;
    let chats = 30_000..30_060;
    let load = Load::start(&s, "k", 3_000_000, chats.clone());
    // For a few seconds under load the lane stays as it is.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        laid_out_for(&s, OLD).await.unwrap();
    }
    let held = owned(&[&old, &x, &y]).await;
    assert_eq!(held.iter().sum::<usize>(), usize::from(OLD), "{held:?}");
    assert_eq!(owners(&s).await.len(), usize::from(OLD));
    let posted = load.stop().await;
    let v = answered_in_order(&s, "k", &posted, Duration::from_secs(30)).await;
    assert_eq!(v.duplicates, 0, "{v:?}");
    // Once the pod of the old count leaves, the lane switches.
    let load = Load::start(&s, "m", 3_500_000, chats);
    load.more(2, Duration::from_secs(30)).await;
    let signalled = Instant::now();
    old.sigterm();
    let status = old.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    let at = switched(&s, &[&x, &y], NEW).await;
    eprintln!(
        "the lane runs on {NEW} partitions {:?} after the {OLD}-pod's SIGTERM",
        at - signalled
    );
    load.more(5, Duration::from_secs(30)).await;
    let posted = load.stop().await;
    let v = answered_in_order(&s, "m", &posted, Duration::from_secs(60)).await;
    assert_eq!(v.duplicates, 0, "a graceful switch repeats nothing");
    assert_eq!(s.dead_letters().await, 0);
}

/// The configuration a worker gives partition `p` of the default lane (every kind) laid
/// out for `partitions`.
fn partition_consumer(p: u16, partitions: u16) -> async_nats::jetstream::consumer::pull::Config {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PriorityPolicy};
    let name = format!("{CONSUMER_PREFIX}{p:03}");
    async_nats::jetstream::consumer::pull::Config {
        durable_name: Some(name.clone()),
        name: Some(name),
        description: Some(format!(
            "tgpipe lane `default`, partition {p} of {partitions}"
        )),
        filter_subjects: (p..SHARDS)
            .step_by(usize::from(partitions))
            .map(|shard| format!("tg.*.*.{shard}"))
            .collect(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        max_ack_pending: 32_768,
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec!["owner".to_owned()],
        priority_timeout: Duration::from_secs(5),
        metadata: [
            ("tgpipe.lane".to_owned(), "default".to_owned()),
            ("tgpipe.partition".to_owned(), p.to_string()),
            ("tgpipe.partitions".to_owned(), partitions.to_string()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_on_a_half_laid_out_lane_finishes_the_change() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stack::start().await;
    // Updates wait in the stream before any consumer exists.
    let chats = 60_000..60_060;
    let per_chat = 5;
    for i in 0..per_chat {
        for chat in chats.clone() {
            let id = 6_000_000 + i as i64 * 100 + (chat - chats.start);
            assert_eq!(s.post(&text(id, chat, &msg("h", chat, i))).await, 200);
        }
    }
    // A change from 16 to 64 that stopped halfway, its layout key long expired: the
    // first half of the old consumers deleted, their shards' new ones made (shards 0
    // to 7, beside the old consumers of shards 8, 24, 40, 56 and so on).
    let stream = s.js.get_stream(STREAM).await.unwrap();
    for p in 8..16 {
        stream
            .create_consumer(partition_consumer(p, OLD))
            .await
            .unwrap();
    }
    for p in 0..8 {
        stream
            .create_consumer(partition_consumer(p, NEW))
            .await
            .unwrap();
    }
    assert!(laid_out_for(&s, OLD).await.is_err() && laid_out_for(&s, NEW).await.is_err());
    let started = Instant::now();
    let w = worker(&s, "w", NEW).await;
    let at = switched(&s, &[&w], NEW).await;
    eprintln!(
        "a half laid-out lane finished by a new worker; laid out and owned {:?} after the worker started",
        at - started
    );
    let posted: BTreeMap<i64, usize> = chats.map(|c| (c, per_chat)).collect();
    let v = answered_in_order(&s, "h", &posted, Duration::from_secs(60)).await;
    assert_eq!(v.duplicates, 0, "{v:?}");
    assert_eq!(s.dead_letters().await, 0);
}
