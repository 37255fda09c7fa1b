//! Where tgpipe answered differently from aiogram 3 (its own test cases, run against
//! tgpipe's public API): one regression test per deviation, named after it.

mod common;

use bytes::Bytes;
use serde_json::json;
use tgpipe::callback_data::CallbackData;
use tgpipe::filter::{ChatMemberUpdated, Command, CommandStart, Transition};
use tgpipe::fsm::{FsmKey, MemoryStorage};
use tgpipe::prelude::*;
use tgpipe::{Fsm, KeyStrategy, Update};
use tgpipe_shared::BotId;

fn parse(update: serde_json::Value) -> Update {
    Update::parse(BotId(123), Bytes::from(update.to_string())).unwrap()
}

fn inline_query() -> serde_json::Value {
    json!({"update_id": 1, "inline_query": {
        "id": "iq", "from": {"id": 42, "is_bot": false, "first_name": "A"},
        "query": "tea", "offset": ""
    }})
}

#[tokio::test]
async fn an_inline_query_is_keyed_as_the_users_private_chat() {
    let update = parse(inline_query());
    assert_eq!(
        KeyStrategy::UserInChat.key(&update),
        Some(FsmKey::new(123, 42, 42))
    );
    assert_eq!(
        KeyStrategy::Chat.key(&update),
        Some(FsmKey::new(123, 42, 42))
    );
    // A handler taking the FSM handles it (it used to fail permanently with NoFsmKey).
    let mut r = Router::new("inline");
    r.inline_query(|fsm: FsmContext| async move { fsm.set_value("q", "tea").await });
    let dp = Dispatcher::builder(r)
        .fsm(Fsm::new(MemoryStorage::new()))
        .build()
        .unwrap();
    let outcome = dp
        .feed_raw(&common::bot(), Bytes::from(inline_query().to_string()))
        .await;
    assert!(matches!(outcome, Ok(Outcome::Handled)), "{outcome:?}");
}

fn supergroup_message(thread: i64, is_topic: Option<bool>) -> Update {
    let mut message = json!({
        "message_id": 5, "date": 0, "message_thread_id": thread,
        "chat": {"id": -100, "type": "supergroup", "title": "G"},
        "from": {"id": 7, "is_bot": false, "first_name": "A"}, "text": "hi"
    });
    if let Some(t) = is_topic {
        message["is_topic_message"] = json!(t);
    }
    parse(json!({"update_id": 2, "message": message}))
}

#[test]
fn topic_strategies_add_the_thread_only_for_topic_messages() {
    // A reply thread in an ordinary supergroup: the user's state is the chat's.
    let reply_thread = supergroup_message(77, None);
    for strategy in [KeyStrategy::UserInTopic, KeyStrategy::ChatTopic] {
        let key = strategy.key(&reply_thread).unwrap();
        assert_eq!(key.thread_id, None, "{strategy}");
    }
    assert_eq!(
        KeyStrategy::UserInTopic.key(&reply_thread),
        KeyStrategy::UserInChat.key(&reply_thread)
    );
    // A forum topic: its own state.
    let topic = supergroup_message(77, Some(true));
    assert_eq!(
        KeyStrategy::UserInTopic.key(&topic).unwrap().thread_id,
        Some(77)
    );
    assert_eq!(
        KeyStrategy::ChatTopic.key(&topic).unwrap(),
        FsmKey::new(123, -100, -100).with_thread(77)
    );
}

callback_data! {
    /// A button with a flag.
    pub struct Toggle("tg") {
        /// The flag.
        on: bool,
        /// A number beside it.
        n: u8,
    }
}

#[test]
fn callback_data_packs_bool_as_1_and_0() {
    let on = Toggle { on: true, n: 3 };
    assert_eq!(on.pack().unwrap(), "tg:1:3");
    assert_eq!(Toggle { on: false, n: 0 }.pack().unwrap(), "tg:0:0");
    // What an aiogram bot made reads, and so do buttons tgpipe made before.
    assert_eq!(Toggle::unpack("tg:1:3").unwrap(), on);
    assert_eq!(Toggle::unpack("tg:true:3").unwrap(), on);
    assert!(Toggle::unpack("tg:yes:3").is_err());
}

