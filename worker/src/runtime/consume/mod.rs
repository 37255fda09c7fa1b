//! The consuming loop: take a lane's partitions as the group assigns them, pull their
//! updates, run the dispatcher, acknowledge.
//!
//! - **Ownership** ([`super::group`]): a partition is consumed only while this pod holds
//!   its lease. A taken partition first replays its unacknowledged window ([`window`]).
//!   A partition given up finishes its running dispatches before the lease goes; one
//!   whose lease is lost cancels them before another pod can take it.
//! - **Order** ([`schedule`]): updates of one chat run one at a time, in stream order. A
//!   chat past its cap parks its overflow; the partition goes on serving other chats.
//! - **Slots** ([`slots`]): a dispatch holds a run slot only while its handler runs;
//!   bots take turns.
//! - **Attempts and acknowledgement** ([`attempt`], [`settle`]): retried in place with
//!   backoff, acknowledged after success, dead-lettered after the retry budget.
//!
//! `docs/architecture.md` ("Isolation") explains the design and its limits.

mod album;
mod attempt;
mod schedule;
mod settle;
mod slots;
mod window;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::{self, AckKind};
use async_nats::{HeaderMap, Subject};
use futures::StreamExt;
use tgpipe_shared::{BotId, Envelope, EnvelopeError};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::group::{Group, GroupEvent, Ownership};
use super::lane::{PRIORITY_GROUP, Partition};
use super::metrics;
use super::redis_probe::RedisProbe;
use super::seen::Seen;
use schedule::{Next, Scheduler};
use slots::Slots;
use tgpipe::dispatcher::Dispatcher;
use tgpipe::fsm::OwnerFence;

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
    /// How old an update of each kind may be when an attempt starts.
    pub deadlines: super::Deadlines,
    /// Whether the kinds with a deadline take run slots before the bot's other kinds.
    pub interactive_first: bool,
    /// How long an album waits for its next part (zero: albums are not collected).
    pub album_quiet: Duration,
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
    /// Dispatches running at once (run slots).
    pub concurrency: usize,
    /// Run slots one bot may hold at once (0: no cap).
    pub max_running_per_bot: usize,
    /// Updates held in memory (queued or running) in the pod; more are parked.
    pub max_held: usize,
    /// Updates held in memory for one chat; more are parked.
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
    pub(crate) owned: Arc<Mutex<BTreeSet<u16>>>,
    /// The lane's consumers by partition, for the lag (replaced when the partition count
    /// changes).
    pub(crate) lane_consumers: Arc<Mutex<Vec<PullConsumer>>>,
}

type OrderKey = (BotId, i64);

/// The part of the shutdown grace kept for the last flush of acknowledgements.
pub(super) const FLUSH_RESERVE: Duration = Duration::from_secs(2);

/// The least number of messages one pull request asks for.
const PULL_BATCH: usize = 256;

/// How long a pull request waits at the server. Short, because a handover waits for the
/// old owner's last request to expire before it unpins (see `consume_partition`), and
/// the handover's gap is about this long.
const PULL_EXPIRY: Duration = Duration::from_millis(300);

/// Where a held update came from, and so how it is acknowledged.
// Nearly every update is `Delivered`, the large variant: boxing it would cost an
// allocation per update to save bytes on the rare replayed one.
#[allow(clippy::large_enum_variant)]
enum Source {
    /// Delivered by the partition's consumer: acknowledged through it.
    Delivered(jetstream::Message),
    /// Read by sequence from the stream while replaying a taken-over window; its
    /// delivered copy (still pending at the consumer) is acknowledged when it arrives.
    Replayed(StreamMessage),
    /// Delivered, parked, and read again by sequence: acknowledged on its subject.
    Unparked(StreamMessage, Subject, u32),
}

impl Source {
    fn payload(&self) -> &bytes::Bytes {
        match self {
            Source::Delivered(m) => &m.payload,
            Source::Replayed(m) | Source::Unparked(m, ..) => &m.payload,
        }
    }

