//! [`ErrorClass`]: whether an error is transient.

use std::error::Error as StdError;
use std::fmt;

/// Whether an error is transient, as a link of a `source()` chain.
///
/// [`BotError`](crate::BotError)'s `source()` is one of these (or a
/// [`ForbiddenReason`](crate::ForbiddenReason), permanent), so its classification
/// survives an application error that wraps it with `#[error(transparent)]`: thiserror's
/// `transparent` forwards `source()` to the wrapped error's own source, hiding the
/// wrapped error itself. An application error can use it the same way
/// (`#[source] ErrorClass`, or return it from a hand-written `source()`).
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
