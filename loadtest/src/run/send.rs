//! Delivery as Telegram does it: at most K requests in flight, one per chat at a time,
//! failed deliveries retried with backoff.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{Mutex, mpsc};

use super::generate::UpdateSpec;

/// Where and how to deliver.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The webhook URL (`http://host:port/webhook/<bot_id>`).
    pub url: String,
    /// The secret token sent in `X-Telegram-Bot-Api-Secret-Token`.
    pub secret: String,
    /// Requests in flight at most (Telegram's `max_connections`, 1 to 100).
    pub connections: usize,
    /// Requests per second at most (all attempts), if limited.
    pub rate: Option<f64>,
    /// Attempts per update before giving up on it.
    pub max_attempts: u32,
}

/// What happened to one update.
#[derive(Debug, Clone)]
pub struct DeliveryOutcome {
    /// When it was first sent.
    pub first_sent: SystemTime,
    /// When a 2xx answer arrived, if one did.
    pub accepted_at: Option<SystemTime>,
    /// Requests made for it.
    pub attempts: u32,
    /// The last HTTP status, if any answer came.
    pub last_status: Option<u16>,
}

/// Counters readable while delivery runs (for a progress line).
#[derive(Debug, Default)]
pub struct Progress {
    /// Updates finished (accepted or given up).
    pub done: AtomicUsize,
    /// Updates accepted.
    pub accepted: AtomicUsize,
    /// Retries made.
    pub retries: AtomicUsize,
}

/// Delivers every update; returns one outcome per update, in the same order.
pub async fn deliver(
    updates: &[UpdateSpec],
    d: &Delivery,
    progress: Arc<Progress>,
) -> Vec<DeliveryOutcome> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(d.connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default();
    let mut queues: HashMap<i64, VecDeque<usize>> = HashMap::new();
    let mut chat_order = Vec::new();
    for (i, u) in updates.iter().enumerate() {
        let q = queues.entry(u.chat_id).or_default();
        if q.is_empty() {
            chat_order.push(u.chat_id);
        }
        q.push_back(i);
    }
    let queues = Arc::new(Mutex::new(queues));
    // Chats whose previous update was answered; `None` tells a worker to stop.
    let (ready_tx, ready_rx) = mpsc::unbounded_channel::<Option<i64>>();
    for chat in chat_order {
        let _ = ready_tx.send(Some(chat));
    }
    if updates.is_empty() {
        return Vec::new();
    }
    let ready_rx = Arc::new(Mutex::new(ready_rx));
    let remaining = Arc::new(AtomicUsize::new(updates.len()));
    let outcomes: Arc<Mutex<Vec<Option<DeliveryOutcome>>>> =
        Arc::new(Mutex::new(vec![None; updates.len()]));
    let ticker = d.rate.filter(|r| *r > 0.0).map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Arc::new(Mutex::new(t))
    });
    let updates: Arc<Vec<UpdateSpec>> = Arc::new(updates.to_vec());
    let workers = d.connections.clamp(1, 100);
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (client, d, queues, ready_tx, ready_rx, remaining, outcomes, ticker, updates, progress) = (
            client.clone(),
            d.clone(),
            Arc::clone(&queues),
            ready_tx.clone(),
            Arc::clone(&ready_rx),
            Arc::clone(&remaining),
            Arc::clone(&outcomes),
            ticker.clone(),
            Arc::clone(&updates),
            Arc::clone(&progress),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(Some(chat)) = ready_rx.lock().await.recv().await else {
                    return;
                };
                let Some(index) = queues
                    .lock()
                    .await
                    .get_mut(&chat)
                    .and_then(VecDeque::pop_front)
                else {
                    continue;
                };
                let outcome =
                    send_one(&client, &d, &updates[index], ticker.as_deref(), &progress).await;
                progress.done.fetch_add(1, Ordering::Relaxed);
                if outcome.accepted_at.is_some() {
                    progress.accepted.fetch_add(1, Ordering::Relaxed);
                }
                outcomes.lock().await[index] = Some(outcome);
                let more = queues
                    .lock()
                    .await
                    .get(&chat)
                    .is_some_and(|q| !q.is_empty());
                if more {
                    let _ = ready_tx.send(Some(chat));
                }
                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    for _ in 0..workers {
                        let _ = ready_tx.send(None);
                    }
                }
            }
        }));
    }
    drop(ready_tx);
    for t in tasks {
        let _ = t.await;
    }
    let outcomes = Arc::try_unwrap(outcomes)
        .map(Mutex::into_inner)
        .unwrap_or_default();
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or(DeliveryOutcome {
                first_sent: SystemTime::now(),
                accepted_at: None,
                attempts: 0,
                last_status: None,
            })
        })
        .collect()
}

async fn send_one(
    client: &reqwest::Client,
    d: &Delivery,
    update: &UpdateSpec,
    ticker: Option<&Mutex<tokio::time::Interval>>,
    progress: &Progress,
) -> DeliveryOutcome {
    let first_sent = SystemTime::now();
    let mut outcome = DeliveryOutcome {
        first_sent,
        accepted_at: None,
        attempts: 0,
        last_status: None,
    };
    while outcome.attempts < d.max_attempts.max(1) {
        if outcome.attempts > 0 {
            progress.retries.fetch_add(1, Ordering::Relaxed);
            // Telegram backs off between retries; capped so a test run stays short.
            let backoff = Duration::from_millis(100u64 << outcome.attempts.min(5))
                .min(Duration::from_secs(2));
            tokio::time::sleep(backoff).await;
        }
        if let Some(t) = ticker {
            t.lock().await.tick().await;
        }
        outcome.attempts += 1;
        let response = client
            .post(&d.url)
            .header("Content-Type", "application/json")
            .header("X-Telegram-Bot-Api-Secret-Token", &d.secret)
            .body(update.body.clone())
            .send()
            .await;
        if let Ok(r) = response {
            let status = r.status();
            outcome.last_status = Some(status.as_u16());
            // Read the answer so the connection goes back to the pool.
            let _ = r.bytes().await;
            if status.is_success() {
                outcome.accepted_at = Some(SystemTime::now());
                break;
            }
        }
    }
    outcome
}
