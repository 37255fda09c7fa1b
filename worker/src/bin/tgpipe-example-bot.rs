//! `tgpipe-example-bot`: the first bot a new user reads.
//!
//! - a private text that is not a command, with no conversation going on: echoed back;
//! - `/start` greets by first name, `/start <payload>` also shows the payload;
//! - `/menu` shows an inline keyboard; a press answers the callback and edits the message;
//! - a user joining a group the bot is in is welcomed;
//! - every other update, of any kind: acknowledged and counted (`tgpipe_worker_outcomes_total`).
//!
//! It runs as any tgpipe worker: `tgpipe-example-bot [run|dlq ...]`, configured by
//! environment (`TGPIPE_BOT_TOKENS`, `NATS_URL`, `REDIS_URL`, ...).

use std::process::ExitCode;
use std::sync::Arc;

use frankenstein::AsyncTelegramApi;
use frankenstein::methods::{AnswerCallbackQueryParams, EditMessageTextParams, SendMessageParams};
use frankenstein::types::{
    CallbackQuery, ChatMember, ChatMemberUpdated as MemberUpdate, ChatType, InlineKeyboardButton,
    InlineKeyboardMarkup, MaybeInaccessibleMessage, Message, ReplyMarkup, User,
};
use tgpipe_worker::callback_data::CallbackData;
use tgpipe_worker::filter::{
    ChatMemberUpdated, CommandObject, CommandStart, MemberGroup, chat_type,
};
use tgpipe_worker::{Bot, BotError, Context, Dispatcher, Event, Router, callback_data};

callback_data! {
    /// A button of `/menu`: packed as `menu:<choice>`.
    pub struct MenuChoice("menu") {
        /// What the user picked.
        choice: String,
    }
}

const CHOICES: [&str; 3] = ["tea", "coffee", "juice"];

fn first_name(user: Option<&User>) -> &str {
    user.map_or("there", |u| u.first_name.as_str())
}

async fn echo(message: Arc<Message>, bot: Bot) -> Result<(), BotError> {
    let Some(text) = &message.text else {
        return Ok(());
    };
    bot.send_text(message.chat.id, text).await?;
    Ok(())
}

async fn start(message: Arc<Message>, command: CommandObject, bot: Bot) -> Result<(), BotError> {
    let name = first_name(message.from.as_deref());
    let greeting = match command.args.as_deref() {
        Some(payload) => format!("Hello, {name}! You came with: {payload}"),
        None => format!("Hello, {name}! Send me a text and I will echo it."),
    };
    bot.send_text(message.chat.id, &greeting).await?;
    Ok(())
}

async fn menu(message: Arc<Message>, bot: Bot) -> Result<(), BotError> {
    let mut row = Vec::new();
    for choice in CHOICES {
        let data = MenuChoice {
            choice: choice.to_owned(),
        }
        .pack()
        .map_err(|e| BotError::InvalidResponse(e.to_string()))?;
        row.push(
            InlineKeyboardButton::builder()
                .text(choice)
                .callback_data(data)
                .build(),
        );
    }
    let keyboard = InlineKeyboardMarkup::builder()
        .inline_keyboard(vec![row])
        .build();
    bot.send_message(
        &SendMessageParams::builder()
            .chat_id(message.chat.id)
            .text("What would you like?")
            .reply_markup(ReplyMarkup::InlineKeyboardMarkup(keyboard))
            .build(),
    )
    .await?;
    Ok(())
}

async fn chosen(query: Arc<CallbackQuery>, picked: MenuChoice, bot: Bot) -> Result<(), BotError> {
    let text = format!("You chose {}.", picked.choice);
    bot.answer_callback_query(
        &AnswerCallbackQueryParams::builder()
            .callback_query_id(query.id.clone())
            .text(text.clone())
            .build(),
    )
    .await?;
    let (chat, message_id) = match &query.message {
        Some(MaybeInaccessibleMessage::Message(m)) => (m.chat.id, m.message_id),
        Some(MaybeInaccessibleMessage::InaccessibleMessage(m)) => (m.chat.id, m.message_id),
        None => return Ok(()),
    };
    bot.edit_message_text(
        &EditMessageTextParams::builder()
            .chat_id(chat)
            .message_id(message_id)
            .text(text)
            .build(),
    )
    .await?;
    Ok(())
}

fn member_user(member: &ChatMember) -> &User {
    match member {
        ChatMember::Creator(m) => &m.user,
        ChatMember::Administrator(m) => &m.user,
        ChatMember::Member(m) => &m.user,
        ChatMember::Restricted(m) => &m.user,
        ChatMember::Left(m) => &m.user,
        ChatMember::Kicked(m) => &m.user,
    }
}

async fn welcome(update: Arc<MemberUpdate>, bot: Bot) -> Result<(), BotError> {
    let name = first_name(Some(member_user(&update.new_chat_member)));
    let title = update.chat.title.as_deref().unwrap_or("the group");
    bot.send_text(update.chat.id, &format!("Welcome to {title}, {name}!"))
        .await?;
    Ok(())
}

/// A message with text that is not a command.
fn plain_text(cx: &Context) -> bool {
    matches!(cx.event(), Event::Message(m) if m.text.as_deref().is_some_and(|t| !t.starts_with('/')))
}

/// The bot's handlers.
fn router() -> Router {
    let mut router = Router::new("example");
    router.message(start).filter(CommandStart::new());
    router
        .message(menu)
        .filter(tgpipe_worker::filter::Command::new(["menu"]));
    router
        .message(echo)
        .filter(chat_type(&[ChatType::Private]))
        .filter(plain_text);
    router.callback_query(chosen).filter(MenuChoice::filter());
    router.chat_member(welcome).filter(ChatMemberUpdated::new(
        MemberGroup::IS_NOT_MEMBER >> MemberGroup::IS_MEMBER,
    ));
    router
}

#[tokio::main]
async fn main() -> ExitCode {
    let dispatcher = match Dispatcher::builder(router()).build() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    tgpipe_worker::run(dispatcher).await
}
