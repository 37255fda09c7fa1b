//! What can go wrong with FSM storage, and whether retrying the update could help.

use std::time::Duration;

/// An FSM storage error.
#[derive(Debug, thiserror::Error)]
pub enum FsmError {
    /// The storage could not be reached or answered with an error (Redis down, a
    /// timeout). Transient: the update is retried later.
    #[error("FSM storage unavailable: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The stored data does not decode as the type the handler asked for (the type
    /// changed since it was written). Permanent: retrying decodes the same bytes.
    #[error("FSM data of {key} does not decode as `{type_name}`: {source}")]
    Decode {
        /// The FSM key.
        key: String,
        /// The type the handler asked for.
        type_name: &'static str,
        /// The decoder's error.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// A value could not be encoded as MessagePack (a map with non-string keys, a
    /// serializer error). Permanent.
    #[error("cannot encode `{type_name}` as FSM data: {source}")]
    Encode {
        /// The type.
        type_name: &'static str,
        /// The encoder's error.
        #[source]
        source: rmp_serde::encode::Error,
    },
    /// Another update of the same key held the lock for longer than the isolation's
    /// wait. Transient: the update is retried once that one is done.
    #[error("FSM key {key} stayed locked for {waited:?}")]
    LockTimeout {
        /// The FSM key.
        key: String,
        /// How long acquisition waited.
        waited: Duration,
    },
    /// The lease of this update's lock expired before the handler finished (it could
    /// not be renewed), so another process may own the key: writes are refused.
    /// Transient.
    #[error("the lock lease of FSM key {key} was lost")]
    LeaseLost {
        /// The FSM key.
        key: String,
    },
    /// A later owner of the key's partition wrote first: this pod lost the partition
    /// (transient: the update is not finished here; the new owner has it).
    #[error("FSM key {key} was written by a later owner of its partition")]
    Fenced {
        /// The key.
        key: String,
    },
    /// An atomic update kept losing the compare-and-set to concurrent writers.
    /// Transient.
    #[error("FSM data of {key} kept changing during an atomic update")]
    Contended {
        /// The FSM key.
        key: String,
    },
}

impl FsmError {
    /// A storage error from any source.
    pub fn storage(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> FsmError {
        FsmError::Storage(e.into())
    }

    /// Whether retrying the update could succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, FsmError::Decode { .. } | FsmError::Encode { .. })
    }
}

impl From<redis::RedisError> for FsmError {
    fn from(e: redis::RedisError) -> FsmError {
        FsmError::Storage(Box::new(e))
    }
}
