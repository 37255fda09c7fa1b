//! `tgpipe-example-bot`: the first bot a new user reads.
//!
//! - a private text that is not a command, with no conversation going on: echoed back;
//! - `/start` greets by first name, `/start <payload>` also shows the payload;
//! - `/form` asks for a name, then an age (until it gets a number), then sums up and
//!   forgets; `/cancel` leaves the form at any step; a form left silent for
//!   `EXAMPLE_FORM_TIMEOUT` seconds (default 600) ends with "The form timed out." (a
//!   durable timer: it holds through restarts and rollouts);
//! - `/remind <seconds> <text>` sends the text back after that many seconds (a durable
//!   timer, fired by whichever pod owns the chat then);
//! - `/count` increments a counter kept in the chat's FSM data and replies `count: N`;
//! - `/menu` shows an inline keyboard; a press answers the callback and edits the message;
//! - a user joining a group the bot is in is welcomed;
//! - an album (photos sent together) is answered once, with its parts' message ids in
//!   album order: `album of 3 parts: 101,102,103`;
//! - a button pressed so long ago that Telegram no longer takes its answer (a backlog
//!   after an outage) is not run: the chat is told to press it again;
//! - every other update, of any kind: acknowledged and counted (`tgpipe_worker_outcomes_total`).
//!
//! It runs as any tgpipe worker: `tgpipe-example-bot [run|dlq ...]`, configured by
//! environment (`TGPIPE_BOT_TOKENS`, `NATS_URL`, `REDIS_URL`, ...). One setting is its
//! own: `EXAMPLE_ANTIFLOOD=<limit>/<seconds>` (say `5/10`) drops a user's updates over
//! `limit` per window, counted in Redis at `REDIS_URL`, so that the limit holds for the
//! sum over every worker. Unset, nothing is dropped. `EXAMPLE_FORM_TIMEOUT` sets the
//! form's timeout in seconds.

use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tgpipe::antiflood::AntiFlood;
use tgpipe::expired::Expired;
use tgpipe::frankenstein::types::{ChatMemberUpdated as MemberUpdate, ChatType};
use tgpipe::prelude::*;
use tgpipe::timer::{self, Timer, Timers};

/// A server allocator for the worker, as for any bot binary: per-thread caches cut the
/// cost of the allocations each update makes (docs/benchmarks.md has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A button of `/menu`: packed as `menu:<choice>`.
#[derive(Debug, Clone, CallbackData)]
#[callback(prefix = "menu")]
struct MenuChoice {
    /// What the user picked.
    choice: String,
}

const CHOICES: [&str; 3] = ["tea", "coffee", "juice"];

/// The steps of `/form`.
#[derive(Debug, Clone, Copy, StatesGroup)]
enum Form {
    /// Waiting for the name.
    Name,
    /// Waiting for the age.
    Age,
}

/// The chat's `/count` counter.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    count: u64,
}

/// The sender's first name, or a neutral word when there is none.
fn first_name(message: &Message) -> &str {
    Some(message.first_name())
        .filter(|n| !n.is_empty())
        .unwrap_or("there")
}

async fn echo(message: Arc<Message>) -> Result {
    message.answer(message.text_or_caption()).await
}

async fn start(message: Arc<Message>, command: CommandObject) -> Result {
    let name = first_name(&message);
    let greeting = match command.args.as_deref() {
        Some(payload) => format!("Hello, {name}! You came with: {payload}"),
        None => format!("Hello, {name}! Send me a text and I will echo it."),
    };
    message.answer(greeting).await
}

/// How long the form waits for an answer (`EXAMPLE_FORM_TIMEOUT`, seconds).
#[derive(Debug, Clone, Copy)]
struct FormTimeout(Duration);

async fn form(
    message: Arc<Message>,
    fsm: FsmContext,
    timers: Timers,
    Dep(timeout): Dep<FormTimeout>,
) -> Result {
    fsm.set_state(Form::Name).await?;
    timers.state_timeout(&fsm, timeout.0).await?;
    message.answer("What is your name?").await
}

