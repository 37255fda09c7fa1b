//! Realistic updates with unique ids and tokens, in the shapes of the fixture corpus.

use std::str::FromStr;

use serde_json::json;

/// What an update is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A private text message (the echo bot repeats it).
    Text,
    /// `/start <token>` (the bot greets and shows the payload).
    Command,
    /// A callback query from an inline keyboard (the bot answers it).
    Callback,
    /// A user joining a group (the bot welcomes them by name).
    Member,
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "text" => Ok(Kind::Text),
            "command" => Ok(Kind::Command),
            "callback" => Ok(Kind::Callback),
            "member" => Ok(Kind::Member),
            other => Err(format!(
                "`{other}` is not one of text, command, callback, member"
            )),
        }
    }
}

/// One generated update.
#[derive(Debug, Clone)]
pub struct UpdateSpec {
    /// Its `update_id`.
    pub update_id: i64,
    /// The chat it belongs to.
    pub chat_id: i64,
    /// Its position among its chat's updates.
    pub index_in_chat: usize,
    /// What it is.
    pub kind: Kind,
    /// The token a reply must contain.
    pub token: String,
    /// The exact JSON body to post.
    pub body: bytes::Bytes,
}

/// `n` updates over `chats` chats (round robin), kinds cycling through `mix`, ids from
/// `first_id`. Private chats have positive ids; member events go to group chats, whose
/// ids are the negated private ones.
pub fn generate(n: usize, chats: usize, mix: &[Kind], first_id: i64) -> Vec<UpdateSpec> {
    generate_from(n, chats, mix, first_id, FIRST_CHAT)
}

/// The first private chat's (and user's) id of [`generate`].
pub const FIRST_CHAT: i64 = 10_000_000;

/// As [`generate`], with the private chats' (and users') ids from `first_chat`: runs
/// with different ones do not share chats (a flooding chat and the chats beside it).
pub fn generate_from(
    n: usize,
    chats: usize,
    mix: &[Kind],
    first_id: i64,
    first_chat: i64,
) -> Vec<UpdateSpec> {
    let chats = chats.max(1);
    let mix = if mix.is_empty() {
        &[Kind::Text][..]
    } else {
        mix
    };
    let mut per_chat = vec![0usize; chats];
    (0..n)
        .map(|i| {
            let update_id = first_id + i as i64;
            let slot = i % chats;
            let user = first_chat + slot as i64;
            let kind = mix[i % mix.len()];
            let token = format!("lt{update_id}");
            let date = 1_732_400_000 + i as i64;
            let from = json!({"id": user, "is_bot": false, "first_name": "Load", "username": format!("load{slot}"), "language_code": "en"});
            let private = json!({"id": user, "type": "private", "first_name": "Load", "username": format!("load{slot}")});
            let (chat_id, body) = match kind {
                Kind::Text => (user, json!({"update_id": update_id, "message": {
                    "message_id": i + 1, "date": date, "chat": private, "from": from,
                    "text": format!("hello {token}")}})),
                Kind::Command => {
                    let text = format!("/start {token}");
                    (user, json!({"update_id": update_id, "message": {
                        "message_id": i + 1, "date": date, "chat": private, "from": from, "text": text,
                        "entities": [{"type": "bot_command", "offset": 0, "length": 6}]}}))
                }
                Kind::Callback => (user, json!({"update_id": update_id, "callback_query": {
                    "id": token, "from": from, "chat_instance": format!("ci{slot}"), "data": format!("menu:{token}"),
                    "message": {"message_id": 1, "date": date, "chat": private, "text": "menu",
                        "from": {"id": 1, "is_bot": true, "first_name": "Bot"}}}})),
                Kind::Member => {
                    let group = -(user);
                    let joiner = json!({"id": user + 1_000_000_000, "is_bot": false, "first_name": token});
                    (group, json!({"update_id": update_id, "chat_member": {
                        "chat": {"id": group, "type": "group", "title": format!("Load {slot}")},
                        "from": joiner, "date": date,
                        "old_chat_member": {"status": "left", "user": joiner},
                        "new_chat_member": {"status": "member", "user": joiner}}}))
                }
            };
            let index_in_chat = per_chat[slot];
            per_chat[slot] += 1;
            UpdateSpec { update_id, chat_id, index_in_chat, kind, token, body: body.to_string().into() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_are_valid_unique_and_carry_their_token() {
        let mix = [Kind::Text, Kind::Command, Kind::Callback, Kind::Member];
        let updates = generate(40, 4, &mix, 1000);
        let mut ids: Vec<i64> = updates.iter().map(|u| u.update_id).collect();
        ids.dedup();
        assert_eq!(ids.len(), 40);
        for u in &updates {
            let keys = tgpipe_shared::extract_keys(&u.body).expect("a valid update");
            assert_eq!(keys.update_id, u.update_id);
            assert_eq!(keys.chat_id, Some(u.chat_id));
            assert!(std::str::from_utf8(&u.body).unwrap().contains(&u.token));
        }
        assert_eq!(updates[0].index_in_chat, 0);
        assert_eq!(updates[4].index_in_chat, 1);
        assert!("bogus".parse::<Kind>().is_err());
    }
}
