//! [`MemoryStorage`]: the FSM in this process's memory, for tests and local runs. Locks
//! isolate updates within the process only; nothing survives a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::storage::{DataUpdate, FsmStorage, LockGrant};
use super::{FsmError, FsmKey};

#[derive(Default)]
struct Records {
    states: HashMap<FsmKey, String>,
    data: HashMap<FsmKey, Vec<u8>>,
    locks: HashMap<FsmKey, (String, Instant)>,
    fences: HashMap<FsmKey, u64>,
}

/// FSM storage in memory. Clones share the records.
///
/// ```
/// use tgpipe_worker::fsm::{Fsm, MemoryStorage};
///
/// let fsm = Fsm::new(MemoryStorage::new());
/// ```
#[derive(Clone, Default)]
pub struct MemoryStorage(Arc<Mutex<Records>>);

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStorage").finish_non_exhaustive()
    }
}

impl MemoryStorage {
    /// Empty storage.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        // A panic while holding the guard cannot leave a record half-written (each
        // operation is one map call), so a poisoned lock is still consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_key(key: &FsmKey) -> FsmKey {
        // Side records share the main record's lock, as in Redis.
        FsmKey {
            destiny: None,
            ..key.clone()
        }
    }
}

#[async_trait]
impl FsmStorage for MemoryStorage {
    async fn get_state(&self, key: &FsmKey) -> Result<Option<String>, FsmError> {
        Ok(self.records().states.get(key).cloned())
    }

    async fn set_state(&self, key: &FsmKey, state: Option<&str>) -> Result<(), FsmError> {
        let mut r = self.records();
        match state {
            Some(s) => r.states.insert(key.clone(), s.to_owned()),
            None => r.states.remove(key),
        };
        Ok(())
    }

    async fn get_data(&self, key: &FsmKey) -> Result<Option<Vec<u8>>, FsmError> {
        Ok(self.records().data.get(key).cloned())
    }

    async fn set_data(&self, key: &FsmKey, data: Option<&[u8]>) -> Result<(), FsmError> {
        let mut r = self.records();
        match data {
            Some(d) => r.data.insert(key.clone(), d.to_vec()),
            None => r.data.remove(key),
        };
        Ok(())
    }

    async fn update_data(
        &self,
        key: &FsmKey,
        update: &mut DataUpdate<'_>,
    ) -> Result<Vec<u8>, FsmError> {
        let mut r = self.records();
        let new = update(r.data.get(key).map(Vec::as_slice))?;
        r.data.insert(key.clone(), new.clone());
        Ok(new)
    }

    async fn clear(&self, key: &FsmKey) -> Result<(), FsmError> {
        let mut r = self.records();
        r.states.remove(key);
        r.data.remove(key);
        Ok(())
    }

    async fn try_lock(
        &self,
        key: &FsmKey,
        token: &str,
        lease: Duration,
    ) -> Result<Option<LockGrant>, FsmError> {
        let lock_key = MemoryStorage::lock_key(key);
        let now = Instant::now();
        let mut r = self.records();
        if let Some((_, until)) = r.locks.get(&lock_key)
            && *until > now
        {
            return Ok(None);
        }
        r.locks
            .insert(lock_key.clone(), (token.to_owned(), now + lease));
        let fence = r.fences.entry(lock_key).or_insert(0);
        *fence += 1;
        let fence = *fence;
        Ok(Some(LockGrant {
            fence,
            state: r.states.get(key).cloned(),
        }))
    }

    async fn renew_lock(
        &self,
        key: &FsmKey,
        token: &str,
        lease: Duration,
    ) -> Result<bool, FsmError> {
        let now = Instant::now();
        let mut r = self.records();
        match r.locks.get_mut(&MemoryStorage::lock_key(key)) {
            Some((t, until)) if t == token && *until > now => {
                *until = now + lease;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn unlock(&self, key: &FsmKey, token: &str) -> Result<bool, FsmError> {
        let lock_key = MemoryStorage::lock_key(key);
        let mut r = self.records();
        match r.locks.get(&lock_key) {
            Some((t, until)) if t == token => {
                let live = *until > Instant::now();
                r.locks.remove(&lock_key);
                Ok(live)
            }
            _ => Ok(false),
        }
    }
}
