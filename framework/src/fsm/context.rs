//! [`FsmContext`]: the handler's view of its update's FSM record.

use std::any::type_name;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserializer, Serialize};

use super::fence::OwnerFence;
use super::storage::FsmStorage;
use super::{FsmError, FsmKey, StateName};
use crate::context::Context;
use crate::extract::{ExtractError, FromContext, Requirement};

/// The state and data of one FSM key, as a handler argument (aiogram's `FSMContext`).
///
/// The dispatcher makes one per update that has a key under the configured
/// [`KeyStrategy`](super::KeyStrategy), and reads the state once, under the lock, before
/// routing; filters and handlers share that read, and `set_state`/`clear` keep it
/// current. Data is a MessagePack map (structs are written with field names), so a
/// handler may read one field with [`FsmContext::get_value`].
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tgpipe::fsm::{FsmContext, FsmError};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter { count: u64 }
///
/// async fn count(fsm: FsmContext) -> Result<(), FsmError> {
///     let now = fsm.update_data(|c: &mut Counter| c.count += 1).await?;
///     assert!(now.count > 0);
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct FsmContext(Arc<Inner>);

struct Inner {
    storage: Arc<dyn FsmStorage>,
    key: FsmKey,
    /// The state as last read or written in this update; `None`: not read yet.
    state: Mutex<Option<Option<String>>>,
    fence: Option<u64>,
    lost: Option<Arc<AtomicBool>>,
    owner: Option<OwnerFence>,
}

impl std::fmt::Debug for FsmContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsmContext")
            .field("key", &self.0.key)
            .field("fence", &self.0.fence)
            .finish_non_exhaustive()
    }
}

/// What a handler taking [`FsmContext`] requires: only a dispatcher with an FSM
/// provides it.
pub(crate) struct FsmInstalled;

/// The fencing scope of lock tokens in a key's epoch hash (`tgpipe:fsm:{...}:fence`),
/// apart from the partition lanes' epochs.
const LOCK_FENCE_SCOPE: &str = "~lock";

impl FsmContext {
    /// A context for `key` over `storage` outside the dispatcher (scripts, admin
    /// tools, tests). It takes no lock.
    pub fn new(storage: Arc<dyn FsmStorage>, key: FsmKey) -> FsmContext {
        FsmContext(Arc::new(Inner {
            storage,
            key,
            state: Mutex::new(None),
            fence: None,
            lost: None,
            owner: None,
        }))
    }

    /// A context under partition ownership: no lease; writes fenced by the epoch.
    pub(crate) fn owned(
        storage: Arc<dyn FsmStorage>,
        key: FsmKey,
        state: Option<String>,
        owner: OwnerFence,
    ) -> FsmContext {
        FsmContext(Arc::new(Inner {
            storage,
            key,
            state: Mutex::new(Some(state)),
            fence: Some(owner.epoch()),
            lost: None,
            owner: Some(owner),
        }))
    }

    /// A context under the key's lock: writes checked against the lease and fenced by
    /// the lock's fencing token, so that a holder whose lease lapsed cannot overwrite a
    /// later holder's writes even if it does not know yet.
    pub(crate) fn locked(
        storage: Arc<dyn FsmStorage>,
        key: FsmKey,
        state: Option<Option<String>>,
        fence: Option<u64>,
        lost: Option<Arc<AtomicBool>>,
    ) -> FsmContext {
        FsmContext(Arc::new(Inner {
            storage,
            key,
            state: Mutex::new(state),
            fence,
            lost,
            owner: fence.map(|token| OwnerFence::new(LOCK_FENCE_SCOPE, 0, token)),
        }))
    }

