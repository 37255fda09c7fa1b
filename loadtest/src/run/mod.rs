//! `tgpipe-loadtest run`: delivers updates to a webhook the way Telegram does, then
//! matches the bot's replies at the Bot API stand-in and reports what happened.
//!
//! Telegram's delivery rules, which the generator follows because they shape what a bot
//! can rely on: at most `max_connections` requests in flight per bot (default 40, at most
//! 100); the next update of a chat only after the previous one was answered with 2xx;
//! a non-2xx answer (or a failed connection) is retried later with the same update.
//!
//! Every update carries a unique token (`lt<update_id>`) where the echo bot's reply will
//! repeat it: in a text message's text, a `/start` command's payload, a callback query's
//! id and data, and a joining member's first name. A reply is any call recorded by the
//! stand-in whose parameters contain the token; an accepted update without one is lost,
//! a second one is a duplicate, and a reply that arrives after a later update's reply of
//! the same chat is out of order.

mod generate;
mod report;
mod send;

pub use generate::{FIRST_CHAT, Kind, UpdateSpec, generate, generate_from};
pub use report::{Latency, Report, SinkCall, collect_replies, match_replies};
pub use send::{Delivery, DeliveryOutcome, Progress, deliver};
