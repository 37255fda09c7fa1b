//! The finite-state machine: per-user (or per-chat, per-topic) conversation state and
//! data, in Redis (or in memory), with updates of one key never handled at once across processes.
//!
//! - [`states!`](crate::states) declares state groups (`Form:Name`), [`StateFilter`]
//!   routes by state;
//! - [`FsmContext`] is the handler's argument: state, typed data (MessagePack),
//!   atomic updates;
//! - [`KeyStrategy`] maps an update onto an [`FsmKey`];
//! - [`FsmStorage`] is where records live: `RedisStorage` (feature `redis`) or
//!   [`MemoryStorage`];
//! - [`Isolation`] locks each key for the whole dispatch of an update;
//! - [`Scene`] and [`SceneContext`] are aiogram's scenes on top.
//!
//! [`Fsm`] puts them together for [`DispatcherBuilder::fsm`](crate::DispatcherBuilder::fsm).
//! The guide is `docs/fsm.md`.

mod context;
mod error;
mod fence;
mod filter;
mod key;
mod lock;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod scene;
mod state;
mod storage;

use std::sync::Arc;

pub use self::context::FsmContext;
pub(crate) use self::context::FsmInstalled;
pub use self::error::FsmError;
pub use self::fence::{OwnerFence, with_owner_fence};
pub use self::filter::StateFilter;
#[doc(hidden)]
pub use self::filter::{state_is, state_requires};
pub use self::key::{FsmKey, KeyStrategy};
pub use self::lock::Isolation;
pub use self::memory::MemoryStorage;
#[cfg(feature = "redis")]
pub use self::redis::RedisStorage;
pub use self::scene::{HISTORY_CAP, Scene, SceneContext, Scenes};
pub use self::state::{StateName, StatesGroup};
pub use self::storage::{DataUpdate, FsmStorage, LockGrant};

use self::lock::Lease;
use crate::context::Context;
use crate::handler::BoxFuture;
use crate::middleware::{MiddlewareResult, Next, chain};
use crate::update::Update;

/// The FSM configuration of a dispatcher: storage, key strategy, isolation.
///
/// ```
/// use std::time::Duration;
/// use tgpipe::fsm::{Fsm, Isolation, KeyStrategy, MemoryStorage};
///
/// let fsm = Fsm::new(MemoryStorage::new())
///     .strategy(KeyStrategy::Chat)
///     .isolation(Isolation::default().lease(Duration::from_secs(30)));
/// ```
#[derive(Clone)]
pub struct Fsm {
    storage: Arc<dyn FsmStorage>,
    strategy: KeyStrategy,
    isolation: Isolation,
}

impl std::fmt::Debug for Fsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fsm")
            .field("strategy", &self.strategy)
            .field("isolation", &self.isolation)
            .finish_non_exhaustive()
    }
}

impl Fsm {
    /// An FSM over `storage`, keyed user-in-chat, with isolation on.
    pub fn new(storage: impl FsmStorage) -> Fsm {
        Fsm::from_arc(Arc::new(storage))
    }

    /// An FSM over a shared storage.
    pub fn from_arc(storage: Arc<dyn FsmStorage>) -> Fsm {
        Fsm {
            storage,
            strategy: KeyStrategy::default(),
            isolation: Isolation::default(),
        }
    }

    /// How updates map onto keys.
    pub fn strategy(mut self, strategy: KeyStrategy) -> Fsm {
        self.strategy = strategy;
        self
    }

