//! What can go wrong with FSM storage, and whether retrying the update could help.

use std::time::Duration;

use crate::error::{ErrorClass, Transient};

/// An FSM storage error.
///
/// Its `source()` is its classification, an [`ErrorClass`], like
/// [`BotError`](crate::BotError)'s: so an application error that wraps it, even with
/// `#[error(transparent)]` (which skips the wrapped error itself in the chain), is
/// still classified by it. The underlying error is part of the message, and
/// [`FsmError::cause`] gives it.
#[derive(Debug)]
pub enum FsmError {
    /// The storage could not be reached or answered with an error (Redis down, a
    /// timeout). Transient: the update is retried later.
    Storage(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The stored data does not decode as the type the handler asked for (the type
    /// changed since it was written). Permanent: retrying decodes the same bytes.
    Decode {
        /// The FSM key.
        key: String,
        /// The type the handler asked for.
        type_name: &'static str,
        /// The decoder's error.
        source: rmp_serde::decode::Error,
    },
    /// A value could not be encoded as MessagePack (a map with non-string keys, a
    /// serializer error). Permanent.
    Encode {
        /// The type.
        type_name: &'static str,
        /// The encoder's error.
        source: rmp_serde::encode::Error,
    },
    /// Another update of the same key held the lock for longer than the isolation's
    /// wait. Transient: the update is retried once that one is done.
    LockTimeout {
        /// The FSM key.
        key: String,
        /// How long acquisition waited.
        waited: Duration,
    },
    /// The lease of this update's lock expired before the handler finished (it could
    /// not be renewed), so another process may own the key: writes are refused.
    /// Transient.
    LeaseLost {
        /// The FSM key.
        key: String,
    },
    /// A later owner of the key's partition wrote first: this pod lost the partition
    /// (transient: the update is not finished here; the new owner has it).
    Fenced {
        /// The key.
        key: String,
    },
    /// An atomic update kept losing the compare-and-set to concurrent writers.
    /// Transient.
    Contended {
        /// The FSM key.
        key: String,
    },
}

impl std::fmt::Display for FsmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsmError::Storage(e) => write!(f, "FSM storage unavailable: {e}"),
            FsmError::Decode {
                key,
                type_name,
                source,
            } => write!(
                f,
                "FSM data of {key} does not decode as `{type_name}`: {source}"
            ),
            FsmError::Encode { type_name, source } => {
                write!(f, "cannot encode `{type_name}` as FSM data: {source}")
            }
            FsmError::LockTimeout { key, waited } => {
                write!(f, "FSM key {key} stayed locked for {waited:?}")
            }
            FsmError::LeaseLost { key } => write!(f, "the lock lease of FSM key {key} was lost"),
            FsmError::Fenced { key } => write!(
                f,
                "FSM key {key} was written by a later owner of its partition"
            ),
            FsmError::Contended { key } => {
                write!(f, "FSM data of {key} kept changing during an atomic update")
            }
        }
    }
}

impl std::error::Error for FsmError {
    /// The classification, as a link of the chain (see the type's docs).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(if self.is_transient() {
            &ErrorClass::Transient
        } else {
            &ErrorClass::Permanent
        })
    }
}

impl FsmError {
    /// The underlying error: the storage client's, the decoder's or the encoder's.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            FsmError::Storage(e) => Some(e.as_ref()),
            FsmError::Decode { source, .. } => Some(source),
            FsmError::Encode { source, .. } => Some(source),
            _ => None,
        }
    }

    /// A storage error from any source.
    pub fn storage(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> FsmError {
        FsmError::Storage(e.into())
    }
}

/// A storage, lease or lock failure may pass; a state that cannot be encoded or
/// decoded stays so.
impl Transient for FsmError {
    fn is_transient(&self) -> bool {
        !matches!(self, FsmError::Decode { .. } | FsmError::Encode { .. })
    }
}

#[cfg(feature = "redis")]
impl From<redis::RedisError> for FsmError {
    fn from(e: redis::RedisError) -> FsmError {
        FsmError::Storage(Box::new(e))
    }
}
