//! `tgpipe-worker`: the bot framework.
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
//! A bot starts with `use tgpipe_worker::prelude::*;` ([`prelude`]); [`keyboard`] builds
//! inline and reply keyboards. The guide is `docs/framework.md`.
//!
//! # Cargo features
//!
//! | feature   | default | adds |
//! |-----------|---------|------|
//! | `redis`   | yes     | `fsm::RedisStorage`; the rate limiter's state shared between pods in Redis (`bot::BotBuilder::redis_url`) |
//! | `runtime` | yes     | `run` and the `runtime` (the JetStream consumer, the ops server, the CLI), `poll`, `webhook`, the example bot; implies `redis` |
//!
//! Without them the crate is the framework alone (dispatcher, routers, filters,
//! handlers, extractors, middleware, the FSM with [`fsm::MemoryStorage`], keyboards, the
//! Bot API client with per-process limits): enough for a crate of handlers and its unit
//! tests, and free of async-nats, axum, clap, redis and the Prometheus exporter.

pub mod bot;
pub mod callback_data;
pub mod context;
pub mod dispatcher;
pub mod error;
pub mod extract;
pub mod filter;
pub mod fsm;
pub mod handler;
pub mod keyboard;
pub mod middleware;
#[cfg(feature = "runtime")]
pub mod poll;
pub mod prelude;
pub mod router;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod update;
#[cfg(feature = "runtime")]
pub mod webhook;

pub use bot::{Bot, BotError};
pub use context::{Context, Extensions};
pub use dispatcher::{Dispatcher, DispatcherBuilder, Incoming};
pub use error::{BuildError, DispatchOutcome, HandlerError};
pub use extract::{Dep, FromContext};
pub use fsm::{Fsm, FsmContext, FsmError, FsmKey, KeyStrategy, StateFilter};
pub use handler::Flow;
pub use middleware::{Handled, Next};
pub use router::{ObserverKey, Router};
#[cfg(feature = "runtime")]
pub use runtime::run;
pub use update::{Event, Update};

// The types the framework's own signatures use, so that a bot needs no other
// dependency: frankenstein's Bot API types, and the update kind of the wire contract.
pub use frankenstein;
pub use tgpipe_shared::UpdateKind;

/// The guide `docs/framework.md`, whose examples are compiled as doc tests (they show
/// `run`, `RedisStorage` and the webhook commands, so with the default features).
#[doc = include_str!("../../docs/framework.md")]
#[cfg(all(doctest, feature = "runtime"))]
pub struct FrameworkGuide;

/// The guide `docs/fsm.md`, whose examples are compiled as doc tests.
#[doc = include_str!("../../docs/fsm.md")]
#[cfg(all(doctest, feature = "runtime"))]
pub struct FsmGuide;
/// The guide `docs/webhooks.md`, whose examples are compiled as doc tests.
#[doc = include_str!("../../docs/webhooks.md")]
#[cfg(all(doctest, feature = "runtime"))]
pub struct WebhooksGuide;
