//! The storage behind the FSM: an object-safe async trait, so a deployment can bring its
//! own. [`RedisStorage`](super::RedisStorage) is the default,
//! [`MemoryStorage`](super::MemoryStorage) serves tests and local runs.
//!
//! Storages deal in bytes (the data document is MessagePack);
//! [`FsmContext`](super::FsmContext) does the typing.

use std::time::Duration;

use async_trait::async_trait;

use super::{FsmError, FsmKey, OwnerFence};

/// What an acquired lock comes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockGrant {
    /// The fencing token: strictly increasing per key across acquisitions, so an
    /// external system can refuse writes from an older holder.
    pub fence: u64,
    /// The key's state, read under the lock in the same round trip.
    pub state: Option<String>,
}

/// The closure of [`FsmStorage::update_data`]: the current document (if any) to the new
/// one. It may run more than once (compare-and-set retries).
pub type DataUpdate<'a> = dyn FnMut(Option<&[u8]>) -> Result<Vec<u8>, FsmError> + Send + 'a;

/// An FSM storage: states, data documents, and per-key lease locks.
#[async_trait]
pub trait FsmStorage: Send + Sync + 'static {
    /// The key's state.
    async fn get_state(&self, key: &FsmKey) -> Result<Option<String>, FsmError>;

    /// Sets the key's state, or removes it (`None`).
    async fn set_state(&self, key: &FsmKey, state: Option<&str>) -> Result<(), FsmError>;

    /// The key's data document.
    async fn get_data(&self, key: &FsmKey) -> Result<Option<Vec<u8>>, FsmError>;

    /// Replaces the key's data document, or removes it (`None`).
    async fn set_data(&self, key: &FsmKey, data: Option<&[u8]>) -> Result<(), FsmError>;

    /// Replaces the data document with `update(current)` atomically: no other write to
    /// the document can land between the read and the write. Returns the new document.
    async fn update_data(
        &self,
        key: &FsmKey,
        update: &mut DataUpdate<'_>,
    ) -> Result<Vec<u8>, FsmError>;

    /// Removes the key's state and data.
    async fn clear(&self, key: &FsmKey) -> Result<(), FsmError>;

    /// [`FsmStorage::set_state`] under partition ownership: refused with
    /// [`FsmError::Fenced`] when a later owner (a larger epoch of the same lane) wrote
    /// the key first. The default writes unfenced, for storages without the notion.
    async fn set_state_fenced(
        &self,
        key: &FsmKey,
        state: Option<&str>,
        fence: &OwnerFence,
    ) -> Result<(), FsmError> {
        let _ = fence;
        self.set_state(key, state).await
    }

    /// [`FsmStorage::set_data`] under partition ownership (see
    /// [`FsmStorage::set_state_fenced`]).
    async fn set_data_fenced(
        &self,
        key: &FsmKey,
        data: Option<&[u8]>,
        fence: &OwnerFence,
    ) -> Result<(), FsmError> {
        let _ = fence;
        self.set_data(key, data).await
    }

    /// [`FsmStorage::update_data`] under partition ownership (see
    /// [`FsmStorage::set_state_fenced`]).
    async fn update_data_fenced(
        &self,
        key: &FsmKey,
        update: &mut DataUpdate<'_>,
        fence: &OwnerFence,
    ) -> Result<Vec<u8>, FsmError> {
        let _ = fence;
        self.update_data(key, update).await
    }

    /// [`FsmStorage::clear`] under partition ownership (see
    /// [`FsmStorage::set_state_fenced`]).
    async fn clear_fenced(&self, key: &FsmKey, fence: &OwnerFence) -> Result<(), FsmError> {
        let _ = fence;
        self.clear(key).await
    }

    /// Sets `key`'s state (or removes it, `None`) and changes the data document of its
    /// side record `side` (the scene history: `key` with a [`FsmKey::destiny`]) in one
    /// atomic step, as [`FsmStorage::update_data`] does for the document alone, fenced
    /// under partition ownership when `fence` is given. Returns the new document.
    ///
    /// The default is not atomic (the document first, then the state): a storage that
    /// can write both at once should override it, as Redis and memory storage do.
    async fn set_state_and_update_side(
        &self,
        key: &FsmKey,
        state: Option<&str>,
        side: &FsmKey,
        update: &mut DataUpdate<'_>,
        fence: Option<&OwnerFence>,
    ) -> Result<Vec<u8>, FsmError> {
        let new = match fence {
            Some(f) => self.update_data_fenced(side, update, f).await?,
            None => self.update_data(side, update).await?,
        };
        match fence {
            Some(f) => self.set_state_fenced(key, state, f).await?,
            None => self.set_state(key, state).await?,
        }
        Ok(new)
    }

    /// Tries once to take the key's lock for `lease` under `token`; `None` if another
    /// token holds it.
    async fn try_lock(
        &self,
        key: &FsmKey,
        token: &str,
        lease: Duration,
    ) -> Result<Option<LockGrant>, FsmError>;

    /// Extends the lease if `token` still holds the lock; `false` if it does not.
    async fn renew_lock(
        &self,
        key: &FsmKey,
        token: &str,
        lease: Duration,
    ) -> Result<bool, FsmError>;

    /// Releases the lock if `token` holds it; `false` if it did not (it expired).
    async fn unlock(&self, key: &FsmKey, token: &str) -> Result<bool, FsmError>;
}
