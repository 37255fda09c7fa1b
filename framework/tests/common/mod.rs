//! Shared by the worker's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tgpipe::Bot;

/// A log the handlers and middleware of a test write to (given as application state).
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Update 1, a text message in the private chat 5, as the dispatcher is fed it
/// ([`tgpipe_testkit::text_update`]).
pub fn text_update(text: &str) -> Bytes {
    Bytes::from(tgpipe_testkit::text_update(1, 5, text).to_string())
}

/// A bot with a known username and no Bot API behind it.
pub fn bot() -> Bot {
    let b = Bot::new("123:TEST").unwrap();
    b.set_username("my_bot");
    b
}
