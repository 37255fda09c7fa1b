//! `tgpipe-example-bot`: the first bot a new user reads.
//!
//! - a private text that is not a command, with no conversation going on: echoed back;
//! - `/start` greets by first name, `/start <payload>` also shows the payload;
//! - `/form` asks for a name, then an age (until it gets a number), then sums up and
//!   forgets; `/cancel` leaves the form at any step;
//! - `/count` increments a counter kept in the chat's FSM data and replies `count: N`;
//! - `/menu` shows an inline keyboard; a press answers the callback and edits the message;
//! - a user joining a group the bot is in is welcomed;
//! - every other update, of any kind: acknowledged and counted (`tgpipe_worker_outcomes_total`).
//!
//! It runs as any tgpipe worker: `tgpipe-example-bot [run|dlq ...]`, configured by
//! environment (`TGPIPE_BOT_TOKENS`, `NATS_URL`, `REDIS_URL`, ...).

use std::process::ExitCode;

use serde::{Deserialize, Serialize};
use tgpipe::frankenstein::methods::{EditMessageTextParams, SendMessageParams};
use tgpipe::frankenstein::types::{
    ChatMember, ChatMemberUpdated as MemberUpdate, ChatType, MaybeInaccessibleMessage, User,
};
use tgpipe::prelude::*;

callback_data! {
    /// A button of `/menu`: packed as `menu:<choice>`.
    pub struct MenuChoice("menu") {
        /// What the user picked.
        choice: String,
    }
}

const CHOICES: [&str; 3] = ["tea", "coffee", "juice"];

tgpipe::states! {
    /// The steps of `/form`.
    pub enum Form {
        /// Waiting for the name.
        Name,
        /// Waiting for the age.
        Age,
    }
}

/// What `/form` collected so far.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Answers {
    name: String,
}

/// The chat's `/count` counter.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    count: u64,
}

/// What a handler can fail with: the FSM's storage, the Bot API, or a keyboard that
/// does not fit Telegram's limits.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Fsm(#[from] FsmError),
    #[error(transparent)]
    Api(#[from] BotError),
    #[error(transparent)]
    Keyboard(#[from] KeyboardError),
}

fn first_name(user: Option<&User>) -> &str {
    user.map_or("there", |u| u.first_name.as_str())
}

async fn echo(message: Arc<Message>, bot: Bot) -> Result<(), BotError> {
    let Some(text) = &message.text else {
        return Ok(());
    };
    message.answer(&bot, text).await?;
    Ok(())
}

async fn start(message: Arc<Message>, command: CommandObject, bot: Bot) -> Result<(), BotError> {
    let name = first_name(message.from.as_deref());
    let greeting = match command.args.as_deref() {
        Some(payload) => format!("Hello, {name}! You came with: {payload}"),
        None => format!("Hello, {name}! Send me a text and I will echo it."),
    };
    message.answer(&bot, &greeting).await?;
    Ok(())
}

async fn form(message: Arc<Message>, bot: Bot, fsm: FsmContext) -> Result<(), Error> {
    fsm.set_state(Form::Name).await?;
    message.answer(&bot, "What is your name?").await?;
    Ok(())
}

async fn form_name(message: Arc<Message>, bot: Bot, fsm: FsmContext) -> Result<(), Error> {
    let name = message.text.clone().unwrap_or_default();
    fsm.set_data(&Answers { name }).await?;
    fsm.set_state(Form::Age).await?;
    message.answer(&bot, "How old are you?").await?;
    Ok(())
}

async fn form_age(message: Arc<Message>, bot: Bot, fsm: FsmContext) -> Result<(), Error> {
    let Ok(age) = message
        .text
        .as_deref()
        .unwrap_or_default()
        .trim()
        .parse::<u8>()
    else {
        message
            .reply(
                &bot,
                "That is not an age; please send a number. How old are you?",
            )
            .await?;
        return Ok(());
    };
    let answers: Answers = fsm.data().await?;
    fsm.clear().await?;
    let thanks = format!("Thank you, {}: you are {age}.", answers.name);
    message.answer(&bot, &thanks).await?;
    Ok(())
}

async fn cancel(message: Arc<Message>, bot: Bot, fsm: FsmContext) -> Result<(), Error> {
    fsm.clear().await?;
    message.answer(&bot, "Cancelled.").await?;
    Ok(())
}

async fn count(message: Arc<Message>, bot: Bot, fsm: FsmContext) -> Result<(), Error> {
    // Atomic in Redis, and under the key's lease: concurrent /count never lose a step.
    let counter = fsm.update_data(|c: &mut Counter| c.count += 1).await?;
    message
        .answer(&bot, &format!("count: {}", counter.count))
        .await?;
    Ok(())
}

async fn menu(message: Arc<Message>, bot: Bot) -> Result<(), Error> {
    let mut keyboard = InlineKeyboardBuilder::new();
    for choice in CHOICES {
        keyboard.button(
            choice,
            MenuChoice {
                choice: choice.to_owned(),
            },
        );
    }
    bot.send_message(
        &SendMessageParams::builder()
            .chat_id(message.chat.id)
            .text("What would you like?")
            .reply_markup(ReplyMarkup::InlineKeyboardMarkup(keyboard.as_markup()?))
            .build(),
    )
    .await?;
    Ok(())
}

async fn chosen(query: Arc<CallbackQuery>, picked: MenuChoice, bot: Bot) -> Result<(), BotError> {
    let text = format!("You chose {}.", picked.choice);
    query.answer_text(&bot, &text, false).await?;
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

/// The bot's handlers, commands first so they work in the middle of the form.
fn router() -> Router {
    let mut router = Router::new("example");
    router.message(start).filter(CommandStart::new());
    router.message(cancel).filter(Command::new(["cancel"]));
    router.message(form).filter(Command::new(["form"]));
    router.message(count).filter(Command::new(["count"]));
    router.message(menu).filter(Command::new(["menu"]));
    router
        .message(form_name)
        .filter(StateFilter::is(Form::Name))
        .filter(plain_text);
    router
        .message(form_age)
        .filter(StateFilter::is(Form::Age))
        .filter(plain_text);
    router
        .message(echo)
        .filter(chat_type(&[ChatType::Private]))
        .filter(StateFilter::none())
        .filter(plain_text);
    router.callback_query(chosen).filter(MenuChoice::filter());
    router.chat_member(welcome).filter(ChatMemberUpdated::new(
        MemberGroup::IS_NOT_MEMBER >> MemberGroup::IS_MEMBER,
    ));
    router
}

#[tokio::main]
async fn main() -> ExitCode {
    tgpipe_worker::run(Dispatcher::builder(router())).await
}
