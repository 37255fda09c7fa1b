//! The consuming loop: take a lane's partitions as the group assigns them, pull their
//! updates, run the dispatcher, acknowledge.
//!
//! - **Ownership**: a partition is consumed only while this pod holds its lease
//!   ([`super::group`]); its consumer pins this pod's pull as the only one served. On
//!   taking a partition the pod first replays the partition's unacknowledged window
//!   (the stream's messages between the consumer's ack floor and its last delivery, in
//!   stream order, read by sequence): what the previous owner had taken but not finished
//!   runs before anything newer of the same chat. When the server redelivers those
//!   messages later, they are acknowledged without running again.
//! - **Order**: updates of one ordering key (the chat, else the user) run one at a time,
//!   in stream order, on whichever pod owns their partition. A failing update is retried
//!   in place with backoff: its chat waits, nothing overtakes it, other chats go on.
//! - **No head-of-line blocking**: `TGPIPE_CONCURRENCY` is the number of chats running at
//!   once; a run permit is taken per update and given back after it, fairly (FIFO), so a
//!   chat with 1000 queued updates takes turns with the others. Memory is bounded: at most
//!   `TGPIPE_MAX_HELD` updates per pod and `TGPIPE_MAX_HELD_PER_CHAT` per chat are held;
//!   past them the pod stops pulling (the full chat's partition, or every partition).
//!   Held updates that have not started get in-progress acks, so they keep their ack
//!   deadline.
//! - **Acknowledgement**: handled or unhandled -> ack; a permanent failure, or a transient
//!   one after `TGPIPE_MAX_DELIVER` attempts -> the update goes to the dead-letter stream
//!   with `Tg-Error` and `Tg-Deliveries`, then term.
//! - **Duplicates** older than JetStream's dedupe window are skipped with the per-chat
//!   memory of finished updates ([`super::seen`]), written under the partition's epoch.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::jetstream::{self, AckKind};
use futures::{FutureExt, StreamExt};
use tgpipe_shared::subject::{UpdateSubject, dlq_subject};
use tgpipe_shared::{BotId, Envelope, EnvelopeError, MsgId, UpdateKind, headers};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::group::{Group, GroupEvent, Ownership};
use super::lane::{PRIORITY_GROUP, Partition};
use super::metrics;
use super::redis_probe::{RedisProbe, needs_redis};
use super::registry::RemovedPolicy;
use super::seen::Seen;
use tgpipe::bot::Bot;
use tgpipe::context::Extensions;
use tgpipe::dispatcher::Dispatcher;
use tgpipe::error::DispatchOutcome;
use tgpipe::fsm::{OwnerFence, Prefetched};
use tgpipe::update::Update;
use tgpipe_shared::registry::BotState;

/// How updates are acknowledged and retried.
#[derive(Debug, Clone)]
pub(crate) struct AckSettings {
    /// Attempts at an update before it is dead-lettered.
    pub max_deliver: u32,
    /// The consumer's ack wait; in-progress acks are sent at a third of it.
    pub ack_wait: Duration,
    /// First retry delay; doubles per attempt.
    pub retry_delay: Duration,
    /// Longest retry delay.
    pub retry_max_delay: Duration,
    /// How long a transiently failing update is retried (at least `max_deliver`
    /// attempts) before it is dead-lettered.
    pub retry_budget: Duration,
    /// Longest dispatch; past it the attempt fails transiently.
    pub handler_timeout: Duration,
}

impl AckSettings {
    /// The delay after the `delivered`-th attempt failed.
    pub(crate) fn retry_delay(&self, delivered: u32) -> Duration {
        let doublings = delivered.saturating_sub(1).min(20);
        self.retry_delay
            .saturating_mul(1 << doublings)
            .min(self.retry_max_delay)
    }
}

/// How much a pod holds and runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Chats (ordering keys) running at once.
    pub concurrency: usize,
    /// Updates held (queued or running) in the pod.
    pub max_held: usize,
    /// Updates held for one chat.
    pub max_held_per_chat: usize,
}

/// What the consuming loop needs.
pub(super) struct Consumer {
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) bots: Arc<super::registry::BotDirectory>,
    pub(crate) removed_policy: super::registry::RemovedPolicy,
    pub(crate) js: jetstream::Context,
    pub(crate) client: async_nats::Client,
    pub(crate) acks: AckSettings,
    pub(crate) seen: Option<Seen>,
    /// Wakes the updates waiting to retry when Redis answers again.
    pub(crate) redis: Arc<RedisProbe>,
    pub(crate) lane: String,
    pub(crate) limits: Limits,
    /// The partitions this pod consumes now (for the lag it reports).
    pub(crate) owned: Arc<Mutex<std::collections::BTreeSet<u16>>>,
}

