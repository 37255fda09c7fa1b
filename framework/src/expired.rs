//! Updates that expired before they could run: what `router.expired(..)` handlers see.
//!
//! Telegram stops taking some answers after a while (a callback query's after about
//! 150 s). The worker settles an update past its kind's deadline as expired instead of
//! running its handlers (`TGPIPE_DEADLINES`). An `expired` handler, if the tree has one,
//! runs instead: tell the user the button went stale, or log it. Its answer to the
//! query itself would fail; anything else it sends goes out.
//!
//! ```
//! use tgpipe::expired::Expired;
//! use tgpipe::prelude::*;
//!
//! async fn stale(query: Arc<CallbackQuery>, expired: Expired) -> Result {
//!     let text = format!("That button waited {} s; please press it again.", expired.age.as_secs());
//!     query.answer_in_chat(text).await
//! }
//!
//! let mut router = Router::new("main");
//! router.expired(stale);
//! ```

use std::time::Duration;

use crate::context::Context;
use crate::extract::{ExtractError, FromContext};

/// Why an update is expired: what `expired` handlers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// How old the update was when its turn came (from Telegram's delivery).
    pub age: Duration,
    /// Its kind's deadline.
    pub deadline: Duration,
}

impl FromContext for Expired {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        cx.get::<Expired>()
            .copied()
            .ok_or(ExtractError::Missing("Expired"))
    }
}
