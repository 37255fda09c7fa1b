//! Isolation end to end (issue 23): no chat, bot or rollout holds back or repeats
//! another chat's work. One NATS server, Redis, the ingress in process, the Bot API
//! stand-in (failing or slowing down per chat) and `tgpipe-example-bot` worker processes.
//! Each test is named after the defect it pins and uses the figures of the issue's
//! "Done when".

mod stack;

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU16;
use std::time::{Duration, Instant, SystemTime};

use stack::{BOT, BOT_B, SECRET_B, Stack, Worker, chat_of, text, text_of};
use tgpipe_shared::subject::Shard;
use tgpipe_shared::{BotId, Envelope, OrderingKey};
use tgpipe_testkit::sink::{Fault, RecordedCall, SinkConfig};
use tgpipe_testkit::{eventually, eventually_ok};

/// One test at a time in this binary under `cargo test` (nextest runs them one at a time
/// through its `cluster` test group): each measures times that two at once on two cores
/// would stretch.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The partition of a chat with the default 64 shards and partitions.
fn partition_of(chat: i64) -> u16 {
    Shard::of(OrderingKey::Chat(chat), NonZeroU16::new(64).unwrap()).0 % stack::PARTITIONS
}

/// `n` chats from `from` on, each in a partition of its own (and, with `only`, in those
/// partitions only).
fn chats_in_distinct_partitions(from: i64, n: usize, only: Option<&BTreeSet<u16>>) -> Vec<i64> {
    let mut taken = BTreeSet::new();
    let mut out = Vec::new();
    let mut chat = from;
    while out.len() < n {
        let p = partition_of(chat);
        if only.is_none_or(|o| o.contains(&p)) && taken.insert(p) {
            out.push(chat);
        }
        chat += 1;
    }
    out
}

/// Which member holds each partition of the default lane now, from the group bucket.
async fn owners(s: &Stack) -> BTreeMap<u16, String> {
    use futures::StreamExt;
    let Ok(kv) = s.js.get_key_value("tgpipe_groups").await else {
        return BTreeMap::new();
    };
    let Ok(mut keys) = kv.keys().await else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    while let Some(Ok(key)) = keys.next().await {
        if let Some(p) = key.strip_prefix("TG_UPDATES.default.owners.")
            && let Ok(Some(v)) = kv.get(&key).await
        {
            out.insert(p.parse().unwrap(), String::from_utf8_lossy(&v).into_owned());
        }
    }
    out
}

/// Waits until the partitions are held by the members named `names` (member ids
/// start with the name), evenly.
async fn balanced(s: &Stack, names: &[&str], limit: Duration) -> BTreeMap<u16, String> {
    let what = format!("the partitions are balanced over {names:?}");
    eventually_ok(limit, &what, || async {
        let o = owners(s).await;
        let all = usize::from(stack::PARTITIONS);
        let even = names.iter().all(|n| {
            let mine = o
                .values()
                .filter(|m| m.starts_with(&format!("{n}-")))
                .count();
            (all / names.len()..=all.div_ceil(names.len())).contains(&mine)
        });
        if o.len() == all && even {
            Ok(o)
        } else {
            Err(format!("{o:?}"))
        }
    })
    .await
}

/// The partitions `name` holds in `owners`.
fn held_by(owners: &BTreeMap<u16, String>, name: &str) -> BTreeSet<u16> {
    owners
        .iter()
        .filter(|(_, m)| m.starts_with(&format!("{name}-")))
        .map(|(p, _)| *p)
        .collect()
}

/// The stand-in's successful `sendMessage` calls whose text is `text`.
fn sent(s: &Stack, text: &str) -> Vec<RecordedCall> {
    s.calls_of("sendMessage")
        .into_iter()
        .filter(|c| c.status == 200 && text_of(c) == text)
        .collect()
}

/// How long after `since` each of `texts` was first answered (`None`: not yet).
fn answered_after(s: &Stack, texts: &[String], since: SystemTime) -> Vec<Option<Duration>> {
    texts
        .iter()
        .map(|t| {
            sent(s, t)
                .first()
                .map(|c| c.at.duration_since(since).unwrap_or_default())
        })
        .collect()
}

