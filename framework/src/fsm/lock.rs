//! Isolation: one update of an FSM key at a time, across every process sharing the
//! storage.
//!
//! A lease lock per key: taken with a random token (`SET NX PX` in Redis), extended by a
//! background task every third of the lease while the update is handled, released by
//! compare-and-delete when it is done. A holder that crashes stops renewing, so its
//! lease expires and the key is taken over after at most one lease. Each acquisition
//! also gets a fencing token (strictly increasing per key).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::storage::{FsmStorage, LockGrant};
use super::{FsmError, FsmKey};

/// How updates of one FSM key are kept apart. On by default.
///
/// ```
/// use std::time::Duration;
/// use tgpipe::fsm::Isolation;
///
/// let isolation = Isolation::default()
///     .lease(Duration::from_secs(10))
///     .wait(Duration::from_secs(5));
/// assert!(isolation.is_enabled());
/// assert!(!Isolation::disabled().is_enabled());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isolation {
    enabled: bool,
    lease: Duration,
    wait: Duration,
}

impl Default for Isolation {
    /// Lease 10 s: a crashed holder blocks its key for at most that long, while
    /// renewal every ~3.3 s leaves room for two missed renewals under load. Wait 5 s:
    /// longer than most handlers, short enough that a key blocked by a slow handler
    /// sends its other updates back to the stream (retried later) instead of filling
    /// the worker's concurrency.
    fn default() -> Isolation {
        Isolation {
            enabled: true,
            lease: Duration::from_secs(10),
            wait: Duration::from_secs(5),
        }
    }
}

impl Isolation {
    /// No locking: updates of one key may run at once (each `update_data` is still
    /// atomic).
    pub fn disabled() -> Isolation {
        Isolation {
            enabled: false,
            ..Isolation::default()
        }
    }

    /// The lease: how long a lock outlives a holder that stopped renewing it.
    pub fn lease(mut self, lease: Duration) -> Isolation {
        self.lease = lease.max(Duration::from_millis(30));
        self
    }

    /// How long acquisition waits for a held lock before failing the update
    /// (transiently).
    pub fn wait(mut self, wait: Duration) -> Isolation {
        self.wait = wait;
        self
    }

    /// Whether updates are locked.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Takes the lock of `key`, polling with a growing, jittered delay (2 ms to 50 ms)
    /// until it is free or the wait is over.
    pub(crate) async fn acquire(
        &self,
        storage: &Arc<dyn FsmStorage>,
        key: &FsmKey,
    ) -> Result<(Lease, LockGrant), FsmError> {
        let token = format!("{:032x}", rand::random::<u128>());
        let start = Instant::now();
        let mut delay = Duration::from_millis(2);
        loop {
            if let Some(grant) = storage.try_lock(key, &token, self.lease).await? {
                return Ok((Lease::start(storage, key, token, self.lease), grant));
            }
            let waited = start.elapsed();
            if waited >= self.wait {
                return Err(FsmError::LockTimeout {
                    key: key.to_string(),
                    waited,
                });
            }
            let jitter =
                Duration::from_micros(rand::random_range(0..=delay.as_micros() as u64 / 2));
            tokio::time::sleep((delay + jitter).min(self.wait - waited)).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }
}

/// A held lock: renewed in the background until released. Dropping it without
/// [`Lease::release`] (a cancelled dispatch) stops renewal and releases it from a
/// spawned task.
pub(crate) struct Lease {
    storage: Arc<dyn FsmStorage>,
    key: FsmKey,
    token: String,
    lost: Arc<AtomicBool>,
    renewal: tokio::task::JoinHandle<()>,
    released: bool,
}

impl Lease {
    fn start(storage: &Arc<dyn FsmStorage>, key: &FsmKey, token: String, lease: Duration) -> Lease {
        let lost = Arc::new(AtomicBool::new(false));
        let renewal = tokio::spawn(renew(
            Arc::clone(storage),
            key.clone(),
            token.clone(),
            lease,
            Arc::clone(&lost),
        ));
        Lease {
            storage: Arc::clone(storage),
            key: key.clone(),
            token,
            lost,
            renewal,
            released: false,
        }
    }

    /// Set once renewal finds the lease gone.
    pub(crate) fn lost_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.lost)
    }

    /// Stops renewal and releases the lock. A failure is logged, not returned: the
    /// update is done, and the lease expires on its own.
    pub(crate) async fn release(mut self) {
        self.released = true;
        self.renewal.abort();
        match self.storage.unlock(&self.key, &self.token).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(key = %self.key, "FSM lock had expired before release"),
            Err(e) => {
                tracing::warn!(key = %self.key, error = &e as &dyn std::error::Error, "FSM lock release failed; it will expire")
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.renewal.abort();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (storage, key, token) = (
                Arc::clone(&self.storage),
                self.key.clone(),
                std::mem::take(&mut self.token),
            );
            rt.spawn(async move {
                let _ = storage.unlock(&key, &token).await;
            });
        }
    }
}

async fn renew(
    storage: Arc<dyn FsmStorage>,
    key: FsmKey,
    token: String,
    lease: Duration,
    lost: Arc<AtomicBool>,
) {
    let period = lease / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // The lease runs from the last renewal that succeeded (taken when it was asked).
    let mut held_since = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let asked = tokio::time::Instant::now();
        match storage.renew_lock(&key, &token, lease).await {
            Ok(true) => held_since = asked,
            Ok(false) => {
                tracing::warn!(key = %key, "FSM lock lease lost while handling");
                lost.store(true, Ordering::Release);
                return;
            }
            // One failed renewal is not a lost lease: the next tick tries again while
            // two thirds of the lease remain. Renewals that failed for a whole lease
            // lost it: another holder may have it now.
            Err(e) if held_since.elapsed() + period >= lease => {
                tracing::warn!(key = %key, error = &e as &dyn std::error::Error, "FSM lock renewals failed for the whole lease; lost");
                lost.store(true, Ordering::Release);
                return;
            }
            Err(e) => tracing::warn!(key = %key, error = %e, "FSM lock renewal failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_too_short_to_renew_is_raised() {
        let i = Isolation::default().lease(Duration::from_millis(1));
        assert_eq!(i.lease, Duration::from_millis(30));
    }

    #[tokio::test]
    async fn acquisition_gives_up_after_the_wait() {
        let storage: Arc<dyn FsmStorage> = Arc::new(super::super::MemoryStorage::new());
        let key = FsmKey::new(1, 1, 1);
        let isolation = Isolation::default().wait(Duration::from_millis(60));
        let (held, grant) = isolation.acquire(&storage, &key).await.unwrap();
        assert_eq!(grant.fence, 1);
        let started = Instant::now();
        let err = isolation.acquire(&storage, &key).await.err().unwrap();
        assert!(matches!(err, FsmError::LockTimeout { .. }));
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert!(started.elapsed() < Duration::from_secs(1));
        held.release().await;
        let (again, grant) = isolation.acquire(&storage, &key).await.unwrap();
        assert_eq!(grant.fence, 2);
        again.release().await;
    }
}
