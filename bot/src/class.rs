//! [`ErrorClass`]: whether an error is transient.

use std::error::Error as StdError;
use std::fmt;

/// Whether an error is transient: what [`BotError::class`](crate::BotError::class) and
/// the framework's errors' `class()` return.
///
/// It is an error type too, so that an application error with no other cause can name
/// its class as its source (`#[source] ErrorClass`); the framework's own errors keep
/// their real cause there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// A later retry of the update may succeed.
    Transient,
    /// A retry would fail the same way.
    Permanent,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Transient => "transient: a later retry may succeed",
            ErrorClass::Permanent => "permanent: a retry would fail the same way",
        })
    }
}

impl StdError for ErrorClass {}
