//! FSM overhead per update: the whole dispatch of an update whose handler reads the
//! state and writes the data, against a local `redis-server` (started here) and against
//! memory storage, beside the same dispatch without an FSM. With isolation (the
//! default) that is lock + read state + write data + unlock. Run with
//! `cargo bench -p tgpipe-worker --bench fsm -- --warm-up-time 1 --measurement-time 3`.

#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use tgpipe::fsm::{
    DataUpdate, Fsm, FsmContext, FsmError, FsmKey, FsmStorage, Isolation, LockGrant, MemoryStorage,
    RedisStorage,
};
use tgpipe::{Bot, Dispatcher, Outcome, Router, Update};
use tgpipe_testkit::RedisServer;

#[derive(Default, Serialize, Deserialize)]
struct Step {
    step: u64,
    name: String,
}

fn router(with_fsm: bool) -> Router {
    let mut r = Router::new("bench");
    if with_fsm {
        r.message(|fsm: FsmContext| async move {
            let state = fsm.state().await?;
            fsm.set_data(&Step {
                step: u64::from(state.is_some()),
                name: "Alice".into(),
            })
            .await
        });
    } else {
        r.message(|| async {});
    }
    r
}

fn dispatcher(fsm: Option<Fsm>) -> Dispatcher {
    let b = Dispatcher::builder(router(fsm.is_some()));
    match fsm {
        Some(fsm) => b.fsm(fsm),
        None => b,
    }
    .build()
    .expect("builds")
}

/// Counts storage calls: with Redis each is one round trip (`update_data`, not used
/// here, takes two).
struct Counting<S> {
    inner: S,
    calls: AtomicU64,
}

impl<S> Counting<S> {
    fn hit(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<S: FsmStorage> FsmStorage for Counting<S> {
    async fn get_state(&self, key: &FsmKey) -> Result<Option<String>, FsmError> {
        self.hit();
        self.inner.get_state(key).await
    }
    async fn set_state(&self, key: &FsmKey, state: Option<&str>) -> Result<(), FsmError> {
        self.hit();
        self.inner.set_state(key, state).await
    }
    async fn get_data(&self, key: &FsmKey) -> Result<Option<Vec<u8>>, FsmError> {
        self.hit();
        self.inner.get_data(key).await
    }
    async fn set_data(&self, key: &FsmKey, data: Option<&[u8]>) -> Result<(), FsmError> {
        self.hit();
        self.inner.set_data(key, data).await
    }
    async fn update_data(
        &self,
        key: &FsmKey,
        update: &mut DataUpdate<'_>,
    ) -> Result<Vec<u8>, FsmError> {
        self.hit();
        self.inner.update_data(key, update).await
    }
    async fn clear(&self, key: &FsmKey) -> Result<(), FsmError> {
        self.hit();
        self.inner.clear(key).await
    }
    async fn try_lock(
        &self,
        key: &FsmKey,
        token: &str,
        lease: Duration,
    ) -> Result<Option<LockGrant>, FsmError> {
        self.hit();
        self.inner.try_lock(key, token, lease).await
    }
    async fn renew_lock(
        &self,
        key: &FsmKey,
        token: &str,
        lease: Duration,
    ) -> Result<bool, FsmError> {
        self.hit();
        self.inner.renew_lock(key, token, lease).await
    }
    async fn unlock(&self, key: &FsmKey, token: &str) -> Result<bool, FsmError> {
        self.hit();
        self.inner.unlock(key, token).await
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = RedisServer::start();
    let redis = rt
        .block_on(RedisStorage::connect(&server.url()))
        .expect("redis");
    let bot = Bot::new("123:TEST").expect("token");
    let update = Update::parse(
        bot.id(),
        bytes::Bytes::from_static(br#"{"update_id":1,"message":{"message_id":1,"date":1732400000,"chat":{"id":5,"type":"private","first_name":"A"},"from":{"id":5,"is_bot":false,"first_name":"A"},"text":"Alice"}}"#),
    )
    .expect("update");

    // Round trips per update, counted once outside the measurement.
    for (label, isolation) in [
        ("isolation on", Isolation::default()),
        ("isolation off", Isolation::disabled()),
    ] {
        let counting = Arc::new(Counting {
            inner: redis.clone(),
            calls: AtomicU64::new(0),
        });
        let dp = dispatcher(Some(
            Fsm::from_arc(counting.clone() as Arc<dyn FsmStorage>).isolation(isolation),
        ));
        for _ in 0..100 {
            let outcome = rt.block_on(dp.feed_update(&bot, update.clone()));
            assert!(matches!(outcome, Ok(Outcome::Handled)), "{outcome:?}");
        }
        let calls = counting.calls.load(Ordering::Relaxed) as f64 / 100.0;
        eprintln!("redis round trips per update ({label}): {calls}");
    }

    let cases = [
        ("no FSM (baseline)", dispatcher(None)),
        (
            "memory: lock + state + set_data + unlock",
            dispatcher(Some(Fsm::new(MemoryStorage::new()))),
        ),
        (
            "redis: lock + state + set_data + unlock",
            dispatcher(Some(Fsm::new(redis.clone()))),
        ),
        (
            "redis, isolation off: state + set_data",
            dispatcher(Some(
                Fsm::new(redis.clone()).isolation(Isolation::disabled()),
            )),
        ),
    ];
    let mut group = c.benchmark_group("fsm per update");
    for (name, dp) in &cases {
        group.bench_function(*name, |b| {
            b.to_async(&rt)
                .iter(|| dp.feed_update(&bot, update.clone()))
        });
    }
    group.finish();
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
