//! [`MemoryStorage`]: the FSM in this process's memory, for tests and local runs. Locks
//! isolate updates within the process only; nothing survives a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::storage::{DataUpdate, FsmStorage, LockGrant};
use super::{FsmError, FsmKey, OwnerFence};

struct Records {
    states: HashMap<FsmKey, String>,
    data: HashMap<FsmKey, Vec<u8>>,
    locks: HashMap<FsmKey, (String, Instant)>,
    /// The fencing counter and when it was last taken.
    fences: HashMap<FsmKey, (u64, Instant)>,
    /// How long a fencing counter outlives its last lock (as Redis's PX).
    fence_idle: Duration,
    /// Lock grants until the next prune: as many as there were counters after the last.
    until_prune: usize,
}

impl Default for Records {
    fn default() -> Records {
        Records {
            states: HashMap::new(),
            data: HashMap::new(),
            locks: HashMap::new(),
            fences: HashMap::new(),
            fence_idle: super::fence::FENCE_TTL,
            until_prune: 64,
        }
    }
}

impl Records {
    /// Drops expired leases and the fencing counters of keys not locked for
    /// `fence_idle`, once per as many grants as there are counters (amortised O(1)),
    /// so that memory follows the active keys, not every key ever seen.
    fn prune(&mut self, now: Instant) {
        self.until_prune = self.until_prune.saturating_sub(1);
        if self.until_prune > 0 {
            return;
        }
        self.locks.retain(|_, (_, until)| *until > now);
        let idle = self.fence_idle;
        let locks = &self.locks;
        self.fences
            .retain(|key, (_, used)| locks.contains_key(key) || now.duration_since(*used) < idle);
        self.until_prune = self.fences.len().max(64);
    }
}

/// FSM storage in memory. Clones share the records.
///
/// ```
/// use tgpipe::fsm::{Fsm, MemoryStorage};
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

    /// Storage whose fencing counters go after `idle` without a lock (tests).
    #[cfg(test)]
    fn with_fence_idle(idle: Duration) -> MemoryStorage {
        let storage = MemoryStorage::new();
        storage.records().fence_idle = idle;
        storage
    }

    /// Fencing counters held (tests).
    #[cfg(test)]
    fn fences(&self) -> usize {
        self.records().fences.len()
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

    async fn set_state_and_update_side(
        &self,
        key: &FsmKey,
        state: Option<&str>,
        side: &FsmKey,
        update: &mut DataUpdate<'_>,
        _fence: Option<&OwnerFence>,
    ) -> Result<Vec<u8>, FsmError> {
        let mut r = self.records();
        let new = update(r.data.get(side).map(Vec::as_slice))?;
        r.data.insert(side.clone(), new.clone());
        match state {
            Some(s) => r.states.insert(key.clone(), s.to_owned()),
            None => r.states.remove(key),
        };
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
        r.prune(now);
        r.locks
            .insert(lock_key.clone(), (token.to_owned(), now + lease));
        let (fence, used) = r.fences.entry(lock_key).or_insert((0, now));
        *fence += 1;
        *used = now;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lock_fence_counters_of_idle_keys_are_pruned() {
        let storage = MemoryStorage::with_fence_idle(Duration::from_millis(50));
        let lease = Duration::from_secs(5);
        for chat in 0..100 {
            let key = FsmKey::new(1, chat, chat);
            let grant = storage.try_lock(&key, "t", lease).await.unwrap().unwrap();
            assert_eq!(grant.fence, 1);
            assert!(storage.unlock(&key, "t").await.unwrap());
        }
        assert_eq!(storage.fences(), 100, "recent counters are kept");
        tokio::time::sleep(Duration::from_millis(80)).await;
        // A key locked again keeps its counter rising; the idle ones go.
        let held = FsmKey::new(1, 7, 7);
        let again = storage.try_lock(&held, "u", lease).await.unwrap().unwrap();
        for chat in 1000..1100 {
            let key = FsmKey::new(1, chat, chat);
            storage.try_lock(&key, "t", lease).await.unwrap().unwrap();
            storage.unlock(&key, "t").await.unwrap();
        }
        assert!(
            storage.fences() <= 101,
            "{} counters: the idle ones were not pruned",
            storage.fences()
        );
        assert_eq!(again.fence, 2);
        tokio::time::sleep(Duration::from_millis(80)).await;
        // Held across the prune: its counter survives while the lease is live.
        for chat in 2000..2200 {
            let key = FsmKey::new(1, chat, chat);
            storage.try_lock(&key, "t", lease).await.unwrap().unwrap();
            storage.unlock(&key, "t").await.unwrap();
        }
        assert!(storage.unlock(&held, "u").await.unwrap());
        let next = storage.try_lock(&held, "v", lease).await.unwrap().unwrap();
        assert_eq!(next.fence, 3, "a held key's counter is never reset");
    }
}
