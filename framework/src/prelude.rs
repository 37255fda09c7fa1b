//! What a bot needs, in one `use tgpipe::prelude::*;`: the dispatcher and
//! routers, the extractors, the common filters, callback data, the FSM's everyday
//! types, the keyboard builders, the calls bound to an event (`message.answer(..)`), the
//! one error type a handler returns ([`Result`]), and the types a filter
//! or middleware author writes against. A chosen list, not the whole crate: the rest
//! is a path away (`tgpipe::fsm::RedisStorage`, `tgpipe::filter::provide`).
//!
//! ```
//! use tgpipe::prelude::*;
//!
//! callback_data! {
//!     /// A button of `/menu`.
//!     pub struct Pick("pick") { item: String }
//! }
//!
//! async fn start(message: Arc<Message>) -> Result {
//!     message.reply("Hello! /menu shows what there is.").await
//! }
//!
//! async fn menu(message: Arc<Message>) -> Result {
//!     let mut keyboard = InlineKeyboardBuilder::new();
//!     for item in ["tea", "coffee", "juice"] {
//!         keyboard.button(item, Pick { item: item.into() });
//!     }
//!     let markup = keyboard.as_markup()?;
//!     message.answer("What would you like?").reply_markup(markup).await
//! }
//!
//! async fn picked(query: Arc<CallbackQuery>, pick: Pick) -> Result {
//!     query.answer().text(format!("{} it is", pick.item)).await
//! }
//!
//! async fn log_updates(cx: Context, next: Next) -> MiddlewareResult {
//!     let update_id = cx.update().update_id;
//!     let outcome = next.run(cx).await?;
//!     if outcome == Outcome::Skipped {
//!         let _ = update_id; // no handler took it: log it ...
//!     }
//!     Ok(outcome)
//! }
//!
//! let mut router = Router::new("main");
//! router.message(start).filter(CommandStart::new());
//! router.message(menu).filter(Command::new("menu"));
//! router.callback_query(picked).filter(Pick::filter());
//! router.outer_middleware(UpdateKind::Message, log_updates);
//! let dispatcher = Dispatcher::builder(router).build().unwrap();
//! ```

// The event extractors are `Arc<Message>`, `Arc<CallbackQuery>`, ...
pub use std::sync::Arc;

pub use frankenstein::AsyncTelegramApi;
pub use frankenstein::types::{CallbackQuery, Message, ReplyMarkup};
pub use tgpipe_shared::UpdateKind;

pub use crate::album::Album;
pub use crate::bot::{Bot, BotError};
pub use crate::calls::{CallbackQueryCalls, ChatMemberUpdatedCalls, ChatMemberUser, MessageCalls};
// The `callback_data!` macro (and its module, which shares the name).
pub use crate::callback_data;
pub use crate::callback_data::CallbackData;
// The derives, named as their traits (as serde's are).
pub use crate::context::Context;
pub use crate::dispatcher::Dispatcher;
pub use crate::error::{ErrorEvent, HandlerError, Result, Transient};
pub use crate::extract::{Dep, ExtractError, FromContext};
pub use crate::filter::{
    ChatMemberUpdated, Command, CommandObject, CommandStart, ContentType, ErrorIs, Filter,
    FilterExt, FilterOutcome, MemberGroup, chat_type, content_type, not, text,
};
pub use crate::flags::Flags;
pub use crate::fsm::{Fsm, FsmContext, FsmError, StateFilter, StateName, StatesGroup};
pub use crate::handler::BoxFuture;
pub use crate::keyboard::{InlineKeyboardBuilder, KeyboardError, ReplyKeyboardBuilder};
pub use crate::middleware::{Middleware, MiddlewareResult, Next};
pub use crate::outcome::Outcome;
pub use crate::router::Router;
pub use crate::states;
pub use crate::update::{Event, Update};
pub use tgpipe_macros::{CallbackData, StatesGroup};