    /// The key.
    pub fn key(&self) -> &FsmKey {
        &self.0.key
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn FsmStorage> {
        &self.0.storage
    }

    /// The fencing token of this update's lock, or under partition ownership its epoch
    /// (`None` without isolation): pass it to external systems that must refuse a stale
    /// holder's writes.
    pub fn fencing_token(&self) -> Option<u64> {
        self.0.fence
    }

    fn cached_state(&self) -> Option<Option<String>> {
        self.0
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn cache_state(&self, state: Option<String>) {
        *self.0.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
    }

    fn check_lease(&self) -> Result<(), FsmError> {
        match &self.0.lost {
            Some(lost) if lost.load(Ordering::Acquire) => Err(FsmError::LeaseLost {
                key: self.0.key.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// The current state.
    pub async fn state(&self) -> Result<Option<String>, FsmError> {
        if let Some(s) = self.cached_state() {
            return Ok(s);
        }
        let s = self.0.storage.get_state(&self.0.key).await?;
        self.cache_state(s.clone());
        Ok(s)
    }

    /// Whether the current state is `state`.
    pub async fn is_in(&self, state: impl Into<StateName>) -> Result<bool, FsmError> {
        Ok(self.state().await?.as_deref() == Some(state.into().as_str()))
    }

    /// Sets the state.
    pub async fn set_state(&self, state: impl Into<StateName>) -> Result<(), FsmError> {
        self.check_lease()?;
        let state = state.into();
        match &self.0.owner {
            Some(f) => {
                self.0
                    .storage
                    .set_state_fenced(&self.0.key, Some(state.as_str()), f)
                    .await?
            }
            None => {
                self.0
                    .storage
                    .set_state(&self.0.key, Some(state.as_str()))
                    .await?
            }
        }
        self.cache_state(Some(state.as_str().to_owned()));
        Ok(())
    }

    /// Removes the state, keeping the data.
    pub async fn remove_state(&self) -> Result<(), FsmError> {
        self.check_lease()?;
        match &self.0.owner {
            Some(f) => {
                self.0
                    .storage
                    .set_state_fenced(&self.0.key, None, f)
                    .await?
            }
            None => self.0.storage.set_state(&self.0.key, None).await?,
        }
        self.cache_state(None);
        Ok(())
    }

    /// Removes the state and the data (aiogram's `clear`).
    pub async fn clear(&self) -> Result<(), FsmError> {
        self.check_lease()?;
        match &self.0.owner {
            Some(f) => self.0.storage.clear_fenced(&self.0.key, f).await?,
            None => self.0.storage.clear(&self.0.key).await?,
        }
        self.cache_state(None);
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, FsmError> {
        rmp_serde::from_slice(bytes).map_err(|source| FsmError::Decode {
            key: self.0.key.to_string(),
            type_name: type_name::<T>(),
            source,
        })
    }

    /// The data as a `T`; `T::default()` when there is none.
    pub async fn data<T: DeserializeOwned + Default>(&self) -> Result<T, FsmError> {
        match self.0.storage.get_data(&self.0.key).await? {
            Some(bytes) => self.decode(&bytes),
            None => Ok(T::default()),
        }
    }

    /// Replaces the data with `data`.
    pub async fn set_data<T: Serialize + ?Sized>(&self, data: &T) -> Result<(), FsmError> {
        self.check_lease()?;
        let bytes = encode(data)?;
        match &self.0.owner {
            Some(f) => {
                self.0
                    .storage
                    .set_data_fenced(&self.0.key, Some(&bytes), f)
                    .await
            }
            None => self.0.storage.set_data(&self.0.key, Some(&bytes)).await,
        }
    }

    /// Changes the data atomically: reads it as a `T` (`T::default()` when there is
    /// none), applies `f`, writes it back, and returns the new value. No other write
    /// lands in between, even from another process; `f` may run again if one tried.
    pub async fn update_data<T, F>(&self, f: F) -> Result<T, FsmError>
    where
        T: Serialize + DeserializeOwned + Default + Send,
        F: FnMut(&mut T) + Send,
    {
        let key = self.0.key.clone();
        self.read_modify_write(&key, f, None).await
    }

    /// A context for this key's side record `destiny` (the scene history, for
    /// example), under the same lease or partition fence.
    pub(crate) fn side(&self, destiny: &'static str) -> FsmContext {
        FsmContext(Arc::new(Inner {
            storage: Arc::clone(&self.0.storage),
            key: self.0.key.clone().with_destiny(destiny),
            state: Mutex::new(None),
            fence: self.0.fence,
            lost: self.0.lost.clone(),
            owner: self.0.owner.clone(),
        }))
    }

    /// Sets the state (or removes it) and changes `side`'s data as
    /// [`FsmContext::update_data`] does, in one atomic step: a failure writes neither.
    pub(crate) async fn set_state_with_side<T, F>(
        &self,
        state: Option<&StateName>,
        side: &FsmContext,
        f: F,
    ) -> Result<T, FsmError>
    where
        T: Serialize + DeserializeOwned + Default + Send,
        F: FnMut(&mut T) + Send,
    {
        let state = state.map(StateName::as_str);
        let value = self.read_modify_write(side.key(), f, Some(state)).await?;
        self.cache_state(state.map(str::to_owned));
        Ok(value)
    }

    /// Reads `target`'s document as a `T`, applies `f`, writes it back (with this key's
    /// state too when `state` is given), checked against the lease, fenced under
    /// ownership.
    async fn read_modify_write<T, F>(
        &self,
        target: &FsmKey,
        mut f: F,
        state: Option<Option<&str>>,
    ) -> Result<T, FsmError>
    where
        T: Serialize + DeserializeOwned + Default + Send,
        F: FnMut(&mut T) + Send,
    {
        self.check_lease()?;
        let mut value = None;
        let mut step = |current: Option<&[u8]>| -> Result<Vec<u8>, FsmError> {
            let mut v: T = match current {
                Some(bytes) => self.decode(bytes)?,
                None => T::default(),
            };
            f(&mut v);
            let bytes = encode(&v)?;
            value = Some(v);
            Ok(bytes)
        };
        let storage = &self.0.storage;
        match (state, &self.0.owner) {
            (Some(state), owner) => {
                storage
                    .set_state_and_update_side(
                        &self.0.key,
                        state,
                        target,
                        &mut step,
                        owner.as_ref(),
                    )
                    .await?
            }
            (None, Some(f)) => storage.update_data_fenced(target, &mut step, f).await?,
            (None, None) => storage.update_data(target, &mut step).await?,
        };
        Ok(value.unwrap_or_default())
    }

    /// Sets one field of the data document, atomically, keeping the others (aiogram's
    /// `update_data(name=value)`): a form needs no struct for its answers. Read it back
    /// with [`FsmContext::get_value`].
    ///
    /// ```
    /// use tgpipe::fsm::{FsmContext, FsmKey, MemoryStorage};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let fsm = FsmContext::new(std::sync::Arc::new(MemoryStorage::new()), FsmKey::new(1, 2, 3));
    /// fsm.set_value("name", "Ada").await?;
    /// fsm.set_value("age", 36).await?;
    /// assert_eq!(fsm.get_value::<String>("name").await?.as_deref(), Some("Ada"));
    /// assert_eq!(fsm.get_value::<u8>("age").await?, Some(36));
    /// # Ok::<(), tgpipe::FsmError>(()) }).unwrap();
    /// ```
    pub async fn set_value<T: Serialize>(&self, field: &str, value: T) -> Result<(), FsmError> {
        // The document is read as a JSON-like map so that fields of any type survive;
        // MessagePack's binary values are the one thing it cannot hold (a decode error).
        let value = serde_json::to_value(&value).map_err(|e| FsmError::Encode {
            type_name: type_name::<T>(),
            source: e.into(),
        })?;
        self.update_data(|doc: &mut serde_json::Map<String, serde_json::Value>| {
            doc.insert(field.to_owned(), value.clone());
        })
        .await
        .map(drop)
    }

    /// One field of the data document, decoded as a `T` (`None` when the document or
    /// the field is absent). The other fields are skipped, not decoded.
    pub async fn get_value<T: DeserializeOwned>(&self, field: &str) -> Result<Option<T>, FsmError> {
        let Some(bytes) = self.0.storage.get_data(&self.0.key).await? else {
            return Ok(None);
        };
        let mut de = rmp_serde::Deserializer::from_read_ref(&bytes[..]);
        FieldSeed::<T> {
            field,
            _t: std::marker::PhantomData,
        }
        .deserialize(&mut de)
        .map_err(|source| FsmError::Decode {
            key: self.0.key.to_string(),
            type_name: type_name::<T>(),
            source,
        })
    }
}

fn encode<T: Serialize + ?Sized>(data: &T) -> Result<Vec<u8>, FsmError> {
    rmp_serde::to_vec_named(data).map_err(|source| FsmError::Encode {
        type_name: type_name::<T>(),
        source: source.into(),
    })
}

/// Finds one entry of a map and decodes its value; skips the rest.
struct FieldSeed<'f, T> {
    field: &'f str,
    _t: std::marker::PhantomData<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for FieldSeed<'_, T> {
    type Value = Option<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for FieldSeed<'_, T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map of FSM data")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
        let mut found = None;
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if found.is_none() && k == self.field {
                found = Some(map.next_value::<T>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

impl FromContext for FsmContext {
    fn from_context(cx: &Context) -> Result<Self, ExtractError> {
        cx.get::<FsmContext>()
            .cloned()
            .ok_or_else(|| ExtractError::NoFsmKey {
                kind: cx.update().kind.to_string(),
            })
    }

    fn requirement() -> Option<Requirement> {
        Some(Requirement::of::<FsmInstalled>())
    }
}