type OrderKey = (BotId, i64);

/// How long a pull request waits at the server. Short, because a handover waits for the
/// old owner's last request to expire before it unpins (see `consume_partition`), and
/// the handover's gap is about this long.
const PULL_EXPIRY: Duration = Duration::from_millis(300);

/// Where a held update came from.
// Nearly every update is `Delivered`, the large variant: boxing it would cost an
// allocation per update to save bytes on the rare replayed one.
#[allow(clippy::large_enum_variant)]
enum Source {
    /// Delivered by the partition's consumer: acknowledged through it.
    Delivered(jetstream::Message),
    /// Read by sequence from the stream while replaying a taken-over window; its
    /// delivered copy (still pending at the consumer) is acknowledged when it arrives.
    Replayed(StreamMessage),
}

impl Source {
    fn payload(&self) -> &bytes::Bytes {
        match self {
            Source::Delivered(m) => &m.payload,
            Source::Replayed(m) => &m.payload,
        }
    }

    fn headers(&self) -> Option<&HeaderMap> {
        match self {
            Source::Delivered(m) => m.headers.as_ref(),
            Source::Replayed(m) => Some(&m.headers),
        }
    }

    fn subject(&self) -> &str {
        match self {
            Source::Delivered(m) => m.subject.as_str(),
            Source::Replayed(m) => m.subject.as_str(),
        }
    }

    /// Stream sequence and deliveries so far.
    fn position(&self) -> (u64, u32) {
        match self {
            Source::Delivered(m) => match m.info() {
                Ok(info) => (
                    info.stream_sequence,
                    u32::try_from(info.delivered).unwrap_or(u32::MAX),
                ),
                Err(_) => (0, 1),
            },
            // At least one delivery went to the previous owner.
            Source::Replayed(m) => (m.sequence, 2),
        }
    }
}

/// A partition this pod consumes, for as long as it owns it.
struct Owned {
    own: Arc<Ownership>,
    fence: OwnerFence,
    /// Updates of this partition held in the pod.
    held: AtomicUsize,
    idle: Notify,
    /// The replayed window: sequence -> finished, and the delivered copy to acknowledge.
    window: Mutex<HashMap<u64, WindowEntry>>,
}

#[derive(Default)]
struct WindowEntry {
    finished: Option<AckKind>,
    copy: Option<jetstream::Message>,
}

/// What a delivered message is to the replayed window.
enum Copy {
    /// Not in the window: a new update.
    New(jetstream::Message),
    /// Its replayed twin finished: acknowledge it as this.
    Finished(jetstream::Message, AckKind),
    /// Its replayed twin is still to finish; kept to be acknowledged then.
    Kept,
}

impl Owned {
    fn stopped(&self) -> bool {
        self.own.is_released()
    }

    fn claim_copy(&self, seq: u64, msg: jetstream::Message) -> Copy {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = window.get_mut(&seq) else {
            return Copy::New(msg);
        };
        match entry.finished {
            Some(kind) => {
                window.remove(&seq);
                Copy::Finished(msg, kind)
            }
            None => {
                entry.copy = Some(msg);
                Copy::Kept
            }
        }
    }
}

/// A held update.
struct Job {
    src: Source,
    /// The update as the ingress described it, read once from the message (an error:
    /// not an update, dead-lettered with the reason).
    env: Result<Envelope, EnvelopeError>,
    part: Arc<Owned>,
    held_since: Instant,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Job {
    fn drop(&mut self) {
        if self.part.held.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.part.idle.notify_waiters();
        }
    }
}

struct ChatQueue {
    jobs: VecDeque<Job>,
    space: Arc<Notify>,
}

/// Per-key queues: a key present in the map has a task running its queue.
#[derive(Default)]
struct Scheduler {
    queues: Mutex<HashMap<OrderKey, ChatQueue>>,
}

