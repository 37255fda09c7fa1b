//! `tgpipe`: the bot framework.
//!
//! aiogram 3's model in Rust: a [`Dispatcher`] is the root [`Router`]; routers nest and
//! have one observer per update kind (plus `raw` and `errors`); handlers are plain
//! `async fn`s whose arguments are extractors ([`extract::FromContext`]); filters
//! ([`filter`]) choose the handler and may hand it values; outer and inner
//! [`middleware`] wrap the search and the handler. Dispatch tells the runtime whether
//! an update was handled, unhandled, or failed (transiently or for good). The [`fsm`]
//! keeps conversation state in Redis (or in memory), one update per key at a time
//! across processes.
//!
//! A bot starts with `use tgpipe::prelude::*;` ([`prelude`]); handlers answer their
//! event with [`calls`] (`message.answer(..)`) and return [`Result`]; [`keyboard`] builds
//! inline and reply keyboards; [`bot`] is the Bot API client (the `tgpipe-bot` crate).
//! The everyday middleware: [`antiflood`], [`chat_action`], [`callback_answer`], driven
//! by handler [`flags`]; translations are `i18n` (feature).
//! The guide is `docs/framework.md`. The process around a dispatcher (the JetStream
//! consumer, the ops server, the CLI, long polling) is the `tgpipe-worker` crate, whose
//! `run` takes the dispatcher.
//!
//! # Cargo features
//!
//! | feature   | default | adds |
//! |-----------|---------|------|
//! | `redis`   | no      | `fsm::RedisStorage`; the rate limiter's state shared between pods in Redis (`bot::BotBuilder::redis_url`); `antiflood::AntiFlood::shared` |
//! | `i18n`    | no      | `i18n`: translations with Fluent |
//!
//! Without it the crate is the framework alone (dispatcher, routers, filters, handlers,
//! extractors, middleware, the FSM with [`fsm::MemoryStorage`], keyboards, the Bot API
//! client with per-process limits): enough for a crate of handlers and its unit tests,
//! and free of async-nats, axum, clap, redis and the Prometheus exporter.

/// The Bot API client: the `tgpipe-bot` crate.
pub use tgpipe_bot as bot;

pub mod album;
pub mod antiflood;
pub mod callback_answer;
pub mod callback_data;
pub mod calls;
pub mod chat_action;
pub mod context;
pub mod dispatcher;
pub mod error;
pub mod expired;
pub mod extract;
pub mod filter;
pub mod flags;
pub mod fsm;
pub mod handler;
#[cfg(feature = "i18n")]
pub mod i18n;
pub mod keyboard;
pub mod middleware;
pub mod outcome;
pub mod prelude;
pub mod router;
pub mod timer;
pub mod update;

pub use album::Album;
pub use bot::{Bot, BotError};
pub use context::{Context, Extensions};
pub use dispatcher::{Dispatcher, DispatcherBuilder};
pub use error::{BuildError, ErrorEvent, HandlerError, Result};
pub use extract::{Dep, FromContext};
pub use fsm::{Fsm, FsmContext, FsmError, FsmKey, KeyStrategy, StateFilter};
pub use middleware::Next;
pub use outcome::Outcome;
pub use router::{ObserverKey, Router};
pub use update::{Event, Update};

// The types the framework's own signatures use, so that a bot needs no other
// dependency: frankenstein's Bot API types, and the update kind of the wire contract.
pub use frankenstein;

/// `#[derive(CallbackData)]` with `#[callback(prefix = "...")]`: packs the struct's
/// fields into a button's `callback_data` (see [`callback_data`](mod@callback_data)).
///
/// ```
/// use tgpipe::callback_data::CallbackData;
///
/// #[derive(Debug, Clone, PartialEq, tgpipe::CallbackData)]
/// #[callback(prefix = "menu")]
/// struct MenuButton {
///     action: String,
///     item: u32,
///     confirmed: bool,
/// }
///
/// let button = MenuButton { action: "buy".into(), item: 7, confirmed: true };
/// assert_eq!(button.pack().unwrap(), "menu:buy:7:1");
/// assert_eq!(MenuButton::unpack("menu:buy:7:1").unwrap(), button);
/// ```
pub use tgpipe_macros::CallbackData;
/// `#[derive(StatesGroup)]` on an enum of unit variants: states named `<Enum>:<Variant>`,
/// each a filter passing in that state (see [`fsm::StatesGroup`]).
///
/// ```
/// use tgpipe::fsm::StatesGroup;
///
/// #[derive(Debug, Clone, Copy, PartialEq, tgpipe::StatesGroup)]
/// enum Form {
///     Name,
///     Age,
/// }
///
/// assert_eq!(Form::Age.name(), "Form:Age");
/// assert_eq!(Form::from_name("Form:Name"), Some(Form::Name));
/// ```
pub use tgpipe_macros::StatesGroup;
pub use tgpipe_shared::UpdateKind;