    fn headers(&self) -> Option<&HeaderMap> {
        match self {
            Source::Delivered(m) => m.headers.as_ref(),
            Source::Replayed(m) | Source::Unparked(m, ..) => Some(&m.headers),
        }
    }

    fn subject(&self) -> &str {
        match self {
            Source::Delivered(m) => m.subject.as_str(),
            Source::Replayed(m) | Source::Unparked(m, ..) => m.subject.as_str(),
        }
    }

    /// Stream sequence and deliveries so far.
    fn position(&self) -> (u64, u32) {
        match self {
            Source::Delivered(m) => delivery(m),
            // At least one delivery went to the previous owner.
            Source::Replayed(m) => (m.sequence, 2),
            Source::Unparked(m, _, delivered) => (m.sequence, *delivered),
        }
    }

    /// The subject that acknowledges this delivery at the consumer, if it has one.
    fn reply(&self) -> Option<&Subject> {
        match self {
            Source::Delivered(m) => m.reply.as_ref(),
            Source::Unparked(_, reply, _) => Some(reply),
            Source::Replayed(_) => None,
        }
    }
}

/// A delivered message's stream sequence and deliveries.
fn delivery(m: &jetstream::Message) -> (u64, u32) {
    match m.info() {
        Ok(info) => (
            info.stream_sequence,
            u32::try_from(info.delivered).unwrap_or(u32::MAX),
        ),
        Err(_) => (0, 1),
    }
}

/// A partition this pod consumes, for as long as it owns it.
struct Owned {
    own: Arc<Ownership>,
    fence: OwnerFence,
    /// Updates of this partition in the pod (held, parked or running).
    held: AtomicUsize,
    idle: Notify,
    /// The replayed window: sequence -> finished, and the delivered copy to acknowledge.
    window: Mutex<HashMap<u64, WindowEntry>>,
}

#[derive(Default)]
struct WindowEntry {
    finished: Option<AckKind>,
    /// The delivered copy's acknowledgement subject (its payload is not kept).
    copy: Option<Subject>,
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
    /// Whether the partition is being given up or was lost: nothing of it may start.
    fn stopped(&self) -> bool {
        self.own.is_released()
    }

    fn enter(&self) {
        self.held.fetch_add(1, Ordering::AcqRel);
    }

    fn leave(&self) {
        if self.held.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
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
                entry.copy = msg.reply.as_ref().map(|r| Subject::from(r.as_str()));
                Copy::Kept
            }
        }
    }

    /// The acknowledgement subjects of delivered copies kept for the window.
    fn window_copies(&self) -> Vec<Subject> {
        let window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window.values().filter_map(|e| e.copy.clone()).collect()
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
    /// Its place in the pod's memory budget (none for an update read back from parking:
    /// a chat reads one only when it is about to run it).
    permit: Option<OwnedSemaphorePermit>,
    /// When this update begins an album (see [`album`]), the album's other parts (none
    /// for an album of one); they settle with it.
    album: Option<Vec<Job>>,
}

impl Job {
    fn new(src: Source, part: &Arc<Owned>, held_since: Instant) -> Job {
        part.enter();
        let env = Envelope::from_message(src.subject(), src.headers(), src.payload().clone());
        Job {
            src,
            env,
            part: Arc::clone(part),
            held_since,
            permit: None,
            album: None,
        }
    }

    /// This update and the album parts that settle with it.
    fn parts(&self) -> impl Iterator<Item = &Job> {
        std::iter::once(self).chain(self.album.iter().flatten())
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.part.leave();
    }
}

/// An update parked past its chat's or the pod's cap: its place in the stream, and how
/// to acknowledge its delivery (`None`: replayed from the window, acknowledged through
/// its delivered copy).
struct Parked {
    seq: u64,
    reply: Option<Subject>,
    delivered: u32,
    part: Arc<Owned>,
    since: Instant,
}

