//! Per-chat queues: updates of one ordering key run one at a time, in stream order.
//!
//! A chat's queue holds its first updates in memory (up to `TGPIPE_MAX_HELD_PER_CHAT`,
//! and while the pod holds fewer than `TGPIPE_MAX_HELD`). Past either cap an update is
//! *parked*: only its stream sequence and its acknowledgement subject stay, and it is
//! read again by sequence when its turn comes. Everything parked comes after everything
//! held, so order is kept; the partition goes on pulling for its other chats.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::{Job, OrderKey, Parked, Source};

struct ChatQueue {
    jobs: VecDeque<Job>,
    parked: VecDeque<Parked>,
    /// Woken when an update is queued, while the chat's task collects an album.
    waker: Option<Arc<Notify>>,
}

/// What a chat's task does next.
// Moved out at once, never stored: boxing the common case would cost an allocation per
// update.
#[allow(clippy::large_enum_variant)]
pub(super) enum Next {
    /// Run this update.
    Job(Job),
    /// Read this parked update from the stream, then run it.
    Parked(Parked),
    /// The queue is empty: the task ends (and the key is released).
    Done,
}

/// Per-key queues: a key present in the map has a task running its queue.
#[derive(Default)]
pub(super) struct Scheduler {
    queues: Mutex<HashMap<OrderKey, ChatQueue>>,
}

/// What the pod holds, for its metrics and in-progress acks.
pub(super) struct Waiting {
    /// Acknowledgement subjects of delivered updates that have not started.
    pub(super) replies: Vec<async_nats::Subject>,
    /// The deepest chat queue (held and parked).
    pub(super) deepest: usize,
    /// Updates queued (held and parked).
    pub(super) total: usize,
    /// Of them, parked.
    pub(super) parked: usize,
    /// The oldest held update's age.
    pub(super) oldest: Duration,
}

impl Scheduler {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OrderKey, ChatQueue>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job` behind its key's updates: in memory when the chat holds fewer than
    /// `cap` and `permit` (a place in the pod's budget) was given, else parked. Returns
    /// true when the key had no task (the caller starts one).
    pub(super) fn enqueue(
        &self,
        key: OrderKey,
        mut job: Job,
        permit: Option<OwnedSemaphorePermit>,
        cap: usize,
    ) -> bool {
        let mut queues = self.lock();
        let (q, new) = match queues.get_mut(&key) {
            Some(q) => (q, false),
            None => (
                queues.entry(key).or_insert_with(|| ChatQueue {
                    jobs: VecDeque::new(),
                    parked: VecDeque::new(),
                    waker: None,
                }),
                true,
            ),
        };
        match permit {
            Some(permit) if q.parked.is_empty() && q.jobs.len() < cap.max(1) => {
                job.permit = Some(permit);
                q.jobs.push_back(job);
            }
            _ => q.parked.push_back(Parked::from_job(job)),
        }
        if let Some(waker) = &q.waker {
            waker.notify_one();
        }
        new
    }

    /// The key's next update, if one is queued; unlike [`Scheduler::next`], an empty
    /// queue keeps its key (its task goes on: it collects an album).
    pub(super) fn take(&self, key: OrderKey) -> Option<Next> {
        let mut queues = self.lock();
        let q = queues.get_mut(&key)?;
        if let Some(job) = q.jobs.pop_front() {
            return Some(Next::Job(job));
        }
        q.parked.pop_front().map(Next::Parked)
    }

    /// A notification of every update queued for `key` from now until
    /// [`Scheduler::unwatch`] (made only for a chat that collects an album).
    pub(super) fn watch(&self, key: OrderKey) -> Arc<Notify> {
        let mut queues = self.lock();
        let q = queues.entry(key).or_insert_with(|| ChatQueue {
            jobs: VecDeque::new(),
            parked: VecDeque::new(),
            waker: None,
        });
        Arc::clone(q.waker.get_or_insert_with(Default::default))
    }

    /// Ends [`Scheduler::watch`].
    pub(super) fn unwatch(&self, key: OrderKey) {
        if let Some(q) = self.lock().get_mut(&key) {
            q.waker = None;
        }
    }

    /// The key's next update, or [`Next::Done`] (and the key is released) when its
    /// queue is empty.
    pub(super) fn next(&self, key: OrderKey) -> Next {
        let mut queues = self.lock();
        let Some(q) = queues.get_mut(&key) else {
            return Next::Done;
        };
        if let Some(job) = q.jobs.pop_front() {
            return Next::Job(job);
        }
        if let Some(parked) = q.parked.pop_front() {
            return Next::Parked(parked);
        }
        queues.remove(&key);
        Next::Done
    }

    /// What is queued: for the in-progress acks and the queue metrics.
    pub(super) fn waiting(&self) -> Waiting {
        let queues = self.lock();
        let mut w = Waiting {
            replies: Vec::new(),
            deepest: 0,
            total: 0,
            parked: 0,
            oldest: Duration::ZERO,
        };
        let now = Instant::now();
        for q in queues.values() {
            let depth = q.jobs.len() + q.parked.len();
            w.deepest = w.deepest.max(depth);
            w.total += depth;
            w.parked += q.parked.len();
            if let Some(first) = q.jobs.front() {
                w.oldest = w.oldest.max(now.duration_since(first.held_since));
            } else if let Some(first) = q.parked.front() {
                w.oldest = w.oldest.max(now.duration_since(first.since));
            }
            for job in &q.jobs {
                if let Source::Delivered(m) = &job.src
                    && let Some(reply) = &m.reply
                {
                    w.replies.push(reply.clone());
                }
            }
            w.replies
                .extend(q.parked.iter().filter_map(|p| p.reply.clone()));
        }
        w
    }
}
