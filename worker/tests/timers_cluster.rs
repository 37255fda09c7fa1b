//! Durable timers on a 3-node NATS cluster: a thousand reminders scheduled over three
//! pods fire once each, on time, although a pod dies and the stream that keeps them
//! loses its leader while they wait.

mod stack;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stack::{Stack, chat_of, gauge, text, text_of};
use tgpipe_testkit::eventually;

/// The delay of chat `i`'s reminder, in seconds: spread so that they fire over 5 s.
fn delay_of(i: i64) -> u64 {
    30 + (i % 5) as u64
}

/// Signed milliseconds from `a` to `b`.
fn ms_between(a: SystemTime, b: SystemTime) -> i64 {
    match b.duration_since(a) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_timers_over_three_pods_fire_once_on_time_through_a_pod_kill_and_a_leader_loss()
{
    let mut s = Stack::cluster(Duration::ZERO).await;
    let mut pods = Vec::new();
    for name in ["a", "b", "c"] {
        pods.push(
            // The default lease TTL (5 s): a shorter one lets a leader election of
            // the ownership bucket, which can share the killed node, take leases away.
            s.worker(&[("TGPIPE_MEMBER", name)]).await,
        );
    }
    // Each chat asks for a reminder; the posts go in parallel, as Telegram's would.
    let shared = Arc::new(s);
    let mut posts = Vec::new();
    for part in 0..20i64 {
        let s = Arc::clone(&shared);
        posts.push(tokio::spawn(async move {
            for chat in (700_000 + part * 50)..(700_000 + (part + 1) * 50) {
                let i = chat - 700_000;
                let update = text(
                    10_000 + i,
                    chat,
                    &format!("/remind {} r{chat}", delay_of(i)),
                );
                while s.post(&update).await != 200 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for p in posts {
        p.await.unwrap();
    }
    let Ok(stack) = Arc::try_unwrap(shared) else {
        panic!("the posting tasks are done")
    };
    s = stack;
    let scheduled_by = |s: &Stack| {
        s.calls_of("sendMessage")
            .into_iter()
            .filter(|c| text_of(c).starts_with("I will remind you"))
            .map(|c| (chat_of(&c), c.received))
            .collect::<BTreeMap<i64, SystemTime>>()
    };
    eventually(
        Duration::from_secs(60),
        "1000 reminders scheduled",
        || async { scheduled_by(&s).len() == 1000 },
    )
    .await;
    let answered = scheduled_by(&s);
    // Each timer's own time, read from the stream where it waits.
    let due = waiting_timers(&s).await;
    assert_eq!(due.len(), 1000, "timers waiting in the stream");
    for (chat, at) in &answered {
        let asked = Duration::from_secs(delay_of(chat - 700_000));
        let gap = ms_between(due[chat], *at + asked);
        assert!(
            (0..2000).contains(&gap),
            "chat {chat}: due {gap} ms before its answer + {asked:?}"
        );
    }
    let first_due = *due.values().min().unwrap();
    eprintln!(
        "scheduled; the first is due in {:?}",
        first_due
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    );
    // While they wait, a pod dies without a word; once the others own its chats, the
    // node that leads the update stream, which keeps the timers, is killed too (another
    // leader is elected, and it fires them).
    pods[0].kill9();
    eventually(
        Duration::from_secs(20),
        "b and c own every partition",
        || async {
            let mut owned = 0.0;
            for pod in &pods[1..] {
                owned += gauge(&pod.metrics().await, "tgpipe_worker_partitions_owned");
            }
            owned == f64::from(stack::PARTITIONS)
        },
    )
    .await;
    let (leader, node) = s.nats.cluster().leader_of(&s.js, "TG_UPDATES").await;
    s.nats.cluster().kill(node);
    eprintln!(
        "pod a killed, its chats taken; update stream leader {leader} killed {:?} before the first timer",
        first_due
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    );
    assert!(
        SystemTime::now() < first_due,
        "the kills came after the first timer was due: the machine is too slow for this test"
    );

    let fired_by = |s: &Stack| {
        let mut out: BTreeMap<i64, Vec<SystemTime>> = BTreeMap::new();
        for c in s.calls_of("sendMessage") {
            if text_of(&c).starts_with("Reminder: r") {
                out.entry(chat_of(&c)).or_default().push(c.received);
            }
        }
        out
    };
    eventually(Duration::from_secs(60), "1000 reminders fired", || async {
        fired_by(&s).len() == 1000
    })
    .await;
    // Copies of a timer fired twice would come now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fired = fired_by(&s);
    let twice: Vec<_> = fired
        .iter()
        .filter(|(_, times)| times.len() > 1)
        .map(|(chat, times)| {
            let late: Vec<i64> = times.iter().map(|t| ms_between(due[chat], *t)).collect();
            (*chat, late)
        })
        .collect();
    assert!(
        twice.is_empty(),
        "reminders that came more than once (chat, ms after due): {twice:?}"
    );
    let mut lateness = Vec::new();
    for (chat, times) in &fired {
        assert_eq!(text_of_reminder(&s, *chat), format!("Reminder: r{chat}"));
        lateness.push(ms_between(due[chat], times[0]));
    }
    lateness.sort_unstable();
    let pick = |q: f64| lateness[((lateness.len() - 1) as f64 * q) as usize];
    eprintln!(
        "lateness ms (due to the reminder's sendMessage): min {} p50 {} p99 {} max {}",
        lateness[0],
        pick(0.5),
        pick(0.99),
        lateness[lateness.len() - 1]
    );
    assert!(
        lateness[0] >= 0,
        "a reminder came {} ms early",
        -lateness[0]
    );
    assert!(
        *lateness.last().unwrap() < 1000,
        "a reminder came {} ms late",
        lateness.last().unwrap()
    );
    assert_eq!(s.dead_letters().await, 0);
}

/// The timers waiting in the update stream: each chat's due time. Read by a consumer
/// of their subjects that acknowledges nothing (so they stay), deleted after.
async fn waiting_timers(s: &Stack) -> BTreeMap<i64, SystemTime> {
    use async_nats::jetstream::consumer::pull;
    use futures::StreamExt;
    let stream = s.js.get_stream("TG_UPDATES").await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            name: Some("test-timers".into()),
            filter_subject: "tgtimer.at.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    let mut batch = consumer
        .fetch()
        .max_messages(1000)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    while let Some(Ok(m)) = batch.next().await {
        let body: tgpipe_shared::timer::TimerBody = serde_json::from_slice(&m.payload).unwrap();
        let chat = body.timer.chat.unwrap().id;
        out.insert(chat, UNIX_EPOCH + Duration::from_millis(body.timer.due_at));
    }
    stream.delete_consumer("test-timers").await.unwrap();
    out
}

fn text_of_reminder(s: &Stack, chat: i64) -> String {
    s.calls_of("sendMessage")
        .iter()
        .filter(|c| chat_of(c) == chat && text_of(c).starts_with("Reminder: "))
        .map(text_of)
        .next()
        .unwrap_or_default()
}