impl Parked {
    fn from_job(job: Job) -> Parked {
        let (seq, delivered) = job.src.position();
        // A fresh copy: the delivered subject may share the connection's read buffer.
        let reply = job.src.reply().map(|r| Subject::from(r.as_str()));
        job.part.enter();
        Parked {
            seq,
            reply,
            delivered,
            part: Arc::clone(&job.part),
            since: job.held_since,
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.part.leave();
    }
}

/// A held update's ordering key: its bot and chat (else user).
fn order_key(env: &Envelope) -> Option<OrderKey> {
    Some((env.bot, env.chat_id.or(env.user_id)?))
}

/// The pod's shared consuming state.
struct Pod {
    me: Arc<Consumer>,
    stream: Stream,
    scheduler: Scheduler,
    slots: Arc<Slots>,
    /// The pod's memory budget: updates held in memory, not parked.
    held: Arc<Semaphore>,
    tracker: TaskTracker,
    partitions: Mutex<HashMap<Partition, Arc<Owned>>>,
}

impl Consumer {
    /// Consumes the partitions `group` assigns to this pod until `shutdown` resolves;
    /// then leaves the group and hands every partition over (running dispatches finish,
    /// held updates not started are returned to the stream), all within `grace`.
    pub(super) async fn run(
        self: Arc<Self>,
        stream: Stream,
        mut consumers: Vec<PullConsumer>,
        group: Group,
        grace: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let limits = self.limits;
        let pod = Arc::new(Pod {
            me: Arc::clone(&self),
            stream: stream.clone(),
            scheduler: Scheduler::default(),
            slots: Slots::new(limits.concurrency, limits.max_running_per_bot),
            held: Arc::new(Semaphore::new(limits.max_held.max(1))),
            tracker: TaskTracker::new(),
            partitions: Mutex::new(HashMap::new()),
        });
        let stop = CancellationToken::new();
        let (tx, mut events) = tokio::sync::mpsc::channel(64);
        let mut deadline: Option<tokio::time::Instant> = None;
        let (deadline_tx, deadline_rx) = tokio::sync::watch::channel(None);
        // A handover outside shutdown waits for running dispatches up to the handler
        // timeout and the settling after it.
        let finish_within = self.acks.handler_timeout + Duration::from_secs(5);
        let group_task = tokio::spawn(group.run(tx, stop.clone(), deadline_rx, finish_within));
        let keepalive = tokio::spawn(Arc::clone(&pod).keep_held_alive());
        let mut partitions: HashMap<Partition, tokio::task::JoinHandle<()>> = HashMap::new();
        tokio::pin!(shutdown);
        loop {
            let event = tokio::select! {
                biased;
                () = &mut shutdown, if deadline.is_none() => {
                    tracing::info!("leaving the group; handing partitions over");
                    // One deadline for the whole drain, whatever is down, less what the
                    // last flush of acknowledgements may take.
                    let at = tokio::time::Instant::now() + grace.saturating_sub(FLUSH_RESERVE);
                    deadline = Some(at);
                    let _ = deadline_tx.send(Some(at));
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
                    let task =
                        tokio::spawn(Arc::clone(&pod).consume_partition(own, consumer, previous));
                    partitions.insert(p, task);
                }
                Some(GroupEvent::Layout(partitions, laid_out)) => {
                    tracing::info!(partitions, "consuming with a new partition count");
                    consumers = laid_out;
                    *self
                        .lane_consumers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = consumers.clone();
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
        let until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + grace);
        let _ = tokio::time::timeout_at(until, group_task).await;
        for (_, task) in partitions.drain() {
            let _ = tokio::time::timeout_at(until, task).await;
        }
        keepalive.abort();
        pod.tracker.close();
        if tokio::time::timeout_at(until, pod.tracker.wait())
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
    /// Sends in-progress acks for updates held or parked that have not started (and the
    /// window's kept copies), every third of the ack wait, so that waiting in this pod
    /// never makes the server redeliver them; reports the queues and the bots' slots.
    async fn keep_held_alive(self: Arc<Self>) {
        let every = (self.me.acks.ack_wait / 3).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let w = self.scheduler.waiting();
            metrics::queues(&self.me.lane, w.total, w.parked, w.deepest, w.oldest);
            let load: Vec<_> = self
                .slots
                .load()
                .into_iter()
                .map(|(bot, l)| (bot, (l.running, l.waiting)))
                .collect();
            metrics::bot_slots(&self.me.lane, &load);
            let copies: Vec<Subject> = {
                let parts = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
                parts.values().flat_map(|p| p.window_copies()).collect()
            };
            for reply in w.replies.into_iter().chain(copies) {
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
        previous: Option<tokio::task::JoinHandle<()>>,
    ) {
        if let Some(previous) = previous {
            let _ = previous.await;
        }
        let started = Instant::now();
        let p = own.partition;
        let part = Arc::new(Owned {
            // The fence's scope is the lane and its partition count.
            fence: OwnerFence::new(
                &format!("{}#{}", self.me.lane, own.partitions),
                p.0,
                own.epoch,
            )
            .with_liveness(own.alive()),
            own,
            held: AtomicUsize::new(0),
            idle: Notify::new(),
            window: Mutex::new(HashMap::new()),
        });
        self.partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(p, Arc::clone(&part));
        let name = consumer.cached_info().name.clone();
        self.me
            .owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(p.0);
        // The previous owner's pin goes, so that from now on only this pod's pull is
        // served; meanwhile the window it left is read (it needs no pin).
        let unpin = async {
            if let Err(e) = self.stream.unpin_consumer(&name, PRIORITY_GROUP).await {
                tracing::debug!(error = %e, partition = %p, "unpin (nothing pinned)");
            }
        };
        let ((), replayed) = tokio::join!(unpin, self.replay_window(&part, &mut consumer));
        if let Some(replayed) = replayed {
            tracing::info!(partition = %p, epoch = part.own.epoch, replayed, took = ?started.elapsed(), "partition taken");
            metrics::rebalance(&self.me.lane);
            self.pull(&part, &mut consumer).await;
        }
        // The pull stream is gone, but its last pull request waits at the server until it
        // expires; unpinning before then could pin that dead request again, and the next
        // owner would wait out the pin timeout.
        let requests_gone = tokio::time::Instant::now() + PULL_EXPIRY + Duration::from_millis(50);
        // Stop: running dispatches finish (bounded by the handler timeout; a lost
        // partition's are cancelled), held ones return to the stream as their chat tasks
        // reach them (they see the partition stopped).
        loop {
            let idle = part.idle.notified();
            if part.held.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::select! {
                () = idle => {}
                // Cancelled dispatches end at once; a task stuck elsewhere (a peer that
                // does not answer) must not keep a later run of the partition waiting.
                () = part.own.lost() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while part.held.load(Ordering::Acquire) > 0 {
                            let idle = part.idle.notified();
                            if part.held.load(Ordering::Acquire) == 0 {
                                break;
                            }
                            idle.await;
                        }
                    })
                    .await;
                    break;
                }
            }
        }
        if !part.own.is_lost() {
            tokio::time::sleep_until(requests_gone).await;
            if let Err(e) = self.stream.unpin_consumer(&name, PRIORITY_GROUP).await {
                tracing::debug!(error = %e, partition = %p, "unpin at release");
            }
        }
        self.partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&p);
        self.me
            .owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&p.0);
        tracing::info!(partition = %p, lost = part.own.is_lost(), "partition stopped");
    }