impl Scheduler {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OrderKey, ChatQueue>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job` behind its key's updates; returns it back when the key has no task
    /// (the caller then starts one with it), and the key's queue length and its notifier.
    fn enqueue(&self, key: OrderKey, job: Job) -> (Option<Job>, usize, Arc<Notify>) {
        let mut queues = self.lock();
        match queues.get_mut(&key) {
            Some(q) => {
                q.jobs.push_back(job);
                (None, q.jobs.len(), Arc::clone(&q.space))
            }
            None => {
                let space = Arc::new(Notify::new());
                queues.insert(
                    key,
                    ChatQueue {
                        jobs: VecDeque::new(),
                        space: Arc::clone(&space),
                    },
                );
                (Some(job), 0, space)
            }
        }
    }

    fn queued(&self, key: OrderKey) -> usize {
        self.lock().get(&key).map_or(0, |q| q.jobs.len())
    }

    /// The key's next job, or `None` (and the key is released) when its queue is empty.
    fn next(&self, key: OrderKey) -> Option<Job> {
        let mut queues = self.lock();
        let q = queues.get_mut(&key)?;
        match q.jobs.pop_front() {
            Some(job) => {
                q.space.notify_waiters();
                Some(job)
            }
            None => {
                queues.remove(&key);
                None
            }
        }
    }

    /// The reply subjects of held delivered updates that have not started, the depth
    /// of the deepest queue, the number of queued updates and the oldest one's age.
    fn waiting(&self) -> (Vec<String>, usize, usize, Duration) {
        let queues = self.lock();
        let mut replies = Vec::new();
        let (mut deepest, mut total) = (0, 0);
        let mut oldest = Duration::ZERO;
        for q in queues.values() {
            deepest = deepest.max(q.jobs.len());
            total += q.jobs.len();
            if let Some(first) = q.jobs.front() {
                oldest = oldest.max(first.held_since.elapsed());
            }
            for job in &q.jobs {
                if let Source::Delivered(m) = &job.src
                    && let Some(reply) = &m.reply
                {
                    replies.push(reply.to_string());
                }
            }
        }
        (replies, deepest, total, oldest)
    }
}

/// A held update's ordering key: its bot and chat (else user).
fn order_key(env: &Envelope) -> Option<OrderKey> {
    Some((env.bot, env.chat_id.or(env.user_id)?))
}

/// The pod's shared consuming state.
struct Pod {
    me: Arc<Consumer>,
    scheduler: Scheduler,
    run: Arc<Semaphore>,
    held: Arc<Semaphore>,
    tracker: TaskTracker,
}

impl Consumer {
    /// Consumes the partitions `group` assigns to this pod until `shutdown` resolves;
    /// then leaves the group, hands every partition over (running updates get `grace` to
    /// finish; held ones not started are returned to the stream) and returns.
    pub(super) async fn run(
        self: Arc<Self>,
        stream: Stream,
        consumers: Vec<PullConsumer>,
        group: Group,
        grace: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let limits = self.limits;
        let pod = Arc::new(Pod {
            me: Arc::clone(&self),
            scheduler: Scheduler::default(),
            run: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            held: Arc::new(Semaphore::new(limits.max_held.max(1))),
            tracker: TaskTracker::new(),
        });
        let stop = CancellationToken::new();
        let (tx, mut events) = tokio::sync::mpsc::channel(64);
        let group_task = tokio::spawn(group.run(tx, stop.clone(), grace));
        let keepalive = tokio::spawn(Arc::clone(&pod).keep_held_alive());
        let mut partitions: HashMap<Partition, tokio::task::JoinHandle<()>> = HashMap::new();
        tokio::pin!(shutdown);
        let mut shutting_down = false;
        loop {
            let event = tokio::select! {
                biased;
                () = &mut shutdown, if !shutting_down => {
                    tracing::info!("leaving the group; handing partitions over");
                    shutting_down = true;
                    stop.cancel();
                    continue;
                }
                e = events.recv() => e,
            };
            match event {
                Some(GroupEvent::Acquired(own)) => {
                    let p = own.partition;
                    let Some(consumer) = consumers.get(usize::from(p.0)).cloned() else {
                        continue;
                    };
                    // A previous run of the same partition (lost, then won back) ends first.
                    let previous = partitions.remove(&p);
                    let task = tokio::spawn(Arc::clone(&pod).consume_partition(
                        own,
                        consumer,
                        stream.clone(),
                        grace,
                        previous,
                    ));
                    partitions.insert(p, task);
                }
                Some(GroupEvent::Release(own, done)) => {
                    let task = partitions.remove(&own.partition);
                    tokio::spawn(async move {
                        if let Some(task) = task {
                            let _ = task.await;
                        }
                        done.done();
                    });
                }
                None => break,
            }
        }
        let _ = group_task.await;
        for (_, task) in partitions.drain() {
            let _ = tokio::time::timeout(grace, task).await;
        }
        keepalive.abort();
        pod.tracker.close();
        if tokio::time::timeout(grace, pod.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                unfinished = pod.tracker.len(),
                "shutdown grace ran out; unfinished updates will be redelivered"
            );
        }
    }
}

impl Pod {
    /// Sends in-progress acks for held updates that have not started, every third of the
    /// ack wait, so that waiting in this pod never makes the server redeliver them.
    async fn keep_held_alive(self: Arc<Self>) {
        let every = (self.me.acks.ack_wait / 3).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let (replies, deepest, total, oldest) = self.scheduler.waiting();
            metrics::queues(&self.me.lane, total, deepest, oldest);
            for reply in replies {
                if let Err(e) = self.me.client.publish(reply, "+WPI".into()).await {
                    tracing::debug!(error = %e, "in-progress ack of a held update");
                }
            }
        }
    }

    /// Consumes one owned partition until it is released or lost.
    async fn consume_partition(
        self: Arc<Self>,
        own: Arc<Ownership>,
        mut consumer: PullConsumer,
        stream: Stream,
        grace: Duration,
        previous: Option<tokio::task::JoinHandle<()>>,
    ) {
        if let Some(previous) = previous {
            let _ = previous.await;
        }
        let started = Instant::now();
        let p = own.partition;
        let part = Arc::new(Owned {
            fence: OwnerFence::new(&self.me.lane, p.0, own.epoch),
            own,
            held: AtomicUsize::new(0),
            idle: Notify::new(),
            window: Mutex::new(HashMap::new()),
        });
        let name = consumer.cached_info().name.clone();
        self.me
            .owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(p.0);
        // The previous owner's pin goes, so that from now on only this pod's pull is
        // served; meanwhile the window it left is read (it needs no pin).
        let unpin = async {
            if let Err(e) = stream.unpin_consumer(&name, PRIORITY_GROUP).await {
                tracing::debug!(error = %e, partition = %p, "unpin (nothing pinned)");
            }
        };
        let ((), replayed) = tokio::join!(unpin, self.replay_window(&part, &mut consumer, &stream));
        tracing::info!(partition = %p, epoch = part.own.epoch, replayed, took = ?started.elapsed(), "partition taken");
        metrics::rebalance(&self.me.lane);
        let messages = consumer
            .stream()
            .group(PRIORITY_GROUP)
            .max_messages_per_batch(self.me.limits.concurrency.clamp(1, 1000))
            .expires(PULL_EXPIRY)
            .heartbeat(PULL_EXPIRY / 3)
            .messages()
            .await;
        match messages {
            Ok(mut messages) => loop {
                let permit = tokio::select! {
                    biased;
                    () = part.own.released() => break,
                    p = Arc::clone(&self.held).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let msg = tokio::select! {
                    biased;
                    () = part.own.released() => break,
                    m = messages.next() => m,
                };
                let msg = match msg {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        // Missed heartbeats, a pin that moved and the like: the pull
                        // stream recovers by itself.
                        tracing::debug!(error = %e, partition = %p, "pulling updates");
                        continue;
                    }
                    None => {
                        tracing::warn!(partition = %p, "pull stream ended");
                        break;
                    }
                };
                // The delivered copy of a replayed update: acknowledge, never run twice.
                let msg = match msg.info().map(|i| i.stream_sequence) {
                    Ok(seq) => match part.claim_copy(seq, msg) {
                        Copy::Finished(msg, kind) => {
                            ack(&msg, kind).await;
                            continue;
                        }
                        Copy::Kept => continue,
                        Copy::New(msg) => msg,
                    },
                    Err(_) => msg,
                };
                self.hold(&part, Source::Delivered(msg), permit).await;
            },
            Err(e) => tracing::warn!(error = %e, partition = %p, "cannot pull the partition"),
        }
        // The pull stream is gone, but its last pull request waits at the server until it
        // expires; unpinning before then could pin that dead request again, and the next
        // owner would wait out the pin timeout.
        let requests_gone = tokio::time::Instant::now() + PULL_EXPIRY + Duration::from_millis(50);
        // Stop: running updates finish, held ones return to the stream as their chat
        // tasks reach them (they see the partition stopped).
        let wait = async {
            loop {
                let idle = part.idle.notified();
                if part.held.load(Ordering::Acquire) == 0 {
                    break;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(grace, wait).await.is_err() {
            tracing::warn!(partition = %p, "partition's updates did not finish within the grace");
        }
        if !part.own.is_lost() {
            tokio::time::sleep_until(requests_gone).await;
            if let Err(e) = stream.unpin_consumer(&name, PRIORITY_GROUP).await {
                tracing::debug!(error = %e, partition = %p, "unpin at release");
            }
        }
        self.me
            .owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&p.0);
        tracing::info!(partition = %p, lost = part.own.is_lost(), "partition stopped");
    }

    /// Reads the partition's unacknowledged window (between the consumer's ack floor and
    /// its last delivery) by sequence and holds it, in stream order, before anything new.
    async fn replay_window(
        self: &Arc<Self>,
        part: &Arc<Owned>,
        consumer: &mut PullConsumer,
        stream: &Stream,
    ) -> usize {
        let info = match consumer.info().await {
            Ok(info) => info.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "consumer info for the takeover window");
                return 0;
            }
        };
        let floor = info.ack_floor.stream_sequence;
        let top = info.delivered.stream_sequence;
        if top <= floor || info.num_ack_pending == 0 {
            return 0;
        }
        // One scan per filter subject, all at once: a takeover waits for the slowest.
        let scans = info.config.filter_subjects.iter().map(|subject| async move {
            let mut got = Vec::new();
            let mut seq = floor + 1;
            while seq <= top {
                let next = stream
                    .raw_message_builder()
                    .sequence(seq)
                    .next_by_subject(subject.clone())
                    .send()
                    .await;
                match next {
                    Ok(m) if m.sequence <= top => {
                        seq = m.sequence + 1;
                        got.push(m);
                    }
                    Ok(_) => break,
                    Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the takeover window; the rest comes by redelivery");
                        break;
                    }
                }
            }
            got
        });
        let found: BTreeMap<u64, StreamMessage> = futures::future::join_all(scans)
            .await
            .into_iter()
            .flatten()
            .map(|m| (m.sequence, m))
            .collect();
        let n = found.len();
        {
            let mut window = part.window.lock().unwrap_or_else(|p| p.into_inner());
            for seq in found.keys() {
                window.insert(*seq, WindowEntry::default());
            }
        }
        for (_, m) in found {
            let Ok(permit) = Arc::clone(&self.held).acquire_owned().await else {
                break;
            };
            self.hold(part, Source::Replayed(m), permit).await;
        }
        n
    }

    /// Takes a pulled update into its chat's queue (starting the chat's task when it has
    /// none); waits while that chat holds its cap.
    async fn hold(self: &Arc<Self>, part: &Arc<Owned>, src: Source, permit: OwnedSemaphorePermit) {
        part.held.fetch_add(1, Ordering::AcqRel);
        let env = Envelope::from_message(src.subject(), src.headers(), src.payload().clone());
        let key = env.as_ref().ok().and_then(order_key);
        let job = Job {
            src,
            env,
            part: Arc::clone(part),
            held_since: Instant::now(),
            _permit: permit,
        };
        let Some(key) = key else {
            let pod = Arc::clone(self);
            self.tracker.spawn(async move {
                let Ok(_run) = Arc::clone(&pod.run).acquire_owned().await else {
                    return;
                };
                pod.process(job).await;
            });
            return;
        };
        let (start, len, space) = self.scheduler.enqueue(key, job);
        if let Some(job) = start {
            let pod = Arc::clone(self);
            self.tracker
                .spawn(async move { pod.run_chat(key, job).await });
        }
        let cap = self.me.limits.max_held_per_chat.max(1);
        if len >= cap {
            // Back-pressure on this partition until the chat's queue has room.
            loop {
                let more = space.notified();
                if self.scheduler.queued(key) < cap || part.stopped() {
                    break;
                }
                more.await;
            }
        }
    }

    /// Runs a chat's queue, one update at a time, taking a run permit per update.
    async fn run_chat(self: Arc<Self>, key: OrderKey, first: Job) {
        let mut job = first;
        loop {
            let Ok(run) = Arc::clone(&self.run).acquire_owned().await else {
                return;
            };
            self.process(job).await;
            drop(run);
            match self.scheduler.next(key) {
                Some(next) => job = next,
                None => return,
            }
        }
    }

    /// Handles one held update to its end: acknowledged, dead-lettered, or (when its
    /// partition stopped first) returned to the stream for the next owner.
    async fn process(&self, job: Job) {
        let part = Arc::clone(&job.part);
        if part.stopped() {
            self.give_back(&job).await;
            return;
        }
        let me = &self.me;
        let (stream_seq, mut delivered) = job.src.position();
        let (bot_id, kind, update_id, chat) = match &job.env {
            Ok(env) => (
                env.bot,
                env.kind.clone(),
                Some(env.update_id),
                env.chat_id.or(env.user_id),
            ),
            // Still the subject's bot and kind when only a header was wrong.
            Err(_) => match UpdateSubject::parse(job.src.subject()) {
                Ok(s) => (s.bot, s.kind, None, None),
                Err(_) => (
                    BotId(0),
                    UpdateKind::from_field(tgpipe_shared::kind::INVALID_KIND),
                    None,
                    None,
                ),
            },
        };
        let label = metrics::kind_label(&kind);
        metrics::consumed(label, delivered > 1);
        let span = tracing::info_span!(
            "update",
            otel.kind = "consumer",
            otel.name = %format_args!("{} process", job.src.subject()),
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = %job.src.subject(),
            bot = %bot_id,
            kind = %kind.as_str(),
            update_id,
            delivered,
            lane = %me.lane,
            partition = %part.own.partition,
            stream_seq,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        // Extracting the trace context costs a header scan; skip it when nothing records.
        if let Some(h) = job.src.headers()
            && !span.is_disabled()
        {
            tgpipe_shared::telemetry::continue_from(h, &span);
        }
        let chat = chat.zip(update_id);
        let action = async {
            let env = match &job.env {
                Ok(env) => env,
                Err(e) => return Action::DeadLetter(format!("not an update: {e}")),
            };
            // The body parsed once, for every attempt.
            let update = Update::from_envelope(env);
            // What the first attempt reads from Redis, read together: the memory of
            // finished updates and, where no lock is taken, the FSM state (two commands
            // in flight on one connection: one round trip).
            let seen = async {
                match (&me.seen, chat) {
                    (Some(seen), Some((chat, update_id))) => {
                        seen.contains(bot_id, chat, update_id).await
                    }
                    _ => Ok(false),
                }
            };
            let state = async {
                let fsm = me.dispatcher.fsm().filter(|f| f.reads_state_unlocked())?;
                let key = fsm.key(&update)?;
                // A failure is not this read's to report: the dispatch reads again.
                let state = fsm.storage().get_state(&key).await.ok()?;
                Some(Prefetched { key, state })
            };
            let (seen, mut prefetched) = tokio::join!(seen, state);
            match seen {
                Ok(true) => return Action::Duplicate,
                Ok(false) => {}
                Err(e) => {
                    // Fails open: a lost memory only weakens duplicate detection.
                    tracing::warn!(error = %e, "cannot read the memory of finished updates");
                    metrics::seen_unavailable();
                    me.redis.failed();
                }
            }
            let first_attempt = Instant::now();
            loop {
                let recoveries = me.redis.recoveries();
                // Taken per attempt: a bot added while its update waits is found.
                let bots = me.bots.snapshot();
                let action = match bots.get(&bot_id) {
                    // A bot the ingress knows before this pod does (a rollout): waited
                    // for within the retry budget, like any transient failure.
                    None => Action::Retry(
                        format!("no token for bot {bot_id} in TGPIPE_BOT_TOKENS or the registry"),
                        None,
                    ),
                    Some(b)
                        if b.state == BotState::Removed
                            && me.removed_policy == RemovedPolicy::DeadLetter =>
                    {
                        Action::DeadLetter(format!(
                            "bot {bot_id} was removed from the registry (TGPIPE_REMOVED_POLICY=dead-letter)"
                        ))
                    }
                    Some(b) => {
                        let update = update.clone();
                        self.dispatch(&b.bot, update, prefetched.take(), &job, &part, label)
                            .await
                    }
                };
                // A partition this pod no longer owns is the new owner's to finish or
                // dead-letter (a stale owner's fenced write fails its update here).
                if part.stopped() && matches!(action, Action::Retry(..) | Action::DeadLetter(_)) {
                    return Action::GiveBack;
                }
                let Action::Retry(error, asked) = action else {
                    return action;
                };
                // Dead-lettered only once both the attempts and the time are spent: an
                // outage of Redis or the Bot API shorter than the budget costs latency,
                // never an update.
                if delivered >= me.acks.max_deliver
                    && first_attempt.elapsed() >= me.acks.retry_budget
                {
                    return Action::DeadLetter(format!(
                        "{error} (still failing after {delivered} attempts in {:?})",
                        first_attempt.elapsed()
                    ));
                }
                // Retried in place: the chat waits, nothing of it overtakes this update.
                // A flood wait the Bot API asked for (over the client's cap) is honoured.
                let delay = me
                    .acks
                    .retry_delay(delivered)
                    .max(asked.unwrap_or_default());
                tracing::warn!(%error, ?delay, "failed transiently; will retry");
                metrics::outcome(label, "retried");
                let wait = self.keep_in_progress(&job.src, async {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => false,
                        () = part.own.released() => true,
                        // Redis failed and answers again: no need to wait out the backoff.
                        () = me.redis.recovered_after(recoveries) => false,
                    }
                });
                if wait.await {
                    return Action::GiveBack;
                }
                delivered += 1;
            }
        }
        .instrument(span.clone())
        .await;
        // Instrumented, never entered: a span guard held across an await would leak into
        // whatever else runs on this thread meanwhile.
        self.settle(
            &job,
            action,
            Settle {
                bot_id,
                kind: &kind,
                label,
                chat,
                stream_seq,
                delivered,
            },
        )
        .instrument(span)
        .await;
    }

    /// One attempt at the update: the dispatch under the partition's fence, bounded by
    /// the handler timeout, a panic caught.
    async fn dispatch(
        &self,
        bot: &Bot,
        update: Update,
        prefetched: Option<Prefetched>,
        job: &Job,
        part: &Arc<Owned>,
        label: &'static str,
    ) -> Action {
        let started = Instant::now();
        // The FSM state read ahead, for the FSM middleware.
        let mut values = Extensions::new();
        if let Some(p) = prefetched {
            values.insert(p);
        }
        // A panicking handler fails this update, not the pod.
        let dispatch = std::panic::AssertUnwindSafe(tgpipe::fsm::with_owner_fence(
            part.fence.clone(),
            tokio::time::timeout(
                self.me.acks.handler_timeout,
                self.me.dispatcher.feed_with(bot, update, values),
            ),
        ))
        .catch_unwind();
        // The handlers' span, only for a trace (each Bot API call is its child): without
        // export it would be one more span per update for nothing.
        let span = if tgpipe_shared::telemetry::exporting() {
            tracing::info_span!("handle", bot_username = bot.username().unwrap_or(""))
        } else {
            tracing::Span::none()
        };
        let outcome = self
            .keep_in_progress(&job.src, dispatch)
            .instrument(span)
            .await;
        metrics::handler_time(label, started.elapsed());
        match outcome {
            Ok(Ok(DispatchOutcome::Handled)) => Action::Ack("handled"),
            Ok(Ok(DispatchOutcome::Unhandled)) => Action::Ack("unhandled"),
            Ok(Ok(DispatchOutcome::Failed(e))) if e.is_transient() => {
                if needs_redis(&e) {
                    self.me.redis.failed();
                }
                Action::Retry(e.to_string(), e.retry_after())
            }
            Ok(Ok(DispatchOutcome::Failed(e))) => Action::DeadLetter(e.to_string()),
            // Stuck on an external call: its chat would wait forever.
            Ok(Err(_)) => Action::Retry(
                format!(
                    "the dispatch did not finish within TGPIPE_HANDLER_TIMEOUT ({:?})",
                    self.me.acks.handler_timeout
                ),
                None,
            ),
            Err(panic) => Action::DeadLetter(format!(
                "handler panicked: {}",
                panic_message(panic.as_ref())
            )),
        }
    }

    /// Returns a held update of a stopped partition: a delivered one is nak'ed so the
    /// next owner gets it at once (it is in its takeover window too); a replayed one is
    /// still pending at the consumer, so there is nothing to do.
    async fn give_back(&self, job: &Job) {
        if let Source::Delivered(m) = &job.src
            && !job.part.own.is_lost()
        {
            ack(m, AckKind::Nak(None)).await;
        }
    }

    /// Runs `work`, sending in-progress acks every third of the ack wait while it runs.
    /// Most handlers finish long before the first one is due, so this costs them a timer
    /// and no task.
    async fn keep_in_progress<T>(&self, src: &Source, work: impl Future<Output = T>) -> T {
        let every = (self.me.acks.ack_wait / 3).max(Duration::from_millis(100));
        tokio::pin!(work);
        loop {
            match tokio::time::timeout(every, &mut work).await {
                Ok(done) => return done,
                Err(_) => {
                    if let Source::Delivered(m) = src
                        && let Err(e) = m.ack_with(AckKind::Progress).await
                    {
                        tracing::debug!(error = %e, "in-progress ack");
                    }
                }
            }
        }
    }

    /// Acknowledges the update as `kind`: through the consumer when it was delivered;
    /// for a replayed one, its delivered copy now or when it arrives.
    async fn finish(&self, job: &Job, kind: AckKind) {
        match &job.src {
            Source::Delivered(m) => ack(m, kind).await,
            Source::Replayed(m) => {
                let copy = {
                    let mut window = job.part.window.lock().unwrap_or_else(|p| p.into_inner());
                    let entry = window.entry(m.sequence).or_default();
                    match entry.copy.take() {
                        Some(copy) => {
                            window.remove(&m.sequence);
                            Some(copy)
                        }
                        None => {
                            entry.finished = Some(kind);
                            None
                        }
                    }
                };
                if let Some(copy) = copy {
                    ack(&copy, kind).await;
                }
            }
        }
    }

    /// Acknowledges or dead-letters the update as the dispatch decided.
    async fn settle(&self, job: &Job, action: Action, at: Settle<'_>) {
        let Settle {
            bot_id,
            kind,
            label,
            chat,
            stream_seq,
            delivered,
        } = at;
        let span = tracing::Span::current();
        span.record(
            "outcome",
            match &action {
                Action::Ack(outcome) => *outcome,
                Action::Duplicate => "duplicate",
                Action::GiveBack | Action::Retry(..) => "given_back",
                Action::DeadLetter(_) => "dead_lettered",
            },
        );
        if let Action::DeadLetter(error) = &action {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", error.as_str());
        }
        match action {
            Action::Ack(outcome) => {
                // Remembered before the ack: an update whose ack is lost (a leader
                // election) and that a new owner replays must be found finished, or it
                // would run again after the chat's later updates.
                if let (Some(seen), Some((chat, update_id))) = (&self.me.seen, chat) {
                    match seen
                        .insert(bot_id, chat, update_id, Some(&job.part.fence))
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(
                            "the partition has a newer owner; its memory of finished updates wins"
                        ),
                        // The update is done; a lost memory only weakens duplicate detection.
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot remember the finished update");
                            metrics::seen_unavailable();
                            self.me.redis.failed();
                        }
                    }
                }
                metrics::outcome(label, outcome);
                self.finish(job, AckKind::Ack).await;
            }
            Action::Duplicate => {
                tracing::info!(
                    "skipped: finished before (a duplicate older than the dedupe window)"
                );
                metrics::outcome(label, "duplicate");
                self.finish(job, AckKind::Ack).await;
            }
            Action::GiveBack | Action::Retry(..) => self.give_back(job).await,
            Action::DeadLetter(error) => {
                let mut attempt = 1;
                loop {
                    match self
                        .dead_letter(&job.src, bot_id, kind, stream_seq, delivered, &error)
                        .await
                    {
                        Ok(()) => {
                            tracing::error!(%error, "dead-lettered");
                            metrics::outcome(label, "dead_lettered");
                            metrics::dead_letter(label);
                            self.finish(job, AckKind::Term).await;
                            return;
                        }
                        Err(e) => {
                            // Retried in place, like a failing handler: the chat waits.
                            let delay = self.me.acks.retry_delay(attempt);
                            tracing::error!(%error, dlq_error = %e, ?delay, "cannot dead-letter; will retry");
                            let stopped = self
                                .keep_in_progress(&job.src, async {
                                    tokio::select! {
                                        () = tokio::time::sleep(delay) => false,
                                        () = job.part.own.released() => true,
                                    }
                                })
                                .await;
                            if stopped {
                                self.give_back(job).await;
                                return;
                            }
                            attempt += 1;
                        }
                    }
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        src: &Source,
        bot: BotId,
        kind: &UpdateKind,
        stream_seq: u64,
        delivered: u32,
        error: &str,
    ) -> Result<(), String> {
        let mut h = src.headers().cloned().unwrap_or_default();
        // A message id none of ours wrote (published by hand) is kept as its sequence.
        let original = h
            .get(headers::MSG_ID)
            .and_then(|v| v.as_str().parse::<MsgId>().ok())
            .unwrap_or(MsgId::Sequence {
                bot,
                seq: stream_seq,
            });
        // One id per stream message: a dead-lettering retried after a lost PubAck, or by
        // a new owner, collapses in the DLQ's dedupe window; an update replayed from the
        // DLQ has a new stream sequence, so failing again makes a new letter.
        let id = MsgId::DeadLetter {
            of: Box::new(original),
            seq: stream_seq,
        };
        h.insert(headers::MSG_ID, id.to_string());
        h.insert(headers::ERROR, header_safe(error));
        h.insert(headers::DELIVERIES, delivered.to_string());
        let ack = self
            .me
            .js
            .publish_with_headers(dlq_subject(bot, kind), h, src.payload().clone())
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .map_err(|_| "no acknowledgement from the dead-letter stream".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// What `settle` needs to know about the update.
struct Settle<'a> {
    bot_id: BotId,
    kind: &'a UpdateKind,
    label: &'static str,
    chat: Option<(i64, i64)>,
    stream_seq: u64,
    delivered: u32,
}

enum Action {
    Ack(&'static str),
    Duplicate,
    /// A transient failure, and the wait the Bot API asked for, if it did.
    Retry(String, Option<Duration>),
    /// The partition stopped while the update waited to be retried.
    GiveBack,
    DeadLetter(String),
}

/// What a panic carried, when it is text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not text)")
}

async fn ack(msg: &jetstream::Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        // The server redelivers after the ack wait; the seen memory catches the repeat.
        tracing::warn!(error = %e, ?kind, "acknowledgement not sent");
    }
}

/// A header value: one line, at most 1 KiB (errors may quote user input).
pub(crate) fn header_safe(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > 1024 {
        let mut end = 1024;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let acks = AckSettings {
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            retry_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(10),
            retry_budget: Duration::ZERO,
            handler_timeout: Duration::from_secs(60),
        };
        let delays: Vec<u64> = (1..=6).map(|d| acks.retry_delay(d).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(acks.retry_delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn header_values_are_one_bounded_line() {
        assert_eq!(header_safe("a\r\nb"), "a  b");
        let long = "é".repeat(1000);
        let safe = header_safe(&long);
        assert!(safe.len() <= 1024 && safe.chars().all(|c| c == 'é'));
    }
}