    /// How updates of one key are kept apart ([`Isolation::disabled`] to turn it off).
    pub fn isolation(mut self, isolation: Isolation) -> Fsm {
        self.isolation = isolation;
        self
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn FsmStorage> {
        &self.storage
    }

    /// The key of `update` under the strategy.
    pub fn key(&self, update: &Update) -> Option<FsmKey> {
        self.strategy.key(update)
    }

    /// Whether an update's state is read without a lock under partition ownership (no
    /// isolation, or keys inside one chat), so that it can be read ahead, together with
    /// the runtime's other reads of the update.
    pub fn reads_state_unlocked(&self) -> bool {
        !self.isolation.is_enabled() || self.strategy.within_one_chat()
    }

    /// Prepares an update's FSM: locks its key (if isolated) and reads its state, so a
    /// storage failure fails the update before any handler runs. `None` when the
    /// update has no key. A state read ahead for the same key (`prefetched`) is used
    /// where no lock is taken.
    async fn begin(
        &self,
        update: &Update,
        prefetched: Option<&Prefetched>,
    ) -> Result<Option<FsmSession>, FsmError> {
        let Some(key) = self.key(update) else {
            return Ok(None);
        };
        let storage = Arc::clone(&self.storage);
        let read = |key: &FsmKey| {
            let ahead = prefetched
                .filter(|p| &p.key == key)
                .map(|p| p.state.clone());
            let storage = Arc::clone(&storage);
            let key = key.clone();
            async move {
                match ahead {
                    Some(state) => Ok(state),
                    None => storage.get_state(&key).await,
                }
            }
        };
        if !self.isolation.is_enabled() {
            let state = read(&key).await?;
            let cx = FsmContext::locked(storage, key, Some(state), None, None);
            return Ok(Some(FsmSession { cx, lease: None }));
        }
        // A key inside one chat, under partition ownership: isolated by the ownership,
        // its writes fenced by the epoch; no lease round trips.
        if self.strategy.within_one_chat()
            && let Some(fence) = self::fence::current()
        {
            let state = read(&key).await?;
            let cx = FsmContext::owned(storage, key, state, fence);
            return Ok(Some(FsmSession { cx, lease: None }));
        }
        let (lease, grant) = self.isolation.acquire(&storage, &key).await?;
        let cx = FsmContext::locked(
            storage,
            key,
            Some(grant.state),
            Some(grant.fence),
            Some(lease.lost_flag()),
        );
        Ok(Some(FsmSession {
            cx,
            lease: Some(lease),
        }))
    }
}

/// A key's state, read ahead of the dispatch by the runtime, together with its other
/// reads of the update (see [`Fsm::reads_state_unlocked`] and
/// [`Dispatcher::feed_with`](crate::Dispatcher::feed_with)), for the FSM middleware.
#[derive(Debug, Clone)]
pub struct Prefetched {
    /// The key the state was read for; a dispatch whose key differs reads again.
    pub key: FsmKey,
    /// The state read (`None`: no state).
    pub state: Option<String>,
}

/// One update's FSM: its context and the lock held for it.
struct FsmSession {
    pub(crate) cx: FsmContext,
    lease: Option<Lease>,
}

impl FsmSession {
    /// Releases the lock.
    pub(crate) async fn end(self) {
        if let Some(lease) = self.lease {
            lease.release().await;
        }
    }
}

/// The FSM is the first update-wide outer middleware of a dispatcher that has one
/// ([`DispatcherBuilder::fsm`](crate::DispatcherBuilder::fsm)): it locks the update's
/// key (with isolation), reads its state (or takes the [`Prefetched`] one the runtime
/// put in the context), gives the rest of the chain an [`FsmContext`], and unlocks the
/// key once the chain, `errors` handlers included, is done. A storage failure fails
/// the update (transient) before anything else runs.
impl chain::Middleware<Context, MiddlewareResult> for Fsm {
    fn call(&self, mut cx: Context, next: Next) -> BoxFuture<'static, MiddlewareResult> {
        let fsm = self.clone();
        Box::pin(async move {
            let Some(session) = fsm.begin(cx.update(), cx.get::<Prefetched>()).await? else {
                return next.run(cx).await;
            };
            cx.insert(session.cx.clone());
            let result = next.run(cx).await;
            session.end().await;
            result
        })
    }
}