async fn form_name(
    message: Arc<Message>,
    fsm: FsmContext,
    timers: Timers,
    Dep(timeout): Dep<FormTimeout>,
) -> Result {
    fsm.set_value("name", message.text_or_caption()).await?;
    fsm.set_state(Form::Age).await?;
    // The silence counts from the last answer: the waiting timeout is replaced.
    timers.state_timeout(&fsm, timeout.0).await?;
    message.answer("How old are you?").await
}

async fn form_age(
    message: Arc<Message>,
    fsm: FsmContext,
    timers: Timers,
    Dep(timeout): Dep<FormTimeout>,
) -> Result {
    let Ok(age) = message.text_or_caption().trim().parse::<u8>() else {
        timers.state_timeout(&fsm, timeout.0).await?;
        let again = "That is not an age; please send a number. How old are you?";
        message.reply(again).await?;
        return Ok(());
    };
    let name: String = fsm.get_value("name").await?.unwrap_or_default();
    fsm.clear().await?;
    // Done: its timeout need not wait (it would find the form over anyway).
    timers.cancel(timer::STATE_TIMEOUT).await?;
    message
        .answer(format!("Thank you, {name}: you are {age}."))
        .await
}

/// The form's timeout came and the form had not moved since: it ends.
async fn form_timed_out(timer: Arc<Timer>, fsm: FsmContext) -> Result {
    fsm.clear().await?;
    timer.answer("The form timed out.").await
}

/// `/remind <seconds> <text>`.
async fn remind(message: Arc<Message>, command: CommandObject, timers: Timers) -> Result {
    let args = command.args.as_deref().unwrap_or_default();
    let parsed = args
        .split_once(' ')
        .and_then(|(secs, what)| Some((secs.parse::<u64>().ok()?, what.trim())))
        .filter(|(secs, what)| *secs <= 366 * 86_400 && !what.is_empty());
    let Some((secs, what)) = parsed else {
        return message.answer("Usage: /remind <seconds> <text>").await;
    };
    // Named after the command's message, so that reminders do not replace each other.
    let name = format!("remind:{}", message.message_id);
    timers.after(&name, Duration::from_secs(secs), what).await?;
    message
        .answer(format!("I will remind you in {secs} s."))
        .await
}

/// A press that waited past Telegram's deadline (`TGPIPE_DEADLINES`): its answer would
/// fail, so the chat is asked to press again.
async fn stale_button(query: Arc<CallbackQuery>, expired: Expired) -> Result {
    let waited = expired.age.as_secs();
    query
        .answer_in_chat(format!(
            "That button waited {waited} s; please press it again."
        ))
        .await
}

/// A reminder's time came.
async fn reminded(timer: Arc<Timer>) -> Result {
    let what: String = timer.payload().map_err(HandlerError::permanent)?;
    timer.answer(format!("Reminder: {what}")).await
}

async fn cancel(message: Arc<Message>, fsm: FsmContext, timers: Timers) -> Result {
    fsm.clear().await?;
    timers.cancel(timer::STATE_TIMEOUT).await?;
    message.answer("Cancelled.").await
}

async fn count(message: Arc<Message>, fsm: FsmContext) -> Result {
    // Atomic in Redis, and under the key's lease: concurrent /count never lose a step.
    let counter = fsm.update_data(|c: &mut Counter| c.count += 1).await?;
    message.answer(format!("count: {}", counter.count)).await
}

async fn menu(message: Arc<Message>) -> Result {
    let mut keyboard = InlineKeyboardBuilder::new();
    for choice in CHOICES {
        keyboard.button(
            choice,
            MenuChoice {
                choice: choice.into(),
            },
        );
    }
    let markup = keyboard.as_markup()?;
    message
        .answer("What would you like?")
        .reply_markup(markup)
        .await
}

