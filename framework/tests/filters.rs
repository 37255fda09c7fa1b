//! Built-in filters, callback data, and every Bot API method through `Bot`.

mod common;

use common::{Log, bot};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use frankenstein::types::{CallbackQuery, ChatType, Message};
use serde_json::json;
use tgpipe::callback_data::{CallbackData, CallbackDataError};
use tgpipe::filter::{
    ChatMemberUpdated, CommandObject, CommandStart, ContentType, MemberGroup, MemberStatus,
    Transition, chat_type, content_type, create_start_link, encode_payload,
};
use tgpipe::{Bot, Dep, Dispatcher, Outcome, Router, callback_data};

fn message(extra: serde_json::Value) -> Bytes {
    let mut m = json!({"message_id": 1, "date": 0, "chat": {"id": 5, "type": "private", "first_name": "A"},
        "from": {"id": 5, "is_bot": false, "first_name": "A"}});
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    Bytes::from(json!({"update_id": 1, "message": m}).to_string())
}

async fn dispatch(r: Router, log: &Log, update: Bytes) -> (tgpipe::Result<Outcome>, Vec<String>) {
    let dp = Dispatcher::builder(r).state(log.clone()).build().unwrap();
    let o = dp.feed_raw(&bot(), update).await;
    (o, log.take())
}

#[tokio::test]
async fn deep_links_plain_and_encoded() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(|c: CommandObject, Dep(log): Dep<Log>| async move {
        log.push(format!("encoded {:?}", c.args))
    })
    .filter(CommandStart::new().deep_link().encoded());
    let (_, got) = dispatch(
        r,
        &log,
        message(json!({"text": format!("/start {}", encode_payload("ref=42 & ü"))})),
    )
    .await;
    assert_eq!(got, ["encoded Some(\"ref=42 & ü\")"]);

    let mut r = Router::new("r");
    r.message(|c: CommandObject, Dep(log): Dep<Log>| async move {
        log.push(format!("plain {:?}", c.args))
    })
    .filter(CommandStart::new().deep_link());
    r.message(|Dep(log): Dep<Log>| async move { log.push("no payload") })
        .filter(CommandStart::new());
    let (_, got) = dispatch(r.clone(), &log, message(json!({"text": "/start abc-123"}))).await;
    assert_eq!(got, ["plain Some(\"abc-123\")"]);
    let (_, got) = dispatch(r, &log, message(json!({"text": "/start"}))).await;
    assert_eq!(got, ["no payload"]);

    // Not base64url: the encoded filter rejects it instead of handing over garbage.
    let mut r = Router::new("r");
    r.message(|| async {})
        .filter(CommandStart::new().deep_link().encoded());
    let (o, _) = dispatch(r, &log, message(json!({"text": "/start !!!"}))).await;
    assert!(matches!(o, Ok(Outcome::Skipped)));

    assert_eq!(
        create_start_link("my_bot", "abc", false).unwrap(),
        "https://t.me/my_bot?start=abc"
    );
    assert!(create_start_link("my_bot", "has space", false).is_err());
    assert!(create_start_link("my_bot", "has space", true).is_ok());
    assert!(create_start_link("my_bot", &"x".repeat(65), false).is_err());
}

/// A complete `restricted` member, as Telegram sends it.
fn restricted(is_member: bool) -> serde_json::Value {
    let mut m = json!({"status": "restricted", "is_member": is_member, "until_date": 0});
    for p in [
        "can_send_messages",
        "can_send_audios",
        "can_send_documents",
        "can_send_photos",
        "can_send_videos",
        "can_send_video_notes",
        "can_send_voice_notes",
        "can_send_polls",
        "can_send_other_messages",
        "can_add_web_page_previews",
        "can_react_to_messages",
        "can_edit_tag",
        "can_change_info",
        "can_invite_users",
        "can_pin_messages",
        "can_manage_topics",
    ] {
        m[p] = json!(false);
    }
    m
}

