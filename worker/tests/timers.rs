//! Durable timers end to end: the example bot's `/remind` and its form's timeout, kept
//! by JetStream (message schedules) and run by the chat's owner, through restarts.

mod stack;

use std::time::{Duration, SystemTime};

use stack::{Stack, chat_of, text, text_of};
use tgpipe_testkit::sink::RecordedCall;

/// The bot's sendMessage calls into `chat` whose text starts with `prefix`.
fn said(s: &Stack, chat: i64, prefix: &str) -> Vec<RecordedCall> {
    s.calls_of("sendMessage")
        .into_iter()
        .filter(|c| chat_of(c) == chat && text_of(c).starts_with(prefix))
        .collect()
}

async fn wait_said(s: &Stack, chat: i64, prefix: &str, limit: Duration) -> Vec<RecordedCall> {
    tgpipe_testkit::eventually_some(limit, &format!("`{prefix}` in chat {chat}"), || async {
        let calls = said(s, chat, prefix);
        (!calls.is_empty()).then_some(calls)
    })
    .await
}

fn after(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_comes_back_once_at_its_time() {
    let s = Stack::start().await;
    let _w = s.worker(&[]).await;
    assert_eq!(s.post(&text(1, 501, "/remind 2 tea")).await, 200);
    let ok = wait_said(
        &s,
        501,
        "I will remind you in 2 s.",
        Duration::from_secs(10),
    )
    .await;
    let back = wait_said(&s, 501, "Reminder: tea", Duration::from_secs(10)).await;
    let late = after(ok[0].received, back[0].received);
    eprintln!("reminder after {late:?}");
    assert!(late >= Duration::from_millis(1900), "{late:?}: too early");
    assert!(late < Duration::from_millis(3000), "{late:?}: too late");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(said(&s, 501, "Reminder: tea").len(), 1, "once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_outlives_the_worker_that_scheduled_it() {
    let s = Stack::start().await;
    let mut w = s.worker(&[]).await;
    assert_eq!(s.post(&text(1, 502, "/remind 3 the oven")).await, 200);
    let ok = wait_said(&s, 502, "I will remind you", Duration::from_secs(10)).await;
    // The only worker dies; another starts after the reminder's time.
    w.kill9();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _w2 = s.worker(&[]).await;
    let back = wait_said(&s, 502, "Reminder: the oven", Duration::from_secs(20)).await;
    eprintln!(
        "reminder after {:?}",
        after(ok[0].received, back[0].received)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(said(&s, 502, "Reminder: the oven").len(), 1, "once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_of_one_chat_do_not_replace_each_other_and_bad_ones_are_explained() {
    let s = Stack::start().await;
    let _w = s.worker(&[]).await;
    assert_eq!(s.post(&text(1, 503, "/remind 2 first")).await, 200);
    assert_eq!(s.post(&text(2, 503, "/remind 1 second")).await, 200);
    assert_eq!(s.post(&text(3, 503, "/remind soon")).await, 200);
    wait_said(&s, 503, "Reminder: first", Duration::from_secs(10)).await;
    let texts: Vec<String> = s
        .calls_of("sendMessage")
        .iter()
        .filter(|c| chat_of(c) == 503)
        .map(text_of)
        .collect();
    let second = texts.iter().position(|t| t == "Reminder: second");
    let first = texts.iter().position(|t| t == "Reminder: first");
    assert!(second.is_some() && second < first, "{texts:?}");
    assert!(
        texts.iter().any(|t| t == "Usage: /remind <seconds> <text>"),
        "{texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_left_silent_times_out_and_an_answered_one_does_not() {
    let s = Stack::start().await;
    let _w = s.worker(&[("EXAMPLE_FORM_TIMEOUT", "2")]).await;
    // Chat 601 starts the form and says nothing more.
    assert_eq!(s.post(&text(1, 601, "/form")).await, 200);
    // Chat 602 answers each question within the timeout, and finishes.
    assert_eq!(s.post(&text(2, 602, "/form")).await, 200);
    // Chat 603 answers the first question late in its window: the timeout starts again.
    assert_eq!(s.post(&text(3, 603, "/form")).await, 200);
    let asked = wait_said(&s, 601, "What is your name?", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(s.post(&text(4, 602, "Ann")).await, 200);
    assert_eq!(s.post(&text(5, 603, "Bob")).await, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(s.post(&text(6, 602, "33")).await, 200);

    let out = wait_said(&s, 601, "The form timed out.", Duration::from_secs(10)).await;
    let silent = after(asked[0].received, out[0].received);
    eprintln!("601 timed out after {silent:?}");
    assert!(
        silent >= Duration::from_millis(1900) && silent < Duration::from_secs(3),
        "{silent:?}"
    );
    let done = wait_said(
        &s,
        602,
        "Thank you, Ann: you are 33.",
        Duration::from_secs(10),
    )
    .await;
    let out3 = wait_said(&s, 603, "The form timed out.", Duration::from_secs(10)).await;
    let answered = said(&s, 603, "How old are you?");
    let late = after(answered[0].received, out3[0].received);
    eprintln!("603 timed out {late:?} after its answer");
    assert!(
        late >= Duration::from_millis(1900),
        "{late:?}: the answer did not restart it"
    );
    // After the timeout the form is over: a text is echoed again.
    assert_eq!(s.post(&text(7, 601, "hello")).await, 200);
    wait_said(&s, 601, "hello", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        said(&s, 602, "The form timed out.").is_empty(),
        "602 finished: {done:?}"
    );
    assert_eq!(said(&s, 601, "The form timed out.").len(), 1);
    assert_eq!(said(&s, 603, "The form timed out.").len(), 1);
}

/// An update stream created before timers (no message schedules): a handler that
/// schedules one is dead-lettered with what to do, and `provision --apply` makes timers
/// work on the same stream, for the worker already running too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_from_before_timers_refuses_them_until_provision_apply() {
    let s = Stack::start().await;
    let old = tgpipe_shared::stream::StreamSettings {
        timers: false,
        ..Default::default()
    }
    .updates_config();
    assert!(!old.allow_message_schedules);
    s.js.delete_stream("TG_UPDATES").await.unwrap();
    s.js.create_stream(old).await.unwrap();
    let _w = s.worker(&[]).await;
    assert_eq!(s.post(&text(1, 504, "/remind 1 tea")).await, 200);
    let letters = s.wait_dead_letters(1).await;
    let error = stack::header(&letters[0], "Tg-Error");
    assert!(
        error.contains("timers are unavailable") && error.contains("provision --apply"),
        "{error}"
    );

    let out = s.run_command(&["provision", "--apply"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config =
        s.js.get_stream("TG_UPDATES")
            .await
            .unwrap()
            .cached_info()
            .config
            .clone();
    assert!(config.allow_message_schedules);
    assert!(config.subjects.contains(&"tgtimer.>".to_owned()));

    // The worker looks again at most once a second while the stream cannot keep timers.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(s.post(&text(2, 504, "/remind 1 coffee")).await, 200);
    wait_said(&s, 504, "Reminder: coffee", Duration::from_secs(10)).await;
}

/// Messages in the update stream: with every update handled, the timers that wait.
async fn waiting(s: &Stack) -> u64 {
    let mut stream = s.js.get_stream("TG_UPDATES").await.unwrap();
    stream.info().await.unwrap().state.messages
}

async fn wait_waiting(s: &Stack, n: u64) {
    tgpipe_testkit::eventually(
        Duration::from_secs(10),
        &format!("{n} timers waiting"),
        || async { waiting(s).await == n },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_timeout_is_replaced_at_each_step_and_cancelled_with_the_form() {
    let s = Stack::start().await;
    let _w = s.worker(&[("EXAMPLE_FORM_TIMEOUT", "60")]).await;
    assert_eq!(s.post(&text(1, 605, "/form")).await, 200);
    wait_said(&s, 605, "What is your name?", Duration::from_secs(10)).await;
    wait_waiting(&s, 1).await;
    // Each answer schedules the timeout again: it replaces the one that waits.
    assert_eq!(s.post(&text(2, 605, "Ann")).await, 200);
    wait_said(&s, 605, "How old are you?", Duration::from_secs(10)).await;
    assert_eq!(s.post(&text(3, 605, "old enough")).await, 200);
    wait_said(&s, 605, "That is not an age", Duration::from_secs(10)).await;
    wait_waiting(&s, 1).await;
    // Leaving the form cancels it.
    assert_eq!(s.post(&text(4, 605, "/cancel")).await, 200);
    wait_said(&s, 605, "Cancelled.", Duration::from_secs(10)).await;
    wait_waiting(&s, 0).await;
    // So does finishing it.
    for (i, t) in [(5, "/form"), (6, "Bob"), (7, "33")] {
        assert_eq!(s.post(&text(i, 606, t)).await, 200);
    }
    wait_said(
        &s,
        606,
        "Thank you, Bob: you are 33.",
        Duration::from_secs(10),
    )
    .await;
    wait_waiting(&s, 0).await;
}

/// A timer fired twice (a new stream leader fires what the old one fired just before
/// it was lost) carries the same `update_id`: the second copy is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_fired_twice_runs_once() {
    use tgpipe_shared::timer::{TimerBody, TimerScope, fired_subject};
    use tgpipe_shared::{BotId, OrderingKey, Shard};
    let s = Stack::start().await;
    let _w = s.worker(&[]).await;
    let scope = TimerScope {
        bot: BotId(stack::BOT),
        chat_id: Some(507),
        user_id: Some(507),
        thread_id: None,
    };
    let body = TimerBody::new(-4_242, &scope, "remind:1", 0, 0, serde_json::json!("twice"));
    let shard = Shard::of(
        OrderingKey::Chat(507),
        std::num::NonZeroU16::new(64).unwrap(),
    );
    // As the scheduler publishes it: no message id (it strips `Nats-Msg-Id`).
    for _ in 0..2 {
        s.js.publish(
            fired_subject(BotId(stack::BOT), shard),
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    wait_said(&s, 507, "Reminder: twice", Duration::from_secs(10)).await;
    wait_waiting(&s, 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(said(&s, 507, "Reminder: twice").len(), 1);
}
