//! The small bot of docs/framework.md, beside its aiogram twin (`aiogram/small_bot.py`).
use std::process::ExitCode;

use tgpipe::prelude::*;

tgpipe::states! { enum Form { Name, City } }

callback_data! { struct Pick("pick") { item: String } }

async fn start(message: Arc<Message>) -> Result {
    let text = format!("Hello, {}! Try /form or /menu.", message.first_name());
    message.answer(text).await
}

async fn form(message: Arc<Message>, state: FsmContext) -> Result {
    state.set_state(Form::Name).await?;
    message.answer("What is your name?").await
}

async fn form_name(message: Arc<Message>, state: FsmContext) -> Result {
    state.set_value("name", message.text_or_caption()).await?;
    state.set_state(Form::City).await?;
    message.answer("Which city do you live in?").await
}

async fn form_city(message: Arc<Message>, state: FsmContext) -> Result {
    let name: String = state.get_value("name").await?.unwrap_or_default();
    state.clear().await?;
    let city = message.text_or_caption();
    message.answer(format!("{name} from {city}: saved.")).await
}

async fn menu(message: Arc<Message>) -> Result {
    let mut builder = InlineKeyboardBuilder::new();
    for item in ["tea", "coffee", "juice"] {
        builder.button(item, Pick { item: item.into() });
    }
    let markup = builder.as_markup()?;
    message
        .answer("What would you like?")
        .reply_markup(markup)
        .await
}

async fn picked(query: Arc<CallbackQuery>, pick: Pick) -> Result {
    query.answer().text(format!("{} it is", pick.item)).await
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
    router.message(form).filter(Command::new("form"));
    router
        .message(form_name)
        .filter((Form::Name, text::plain()));
    router
        .message(form_city)
        .filter((Form::City, text::plain()));
    router.message(menu).filter(Command::new("menu"));
    router.callback_query(picked).filter(Pick::filter());
    router.message(echo).filter(text::plain());
    router.errors(on_error);
    tgpipe_worker::run(Dispatcher::builder(router)).await
}
