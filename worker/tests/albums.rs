//! Albums end to end: the parts of a media group, posted to the ingresses in any order,
//! reach the example bot's album handler once, all together, in album order; through a
//! kill -9 of their owner too. One NATS server, Redis, the ingress in process (and
//! ingress processes), the Bot API stand-in, worker processes of the example bot.

mod stack;

use std::time::Duration;

use serde_json::{Value, json};
use stack::{Stack, balanced, chat_of, gauge, header, partition_of, text, text_of};
use tgpipe_testkit::eventually;
use tgpipe_testkit::sink::Fault;

/// A photo of album `group` from Ann in her private chat `chat`; its `message_id` is
/// its `update_id`.
fn photo(update_id: i64, chat: i64, group: &str) -> Value {
    json!({"update_id": update_id, "message": {
        "message_id": update_id, "date": 1_732_400_000, "media_group_id": group,
        "chat": {"id": chat, "type": "private", "first_name": "Ann"},
        "from": {"id": chat, "is_bot": false, "first_name": "Ann"},
        "photo": [{"file_id": format!("f{update_id}"), "file_unique_id": format!("u{update_id}"),
            "width": 90, "height": 90}]}})
}

/// The texts the bot sent to `chat`, in order.
fn sent_to(s: &Stack, chat: i64) -> Vec<String> {
    s.calls_of("sendMessage")
        .iter()
        .filter(|c| chat_of(c) == chat)
        .map(text_of)
        .collect()
}

/// The example bot's answer to an album of these message ids.
fn answer(ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    let parts = if ids.len() == 1 { "part" } else { "parts" };
    format!("album of {} {parts}: {}", ids.len(), list.join(","))
}

