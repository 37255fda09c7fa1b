//! Notices when Redis answers again after failing, so that the updates waiting to
//! retry a step that needs it (FSM state, data) go at once instead of sleeping out
//! their backoff: a 60 s outage then costs about 60 s, not 60 s plus the last doubling.
//!
//! "Answers" means "accepts a write": a Redis out of memory (`maxmemory` reached) or a
//! replica after a failover (`READONLY`) still answers `PING` but refuses every write
//! the updates need, and a `PING` probe would wake them every 250 ms, defeating their
//! backoff. The probe writes a key of its own instead (`tgpipe:probe`, expiring in 1 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tgpipe_bot::RedisConnection;
use tokio::sync::watch;

use tgpipe::HandlerError;
use tgpipe::fsm::FsmError;

/// How often a failing Redis is asked whether it answers again.
const EVERY: Duration = Duration::from_millis(250);

/// How long one probe waits for the answer.
const PATIENCE: Duration = Duration::from_millis(500);

/// The key the probe writes: a write, not a `PING`, tells that Redis takes writes again.
const PROBE_KEY: &str = "tgpipe:probe";

/// One per pod. After a failure, one task `PING`s until Redis answers, then counts a
/// recovery, which wakes every update waiting for one.
pub(crate) struct RedisProbe {
    conn: RedisConnection,
    recoveries: watch::Sender<u64>,
    probing: AtomicBool,
}

impl RedisProbe {
    pub(crate) fn new(conn: RedisConnection) -> Arc<RedisProbe> {
        Arc::new(RedisProbe {
            conn,
            recoveries: watch::Sender::new(0),
            probing: AtomicBool::new(false),
        })
    }

    /// Recoveries so far: take it before an attempt, to wait for the next one after.
    pub(crate) fn recoveries(&self) -> u64 {
        *self.recoveries.borrow()
    }

    /// Resolves once Redis recovered after the `since`-th recovery; never, if it
    /// has not failed since.
    pub(crate) async fn recovered_after(&self, since: u64) {
        let mut rx = self.recoveries.subscribe();
        if rx.wait_for(|n| *n > since).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Says a step failed because of Redis: starts probing, unless a probe runs.
    pub(crate) fn failed(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EVERY).await;
                let mut conn = me.conn.clone();
                let mut cmd = redis::cmd("SET");
                cmd.arg(PROBE_KEY).arg(1).arg("PX").arg(1000);
                let write = cmd.query_async::<()>(&mut conn);
                if matches!(tokio::time::timeout(PATIENCE, write).await, Ok(Ok(()))) {
                    me.probing.store(false, Ordering::Release);
                    me.recoveries.send_modify(|n| *n += 1);
                    tracing::info!("Redis answers again; the updates that waited for it go on");
                    return;
                }
            }
        });
    }
}

/// Whether a failed dispatch failed on Redis (the FSM storage or a Redis call of the
/// handler's own).
pub(crate) fn needs_redis(e: &HandlerError) -> bool {
    matches!(e.find::<FsmError>(), Some(FsmError::Storage(_)))
        || e.find::<redis::RedisError>().is_some()
}