    /// Pulls the partition's updates into their chats' queues until it stops. Never
    /// waits on a chat or on the pod's budget: what does not fit is parked.
    async fn pull(self: &Arc<Self>, part: &Arc<Owned>, consumer: &mut PullConsumer) {
        let p = part.own.partition;
        let messages = consumer
            .stream()
            .group(PRIORITY_GROUP)
            // Pulling never waits on a chat, so batches need not match the slots: a
            // larger one drains a backlog ahead of another chat's update sooner.
            .max_messages_per_batch(self.me.limits.concurrency.clamp(PULL_BATCH, 1000))
            .expires(PULL_EXPIRY)
            .heartbeat(PULL_EXPIRY / 3)
            .messages()
            .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %e, partition = %p, "cannot pull the partition");
                return;
            }
        };
        loop {
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
                        settle::ack(&msg, kind).await;
                        continue;
                    }
                    Copy::Kept => continue,
                    Copy::New(msg) => msg,
                },
                Err(_) => msg,
            };
            self.hold(part, Source::Delivered(msg), Instant::now());
        }
    }

    /// Takes an update into its chat's queue (starting the chat's task when it has
    /// none): in memory while the chat and the pod are under their caps, else parked.
    fn hold(self: &Arc<Self>, part: &Arc<Owned>, src: Source, since: Instant) {
        let job = Job::new(src, part, since);
        let permit = Arc::clone(&self.held).try_acquire_owned().ok();
        let Some(key) = job.env.as_ref().ok().and_then(order_key) else {
            // No chat and no user: nothing to keep in order with.
            let mut job = job;
            job.permit = permit;
            let pod = Arc::clone(self);
            self.tracker.spawn(async move { pod.process(job).await });
            return;
        };
        let cap = self.me.limits.max_held_per_chat;
        if self.scheduler.enqueue(key, job, permit, cap) {
            let pod = Arc::clone(self);
            self.tracker.spawn(async move { pod.run_chat(key).await });
        }
    }

    /// Runs a chat's queue, one update at a time (an album's parts together).
    async fn run_chat(self: Arc<Self>, key: OrderKey) {
        let albums = self.me.dispatcher.wants_albums() && !self.me.acks.album_quiet.is_zero();
        // The update taken while an album was collected: it runs next.
        let mut after = None;
        loop {
            let job = match after.take() {
                Some(job) => job,
                None => match self.scheduler.next(key) {
                    Next::Job(job) => job,
                    Next::Parked(parked) => match self.unpark(parked).await {
                        Some(job) => job,
                        None => continue,
                    },
                    Next::Done => return,
                },
            };
            match albums.then(|| album::media_group_of(&job)).flatten() {
                Some(group) => {
                    let (album, next) = self.collect_album(key, job, group).await;
                    after = next;
                    self.process(album).await;
                }
                None => self.process(job).await,
            }
        }
    }

    /// Reads a parked update back from the stream, by sequence. `None` when its
    /// partition stopped meanwhile (it is returned) or it is no longer in the stream.
    async fn unpark(&self, parked: Parked) -> Option<Job> {
        let mut attempt = 0;
        loop {
            if parked.part.stopped() {
                settle::give_back_parked(&self.me.client, &parked).await;
                return None;
            }
            match self.stream.get_raw_message(parked.seq).await {
                Ok(msg) => {
                    let src = match &parked.reply {
                        Some(reply) => Source::Unparked(msg, reply.clone(), parked.delivered),
                        None => Source::Replayed(msg),
                    };
                    return Some(Job::new(src, &parked.part, parked.since));
                }
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                {
                    // Removed from the stream (its age or size limits, or by hand):
                    // nothing is left to run.
                    tracing::warn!(
                        seq = parked.seq,
                        "a parked update is no longer in the stream"
                    );
                    if let Some(reply) = &parked.reply {
                        settle::ack_subject(&self.me.client, reply, AckKind::Term).await;
                    }
                    return None;
                }
                Err(e) => {
                    attempt += 1;
                    let delay = Duration::from_millis(100 * (1 << attempt.min(5)));
                    tracing::warn!(error = %e, seq = parked.seq, ?delay, "reading a parked update; will retry");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = parked.part.own.released() => {}
                    }
                }
            }
        }
    }
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
            deadlines: super::super::Deadlines::default(),
            interactive_first: false,
            album_quiet: Duration::from_secs(1),
        };
        let delays: Vec<u64> = (1..=6).map(|d| acks.retry_delay(d).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(acks.retry_delay(u32::MAX), Duration::from_secs(10));
    }
}
