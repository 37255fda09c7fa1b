//! A large bot registry loads on a fresh pod without the watch calling itself stalled.
//!
//! The watch used to call itself stalled when its first replay had not reached the
//! bucket's last sequence 300 ms after it started, and to start again from zero at
//! once: with a large registry, or a busy pod, it never finished, and the pod served
//! its static bots only. Timed: each test fills a bucket first and waits up to 30 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tgpipe_shared::BotId;
use tgpipe_shared::registry::{self, BotRecord, RegistrySettings};
use tgpipe_testkit::NatsServer;

/// Writes `n` records, 2000 in flight at a time.
async fn fill(kv: &async_nats::jetstream::kv::Store, n: u64) {
    let started = Instant::now();
    let ids: Vec<u64> = (1..=n).collect();
    for chunk in ids.chunks(2000) {
        let puts = chunk.iter().map(|id| {
            let record = BotRecord::new(BotId(*id), "a-webhook-secret").to_json();
            kv.put(registry::key(BotId(*id)), record)
        });
        futures::future::try_join_all(puts).await.unwrap();
    }
    eprintln!("{n} records written in {:?}", started.elapsed());
}

/// Loads a registry of `n` records with a fresh watch; returns how long it took and
/// how many times the watch was (re-)created.
async fn load(n: u64, busy: bool) -> (Duration, u32) {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let settings = RegistrySettings::default();
    let kv = registry::bucket(&js, &settings, 1, true).await.unwrap();
    fill(&kv, n).await;
    // Both cores kept busy by other processes' work (a rollout, a CPU quota).
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..if busy { 2 } else { 0 })
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let (opens, loaded) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicUsize::new(0)));
    let started = Instant::now();
    let watching = {
        let (opens, loaded, js) = (Arc::clone(&opens), Arc::clone(&loaded), js.clone());
        registry::watch(
            move || {
                opens.fetch_add(1, Ordering::SeqCst);
                let js = js.clone();
                async move { registry::bucket(&js, &RegistrySettings::default(), 1, false).await }
            },
            move |records: &registry::Records| loaded.store(records.len(), Ordering::SeqCst),
        )
    };
    while loaded.load(Ordering::SeqCst) < n as usize {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} of {n} records after 30 s, {} watches",
            loaded.load(Ordering::SeqCst),
            opens.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    assert!(watching.is_synced());
    // A stall found late would re-create the watch after the load: give it the time.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
    (took, opens.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_of_300000_bots_loads_without_a_stall_restart() {
    let (took, watches) = load(300_000, false).await;
    eprintln!("300000 records loaded in {took:?} by {watches} watch(es)");
    assert_eq!(watches, 1, "the load was restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_of_100000_bots_loads_on_busy_cores_without_a_stall_restart() {
    let (took, watches) = load(100_000, true).await;
    eprintln!("100000 records loaded with both cores busy in {took:?} by {watches} watch(es)");
    assert_eq!(watches, 1, "the load was restarted");
}
