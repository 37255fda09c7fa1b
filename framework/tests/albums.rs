//! Album handlers: one call with every part of a media group, and what becomes of an
//! album no album handler takes.

mod common;

use common::{Log, bot};

use std::sync::Arc;

use frankenstein::types::{ChatType, Message};
use tgpipe::filter::chat_type;
use tgpipe::fsm::{Fsm, FsmContext, MemoryStorage};
use tgpipe::{
    Album, BuildError, Context, Dep, Dispatcher, Extensions, Next, ObserverKey, Outcome, Router,
    Update,
};
use tgpipe_shared::UpdateKind;

/// A photo of album `group` in chat 5, as a `kind` update (`message`, `channel_post`).
fn part_of(kind: &str, id: i64, group: &str) -> Update {
    let raw = format!(
        r#"{{"update_id":{id},"{kind}":{{"message_id":{id},"date":0,"chat":{{"id":5,"type":"private"}},"from":{{"id":5,"is_bot":false,"first_name":"A"}},"media_group_id":"{group}","photo":[{{"file_id":"f{id}","file_unique_id":"u{id}","width":1,"height":1}}]}}}}"#
    );
    Update::parse(bot().id(), raw.into()).expect("an update")
}

fn part(id: i64) -> Update {
    part_of("message", id, "g1")
}

async fn album_ids(Dep(log): Dep<Log>, album: Album, message: Arc<Message>) {
    let ids: Vec<String> = album.iter().map(|m| m.message_id.to_string()).collect();
    log.push(format!(
        "album {} of {}: {} (first {})",
        album.media_group_id(),
        album.len(),
        ids.join(","),
        message.message_id
    ));
}

async fn each_message(Dep(log): Dep<Log>, message: Arc<Message>) {
    log.push(format!("message {}", message.message_id));
}

fn dispatcher(router: Router, log: &Log) -> Dispatcher {
    Dispatcher::builder(router)
        .state(log.clone())
        .build()
        .expect("builds")
}

#[tokio::test]
async fn an_album_handler_gets_every_part_once_in_message_id_order() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.media_group(album_ids);
    r.message(each_message);
    let dp = dispatcher(r, &log);
    let parts = vec![part(13), part(11), part(14), part(12)];
    let outcome = dp.feed_album(&bot(), parts, Extensions::new()).await;
    assert_eq!(outcome.unwrap(), Outcome::Handled);
    assert_eq!(log.take(), ["album g1 of 4: 11,12,13,14 (first 11)"]);
}

#[tokio::test]
async fn an_album_no_album_handler_takes_reaches_message_handlers_part_by_part() {
    let log = Log::default();
    // No album handler in the tree.
    let mut r = Router::new("r");
    r.message(each_message);
    let dp = dispatcher(r, &log);
    assert!(!dp.wants_albums());
    let outcome = dp
        .feed_album(&bot(), vec![part(3), part(1), part(2)], Extensions::new())
        .await;
    assert_eq!(outcome.unwrap(), Outcome::Handled);
    assert_eq!(log.take(), ["message 1", "message 2", "message 3"]);

    // An album handler whose filter rejects: the same.
    let mut r = Router::new("r");
    r.media_group(album_ids)
        .filter(chat_type(&[ChatType::Supergroup]));
    r.message(each_message);
    let dp = dispatcher(r, &log);
    assert!(dp.wants_albums());
    let outcome = dp
        .feed_album(&bot(), vec![part(2), part(1)], Extensions::new())
        .await;
    assert_eq!(outcome.unwrap(), Outcome::Handled);
    assert_eq!(log.take(), ["message 1", "message 2"]);
}

#[tokio::test]
async fn an_album_nothing_handles_is_skipped() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.callback_query(|| async {});
    let dp = dispatcher(r, &log);
    let outcome = dp
        .feed_album(&bot(), vec![part(1), part(2)], Extensions::new())
        .await;
    assert_eq!(outcome.unwrap(), Outcome::Skipped);
}