/// A complete `administrator` member.
fn administrator() -> serde_json::Value {
    let mut m = json!({"status": "administrator"});
    for p in [
        "can_be_edited",
        "is_anonymous",
        "can_manage_chat",
        "can_delete_messages",
        "can_manage_video_chats",
        "can_restrict_members",
        "can_promote_members",
        "can_change_info",
        "can_invite_users",
        "can_send_welcome_messages",
    ] {
        m[p] = json!(false);
    }
    m
}

fn member_update(kind: &str, old: serde_json::Value, new: serde_json::Value) -> Bytes {
    let user = json!({"id": 9, "is_bot": false, "first_name": "Joiner"});
    let mut old = old;
    let mut new = new;
    old["user"] = user.clone();
    new["user"] = user.clone();
    Bytes::from(json!({"update_id": 3, kind: {"chat": {"id": -7, "type": "group", "title": "G"}, "from": user,
        "date": 0, "old_chat_member": old, "new_chat_member": new}}).to_string())
}

#[tokio::test]
async fn chat_member_transitions() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.chat_member(|Dep(log): Dep<Log>| async move { log.push("join") })
        .filter(ChatMemberUpdated::new(Transition::JOIN));
    r.chat_member(|Dep(log): Dep<Log>| async move { log.push("leave") })
        .filter(ChatMemberUpdated::new(Transition::LEAVE));
    r.chat_member(|Dep(log): Dep<Log>| async move { log.push("promoted") })
        .filter(ChatMemberUpdated::new(Transition::PROMOTED));
    r.chat_member(|Dep(log): Dep<Log>| async move { log.push("other") });
    let cases = [
        (
            json!({"status": "left"}),
            json!({"status": "member"}),
            "join",
        ),
        (
            json!({"status": "kicked", "until_date": 0}),
            json!({"status": "member"}),
            "join",
        ),
        (restricted(false), restricted(true), "join"),
        (
            json!({"status": "member"}),
            json!({"status": "left"}),
            "leave",
        ),
        (
            json!({"status": "member"}),
            json!({"status": "kicked", "until_date": 0}),
            "leave",
        ),
        (json!({"status": "member"}), administrator(), "promoted"),
        (json!({"status": "member"}), restricted(true), "other"),
    ];
    for (old, new, want) in cases {
        let update = member_update("chat_member", old.clone(), new.clone());
        let parsed = tgpipe::Update::parse(tgpipe_shared::BotId(1), update.clone()).unwrap();
        assert!(
            matches!(parsed.event, tgpipe::Event::ChatMember(_)),
            "{:?}",
            parsed.event
        );
        let (_, got) = dispatch(r.clone(), &log, update).await;
        assert_eq!(got, [want], "{old} -> {new}");
    }
    // aiogram-style composition.
    let t = MemberGroup::IS_NOT_MEMBER
        >> (MemberGroup::IS_MEMBER | MemberGroup::of(MemberStatus::Kicked));
    assert!(t.new.contains(MemberStatus::Kicked) && t.new.contains(MemberStatus::Member));
}

#[tokio::test]
async fn content_and_chat_types() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.message(|Dep(log): Dep<Log>| async move { log.push("photo") })
        .filter(content_type(&[ContentType::Photo]));
    r.message(|Dep(log): Dep<Log>| async move { log.push("group text") })
        .filter(content_type(&[ContentType::Text]))
        .filter(chat_type(&[ChatType::Group, ChatType::Supergroup]));
    r.message(|Dep(log): Dep<Log>| async move { log.push("rest") });
    let photo =
        json!({"photo": [{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}]});
    let (_, got) = dispatch(r.clone(), &log, message(photo)).await;
    assert_eq!(got, ["photo"]);
    let group = json!({"text": "hi", "chat": {"id": -5, "type": "group", "title": "G"}});
    let (_, got) = dispatch(r.clone(), &log, message(group)).await;
    assert_eq!(got, ["group text"]);
    let (_, got) = dispatch(r, &log, message(json!({"text": "private"}))).await;
    assert_eq!(got, ["rest"]);
}

callback_data! {
    /// A button of the test menu.
    pub struct MenuButton("menu") {
        /// What to do.
        action: String,
        /// On which item.
        item: u32,
    }
}

