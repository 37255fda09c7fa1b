//! The larger bot of docs/framework.md, beside its aiogram twin (`aiogram/form_bot.py`).
use std::process::ExitCode;
use std::time::Instant;

use tgpipe::prelude::*;

#[derive(Clone)]
struct Config {
    owner: String,
}

tgpipe::states! { enum Form { Name, Age, Confirm } }

callback_data! { struct Confirm("confirm") { yes: bool } }

async fn timing(cx: Context, next: Next) -> MiddlewareResult {
    let started = Instant::now();
    let handled = next.run(cx).await;
    tracing::info!("handled in {:?}", started.elapsed());
    handled
}

async fn start(message: Arc<Message>, command: CommandObject, config: Dep<Config>) -> Result {
    let owner = &config.0.owner;
    let mut text = format!("Hello, {}! {owner} runs me.", message.first_name());
    if let Some(args) = &command.args {
        text += &format!(" You came with: {args}");
    }
    message.answer(text).await
}

async fn help(message: Arc<Message>) -> Result {
    let text = "/form asks three questions, /cancel stops it; I echo the rest.";
    message.answer(text).await
}

async fn cancel(message: Arc<Message>, state: FsmContext) -> Result {
    state.clear().await?;
    message.answer("Cancelled.").await
}

async fn form(message: Arc<Message>, state: FsmContext) -> Result {
    state.set_state(Form::Name).await?;
    message.answer("What is your name?").await
}

async fn form_name(message: Arc<Message>, state: FsmContext) -> Result {
    state.set_value("name", message.text_or_caption()).await?;
    state.set_state(Form::Age).await?;
    message.answer("How old are you?").await
}

async fn form_age(message: Arc<Message>, state: FsmContext) -> Result {
    let age = message.text_or_caption().parse::<u8>().ok();
    let Some(age) = age.filter(|age| (1..130).contains(age)) else {
        return message.reply("Please send your age as a number.").await;
    };
    state.set_value("age", age).await?;
    state.set_state(Form::Confirm).await?;
    let mut builder = InlineKeyboardBuilder::new();
    builder.button("Yes", Confirm { yes: true });
    builder.button("No", Confirm { yes: false });
    let name: String = state.get_value("name").await?.unwrap_or_default();
    let (text, markup) = (
        format!("{name}, {age}: is that right?"),
        builder.as_markup()?,
    );
    message.answer(text).reply_markup(markup).await
}

async fn confirm(query: Arc<CallbackQuery>, confirm: Confirm, state: FsmContext) -> Result {
    let name: String = state.get_value("name").await?.unwrap_or_default();
    let age: u8 = state.get_value("age").await?.unwrap_or_default();
    state.clear().await?;
    query.answer().await?;
    let text = match confirm.yes {
        true => format!("Saved: {name}, {age}."),
        false => "Discarded.".into(),
    };
    query.edit_text(text).await
}

async fn photo(message: Arc<Message>) -> Result {
    let size = message.photo.iter().flatten().last();
    let (width, height) = size.map_or((0, 0), |s| (s.width, s.height));
    let text = format!("Nice photo, {width}x{height}.");
    message.reply(text).await
}

async fn echo(message: Arc<Message>) -> Result {
    message.answer(message.text_or_caption()).await
}

async fn on_error(error: ErrorEvent) {
    tracing::error!(error = %error.0, "update failed");
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut router = Router::new("main");
    router.message(start).filter(CommandStart::new());
    router.message(help).filter(Command::new("help"));
    router.message(cancel).filter(Command::new("cancel"));
    router.message(form).filter(Command::new("form"));
    router
        .message(form_name)
        .filter((Form::Name, text::plain()));
    router.message(form_age).filter((Form::Age, text::plain()));
    router
        .callback_query(confirm)
        .filter((Form::Confirm, Confirm::filter()));
    router
        .message(photo)
        .filter(content_type(&[ContentType::Photo]));
    router.message(echo).filter(text::plain());
    router.errors(on_error);
    router.inner_middleware(UpdateKind::Message, timing);
    let owner = std::env::var("BOT_OWNER").unwrap_or_else(|_| "Ada".into());
    tgpipe_worker::run(Dispatcher::builder(router).state(Config { owner })).await
}