#[tokio::test]
async fn album_handlers_of_nested_routers_have_outer_and_inner_middleware_and_observer_filters() {
    let log = Log::default();
    async fn outer(cx: Context, next: Next) -> tgpipe::middleware::MiddlewareResult {
        let log = cx.get::<Log>().expect("log").clone();
        log.push("outer");
        next.run(cx).await
    }
    async fn inner(cx: Context, next: Next) -> tgpipe::middleware::MiddlewareResult {
        let log = cx.get::<Log>().expect("log").clone();
        log.push("inner");
        next.run(cx).await
    }
    let mut root = Router::new("root");
    root.outer_middleware(ObserverKey::MediaGroup, outer);
    root.inner_middleware(ObserverKey::MediaGroup, inner);
    // A router whose observer filter rejects private chats is not tried.
    let mut groups = Router::new("groups");
    groups.observer_filter(ObserverKey::MediaGroup, chat_type(&[ChatType::Group]));
    groups.media_group(|Dep(log): Dep<Log>| async move { log.push("groups") });
    let mut private = Router::new("private");
    private.observer_filter(ObserverKey::MediaGroup, chat_type(&[ChatType::Private]));
    private.media_group(album_ids);
    root.include_router(groups);
    root.include_router(private);
    let dp = dispatcher(root, &log);
    assert!(dp.wants_albums());
    let outcome = dp
        .feed_album(&bot(), vec![part(2), part(1)], Extensions::new())
        .await;
    assert_eq!(outcome.unwrap(), Outcome::Handled);
    assert_eq!(
        log.take(),
        ["outer", "inner", "album g1 of 2: 1,2 (first 1)"]
    );
}

#[tokio::test]
async fn channel_post_albums_reach_the_album_handler_too() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.media_group(album_ids);
    let dp = dispatcher(r, &log);
    let parts = vec![
        part_of("channel_post", 8, "c9"),
        part_of("channel_post", 7, "c9"),
    ];
    let outcome = dp.feed_album(&bot(), parts, Extensions::new()).await;
    assert_eq!(outcome.unwrap(), Outcome::Handled);
    assert_eq!(log.take(), ["album c9 of 2: 7,8 (first 7)"]);
}

#[tokio::test]
async fn parts_of_two_albums_are_not_one_album() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.media_group(album_ids);
    r.message(each_message);
    let dp = dispatcher(r, &log);
    let parts = vec![part_of("message", 2, "a"), part_of("message", 1, "b")];
    let outcome = dp.feed_album(&bot(), parts, Extensions::new()).await;
    assert_eq!(outcome.unwrap(), Outcome::Handled);
    assert_eq!(log.take(), ["message 1", "message 2"]);
}

#[test]
fn a_media_group_handler_asks_for_message_updates() {
    let mut r = Router::new("r");
    r.media_group(|| async {});
    assert_eq!(r.used_update_kinds(), [UpdateKind::Message]);
    let builder = Dispatcher::builder(r);
    assert!(builder.wants_albums());
    assert_eq!(
        builder.build().unwrap().used_update_kinds(),
        [UpdateKind::Message]
    );
}

#[test]
fn a_message_handler_that_takes_an_album_fails_the_build() {
    let mut r = Router::new("r");
    r.message(|_: Album| async {});
    let err = Dispatcher::builder(r).build().unwrap_err();
    assert!(
        matches!(&err, BuildError::MissingDependency { observer, .. } if observer == "message"),
        "{err:?}"
    );
    // Optional, it builds (and is `None` for a lone message).
    let mut r = Router::new("r");
    r.message(|_: Option<Album>| async {});
    assert!(Dispatcher::builder(r).build().is_ok());
}

#[tokio::test]
async fn an_album_handler_shares_the_first_parts_fsm_key() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.media_group(|album: Album, fsm: FsmContext| async move {
        fsm.set_value("parts", album.len()).await?;
        Ok::<_, tgpipe::HandlerError>(())
    });
    let storage = MemoryStorage::new();
    let fsm = Fsm::new(storage);
    let dp = Dispatcher::builder(r)
        .state(log.clone())
        .fsm(fsm.clone())
        .build()
        .unwrap();
    assert_eq!(dp.fsm_observers(), [("r".to_owned(), UpdateKind::Message)]);
    let outcome = dp
        .feed_album(&bot(), vec![part(2), part(1)], Extensions::new())
        .await;
    assert_eq!(outcome.unwrap(), Outcome::Handled);
    let key = fsm.key(&part(1)).expect("a key");
    let data = fsm.storage().get_data(&key).await.unwrap().expect("data");
    let data: std::collections::HashMap<String, usize> = rmp_serde::from_slice(&data).unwrap();
    assert_eq!(data["parts"], 2);
}

#[tokio::test]
async fn a_part_given_twice_counts_once() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.media_group(album_ids);
    let dp = dispatcher(r, &log);
    let parts = vec![part(2), part(1), part(2), part(1)];
    let outcome = dp.feed_album(&bot(), parts, Extensions::new()).await;
    assert_eq!(outcome.unwrap(), Outcome::Handled);
    assert_eq!(log.take(), ["album g1 of 2: 1,2 (first 1)"]);
}