fn member_update(old: &str, new: &str) -> Bytes {
    let user = json!({"id": 9, "is_bot": false, "first_name": "B"});
    let member = |status: &str| {
        let mut m = json!({"status": status, "user": user});
        if status == "administrator" {
            for right in [
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
                m[right] = json!(false);
            }
        }
        if status == "creator" {
            m["is_anonymous"] = json!(false);
        }
        m
    };
    Bytes::from(
        json!({"update_id": 3, "chat_member": {
            "chat": {"id": -7, "type": "group", "title": "G"}, "from": user, "date": 0,
            "old_chat_member": member(old), "new_chat_member": member(new)
        }})
        .to_string(),
    )
}

#[tokio::test]
async fn promoted_is_a_transition_to_administrator_not_to_creator() {
    let mut r = Router::new("r");
    r.chat_member(|| async {})
        .filter(ChatMemberUpdated::new(Transition::PROMOTED));
    let dp = Dispatcher::builder(r).build().unwrap();
    let bot = common::bot();
    let promoted = dp
        .feed_raw(&bot, member_update("member", "administrator"))
        .await;
    assert!(matches!(promoted, Ok(Outcome::Handled)), "{promoted:?}");
    let owner = dp.feed_raw(&bot, member_update("member", "creator")).await;
    assert!(matches!(owner, Ok(Outcome::Skipped)), "{owner:?}");
}

#[test]
fn ignore_case_commands_casefold_beyond_ascii() {
    let start = Command::new("старт").ignore_case();
    assert!(start.parse("/СТАРТ", None).is_some());
    assert!(start.parse("/Старт@my_bot", Some("my_bot")).is_some());
    assert!(Command::new("старт").parse("/СТАРТ", None).is_none());
    assert!(
        Command::new("ÉTÉ")
            .ignore_case()
            .parse("/été", None)
            .is_some()
    );
}

#[tokio::test]
async fn start_with_an_empty_mention_is_start() {
    let parsed = Command::new("start").parse("/start@ payload", Some("my_bot"));
    let parsed = parsed.expect("`/start@` is `/start`");
    assert_eq!(parsed.mention, None);
    assert_eq!(parsed.args.as_deref(), Some("payload"));
    let mut r = Router::new("r");
    r.message(|command: CommandObject| async move { assert_eq!(command.args, None) })
        .filter(CommandStart::new());
    let dp = Dispatcher::builder(r).build().unwrap();
    let outcome = dp
        .feed_raw(&common::bot(), common::text_update("/start@"))
        .await;
    assert!(matches!(outcome, Ok(Outcome::Handled)), "{outcome:?}");
}

/// A UUID as the `uuid` crate writes it: hyphenated, read back in either form (the
/// framework has no `uuid` dependency; the derive recognises the type by its name).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Uuid(u128);

impl std::fmt::Display for Uuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = format!("{:032x}", self.0);
        let (a, rest) = hex.split_at(8);
        let (b, rest) = rest.split_at(4);
        let (c, rest) = rest.split_at(4);
        let (d, e) = rest.split_at(4);
        write!(f, "{a}-{b}-{c}-{d}-{e}")
    }
}

impl std::str::FromStr for Uuid {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Uuid, Self::Err> {
        u128::from_str_radix(&s.replace('-', ""), 16).map(Uuid)
    }
}

#[derive(Debug, Clone, PartialEq, tgpipe::CallbackData)]
#[callback(prefix = "order")]
struct Order {
    id: Uuid,
    paid: bool,
}

#[test]
fn callback_data_packs_a_uuid_as_32_hex_digits() {
    let order = Order {
        id: Uuid(0x123e4567_e89b_12d3_a456_426614174000),
        paid: false,
    };
    assert_eq!(
        order.pack().unwrap(),
        "order:123e4567e89b12d3a456426614174000:0"
    );
    assert_eq!(
        Order::unpack("order:123e4567e89b12d3a456426614174000:0").unwrap(),
        order
    );
}

#[derive(Debug, Clone, Copy, PartialEq, tgpipe::StatesGroup)]
enum Signup {
    Email,
    Code,
}

#[test]
fn derived_states_are_named_like_aiogram_and_are_filters() {
    use tgpipe::fsm::StatesGroup;
    assert_eq!(Signup::Code.name(), "Signup:Code");
    assert_eq!(Signup::all(), [Signup::Email, Signup::Code]);
    assert_eq!(Signup::from_name("Signup:Other"), None);
    let mut r = Router::new("signup");
    r.message(|| async {}).filter(Signup::Email);
    r.message(|| async {})
        .filter(StateFilter::in_group::<Signup>());
    assert!(
        Dispatcher::builder(r)
            .fsm(Fsm::new(MemoryStorage::new()))
            .build()
            .is_ok()
    );
}
