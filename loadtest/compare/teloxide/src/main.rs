//! The echo bot of `loadtest/bench/compare.sh`, written the way a teloxide user would:
//! a dptree handler, a webhook through `teloxide::update_listeners::webhooks::axum` with
//! a secret token, and the Bot API base URL pointed at the stand-in. It behaves like
//! tgpipe-example-bot for the load generator's update mix:
//!
//! - a private text that is not a command: echoed back;
//! - `/start <payload>`: a greeting that shows the payload;
//! - a press on a `menu:<choice>` button: the callback answered and the message edited;
//! - a user joining a group: welcomed by first name.
//!
//! Configured by environment: `BOT_TOKEN`, `BOT_API_URL` (the stand-in), `WEBHOOK_LISTEN`
//! (address to listen on), `WEBHOOK_URL` (the public URL; its path is the route),
//! `WEBHOOK_SECRET`.

use teloxide::prelude::*;
use teloxide::types::{ChatMemberUpdated, User};
use teloxide::update_listeners::webhooks;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("error: {name} is not set");
        std::process::exit(64);
    })
}

fn first_name(user: Option<&User>) -> &str {
    user.map_or("there", |u| u.first_name.as_str())
}

async fn on_message(bot: Bot, message: Message) -> ResponseResult<()> {
    let Some(text) = message.text() else {
        return Ok(());
    };
    if let Some(rest) = text.strip_prefix("/start") {
        if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('@')) {
            return Ok(());
        }
        let name = first_name(message.from.as_ref());
        let payload = rest.split_once(' ').map(|(_, p)| p.trim()).unwrap_or("");
        let greeting = if payload.is_empty() {
            format!("Hello, {name}! Send me a text and I will echo it.")
        } else {
            format!("Hello, {name}! You came with: {payload}")
        };
        bot.send_message(message.chat.id, greeting).await?;
    } else if message.chat.is_private() && !text.starts_with('/') {
        bot.send_message(message.chat.id, text).await?;
    }
    Ok(())
}

async fn on_callback(bot: Bot, query: CallbackQuery) -> ResponseResult<()> {
    let Some(choice) = query.data.as_deref().and_then(|d| d.strip_prefix("menu:")) else {
        return Ok(());
    };
    let text = format!("You chose {choice}.");
    bot.answer_callback_query(query.id.clone())
        .text(text.clone())
        .await?;
    if let Some(message) = &query.message {
        bot.edit_message_text(message.chat().id, message.id(), text)
            .await?;
    }
    Ok(())
}

async fn on_member(bot: Bot, update: ChatMemberUpdated) -> ResponseResult<()> {
    if update.old_chat_member.is_present() || !update.new_chat_member.is_present() {
        return Ok(());
    }
    let name = first_name(Some(&update.new_chat_member.user));
    let title = update.chat.title().unwrap_or("the group");
    bot.send_message(update.chat.id, format!("Welcome to {title}, {name}!"))
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() {
    let api_url = env("BOT_API_URL")
        .parse()
        .expect("BOT_API_URL must be a URL");
    let bot = Bot::new(env("BOT_TOKEN")).set_api_url(api_url);
    let address = env("WEBHOOK_LISTEN")
        .parse()
        .expect("WEBHOOK_LISTEN must be host:port");
    let url = env("WEBHOOK_URL")
        .parse()
        .expect("WEBHOOK_URL must be a URL");
    let options = webhooks::Options::new(address, url).secret_token(env("WEBHOOK_SECRET"));
    let listener = webhooks::axum(bot.clone(), options)
        .await
        .expect("setWebhook failed");
    let handler = dptree::entry()
        .branch(Update::filter_message().endpoint(on_message))
        .branch(Update::filter_callback_query().endpoint(on_callback))
        .branch(Update::filter_chat_member().endpoint(on_member));
    Dispatcher::builder(bot, handler)
        .default_handler(|_| async {})
        .build()
        .dispatch_with_listener(
            listener,
            LoggingErrorHandler::with_custom_text("handler failed"),
        )
        .await;
}
