//! The stand-in's answers: a valid Bot API 10.3 result per method, or Telegram's error.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::record::RecordedFile;
use super::server::Inner;

/// An error answer in Telegram's envelope.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    pub(crate) description: String,
    pub(crate) parameters: Option<Value>,
}

impl ApiError {
    pub(crate) fn bad_request(what: &str) -> ApiError {
        ApiError {
            code: 400,
            description: format!("Bad Request: {what}"),
            parameters: None,
        }
    }

    pub(crate) fn server() -> ApiError {
        ApiError {
            code: 500,
            description: "Internal Server Error".to_owned(),
            parameters: None,
        }
    }

    pub(crate) fn not_found() -> ApiError {
        ApiError {
            code: 404,
            description: "Not Found".to_owned(),
            parameters: None,
        }
    }

    pub(crate) fn body(&self) -> Value {
        let mut v = json!({"ok": false, "error_code": self.code, "description": self.description});
        if let Some(p) = &self.parameters {
            v["parameters"] = p.clone();
        }
        v
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A parameter as an integer: JSON numbers and numeric strings (form bodies) both count.
fn int_param(params: &Value, name: &str) -> Option<i64> {
    match params.get(name)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn str_param<'a>(params: &'a Value, name: &str) -> Option<&'a str> {
    params.get(name)?.as_str()
}

/// The chat a call addresses: its id, and the Chat object Telegram would return.
fn chat_of(params: &Value) -> Result<(i64, Value), ApiError> {
    match params.get("chat_id") {
        None | Some(Value::Null) => Err(ApiError::bad_request("chat_id is empty")),
        Some(Value::String(s)) if s.starts_with('@') => {
            let id = -1_000_000_000_000 - (s.len() as i64);
            Ok((
                id,
                json!({"id": id, "type": "channel", "title": &s[1..], "username": &s[1..]}),
            ))
        }
        Some(_) => {
            let id = int_param(params, "chat_id")
                .ok_or_else(|| ApiError::bad_request("chat not found"))?;
            let chat = if id > 0 {
                json!({"id": id, "type": "private", "first_name": "User"})
            } else if id <= -1_000_000_000_000 {
                json!({"id": id, "type": "supergroup", "title": "Supergroup"})
            } else {
                json!({"id": id, "type": "group", "title": "Group"})
            };
            Ok((id, chat))
        }
    }
}

fn bot_user(bot_id: u64, username: &str) -> Value {
    json!({"id": bot_id, "is_bot": true, "first_name": "tgpipe sink", "username": username})
}

/// Methods whose result is a sent Message, and the content field they carry.
const SENDS: &[(&str, &str)] = &[
    ("sendMessage", "text"),
    ("sendPhoto", "photo"),
    ("sendAudio", "audio"),
    ("sendDocument", "document"),
    ("sendVideo", "video"),
    ("sendAnimation", "animation"),
    ("sendVoice", "voice"),
    ("sendVideoNote", "video_note"),
    ("sendSticker", "sticker"),
    ("sendLocation", "latitude"),
    ("sendVenue", "title"),
    ("sendContact", "phone_number"),
    ("sendPoll", "question"),
    ("sendDice", "chat_id"),
    ("sendInvoice", "title"),
    ("sendPaidMedia", "media"),
    ("forwardMessage", "message_id"),
];

/// Methods answered with `true`.
const TRUE_METHODS: &[&str] = &[
    "sendChatAction",
    "answerCallbackQuery",
    "answerInlineQuery",
    "answerShippingQuery",
    "answerPreCheckoutQuery",
    "deleteMessage",
    "deleteMessages",
    "setMyCommands",
    "deleteMyCommands",
    "setMyName",
    "setMyDescription",
    "setMyShortDescription",
    "setChatMenuButton",
    "setMessageReaction",
    "pinChatMessage",
    "unpinChatMessage",
    "unpinAllChatMessages",
    "banChatMember",
    "unbanChatMember",
    "restrictChatMember",
    "promoteChatMember",
    "approveChatJoinRequest",
    "declineChatJoinRequest",
    "leaveChat",
    "logOut",
    "close",
];

pub(crate) fn answer(
    inner: &mut Inner,
    bot_id: u64,
    method: &str,
    params: &Value,
    files: &[RecordedFile],
) -> Result<Value, ApiError> {
    // Telegram's method names are case-insensitive.
    let lower = method.to_ascii_lowercase();
    if let Some((name, field)) = SENDS.iter().find(|(m, _)| m.to_ascii_lowercase() == lower) {
        let (chat_id, chat) = chat_of(params)?;
        if *name == "sendMessage" {
            match str_param(params, "text") {
                None | Some("") => return Err(ApiError::bad_request("message text is empty")),
                Some(t) if t.chars().count() > 4096 => {
                    return Err(ApiError::bad_request("message is too long"));
                }
                _ => {}
            }
        } else if params.get(*field).is_none() && !files.iter().any(|f| f.field == *field) {
            return Err(ApiError::bad_request(&format!(
                "there is no {field} in the request"
            )));
        }
        return Ok(inner.message(bot_id, chat_id, chat, params));
    }
    if TRUE_METHODS.iter().any(|m| m.to_ascii_lowercase() == lower) {
        return Ok(Value::Bool(true));
    }
    match lower.as_str() {
        "getme" => {
            let mut me = bot_user(bot_id, &inner.config.bot_username);
            me["can_join_groups"] = json!(true);
            me["can_read_all_group_messages"] = json!(false);
            me["supports_inline_queries"] = json!(true);
            me["can_connect_to_business"] = json!(false);
            me["has_main_web_app"] = json!(false);
            Ok(me)
        }
        "sendmediagroup" => {
            let (chat_id, chat) = chat_of(params)?;
            let media = match params.get("media") {
                Some(Value::Array(items)) => items.len(),
                Some(Value::String(s)) => serde_json::from_str::<Vec<Value>>(s)
                    .map(|v| v.len())
                    .unwrap_or(0),
                _ => 0,
            };
            if !(2..=10).contains(&media) {
                return Err(ApiError::bad_request("media must include 2-10 items"));
            }
            Ok(Value::Array(
                (0..media)
                    .map(|_| inner.message(bot_id, chat_id, chat.clone(), params))
                    .collect(),
            ))
        }
        "copymessage" => {
            chat_of(params)?;
            Ok(json!({"message_id": inner.next_id()}))
        }
        "editmessagetext"
        | "editmessagecaption"
        | "editmessagereplymarkup"
        | "editmessagemedia" => {
            if params.get("inline_message_id").is_some() {
                return Ok(Value::Bool(true));
            }
            let (chat_id, chat) = chat_of(params)?;
            let message_id = int_param(params, "message_id")
                .ok_or_else(|| ApiError::bad_request("message identifier is not specified"))?;
            if lower == "editmessagetext" && str_param(params, "text").is_none_or(str::is_empty) {
                return Err(ApiError::bad_request("message text is empty"));
            }
            let mut m = inner.message(bot_id, chat_id, chat, params);
            m["message_id"] = json!(message_id);
            m["edit_date"] = json!(now());
            Ok(m)
        }
        "getchat" => {
            let (_, mut chat) = chat_of(params)?;
            chat["accent_color_id"] = json!(0);
            chat["max_reaction_count"] = json!(11);
            chat["accepted_gift_types"] = json!({"unlimited_gifts": true, "limited_gifts": true, "unique_gifts": true, "premium_subscription": true, "gifts_from_channels": true});
            Ok(chat)
        }
        "setwebhook" => {
            let url = str_param(params, "url").unwrap_or_default().to_owned();
            if !url.is_empty() && !url.starts_with("https://") {
                return Err(ApiError::bad_request(
                    "bad webhook: An HTTPS URL must be provided for webhook",
                ));
            }
            if let Some(s) = str_param(params, "secret_token")
                && (s.is_empty()
                    || s.len() > 256
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
            {
                return Err(ApiError::bad_request(
                    "secret token contains unallowed characters",
                ));
            }
            let w = inner.webhooks.entry(bot_id).or_default();
            w.url = url;
            w.has_custom_certificate = files.iter().any(|f| f.field == "certificate");
            w.max_connections = int_param(params, "max_connections").unwrap_or(40);
            w.ip_address = str_param(params, "ip_address").map(str::to_owned);
            w.allowed_updates = match params.get("allowed_updates") {
                Some(Value::Array(a)) => Some(Value::Array(a.clone())),
                Some(Value::String(s)) => serde_json::from_str(s).ok(),
                _ => None,
            };
            if params
                .get("drop_pending_updates")
                .is_some_and(|v| v == &json!(true) || v == &json!("true"))
            {
                inner.updates.clear();
            }
            Ok(Value::Bool(true))
        }
        "deletewebhook" => {
            inner.webhooks.remove(&bot_id);
            Ok(Value::Bool(true))
        }
        "getwebhookinfo" => {
            let w = inner.webhooks.get(&bot_id).cloned().unwrap_or_default();
            let mut info = json!({
                "url": w.url,
                "has_custom_certificate": w.has_custom_certificate,
                "pending_update_count": w.pending.unwrap_or(inner.updates.len() as u64),
            });
            if let Some((date, message)) = &w.last_error {
                info["last_error_date"] = json!(date);
                info["last_error_message"] = json!(message);
            }
            if !w.url.is_empty() {
                info["max_connections"] = json!(w.max_connections);
                if let Some(ip) = &w.ip_address {
                    info["ip_address"] = json!(ip);
                }
                if let Some(a) = &w.allowed_updates {
                    info["allowed_updates"] = a.clone();
                }
            }
            Ok(info)
        }
        "getupdates" => {
            if inner
                .webhooks
                .get(&bot_id)
                .is_some_and(|w| !w.url.is_empty())
            {
                return Err(ApiError {
                    code: 409,
                    description: "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first".to_owned(),
                    parameters: None,
                });
            }
            let offset = int_param(params, "offset").unwrap_or(0);
            let limit = int_param(params, "limit").unwrap_or(100).clamp(1, 100) as usize;
            // Confirm (drop) every update below the offset, as Telegram does.
            inner.updates.retain(|u| {
                u.get("update_id")
                    .and_then(Value::as_i64)
                    .is_none_or(|id| id >= offset)
            });
            Ok(Value::Array(
                inner.updates.iter().take(limit).cloned().collect(),
            ))
        }
        _ => Err(ApiError::not_found()),
    }
}
