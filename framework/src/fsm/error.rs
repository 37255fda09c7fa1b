//! What can go wrong with FSM storage, and whether retrying the update could help.

use std::time::Duration;

use crate::error::{ErrorClass, Transient};

/// An FSM storage error.
///
/// Its `source()` is its cause, the storage client's, the decoder's or the encoder's
/// error (not repeated in its message), so `{:#}` of a [`HandlerError`](crate::HandlerError)
/// and anyhow's chains show it. Its class, transient or permanent, is
/// [`FsmError::class`].
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
        /// The encoder's error (MessagePack's, or JSON's for a single field).
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
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
            FsmError::Storage(_) => f.write_str("FSM storage unavailable"),
            FsmError::Decode { key, type_name, .. } => {
                write!(f, "FSM data of {key} does not decode as `{type_name}`")
            }
            FsmError::Encode { type_name, .. } => {
                write!(f, "cannot encode `{type_name}` as FSM data")
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
    /// The cause: the storage client's, the decoder's or the encoder's error.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause: &(dyn std::error::Error + 'static) = self.cause()?;
        Some(cause)
    }
}

impl FsmError {
    /// The underlying error: the storage client's, the decoder's or the encoder's.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            FsmError::Storage(e) => Some(e.as_ref()),
            FsmError::Decode { source, .. } => Some(source),
            FsmError::Encode { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }

    /// Transient for a storage, lease or lock failure (retrying the update may work),
    /// permanent for data that does not encode or decode.
    pub fn class(&self) -> ErrorClass {
        if matches!(self, FsmError::Decode { .. } | FsmError::Encode { .. }) {
            ErrorClass::Permanent
        } else {
            ErrorClass::Transient
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
        self.class() == ErrorClass::Transient
    }
}

#[cfg(feature = "redis")]
impl From<redis::RedisError> for FsmError {
    fn from(e: redis::RedisError) -> FsmError {
        FsmError::Storage(Box::new(e))
    }
}