/// Waits (up to `limit`) until every one of `texts` is answered; returns how long after
/// `since` each was, `None` for those still unanswered at the limit.
async fn wait_answered(
    s: &Stack,
    texts: &[String],
    since: SystemTime,
    limit: Duration,
) -> Vec<Option<Duration>> {
    let deadline = Instant::now() + limit;
    loop {
        let got = answered_after(s, texts, since);
        if got.iter().all(Option::is_some) || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// "n answered, the slowest after ..., m not answered".
fn describe(latencies: &[Option<Duration>]) -> String {
    let answered: Vec<Duration> = latencies.iter().flatten().copied().collect();
    let missing = latencies.len() - answered.len();
    format!(
        "{} of {} answered (slowest after {:?}), {missing} not answered",
        answered.len(),
        latencies.len(),
        answered.iter().max().copied().unwrap_or_default()
    )
}

// ---------------------------------------------------------------------------------------
// A chat waiting to retry holds no run slot.
// ---------------------------------------------------------------------------------------

/// `TGPIPE_CONCURRENCY=4`; the Bot API answers 4 chats with 429 `retry_after=60` (over
/// the client's 30 s cap, so the update fails and waits a minute to run again); a 5th
/// chat's update, sent 2 s later, is answered within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_waiting_out_retry_after_holds_no_run_slot() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stack::start().await;
    let _w = s.worker(&[("TGPIPE_CONCURRENCY", "4")]).await;
    let paused: Vec<i64> = (71_001..=71_004).collect();
    for chat in &paused {
        s.sink
            .push_chat_fault("sendMessage", *chat, Fault::retry_after(60));
    }
    for (i, chat) in paused.iter().enumerate() {
        assert_eq!(s.post(&text(710_000 + i as i64, *chat, "wait")).await, 200);
    }
    eventually(
        Duration::from_secs(20),
        "the 4 chats are told to retry after 60 s",
        || async {
            s.calls_of("sendMessage")
                .iter()
                .filter(|c| c.status == 429)
                .count()
                == 4
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fifth = "the fifth chat".to_owned();
    let at = SystemTime::now();
    assert_eq!(s.post(&text(710_100, 71_005, &fifth)).await, 200);
    // Waits past the retry_after for the figure (answered when a slot frees up).
    let got = wait_answered(
        &s,
        std::slice::from_ref(&fifth),
        at,
        Duration::from_secs(70),
    )
    .await;
    eprintln!("the 5th chat: {}", describe(&got));
    match got[0] {
        Some(took) => assert!(
            took < Duration::from_secs(2),
            "the 5th chat was answered after {took:?}, behind 4 chats waiting out retry_after=60"
        ),
        None => panic!("the 5th chat was not answered within 70 s"),
    }
}

// ---------------------------------------------------------------------------------------
// A chat at its cap parks only itself.
// ---------------------------------------------------------------------------------------

/// Telegram's limits (1 reply a second in a private chat); one chat sends 2500 updates
/// back to back, more than `TGPIPE_MAX_HELD_PER_CHAT` (2048); then 40 other chats send
/// one each: all 40 answered within 5 s. The flooding chat's replies so far are its
/// first updates in order, none twice, and the rest are still in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_chat_stalls_only_itself() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stack::start().await;
    let _w = s.worker(&[("TGPIPE_RATE_LIMITS", "telegram")]).await;
    let flood = 72_000i64;
    let started = Instant::now();
    for i in 0..2500 {
        let status = s.post(&text(720_000 + i, flood, &format!("f{i}"))).await;
        assert_eq!(status, 200, "the ingress stores every update");
    }
    eprintln!("2500 updates of one chat posted in {:?}", started.elapsed());
    let victims: Vec<i64> = (72_001..=72_040).collect();
    let texts: Vec<String> = victims.iter().map(|c| format!("v{c}")).collect();
    let at = SystemTime::now();
    let posts = victims
        .iter()
        .zip(&texts)
        .enumerate()
        .map(|(i, (chat, t))| {
            let update = text(730_000 + i as i64, *chat, t);
            let s = &s;
            async move { s.post(&update).await }
        });
    for status in futures::future::join_all(posts).await {
        assert_eq!(status, 200);
    }
    // Waits longer than the promise for the figure.
    let got = wait_answered(&s, &texts, at, Duration::from_secs(30)).await;
    let late: Vec<(i64, u16, Option<Duration>)> = victims
        .iter()
        .zip(&got)
        .filter(|(_, t)| t.is_none_or(|t| t >= Duration::from_secs(5)))
        .map(|(c, t)| (*c, partition_of(*c), *t))
        .collect();
    eprintln!(
        "40 chats beside the flood (partition p{:03}): {}; late (chat, partition, after): {late:?}",
        partition_of(flood),
        describe(&got)
    );
    // The flooding chat: its replies so far are its first updates, in order, once each;
    // what is not answered is still in the stream, nothing dead-lettered.
    let replies: Vec<String> = s
        .calls_of("sendMessage")
        .iter()
        .filter(|c| chat_of(c) == flood && c.status == 200)
        .map(text_of)
        .collect();
    let want: Vec<String> = (0..replies.len()).map(|i| format!("f{i}")).collect();
    assert_eq!(
        replies, want,
        "the flooding chat's replies are its updates in order, once each"
    );
    let stored = s.stored().await;
    assert!(
        stored >= 2500 - replies.len() as u64,
        "the flooding chat's {} unanswered updates are still in the stream: {stored} stored",
        2500 - replies.len()
    );
    assert_eq!(s.dead_letters().await, 0);
    assert!(
        late.is_empty(),
        "{} of 40 chats were not answered within 5 s beside a chat flooding 2500 updates \
         (chat, partition, answered after): {late:?}",
        late.len()
    );
}

// ---------------------------------------------------------------------------------------
// A handover during a slow handler runs each update once.
// ---------------------------------------------------------------------------------------

/// How long the Bot API takes to answer the slow chats' replies (a video upload, an LLM
/// call behind the handler).
const SLOW: Duration = Duration::from_secs(28);

/// Worker settings of the handover tests: the handler timeout over the slow call; the
/// shutdown grace left to its default (which the worker derives from the timeout).
const HANDOVER: &[(&str, &str)] = &[("TGPIPE_HANDLER_TIMEOUT", "40s")];

async fn handover_worker(s: &Stack, name: &str) -> Worker {
    let mut env = HANDOVER.to_vec();
    env.push(("TGPIPE_MEMBER", name));
    s.worker_unset(&env, &["TGPIPE_SHUTDOWN_GRACE"]).await
}

/// Posts one update to each of `chats`, whose replies take [`SLOW`] at the Bot API;
/// returns the updates' texts.
async fn post_slow(s: &Stack, tag: &str, first_id: i64, chats: &[i64]) -> Vec<String> {
    let mut texts = Vec::new();
    for (i, chat) in chats.iter().enumerate() {
        s.sink
            .push_chat_fault("sendMessage", *chat, Fault::slow(SLOW));
        let t = format!("{tag}{chat}");
        assert_eq!(s.post(&text(first_id + i as i64, *chat, &t)).await, 200);
        texts.push(t);
    }
    texts
}

/// How many times each text was sent, for those sent other than once.
fn not_once(s: &Stack, texts: &[String]) -> Vec<(String, usize)> {
    texts
        .iter()
        .map(|t| (t.clone(), sent(s, t).len()))
        .filter(|(_, n)| *n != 1)
        .collect()
}

/// 8 chats (in 8 partitions) whose reply takes 28 s at the Bot API; a second worker
/// joins 2 s later and takes half the partitions: each reply is sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_during_slow_handlers_runs_each_update_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stack::start().await;
    let _a = handover_worker(&s, "a").await;
    balanced(&s, &["a"], Duration::from_secs(30)).await;
    let chats = chats_in_distinct_partitions(73_000, 8, None);
    let posted = SystemTime::now();
    let texts = post_slow(&s, "j", 730_000, &chats).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _b = handover_worker(&s, "b").await;
    let after = balanced(&s, &["a", "b"], Duration::from_secs(90)).await;
    let moved: Vec<i64> = chats
        .iter()
        .copied()
        .filter(|c| after[&partition_of(*c)].starts_with("b-"))
        .collect();
    let got = wait_answered(&s, &texts, posted, Duration::from_secs(60)).await;
    // The new owner replays at once when it takes a partition; a late repeat would show
    // within this.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let twice = not_once(&s, &texts);
    eprintln!(
        "join: {}; chats moved to the new pod {moved:?}; not sent once: {twice:?}",
        describe(&got)
    );
    assert_eq!(s.dead_letters().await, 0);
    assert!(
        twice.is_empty(),
        "{} of 8 slow updates were not sent exactly once across the handover (moved chats \
         {moved:?}): {twice:?}",
        twice.len()
    );
}

/// As above, with the old pod stopped by SIGTERM 2 s after the slow updates came (the
/// other pod takes its partitions): each reply is sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_during_slow_handlers_runs_each_update_once_when_the_old_pod_is_stopped_by_sigterm()
 {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stack::start().await;
    let mut a = handover_worker(&s, "a").await;
    let _b = handover_worker(&s, "b").await;
    let before = balanced(&s, &["a", "b"], Duration::from_secs(30)).await;
    let chats = chats_in_distinct_partitions(74_000, 8, Some(&held_by(&before, "a")));
    let posted = SystemTime::now();
    let texts = post_slow(&s, "t", 740_000, &chats).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.sigterm();
    let got = wait_answered(&s, &texts, posted, Duration::from_secs(60)).await;
    balanced(&s, &["b"], Duration::from_secs(90)).await;
    let status = a.wait_exit(Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let twice = not_once(&s, &texts);
    eprintln!(
        "SIGTERM: {}; the old pod exited {status:?}; not sent once: {twice:?}",
        describe(&got)
    );
    assert!(status.success(), "{status:?}");
    assert_eq!(s.dead_letters().await, 0);
    assert!(
        twice.is_empty(),
        "{} of 8 slow updates were not sent exactly once when their pod was stopped by \
         SIGTERM: {twice:?}",
        twice.len()
    );
}

/// As above, with the old pod killed -9 2 s after the slow updates came; each of its
/// chats has a second update behind the slow one, and the other pod's chats have slow
/// updates too. Only a call in flight at the kill may be sent again; every other reply
/// is sent once, and each chat's second reply comes after its first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_during_slow_handlers_runs_each_update_once_when_the_old_pod_is_killed_9() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stack::start().await;
    let mut a = handover_worker(&s, "a").await;
    let _b = handover_worker(&s, "b").await;
    let before = balanced(&s, &["a", "b"], Duration::from_secs(30)).await;
    let on_a = chats_in_distinct_partitions(75_000, 8, Some(&held_by(&before, "a")));
    let on_b = chats_in_distinct_partitions(75_000, 4, Some(&held_by(&before, "b")));
    let posted = SystemTime::now();
    let mut texts = post_slow(&s, "k", 750_000, &on_a).await;
    texts.extend(post_slow(&s, "k", 750_100, &on_b).await);
    let mut seconds = Vec::new();
    for (i, chat) in on_a.iter().enumerate() {
        let t = format!("second{chat}");
        assert_eq!(s.post(&text(750_200 + i as i64, *chat, &t)).await, 200);
        seconds.push(t);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.kill9();
    let killed = SystemTime::now();
    let all: Vec<String> = texts.iter().chain(&seconds).cloned().collect();
    let got = wait_answered(&s, &all, posted, Duration::from_secs(60)).await;
    balanced(&s, &["b"], Duration::from_secs(30)).await;
    // Every slow call (the dead pod's ones too) is answered by now.
    let until = posted + SLOW + Duration::from_secs(3);
    if let Ok(left) = until.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    let in_flight = |c: &RecordedCall| c.received <= killed && killed <= c.at;
    let mut wrong = Vec::new();
    for t in &all {
        let calls = sent(&s, t);
        let extra = calls.len().saturating_sub(1);
        let allowed = calls.iter().filter(|c| in_flight(c)).count();
        if calls.is_empty() || extra > allowed {
            wrong.push((t.clone(), calls.len(), allowed));
        }
    }
    // Order: each chat's second reply after (the first copy of) its first.
    let mut out_of_order = Vec::new();
    for chat in &on_a {
        let first = sent(&s, &format!("k{chat}"));
        let second = sent(&s, &format!("second{chat}"));
        if let (Some(f), Some(l)) = (first.first(), second.first())
            && l.received < f.received
        {
            out_of_order.push(*chat);
        }
    }
    eprintln!(
        "kill -9: {}; (text, sent, of them in flight at the kill) wrong: {wrong:?}; second \
         before first: {out_of_order:?}",
        describe(&got)
    );
    assert_eq!(s.dead_letters().await, 0);
    assert!(
        wrong.is_empty(),
        "replies sent again though not in flight at the kill, or never: (text, times sent, \
         in flight at the kill) {wrong:?}"
    );
    assert!(
        out_of_order.is_empty(),
        "chats whose second update was answered before the first: {out_of_order:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Bots share a pod's slots.
// ---------------------------------------------------------------------------------------

/// Publishes `per_chat` texts to each of `chats` for `bot` straight into the update
/// stream, as the ingress would (subject, headers), without waiting on HTTP: a backlog.
async fn publish_backlog(
    s: &Stack,
    bot: u64,
    first_id: i64,
    chats: std::ops::Range<i64>,
    per_chat: i64,
) {
    let n = chats.end - chats.start;
    let mut acks = Vec::new();
    for i in 0..per_chat {
        for chat in chats.clone() {
            let id = first_id + i * n + (chat - chats.start);
            let body = text(id, chat, &format!("a{chat}-{i}")).to_string();
            let env = Envelope::from_body(
                BotId(bot),
                body.into_bytes().into(),
                NonZeroU16::new(64).unwrap(),
                0,
            )
            .expect("an update");
            let (subject, headers, body) = env.into_message();
            acks.push(
                s.js.publish_with_headers(subject, headers, body)
                    .await
                    .expect("published"),
            );
        }
        // Bounded pipelining.
        for ack in acks.drain(..) {
            ack.await.expect("stored");
        }
    }
}

/// Two bots on one lane, 8 slots, the Bot API answering in 100 ms: bot A has 10,000
/// updates queued over 1000 chats; 2 s later bot B's 10 chats send one update each: B's
/// 10 are answered within 2 s of being sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bots_flood_does_not_starve_another_bot() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stack::two_bots(SinkConfig {
        latency: Duration::from_millis(100),
        ..SinkConfig::default()
    })
    .await;
    let _w = s.worker(&[("TGPIPE_CONCURRENCY", "8")]).await;
    let started = Instant::now();
    publish_backlog(&s, BOT, 760_000, 76_000..77_000, 10).await;
    eprintln!(
        "bot A: 10,000 updates over 1000 chats published in {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let texts: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
    let at = SystemTime::now();
    let posts = texts.iter().enumerate().map(|(i, t)| {
        let body = text(780_000 + i as i64, 78_000 + i as i64, t).to_string();
        let s = &s;
        async move { s.post_as(BOT_B, SECRET_B, body).await }
    });
    for status in futures::future::join_all(posts).await {
        assert_eq!(status, 200);
    }
    // Waits longer than the promise for the figure.
    let got = wait_answered(&s, &texts, at, Duration::from_secs(40)).await;
    let of_a = s
        .calls_of("sendMessage")
        .iter()
        .filter(|c| c.bot_id == Some(BOT))
        .count();
    eprintln!(
        "bot B beside bot A's 10,000: {}; bot A had {of_a} replies by then",
        describe(&got)
    );
    let b_calls = s
        .calls_of("sendMessage")
        .into_iter()
        .filter(|c| texts.contains(&text_of(c)))
        .all(|c| c.bot_id == Some(BOT_B));
    assert!(b_calls, "bot B's replies go out with bot B's token");
    let slowest = got
        .iter()
        .map(|t| t.unwrap_or(Duration::MAX))
        .max()
        .unwrap();
    assert!(
        slowest < Duration::from_secs(2),
        "bot B's 10 updates beside bot A's 10,000 queued: {}",
        describe(&got)
    );
}

// ---------------------------------------------------------------------------------------
// Epochs only grow.
// ---------------------------------------------------------------------------------------

/// Worker settings of the bucket test: a fenced update fails for good within seconds
/// (two attempts, a 3 s budget), so that a refusal shows as a dead letter.
const FENCE: &[(&str, &str)] = &[("TGPIPE_RETRY_BUDGET", "3s"), ("TGPIPE_MAX_DELIVER", "2")];

/// 20 chats in the middle of `/form` (FSM state written under their partitions'
/// epochs, after the bucket's revisions grew as they do over a pod's life); the workers
/// stop, the group bucket is deleted, and a worker starts again (creating it anew, its
/// revisions from 1); each chat then sends its name: every one is answered (the form's
/// next step, so the state was read and written), none refused as fenced, nothing
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreating_the_group_bucket_refuses_no_fsm_write() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stack::start().await;
    let mut a = s.worker(FENCE).await;
    // A bucket that has lived: its revisions grew (renewals do that over time), so the
    // leases taken now have large epochs.
    let kv = s.js.get_key_value("tgpipe_groups").await.expect("bucket");
    for i in 0..300 {
        kv.put(format!("aged.{i}"), "x".into()).await.expect("put");
    }
    let status = a.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let mut a = s.worker(FENCE).await;
    eventually(
        Duration::from_secs(30),
        "the pod holds every partition",
        || async { owners(&s).await.len() == usize::from(stack::PARTITIONS) },
    )
    .await;
    let chats: Vec<i64> = (79_000..79_020).collect();
    let at = SystemTime::now();
    for (i, chat) in chats.iter().enumerate() {
        assert_eq!(s.post(&text(790_000 + i as i64, *chat, "/form")).await, 200);
    }
    let asked = wait_answered(
        &s,
        &["What is your name?".to_owned()],
        at,
        Duration::from_secs(30),
    )
    .await;
    assert!(asked[0].is_some());
    eventually(
        Duration::from_secs(30),
        "every chat is in the form",
        || async { sent(&s, "What is your name?").len() == chats.len() },
    )
    .await;
    // The group bucket deleted and created anew by the next pod.
    let status = a.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    s.js.delete_key_value("tgpipe_groups")
        .await
        .expect("bucket deleted");
    let _a = s.worker(FENCE).await;
    let at = SystemTime::now();
    for (i, chat) in chats.iter().enumerate() {
        assert_eq!(s.post(&text(790_100 + i as i64, *chat, "Ann")).await, 200);
    }
    let answered = || {
        s.calls_of("sendMessage")
            .iter()
            .filter(|c| c.status == 200 && text_of(c) == "How old are you?")
            .map(chat_of)
            .collect::<BTreeSet<i64>>()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered().len() < chats.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = SystemTime::now().duration_since(at).unwrap_or_default();
    let answered = answered();
    let dead = s.dead_letters().await;
    let errors: Vec<String> = if dead > 0 {
        s.wait_dead_letters(dead)
            .await
            .iter()
            .map(|m| stack::header(m, "Tg-Error"))
            .collect()
    } else {
        Vec::new()
    };
    let first_error = errors.first().cloned().unwrap_or_default();
    eprintln!(
        "bucket recreated: {} of {} chats went on with the form (after {took:?}), {dead} dead \
         letters, the first: {first_error:?}",
        answered.len(),
        chats.len()
    );
    assert_eq!(
        dead, 0,
        "{dead} updates dead-lettered after the group bucket was recreated, the first: \
         {first_error:?}"
    );
    assert_eq!(
        answered.len(),
        chats.len(),
        "chats whose FSM write was refused after the group bucket was recreated: {:?}",
        chats
            .iter()
            .filter(|c| !answered.contains(c))
            .collect::<Vec<_>>()
    );
}