#[test]
fn callback_data_round_trip_and_limits() {
    let b = MenuButton {
        action: "buy".into(),
        item: 7,
    };
    assert_eq!(b.pack().unwrap(), "menu:buy:7");
    assert_eq!(MenuButton::unpack("menu:buy:7").unwrap(), b);
    let long = MenuButton {
        action: "x".repeat(60),
        item: 1,
    };
    assert!(matches!(
        long.pack(),
        Err(CallbackDataError::TooLong { len: 67, .. })
    ));
    let sep = MenuButton {
        action: "a:b".into(),
        item: 1,
    };
    assert_eq!(
        sep.pack(),
        Err(CallbackDataError::Separator { field: "action" })
    );
    assert_eq!(
        MenuButton::unpack("other:buy:7"),
        Err(CallbackDataError::Prefix("menu"))
    );
    assert!(matches!(
        MenuButton::unpack("menu:buy"),
        Err(CallbackDataError::FieldCount {
            got: 1,
            want: 2,
            ..
        })
    ));
    assert!(matches!(
        MenuButton::unpack("menu:buy:seven"),
        Err(CallbackDataError::Field { field: "item", .. })
    ));
}

#[tokio::test]
async fn callback_data_filter_hands_the_value_to_the_handler() {
    let log = Log::default();
    let mut r = Router::new("r");
    r.callback_query(
        |b: MenuButton, q: Arc<CallbackQuery>, Dep(log): Dep<Log>| async move {
            log.push(format!("{} {} from {}", b.action, b.item, q.from.id))
        },
    )
    .filter(MenuButton::filter());
    let update = |data: &str| {
        Bytes::from(
            json!({"update_id": 2, "callback_query": {"id": "q", "chat_instance": "c",
        "from": {"id": 5, "is_bot": false, "first_name": "A"}, "data": data}})
            .to_string(),
        )
    };
    let (_, got) = dispatch(r.clone(), &log, update("menu:sell:3")).await;
    assert_eq!(got, ["sell 3 from 5"]);
    let (o, got) = dispatch(r.clone(), &log, update("menu:sell:x")).await;
    assert!(matches!(o, Ok(Outcome::Skipped)) && got.is_empty());
    // Taking the value without its filter is a start-up error.
    let mut bad = Router::new("bad");
    bad.callback_query(|_b: MenuButton| async {});
    assert!(Dispatcher::builder(bad).build().is_err());
}

#[tokio::test]
async fn every_bot_api_method_goes_through_bot() {
    use frankenstein::AsyncTelegramApi;
    use frankenstein::methods::{SendDocumentParams, SendMessageParams};
    let sink = tgpipe_testkit::sink::Sink::start(Default::default())
        .await
        .unwrap();
    let bot = Bot::with_api_url("123:TEST", &sink.url()).unwrap();
    let sent: Message = bot
        .send_message(
            &SendMessageParams::builder()
                .chat_id(42)
                .text("typed")
                .build(),
        )
        .await
        .unwrap()
        .result;
    assert_eq!((sent.chat.id, sent.text.as_deref()), (42, Some("typed")));
    // A file upload goes multipart, as Telegram requires.
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("report.txt");
    std::fs::write(&doc, b"quarterly numbers").unwrap();
    let params = SendDocumentParams::builder()
        .chat_id(42)
        .document(frankenstein::input_file::FileUpload::from(doc))
        .caption("the report")
        .build();
    let sent = bot.send_document(&params).await.unwrap().result;
    assert_eq!(sent.caption.as_deref(), Some("the report"));
    let calls = sink.wait_for_calls(2, Duration::from_secs(10)).await;
    assert_eq!(calls[1].method, "sendDocument");
    assert_eq!(calls[1].files.len(), 1);
    assert_eq!(
        (calls[1].files[0].field.as_str(), calls[1].files[0].size),
        ("document", 17)
    );
    assert_eq!(calls[1].params["chat_id"], json!("42"));
    let me = bot.get_me().await.unwrap().result;
    assert!(me.is_bot);
    // Errors come back typed.
    let err = bot
        .send_message(&SendMessageParams::builder().chat_id(1).text("").build())
        .await
        .unwrap_err();
    assert!(matches!(err, tgpipe::BotError::BadRequest(_)));
}
