//! [`OwnerFence`]: the partition ownership an update runs under, which stands in for the
//! per-key lease.
//!
//! With partitioned consumption every update of a chat runs on the one pod that owns the
//! chat's partition, one at a time, so an FSM key that lives inside one chat (user in
//! chat, chat, topics) needs no lease: ownership already isolates it. What ownership
//! cannot stop is a pod that lost the partition and still finishes an update; its writes
//! carry the epoch it owned the partition under, and storage refuses a write whose epoch
//! is older than one already written for the key in the same lane
//! (`tgpipe:fsm:{...}:fence`, a hash of the highest epoch per lane).
//!
//! The runtime sets the fence for the dispatch of each update (a task-local); outside the
//! runtime there is none and the lease is used as before.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long an owner fence, or a lock's fencing counter, outlives its last use, at
/// least: longer than any handover could leave a stale owner running or any lease
/// could last, and never shorter than the records' TTL (both storages keep to it).
pub(crate) const FENCE_TTL: Duration = Duration::from_secs(24 * 3600);

/// The ownership an update runs under: the lane, the partition and its epoch.
#[derive(Debug, Clone)]
pub struct OwnerFence {
    lane: Arc<str>,
    partition: u16,
    epoch: u64,
    /// False once the runtime lost the partition: checked before each write.
    alive: Option<Arc<AtomicBool>>,
}

impl PartialEq for OwnerFence {
    fn eq(&self, other: &Self) -> bool {
        (&self.lane, self.partition, self.epoch) == (&other.lane, other.partition, other.epoch)
    }
}

impl Eq for OwnerFence {}

impl OwnerFence {
    /// The fence of `lane`'s `partition`, owned under `epoch`.
    pub fn new(lane: &str, partition: u16, epoch: u64) -> OwnerFence {
        OwnerFence {
            lane: Arc::from(lane),
            partition,
            epoch,
            alive: None,
        }
    }

    /// The same fence, refused by storage without a round trip once `alive` is false
    /// (the runtime clears it when it loses the partition).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use tgpipe::fsm::OwnerFence;
    ///
    /// let alive = Arc::new(AtomicBool::new(true));
    /// let fence = OwnerFence::new("default#16", 3, 42).with_liveness(Arc::clone(&alive));
    /// assert!(fence.is_current());
    /// alive.store(false, Ordering::Release);
    /// assert!(!fence.is_current());
    /// ```
    pub fn with_liveness(mut self, alive: Arc<AtomicBool>) -> OwnerFence {
        self.alive = Some(alive);
        self
    }

    /// Whether the ownership still holds, as far as this process knows.
    pub fn is_current(&self) -> bool {
        self.alive
            .as_ref()
            .is_none_or(|a| a.load(Ordering::Acquire))
    }

    /// The fencing scope, usually the lane and its partition count (`default#16`):
    /// epochs of different scopes are not compared.
    pub fn lane(&self) -> &str {
        &self.lane
    }

    /// The partition.
    pub fn partition(&self) -> u16 {
        self.partition
    }

    /// The epoch: larger for every later owner of the partition.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

tokio::task_local! {
    static OWNER: OwnerFence;
}

/// Runs `work` (a dispatch) under `fence`.
pub fn with_owner_fence<F: Future>(fence: OwnerFence, work: F) -> impl Future<Output = F::Output> {
    OWNER.scope(fence, work)
}

/// The fence the current dispatch runs under, if any.
pub(crate) fn current() -> Option<OwnerFence> {
    OWNER.try_with(Clone::clone).ok()
}
