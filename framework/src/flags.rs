//! Handler flags: names and values set on a registration, read by the middleware around
//! the handler (aiogram's `flags=`). They say what a handler needs, such as a chat action
//! while it runs, and the middleware decides what to do.
//!
//! ```
//! use tgpipe::prelude::*;
//!
//! async fn report(message: Arc<Message>) {}
//!
//! async fn log_long(cx: Context, next: Next) -> MiddlewareResult {
//!     let long = Flags::of(&cx).is_set("long");
//!     let outcome = next.run(cx).await;
//!     if long { /* record how long it took ... */ }
//!     outcome
//! }
//!
//! let mut router = Router::new("main");
//! router.message(report).flag("chat_action", "typing").flag("long", "");
//! router.inner_middleware(UpdateKind::Message, log_long);
//! ```

use std::any::TypeId;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::context::{Context, Extensions};
use crate::extract::{ExtractError, FromContext};
use crate::filter::{Filter, FilterOutcome};
use crate::handler::BoxFuture;

/// The flags of the handler an update matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags(Arc<BTreeMap<&'static str, String>>);

static NONE: std::sync::LazyLock<Flags> = std::sync::LazyLock::new(Flags::default);

impl Flags {
    /// The flags of the matched handler (none before a handler matched: in outer
    /// middleware).
    pub fn of(cx: &Context) -> &Flags {
        cx.get::<Flags>().unwrap_or(&NONE)
    }

    /// A flag's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Whether a flag is set, whatever its value.
    pub fn is_set(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub(crate) fn set(&mut self, name: &'static str, value: String) {
        Arc::make_mut(&mut self.0).insert(name, value);
    }

    /// The registration's filters, then one that hands the flags on when there are any.
    pub(crate) fn after(self, mut filters: Vec<Arc<dyn Filter>>) -> Vec<Arc<dyn Filter>> {
        if !self.0.is_empty() {
            filters.push(Arc::new(self));
        }
        filters
    }
}

/// Flags are handed on by a filter that always passes, the registration's last.
impl Filter for Flags {
    fn check<'a>(&'a self, _cx: &'a Context) -> BoxFuture<'a, FilterOutcome> {
        let mut values = Extensions::new();
        values.insert(self.clone());
        Box::pin(std::future::ready(Some(values)))
    }
    fn provides(&self) -> Vec<TypeId> {
        vec![TypeId::of::<Flags>()]
    }
}

/// A handler may take its flags (none when it has no flags).
impl FromContext for Flags {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        Ok(Flags::of(cx).clone())
    }
}