async fn chosen(query: Arc<CallbackQuery>, picked: MenuChoice) -> Result {
    let text = format!("You chose {}.", picked.choice);
    query.answer().text(&text).await?;
    if query.message.is_some() {
        query.edit_text(text).await?;
    }
    Ok(())
}

async fn welcome(update: Arc<MemberUpdate>) -> Result {
    let name = &update.member().first_name;
    let title = update.chat.title.as_deref().unwrap_or("the group");
    update.answer(format!("Welcome to {title}, {name}!")).await
}

async fn album(album: Album, message: Arc<Message>) -> Result {
    let ids: Vec<String> = album.iter().map(|m| m.message_id.to_string()).collect();
    let parts = if album.len() == 1 { "part" } else { "parts" };
    let text = format!("album of {} {parts}: {}", album.len(), ids.join(","));
    message.answer(text).await
}

/// The bot's handlers, commands first so they work in the middle of the form.
fn router() -> Router {
    let mut router = Router::new("example");
    router.message(start).filter(CommandStart::new());
    router.message(cancel).filter(Command::new("cancel"));
    router.message(form).filter(Command::new("form"));
    router.message(count).filter(Command::new("count"));
    router.message(menu).filter(Command::new("menu"));
    router.message(remind).filter(Command::new("remind"));
    router
        .message(form_name)
        .filter((Form::Name, text::plain()));
    router.message(form_age).filter((Form::Age, text::plain()));
    router
        .message(echo)
        .filter(chat_type(&[ChatType::Private]))
        .filter(StateFilter::none())
        .filter(text::plain());
    router.media_group(album);
    router.callback_query(chosen).filter(MenuChoice::filter());
    router.chat_member(welcome).filter(ChatMemberUpdated::new(
        MemberGroup::IS_NOT_MEMBER >> MemberGroup::IS_MEMBER,
    ));
    router.timer(reminded).filter(timer::prefixed("remind:"));
    router.expired(stale_button);
    router
        .timer(form_timed_out)
        .filter(timer::state_timed_out());
    router
}

/// The form's timeout `EXAMPLE_FORM_TIMEOUT` asks for (seconds), else 10 minutes.
fn form_timeout() -> std::result::Result<FormTimeout, String> {
    match std::env::var("EXAMPLE_FORM_TIMEOUT") {
        Err(_) => Ok(FormTimeout(Duration::from_secs(600))),
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Ok(FormTimeout(Duration::from_secs(secs))),
            _ => Err(format!(
                "EXAMPLE_FORM_TIMEOUT is `{s}`, not a number of seconds above 0"
            )),
        },
    }
}

/// The anti-flood `EXAMPLE_ANTIFLOOD` asks for, if set: `<limit>/<seconds>` per user,
/// shared in Redis at `REDIS_URL` (the FSM's Redis).
async fn anti_flood() -> std::result::Result<Option<AntiFlood>, String> {
    let Ok(setting) = std::env::var("EXAMPLE_ANTIFLOOD") else {
        return Ok(None);
    };
    let bad = || format!("EXAMPLE_ANTIFLOOD is `{setting}`, not `<limit>/<seconds>` (say `5/10`)");
    let (limit, seconds) = setting.split_once('/').ok_or_else(bad)?;
    let limit: u64 = limit.trim().parse().map_err(|_| bad())?;
    let seconds: u64 = seconds
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| bad())?;
    if seconds == 0 {
        return Err(bad());
    }
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    AntiFlood::per_user(limit, Duration::from_secs(seconds))
        .shared(&redis)
        .await
        .map(Some)
        .map_err(|e| format!("EXAMPLE_ANTIFLOOD: Redis at REDIS_URL: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let timeout = match form_timeout() {
        Ok(timeout) => timeout,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::from(64);
        }
    };
    let mut dispatcher = Dispatcher::builder(router()).state(timeout);
    match anti_flood().await {
        Ok(Some(flood)) => dispatcher = dispatcher.update_middleware(flood),
        Ok(None) => {}
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::from(64); // a setting is unusable, as the worker's own
        }
    }
    tgpipe_worker::run(dispatcher).await
}