/// Waits until `chat` got `n` messages, then a little longer to see that no more come.
async fn settled_replies(s: &Stack, chat: i64, n: usize) -> Vec<String> {
    eventually(
        Duration::from_secs(40),
        &format!("{n} replies to {chat}"),
        || async { sent_to(s, chat).len() >= n },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sent_to(s, chat)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_album_over_two_ingresses_is_handled_once_with_every_part_in_order() {
    let s = Stack::start().await;
    let _w = s.worker(&[("TGPIPE_ALBUM_QUIET", "2s")]).await;
    let ingresses = [s.ingress_process().await, s.ingress_process().await];
    let chat = 8101;
    // Shuffled, alternately to the two ingresses, all at once.
    let order = [105, 101, 109, 103, 110, 102, 107, 104, 108, 106];
    let posts = order.iter().enumerate().map(|(i, id)| {
        let ingress = &ingresses[i % 2];
        async move { ingress.post(&photo(*id, chat, "album-1")).await }
    });
    let statuses = futures::future::join_all(posts).await;
    let posted = std::time::Instant::now();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    eventually(Duration::from_secs(20), "the album's answer", || async {
        !sent_to(&s, chat).is_empty()
    })
    .await;
    // Ten parts, Telegram's most, complete the album: no quiet time to wait out.
    let took = posted.elapsed();
    eprintln!("the album was answered {took:?} after its last part was stored (quiet 2 s)");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let replies = settled_replies(&s, chat, 1).await;
    let ids: Vec<i64> = (101..=110).collect();
    assert_eq!(
        replies,
        [answer(&ids)],
        "one answer, with the 10 parts in order"
    );
    let m = _w.metrics().await;
    assert_eq!(
        gauge(&m, r#"tgpipe_worker_albums_total{outcome="handled"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        gauge(&m, r#"tgpipe_worker_album_parts_total{outcome="handled"}"#),
        10.0
    );
    assert_eq!(
        gauge(
            &m,
            r#"tgpipe_worker_outcomes_total{kind="message",outcome="handled"}"#
        ),
        10.0,
        "each part counts as handled"
    );
    let info = s.lane_info("default").await;
    assert_eq!(info.num_ack_pending, 0, "every part is acknowledged");
}

/// How the album's owner goes away mid-album.
#[derive(Clone, Copy, Debug)]
enum Gone {
    /// `kill -9`: its leases lapse, and the next owner replays the parts it held.
    Killed,
    /// SIGTERM: it hands the partition over and returns the parts it held.
    Stopped,
}

/// Parts 1-5 of an album reach its owner through one ingress, the owner goes, and parts
/// 6-10 come through another ingress process: the next owner answers once, with all 10.
async fn album_through_a_lost_owner(gone: Gone, chat: i64, first_id: i64) {
    let s = Stack::start().await;
    let other_ingress = s.ingress_process().await;
    // A quiet time long enough for the owner to go while it collects.
    let env = |name| {
        [
            ("TGPIPE_MEMBER", name),
            ("TGPIPE_ALBUM_QUIET", "5s"),
            ("TGPIPE_LEASE_TTL", "5s"),
        ]
    };
    let mut workers = [s.worker(&env("a")).await, s.worker(&env("b")).await];
    let owners = balanced(&s, &["a", "b"]).await;
    let owner = &owners[&partition_of(chat)];
    let (dying, next) = if owner.starts_with("a-") {
        (0, 1)
    } else {
        (1, 0)
    };
    let group = format!("album-{chat}");
    for id in first_id..first_id + 5 {
        assert_eq!(s.post(&photo(id, chat, &group)).await, 200);
    }
    // The owner holds parts 1-5, collecting.
    let collecting = &workers[dying];
    eventually(
        Duration::from_secs(10),
        "the owner collects 5 parts",
        || async {
            gauge(
                &collecting.metrics().await,
                "tgpipe_worker_album_parts_collected_total",
            ) >= 5.0
        },
    )
    .await;
    assert!(
        sent_to(&s, chat).is_empty(),
        "the album is not complete yet"
    );
    match gone {
        Gone::Killed => workers[dying].kill9(),
        Gone::Stopped => workers[dying].sigterm(),
    }
    let posts = (first_id + 5..first_id + 10).map(|id| {
        let (ingress, group) = (&other_ingress, &group);
        async move { ingress.post(&photo(id, chat, group)).await }
    });
    let statuses = futures::future::join_all(posts).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let replies = settled_replies(&s, chat, 1).await;
    let ids: Vec<i64> = (first_id..first_id + 10).collect();
    assert_eq!(
        replies,
        [answer(&ids)],
        "one answer, by the next owner ({gone:?})"
    );
    let m = workers[next].metrics().await;
    assert_eq!(
        gauge(&m, r#"tgpipe_worker_albums_total{outcome="handled"}"#),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_album_whose_owner_was_killed_mid_album_is_handled_once_by_the_next_owner() {
    album_through_a_lost_owner(Gone::Killed, 8202, 201).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_album_whose_owner_handed_over_mid_album_is_handled_once_by_the_next_owner() {
    album_through_a_lost_owner(Gone::Stopped, 8212, 211).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_after_an_album_is_answered_after_the_albums_answer() {
    let s = Stack::start().await;
    let _w = s.worker(&[("TGPIPE_ALBUM_QUIET", "5s")]).await;
    let chat = 8303;
    for id in 301..=303 {
        assert_eq!(s.post(&photo(id, chat, "album-3")).await, 200);
    }
    assert_eq!(s.post(&text(304, chat, "after the album")).await, 200);
    let posted = std::time::Instant::now();
    eventually(Duration::from_secs(20), "two replies", || async {
        sent_to(&s, chat).len() >= 2
    })
    .await;
    // The text ended the album: nothing waited out the 5 s quiet time.
    assert!(
        posted.elapsed() < Duration::from_secs(4),
        "{:?}",
        posted.elapsed()
    );
    let replies = settled_replies(&s, chat, 2).await;
    assert_eq!(
        replies,
        [answer(&[301, 302, 303]), "after the album".into()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_that_comes_after_the_quiet_time_is_an_album_of_its_own() {
    let s = Stack::start().await;
    let _w = s.worker(&[]).await;
    let chat = 8404;
    for id in [402, 401] {
        assert_eq!(s.post(&photo(id, chat, "album-4")).await, 200);
    }
    // Two parts: the album waits out the quiet time (1 s) for a third.
    let posted = std::time::Instant::now();
    eventually(Duration::from_secs(20), "the album's answer", || async {
        !sent_to(&s, chat).is_empty()
    })
    .await;
    let took = posted.elapsed();
    eprintln!("the album was answered {took:?} after its last part was stored (quiet 1 s)");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(settled_replies(&s, chat, 1).await, [answer(&[401, 402])]);
    // A straggler of the same album, after its handler ran.
    assert_eq!(s.post(&photo(403, chat, "album-4")).await, 200);
    assert_eq!(
        settled_replies(&s, chat, 2).await,
        [answer(&[401, 402]), answer(&[403])]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_album_collection_off_the_parts_reach_message_handlers_one_by_one() {
    let s = Stack::start().await;
    let w = s.worker(&[("TGPIPE_ALBUM_QUIET", "0")]).await;
    let chat = 8505;
    for id in 501..=503 {
        assert_eq!(s.post(&photo(id, chat, "album-5")).await, 200);
    }
    // The example bot's message handlers take no photo: each part is its own unhandled
    // update, and nothing answers.
    eventually(Duration::from_secs(20), "3 parts settled", || async {
        gauge(
            &w.metrics().await,
            r#"tgpipe_worker_outcomes_total{kind="message",outcome="unhandled"}"#,
        ) >= 3.0
    })
    .await;
    let m = w.metrics().await;
    assert_eq!(gauge(&m, "tgpipe_worker_albums_total"), 0.0, "{m}");
    assert_eq!(gauge(&m, "tgpipe_worker_album_parts_collected_total"), 0.0);
    assert!(sent_to(&s, chat).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_album_whose_handler_failed_transiently_runs_again_with_every_part() {
    let s = Stack::start().await;
    let w = s.worker(&[]).await;
    let chat = 8606;
    s.sink
        .push_chat_fault("sendMessage", chat, Fault::server(502));
    for id in [603, 601, 602] {
        assert_eq!(s.post(&photo(id, chat, "album-6")).await, 200);
    }
    // The failed call and its retry, each with every part.
    let replies = settled_replies(&s, chat, 2).await;
    assert_eq!(
        replies,
        [answer(&[601, 602, 603]), answer(&[601, 602, 603])]
    );
    let m = w.metrics().await;
    assert_eq!(
        gauge(&m, r#"tgpipe_worker_albums_total{outcome="handled"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(s.lane_info("default").await.num_ack_pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_album_whose_handler_failed_for_good_is_dead_lettered_part_by_part() {
    let s = Stack::start().await;
    let _w = s.worker(&[]).await;
    let chat = 8707;
    s.sink
        .push_chat_fault("sendMessage", chat, Fault::bad_request("chat not found"));
    for id in 701..=703 {
        assert_eq!(s.post(&photo(id, chat, "album-7")).await, 200);
    }
    let letters = s.wait_dead_letters(3).await;
    let mut ids: Vec<i64> = letters
        .iter()
        .map(|m| {
            serde_json::from_slice::<Value>(&m.payload).unwrap()["update_id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [701, 702, 703], "every part, once");
    let errors: Vec<String> = letters.iter().map(|m| header(m, "Tg-Error")).collect();
    assert!(errors[0].contains("chat not found"), "{errors:?}");
    assert!(
        errors.iter().all(|e| *e == errors[0]),
        "one error: {errors:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.dead_letters().await, 3);
    assert_eq!(s.lane_info("default").await.num_ack_pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_album_delivered_again_after_it_was_handled_is_acknowledged_as_a_duplicate() {
    use std::num::NonZeroU16;
    use tgpipe_shared::{BotId, Envelope};

    let s = Stack::start().await;
    let w = s.worker(&[]).await;
    let chat = 8808;
    let parts: Vec<Value> = (801..=803).map(|id| photo(id, chat, "album-8")).collect();
    for p in &parts {
        assert_eq!(s.post(p).await, 200);
    }
    assert_eq!(
        settled_replies(&s, chat, 1).await,
        [answer(&[801, 802, 803])]
    );
    // The same parts again, past the stream's dedupe window (other message ids).
    for p in &parts {
        let env = Envelope::from_body(
            BotId(stack::BOT),
            p.to_string().into_bytes().into(),
            NonZeroU16::new(64).unwrap(),
            0,
        )
        .unwrap();
        // As a process other than the ingress would store it: the body is read again.
        let (subject, _, body) = env.into_message();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("4242:{}-after-the-window", p["update_id"]),
        );
        s.js.publish_with_headers(subject, headers, body)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    eventually(
        Duration::from_secs(20),
        "the album found finished",
        || async {
            gauge(
                &w.metrics().await,
                r#"tgpipe_worker_albums_total{outcome="duplicate"}"#,
            ) >= 1.0
        },
    )
    .await;
    let m = w.metrics().await;
    assert_eq!(
        gauge(
            &m,
            r#"tgpipe_worker_album_parts_total{outcome="duplicate"}"#
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        sent_to(&s, chat),
        [answer(&[801, 802, 803])],
        "answered once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_album_collected_longer_than_the_ack_wait_keeps_its_parts() {
    let s = Stack::start().await;
    // Without in-progress acks the server would redeliver the parts after 1 s, while
    // the album waits 3 s for a third part.
    let _w = s
        .worker(&[("TGPIPE_ACK_WAIT", "1s"), ("TGPIPE_ALBUM_QUIET", "3s")])
        .await;
    let chat = 8909;
    for id in [901, 902] {
        assert_eq!(s.post(&photo(id, chat, "album-9")).await, 200);
    }
    // Twice the ack wait into the collection.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let info = s.lane_info("default").await;
    assert!(sent_to(&s, chat).is_empty(), "still collecting");
    assert_eq!(info.num_ack_pending, 2, "{info:?}");
    assert_eq!(info.num_redelivered, 0, "{info:?}");
    assert_eq!(settled_replies(&s, chat, 1).await, [answer(&[901, 902])]);
    assert_eq!(s.lane_info("default").await.num_ack_pending, 0);
}
