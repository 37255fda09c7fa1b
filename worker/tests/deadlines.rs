//! Updates Telegram no longer takes an answer to are settled as expired, never run
//! late: a backlog of old button presses costs neither failing `answerCallbackQuery`
//! calls nor the chat's time, and the updates after them are answered.

mod stack;

use std::num::NonZeroU16;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use stack::{BOT, Stack, callback, chat_of, text, text_of};
use tgpipe_shared::{BotId, Envelope};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Stores `update` as the ingress did when Telegram delivered it at `received_at_ms`.
async fn stored_at(s: &Stack, update: &serde_json::Value, received_at_ms: u64) {
    let env = Envelope::from_body(
        BotId(BOT),
        Bytes::from(update.to_string()),
        NonZeroU16::new(64).unwrap(),
        received_at_ms,
    )
    .unwrap();
    let (subject, headers, body) = env.into_message();
    s.js.publish_with_headers(subject, headers, body)
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_queries_from_a_200s_backlog_were_run_and_every_answer_failed() {
    let s = Stack::start().await;
    // The workers were down for 200 s: 20 presses over 4 chats waited in the stream.
    let long_ago = now_ms() - 200_000;
    for i in 0..20i64 {
        stored_at(&s, &callback(900 + i, 9_000 + i % 4, "menu:tea"), long_ago).await;
    }
    // After them, in the same chats, a fresh press and a message each.
    for chat in 9_000..9_004i64 {
        assert_eq!(
            s.post(&callback(950 + chat, chat, "menu:coffee")).await,
            200
        );
        assert_eq!(s.post(&text(960 + chat, chat, "still there?")).await, 200);
    }
    // Telegram's deadlines are the default: nothing to set.
    let w = s.worker(&[]).await;
    let answered = s
        .wait_for("answerCallbackQuery", 4, Duration::from_secs(20))
        .await;
    // 20 chats told that their stale button must be pressed again, 4 echoes.
    s.wait_for("sendMessage", 24, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stale, replies): (Vec<_>, Vec<_>) = s
        .calls_of("sendMessage")
        .into_iter()
        .partition(|c| text_of(c).starts_with("That button waited"));
    assert_eq!(stale.len(), 20);
    for call in &stale {
        let waited: u64 = text_of(call)
            .trim_start_matches("That button waited ")
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((200..230).contains(&waited), "{}", text_of(call));
    }
    let mut ids: Vec<String> = s
        .calls_of("answerCallbackQuery")
        .iter()
        .map(|c| c.params["callback_query_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["cq9950", "cq9951", "cq9952", "cq9953"],
        "only the fresh presses"
    );
    assert_eq!(answered.len(), 4);
    assert_eq!(s.calls_of("editMessageText").len(), 4);
    let mut chats: Vec<i64> = replies.iter().map(chat_of).collect();
    chats.sort();
    assert_eq!(chats, [9_000, 9_001, 9_002, 9_003]);
    assert!(replies.iter().all(|r| text_of(r) == "still there?"));
    let metrics = w.metrics().await;
    assert!(
        metrics.contains(
            r#"tgpipe_worker_outcomes_total{kind="callback_query",outcome="expired"} 20"#
        ),
        "{metrics}"
    );
    assert_eq!(s.dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_set_in_tgpipe_deadlines_counts_from_the_ingress() {
    let s = Stack::start().await;
    // Stamped by the ingress now; 2.5 s later, past a 2 s deadline.
    assert_eq!(s.post(&callback(1, 9_100, "menu:tea")).await, 200);
    assert_eq!(s.post(&text(2, 9_100, "hello")).await, 200);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let w = s
        .worker(&[("TGPIPE_DEADLINES", "callback_query=2s,message=1h")])
        .await;
    // The chat is told its button went stale, then its message is answered: by then
    // the press before it was settled.
    let sent = s.wait_for("sendMessage", 2, Duration::from_secs(20)).await;
    assert!(
        text_of(&sent[0]).starts_with("That button waited 2 s"),
        "{}",
        text_of(&sent[0])
    );
    assert_eq!(text_of(&sent[1]), "hello");
    assert!(s.calls_of("answerCallbackQuery").is_empty());
    let metrics = w.metrics().await;
    assert!(
        metrics
            .contains(r#"tgpipe_worker_outcomes_total{kind="callback_query",outcome="expired"} 1"#),
        "{metrics}"
    );
    // A fresh press is answered.
    assert_eq!(s.post(&callback(3, 9_100, "menu:juice")).await, 200);
    s.wait_for("answerCallbackQuery", 1, Duration::from_secs(20))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_for_a_misspelt_kind_stops_the_worker_with_exit_64() {
    let s = Stack::start().await;
    let out = s.run_to_exit(&[("TGPIPE_DEADLINES", "callback_qery=60s")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("TGPIPE_DEADLINES") && stderr.contains("`callback_qery`"),
        "{stderr}"
    );
}

/// How many replies to a backlog's messages were sent after a button press was answered,
/// with one run slot and 100 ms a Bot API call: the press comes while the backlog waits
/// for the slot.
async fn replies_after_the_press(interactive_first: &str) -> usize {
    let s = Stack::with_latency(Duration::from_millis(100)).await;
    // A backlog: 30 chats wrote while no worker ran.
    for chat in 9_200..9_230i64 {
        assert_eq!(s.post(&text(chat, chat, "queued")).await, 200);
    }
    let _w = s
        .worker(&[
            ("TGPIPE_CONCURRENCY", "1"),
            ("TGPIPE_INTERACTIVE_FIRST", interactive_first),
        ])
        .await;
    // The backlog is pulled and waits for the slot (about 2 s of it left): a user presses
    // a button.
    s.wait_for("sendMessage", 8, Duration::from_secs(30)).await;
    assert_eq!(s.post(&callback(1, 9_300, "menu:tea")).await, 200);
    let press = s
        .wait_for("answerCallbackQuery", 1, Duration::from_secs(30))
        .await;
    s.wait_for("sendMessage", 30, Duration::from_secs(30)).await;
    s.calls_of("sendMessage")
        .iter()
        .filter(|c| c.seq > press[0].seq)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_button_press_waited_behind_every_queued_message_of_its_bot() {
    let first = replies_after_the_press("true").await;
    let last = replies_after_the_press("false").await;
    eprintln!("replies after the press: {first} interactive first, {last} in arrival order");
    // Interactive first: the press takes the next free slot, ahead of the ~20 left.
    assert!(first >= 10, "only {first} replies came after the press");
    // In arrival order it waits for every message that was waiting before it.
    assert!(
        last <= 1,
        "{last} replies came after the press in arrival order"
    );
}
