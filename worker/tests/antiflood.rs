//! Anti-flood across worker processes: two `tgpipe-example-bot` workers sharing one
//! Redis, configured as a user would (`EXAMPLE_ANTIFLOOD`), each receiving part of one
//! user's updates. The limit must hold for their sum, not for each process.

mod stack;

use std::time::Duration;

use stack::{Stack, Worker, callback, text};
use tgpipe_testkit::eventually_ok;

/// The limit of these tests, per user, over a window longer than any test.
const LIMIT: usize = 4;
const SETTING: &str = "4/600";

/// The user, in their private chat (a text's sender is the chat's user).
const USER: i64 = 5001;

/// A counter in a worker's metrics, its series added up (0 when absent).
async fn counter(w: &Worker, name: &str) -> u64 {
    let text = w.metrics().await;
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The user's updates reach two workers: texts go to the `chat` lane's process, button
/// presses to the `buttons` lane's. Each worker counts into the same Redis key, so
/// after four handled updates (two on each) the other eight are dropped; counted per
/// process, each worker would have let four through, eight in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_updates_on_two_workers_are_limited_for_their_sum() {
    let s = Stack::start().await;
    let flood = ("EXAMPLE_ANTIFLOOD", SETTING);
    let chat = s
        .worker(&[
            ("TGPIPE_LANE", "chat"),
            ("TGPIPE_LANE_KINDS", "message,timer"),
            flood,
        ])
        .await;
    let buttons = s
        .worker(&[
            ("TGPIPE_LANE", "buttons"),
            ("TGPIPE_LANE_KINDS", "callback_query"),
            flood,
        ])
        .await;

    // Within the limit, one at a time and alternating, each answered before the next:
    // both workers count, and both handle.
    let mut id = 70_000;
    for i in 0..LIMIT {
        id += 1;
        let n = i / 2 + 1;
        if i % 2 == 0 {
            assert_eq!(s.post(&text(id, USER, &format!("hi {i}"))).await, 200);
            s.wait_for("sendMessage", n, Duration::from_secs(20)).await;
        } else {
            assert_eq!(s.post(&callback(id, USER, "menu:tea")).await, 200);
            s.wait_for("answerCallbackQuery", n, Duration::from_secs(20))
                .await;
        }
    }
    // Over the limit: twice as many again, half to each worker.
    for i in 0..2 * LIMIT {
        id += 1;
        let update = if i % 2 == 0 {
            text(id, USER, &format!("flood {i}"))
        } else {
            callback(id, USER, "menu:coffee")
        };
        assert_eq!(s.post(&update).await, 200);
    }
    // Every update consumed and settled.
    // Half of the first four and half of the flood each.
    let each = (LIMIT / 2 + LIMIT) as u64;
    eventually_ok(Duration::from_secs(30), "the flood is consumed", || async {
        let texts = counter(&chat, r#"tgpipe_worker_consumed_total{kind="message"}"#).await;
        let presses = counter(
            &buttons,
            r#"tgpipe_worker_consumed_total{kind="callback_query"}"#,
        )
        .await;
        let (c, b) = (s.lane_info("chat").await, s.lane_info("buttons").await);
        let idle = c.num_pending + b.num_pending == 0 && c.num_ack_pending + b.num_ack_pending == 0;
        if texts == each && presses == each && idle {
            Ok(())
        } else {
            Err(format!("{texts} texts, {presses} presses, {c:?}, {b:?}"))
        }
    })
    .await;
    // The two workers dropped the eight between them, each its part.
    let dropped = (
        counter(&chat, "tgpipe_antiflood_dropped_total").await,
        counter(&buttons, "tgpipe_antiflood_dropped_total").await,
    );
    assert_eq!(dropped.0 + dropped.1, 2 * LIMIT as u64, "{dropped:?}");
    assert!(dropped.0 > 0 && dropped.1 > 0, "{dropped:?}");

    // Handled over the window: the limit, for the two workers together.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let echoes = s.calls_of("sendMessage");
    let answers = s.calls_of("answerCallbackQuery");
    assert_eq!(
        echoes.len() + answers.len(),
        LIMIT,
        "{} echoes and {} answers",
        echoes.len(),
        answers.len()
    );
    assert!(
        !echoes
            .iter()
            .chain(&answers)
            .any(|c| format!("{:?}", c.params).contains("flood")
                || format!("{:?}", c.params).contains("coffee")),
        "an update over the limit was handled"
    );
    assert_eq!(s.dead_letters().await, 0, "dropped, not failed");
}
