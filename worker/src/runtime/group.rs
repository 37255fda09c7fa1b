//! Ownership of a lane's partitions: which pod consumes which partition, moved when pods
//! join, drain or die.
//!
//! Built from NATS's own primitives, the way Synadia's partitioned consumer groups are:
//!
//! - **Membership**: every pod of a lane puts `<stream>.<lane>.members.<member>` into a
//!   KV bucket whose entries expire (`max_age` = the lease TTL, with limit markers, so an
//!   expiry is seen by watchers as a purge). A pod heartbeats its key every third of the
//!   TTL; a pod killed with -9 drops out when its key expires.
//! - **Assignment**: every pod computes the same assignment from the sorted list of live
//!   members: rendezvous hashing with bounded loads, so partitions are balanced (no pod has
//!   more than `ceil(partitions / members)`) and a join or a leave moves few of them.
//! - **Leases**: a pod consumes a partition only while it holds
//!   `<stream>.<lane>.owners.<NNN>`, created with "only if absent" and renewed with
//!   compare-and-set on its revision. The revision at creation is the ownership's
//!   **epoch**: KV revisions only grow, so a later owner always has a larger epoch, which
//!   fences the writes of an earlier one (see `docs/architecture.md`).
//! - **Delivery**: each partition's consumer pins one client (priority group, pinned
//!   client); a new owner unpins the previous one, so even a pod that lost its lease but
//!   still pulls receives nothing.
//!
//! A pod that is no longer assigned a partition it holds hands it over: it stops pulling,
//! lets the partition's running updates finish, returns the ones it holds but has not
//! started, unpins, and deletes the lease; the assigned pod sees the delete through its
//! watch and takes the partition at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::Stream;

use super::balance::{Backlog, Plan};
use super::lane::{ConsumerSettings, Lane, Layout, Partition};

/// How often the ownership view is read from the bucket again, besides the watch.
const RESYNC: Duration = Duration::from_secs(30);

/// Keys of the bucket a resync reads at once.
const RESYNC_READS: usize = 16;

/// The KV bucket of memberships and leases (`TGPIPE_GROUP_BUCKET`).
pub(super) const DEFAULT_BUCKET: &str = "tgpipe_groups";

/// How a lane's pods share its partitions.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// The KV bucket.
    pub bucket: String,
    /// How long a silent pod keeps its membership and leases.
    pub lease_ttl: Duration,
    /// Replicas of the bucket (as the streams').
    pub replicas: usize,
    /// Partitions this pod wants the lane to have (`TGPIPE_PARTITIONS`). The lane runs
    /// with the count its consumers are laid out for until every pod wants another.
    pub partitions: u16,
    /// Follow the plan of the lane's planner, made from the partitions' backlogs
    /// (`TGPIPE_BALANCE=backlog`), rather than hashing alone.
    pub balance: bool,
    /// Backlog a pod may have above or below the mean before partitions move: its run
    /// slots (`TGPIPE_CONCURRENCY`), since updates running are not waiting.
    pub balance_slack: u64,
}

/// Why the group could not be joined.
#[derive(Debug, thiserror::Error)]
pub(super) enum GroupError {
    /// The bucket cannot be read or created.
    #[error("cannot use the ownership bucket `{bucket}`: {message}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// The server's answer.
        message: String,
    },
    /// The bucket's entries expire after another time than this pod's leases.
    #[error(
        "the ownership bucket `{bucket}` expires entries after {max_age:?} but TGPIPE_LEASE_TTL is {ttl:?}: set TGPIPE_LEASE_TTL={secs}s, or give lanes with another lease TTL their own TGPIPE_GROUP_BUCKET"
    )]
    Ttl {
        /// The bucket.
        bucket: String,
        /// Its entries' age limit.
        max_age: Duration,
        /// This pod's lease TTL.
        ttl: Duration,
        /// The age limit in seconds, for the fix.
        secs: u64,
    },
}

/// Opens the group's KV bucket, creating it when missing. A bucket whose entries expire
/// after another time than `TGPIPE_LEASE_TTL` is refused: leases would outlive a dead
/// pod for longer, or expire between renewals.
pub(super) async fn bucket(
    js: &jetstream::Context,
    settings: &GroupSettings,
) -> Result<kv::Store, GroupError> {
    let err = |e: &dyn std::fmt::Display| GroupError::Bucket {
        bucket: settings.bucket.clone(),
        message: e.to_string(),
    };
    let store = match js.get_key_value(&settings.bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: settings.bucket.clone(),
                description: "tgpipe: lane members and partition leases".to_owned(),
                history: 1,
                max_age: settings.lease_ttl,
                // Expiries leave a marker, so watchers see a dead pod's keys go.
                limit_markers: Some(settings.lease_ttl.max(Duration::from_secs(1))),
                storage: jetstream::stream::StorageType::File,
                num_replicas: settings.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?,
    };
    let status = store.status().await.map_err(|e| err(&e))?;
    if status.max_age() != settings.lease_ttl {
        return Err(GroupError::Ttl {
            bucket: settings.bucket.clone(),
            max_age: status.max_age(),
            ttl: settings.lease_ttl,
            secs: status.max_age().as_secs(),
        });
    }
    Ok(store)
}

/// `s` with every character a KV key token may not hold replaced by `with`.
fn key_safe(s: &str, with: char) -> impl Iterator<Item = char> + '_ {
    s.chars().map(move |c| {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c
        } else {
            with
        }
    })
}

/// A unique member id: `base` (the pod's name) made key-safe, and a random suffix, so a
/// restarted pod with the same name never inherits its predecessor's leases.
pub(super) fn member_id(base: &str) -> String {
    let clean: String = key_safe(base, '-').take(48).collect();
    let clean = if clean.is_empty() {
        "worker".into()
    } else {
        clean
    };
    format!("{clean}-{:08x}", rand::random::<u32>())
}

/// The assignment every member computes alike: for each partition, its owner among
/// `members` (sorted, unique). Rendezvous hashing ranks members per partition; each
/// partition goes to the best-ranked member that still has room. Room is exact: the
/// first `partitions % members` members (in sorted order) take one more than the others,
/// so loads differ by one at most. Deterministic in its inputs.
pub(super) fn assign(partitions: u16, members: &[String]) -> Vec<Option<usize>> {
    let n = members.len();
    if n == 0 {
        return vec![None; usize::from(partitions)];
    }
    let total = usize::from(partitions);
    let mut room: Vec<usize> = (0..n)
        .map(|i| total / n + usize::from(i < total % n))
        .collect();
    (0..partitions)
        .map(|p| {
            let mut ranked: Vec<(u64, usize)> = members
                .iter()
                .enumerate()
                .map(|(i, m)| (rendezvous(m, p), i))
                .collect();
            ranked.sort_unstable_by(|a, b| b.cmp(a));
            let (_, i) = ranked
                .into_iter()
                .find(|(_, i)| room[*i] > 0)
                .expect("room for every partition");
            room[i] -= 1;
            Some(i)
        })
        .collect()
}

fn rendezvous(member: &str, partition: u16) -> u64 {
    let mut bytes = member.as_bytes().to_vec();
    bytes.extend_from_slice(&partition.to_le_bytes());
    // FNV-1a is not well mixed in its high bits for short inputs; a final avalanche
    // (splitmix64's) spreads partitions evenly over members.
    let mut z = tgpipe_shared::subject::fnv1a64(&bytes);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How long before its lease could expire at the server a pod treats a partition as
/// lost: its pull requests (`PULL_EXPIRY`) are gone and its dispatches cancelled before
/// another pod can take the partition.
const LOSS_MARGIN: Duration = Duration::from_millis(1000);

/// One held partition: its epoch, and what fences this pod once it is lost.
#[derive(Debug)]
pub(super) struct Ownership {
    /// The partition.
    pub partition: Partition,
    /// The lane's partition count when it was taken (part of the fence's scope).
    pub partitions: u16,
    /// The lease's creation time at the server, in microseconds: larger for every later
    /// owner, also across a recreated bucket or a new NATS cluster.
    pub epoch: u64,
    lost: AtomicBool,
    /// False once lost: the fence storage checks it at the moment of each write.
    alive: Arc<AtomicBool>,
    release: tokio_util::sync::CancellationToken,
    lost_token: tokio_util::sync::CancellationToken,
    /// Set when the lease is deleted after a handover: its watchdog ends.
    ended: tokio_util::sync::CancellationToken,
    /// The lease's local deadline: measured from before its last successful write.
    expires: std::sync::Mutex<Instant>,
}

impl Ownership {
    /// Whether the partition was lost (lease expired or taken): nothing of it may start.
    pub(super) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Whether this pod is giving the partition up (handover or shutdown) or lost it.
    pub(super) fn is_released(&self) -> bool {
        self.release.is_cancelled()
    }

    /// Resolves when the partition is lost or being given up.
    pub(super) async fn released(&self) {
        self.release.cancelled().await;
    }

    /// Resolves when the partition is lost: running dispatches stop.
    pub(super) async fn lost(&self) {
        self.lost_token.cancelled().await;
    }

    /// The flag the fence storage checks before each write.
    pub(super) fn alive(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.alive)
    }

    /// A stand-alone ownership whose lease is good for `ttl` from `since`.
    pub(super) fn new(
        partition: Partition,
        partitions: u16,
        epoch: u64,
        since: Instant,
        ttl: Duration,
    ) -> Ownership {
        Ownership {
            partition,
            partitions,
            epoch,
            lost: AtomicBool::new(false),
            alive: Arc::new(AtomicBool::new(true)),
            release: tokio_util::sync::CancellationToken::new(),
            lost_token: tokio_util::sync::CancellationToken::new(),
            ended: tokio_util::sync::CancellationToken::new(),
            expires: std::sync::Mutex::new(since + ttl.saturating_sub(LOSS_MARGIN)),
        }
    }

    fn expires(&self) -> Instant {
        *self.expires.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease was written at `sent` (taken before the write): good for `ttl` from then.
    fn renewed(&self, sent: Instant, ttl: Duration) {
        let mut e = self.expires.lock().unwrap_or_else(|p| p.into_inner());
        *e = (*e).max(sent + ttl.saturating_sub(LOSS_MARGIN));
    }

    fn lose(&self) {
        self.alive.store(false, Ordering::Release);
        self.lost.store(true, Ordering::Release);
        self.release.cancel();
        self.lost_token.cancel();
    }

    /// Marks the partition lost when its local deadline passes unrenewed; checked on
    /// its own timer, whatever the group's loop is blocked on.
    async fn watchdog(self: Arc<Self>, lane: String) {
        loop {
            let at = self.expires();
            if Instant::now() >= at {
                if !self.ended.is_cancelled() && !self.is_lost() {
                    tracing::warn!(partition = %self.partition, "partition lease not renewed in time; stopping it");
                    self.lose();
                    super::metrics::partition_lost(&lane);
                }
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(at.into()) => {}
                () = self.ended.cancelled() => return,
                () = self.lost_token.cancelled() => return,
            }
        }
    }
}

/// What the group tells the consuming side.
pub(super) enum GroupEvent {
    /// This pod now owns the partition: start consuming it.
    Acquired(Arc<Ownership>),
    /// This pod must give the partition up: stop, finish, then call
    /// [`Released::done`].
    Release(Arc<Ownership>, Released),
    /// The lane now has this many partitions, with these consumers (by partition). Sent
    /// only when the pod holds none: every partition of the old count was given up.
    Layout(u16, Vec<PullConsumer>),
}

/// Completes a handover: deletes the lease once the consuming side has finished.
pub(super) struct Released(tokio::sync::oneshot::Sender<()>);

impl Released {
    /// The partition's updates are finished or returned: let the next owner have it.
    pub(super) fn done(self) {
        let _ = self.0.send(());
    }
}

struct Held {
    own: Arc<Ownership>,
    /// The lease's last revision (shared with the handover, which deletes it).
    revision: Arc<AtomicU64>,
    renewed: Instant,
    releasing: bool,
    /// Set by the handover just before it deletes the lease: renewals stop.
    gone: Arc<AtomicBool>,
}

/// Where the lane's consumers live, to change their layout.
pub(super) struct Consumers {
    /// The update stream.
    pub stream: Stream,
    /// The lane.
    pub lane: Lane,
    /// How its consumers are set up (the partition count is the layout's).
    pub settings: ConsumerSettings,
    /// Their backlogs, read while this pod plans the lane.
    pub backlog: Arc<Backlog>,
}

/// What a member says of itself in its key: the partition count it runs with, and the
/// one it wants (`partitions=16 want=64`; just `partitions=16` when they are the same,
/// as before partition counts could change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemberView {
    runs: u16,
    wants: u16,
    /// It follows the lane's plan (`balance=backlog`); pods before plans say nothing.
    plans: bool,
}

impl MemberView {
    fn parse(value: &[u8]) -> MemberView {
        let text = std::str::from_utf8(value).unwrap_or("");
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|f| f.strip_prefix(name)?.parse::<u16>().ok())
        };
        let runs = field("partitions=").unwrap_or(0);
        MemberView {
            runs,
            wants: field("want=").unwrap_or(runs),
            plans: text.split_whitespace().any(|f| f == "balance=backlog"),
        }
    }

    fn value(&self) -> String {
        let mut value = format!("partitions={}", self.runs);
        if self.runs != self.wants {
            value.push_str(&format!(" want={}", self.wants));
        }
        if self.plans {
            value.push_str(" balance=backlog");
        }
        value
    }
}

/// Where a pod is in a change of the lane's partition count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Consuming with the count in force.
    Steady,
    /// Every member wants `to` partitions: give every partition up, then (one pod, under
    /// the layout key) lay the consumers out again.
    Switching { to: u16 },
}

/// What one step of a change of the partition count knows.
struct SwitchStep {
    /// The count every member wants.
    to: u16,
    /// Every member still wants it (else the change is called off if nothing changed yet).
    wanted: bool,
    /// No lease is left in this pod's view.
    no_lease: bool,
    /// A member runs with `to` already.
    done_by_peer: bool,
    /// Read the layout from the stream (now and then, not at every step).
    look: bool,
    /// This pod's member value, heartbeated while it lays the consumers out.
    me: MemberView,
}

/// The count every member wants, when it is the same for all and differs from `runs`.
fn switch_target(members: &BTreeMap<String, MemberView>, runs: u16) -> Option<u16> {
    let mut wants = members.values().map(|m| m.wants);
    let first = wants.next()?;
    (first != 0 && first != runs && wants.all(|w| w == first)).then_some(first)
}

/// This pod's membership of a lane's group.
pub(super) struct Group {
    kv: kv::Store,
    /// To create the bucket again when it was deleted under the running pods.
    js: jetstream::Context,
    lane: String,
    prefix: String,
    member: String,
    settings: GroupSettings,
    consumers: Consumers,
    /// The partition count in force (0: a change was under way at start).
    runs: u16,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("prefix", &self.prefix)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl Group {
    /// A member `member` of `lane`'s group on `stream`.
    pub(super) fn new(
        kv: kv::Store,
        js: jetstream::Context,
        stream: &str,
        consumers: Consumers,
        runs: u16,
        member: String,
        settings: GroupSettings,
    ) -> Group {
        let stream: String = key_safe(stream, '_').collect();
        let lane = consumers.lane.name().to_owned();
        Group {
            kv,
            js,
            prefix: format!("{stream}.{lane}"),
            lane,
            member,
            settings,
            consumers,
            runs,
        }
    }

    fn plan_key(&self) -> String {
        format!("{}.plan", self.prefix)
    }

    fn layout_key(&self) -> String {
        format!("{}.layout", self.prefix)
    }

    /// The consumers of `partitions`, created where missing; `None` (logged) when the
    /// stream cannot be reached.
    async fn consumers_for(&self, partitions: u16) -> Option<Vec<PullConsumer>> {
        let settings = ConsumerSettings {
            partitions,
            ..self.consumers.settings
        };
        match super::lane::ensure_consumers(
            &self.consumers.stream,
            &self.consumers.lane,
            &settings,
            super::lane::Changes::Keep,
        )
        .await
        {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "reading the lane's consumers");
                None
            }
        }
    }

    /// The layout of the lane's consumers on the stream; `None` (logged) when it cannot be
    /// read.
    async fn layout_now(&self) -> Option<Layout> {
        match super::lane::layout_in_force(&self.consumers.stream, &self.consumers.lane).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "reading the lane's layout");
                None
            }
        }
    }

    /// One step of a change to `to` partitions, once this pod holds nothing and no lease
    /// is left: adopts a layout another pod made, or takes the layout key and makes it.
    /// Returns the count and consumers to run with when the change is complete.
    async fn switch_step(&self, step: SwitchStep) -> Option<(u16, Vec<PullConsumer>)> {
        let SwitchStep {
            to,
            wanted,
            no_lease,
            done_by_peer,
            look,
            me,
        } = step;
        // A member runs with the new count already: the consumers are laid out. (Listing
        // them right after they were made can wait seconds for their Raft groups.)
        if done_by_peer {
            return match super::lane::partition_consumers(
                &self.consumers.stream,
                &self.consumers.lane,
                to,
            )
            .await
            {
                Ok(consumers) => Some((to, consumers)),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the lane's new consumers");
                    None
                }
            };
        }
        // Laid out by another pod (or, when the change was called off, still the old
        // count): run with it.
        let adopt = async |layout: Layout| match layout {
            Layout::Complete(n) if n != self.runs || !wanted => {
                Some((n, self.consumers_for(n).await?))
            }
            _ => None,
        };
        if (look || !wanted)
            && let Some(layout) = self.layout_now().await
            && let Some(adopted) = adopt(layout).await
        {
            return Some(adopted);
        }
        if !no_lease {
            return None;
        }
        // One pod lays the consumers out: the one that creates the layout key. It expires
        // with the bucket's TTL, so a pod that dies doing it does not block the others;
        // the work is safe to repeat.
        let key = self.layout_key();
        let Ok(mut rev) = self.kv.create(&key, Bytes::from(to.to_string())).await else {
            return None;
        };
        // The layout as it is now that no other pod changes it.
        let Some(layout) = self.layout_now().await else {
            let _ = self.kv.delete_expect_revision(&key, Some(rev)).await;
            return None;
        };
        if let Some(adopted) = adopt(layout).await {
            let _ = self.kv.delete_expect_revision(&key, Some(rev)).await;
            return Some(adopted);
        }
        // No lease may be left: read the bucket itself, not the watch's view.
        let leases = async {
            let owners = format!("{}.owners.", self.prefix);
            let mut keys = self.kv.keys().await.ok()?;
            let mut any = false;
            while let Some(key) = keys.next().await {
                any |= key.ok()?.starts_with(&owners);
            }
            Some(any)
        };
        let result = if leases.await == Some(false) {
            let settings = ConsumerSettings {
                partitions: to,
                ..self.consumers.settings
            };
            let started = Instant::now();
            let change =
                super::lane::change_layout(&self.consumers.stream, &self.consumers.lane, &settings);
            tokio::pin!(change);
            // The membership and the layout key stay alive while it takes.
            let beat = self.settings.lease_ttl / 3;
            let changed = loop {
                tokio::select! {
                    changed = &mut change => break changed,
                    () = tokio::time::sleep(beat) => {
                        let member = self.member_key(&self.member);
                        let _ = self.kv.put(member, Bytes::from(me.value())).await;
                        if let Ok(r) = self.kv.update(&key, Bytes::from(to.to_string()), rev).await {
                            rev = r;
                        }
                    }
                }
            };
            match changed {
                Ok(consumers) => {
                    tracing::info!(lane = %self.lane, from = self.runs, to, took = ?started.elapsed(), "laid the lane's consumers out for a new partition count");
                    Some((to, consumers))
                }
                Err(e) => {
                    tracing::warn!(error = %e, to, "changing the lane's partition count");
                    None
                }
            }
        } else {
            None
        };
        let _ = self.kv.delete_expect_revision(&key, Some(rev)).await;
        result
    }

    fn member_key(&self, m: &str) -> String {
        format!("{}.members.{m}", self.prefix)
    }

    fn owner_key(&self, p: Partition) -> String {
        format!("{}.owners.{:03}", self.prefix, p.0)
    }

    /// A new watch of the group's keys, then the keys themselves, read from the bucket:
    /// the members and who holds each partition. Changes after the read arrive on the
    /// watch (created first, so none falls in between).
    async fn resync(
        &self,
        members_prefix: &str,
        owners_prefix: &str,
        limit: Duration,
    ) -> Result<View, String> {
        let read = async {
            let watch = self
                .kv
                .watch(format!("{}.>", self.prefix))
                .await
                .map_err(|e| e.to_string())?;
            let mut keys = self.kv.keys().await.map_err(|e| e.to_string())?;
            let (mut members, mut owners) = (BTreeMap::new(), BTreeMap::new());
            let mut laying_out = false;
            let mut plan = None;
            let layout_key = self.layout_key();
            let plan_key = self.plan_key();
            let mut wanted = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key.map_err(|e| e.to_string())?;
                if key == layout_key {
                    laying_out = true;
                } else if key.starts_with(members_prefix)
                    || key.starts_with(owners_prefix)
                    || key == plan_key
                {
                    wanted.push(key);
                }
            }
            // Read together: a lane of 64 partitions has as many lease keys, and one
            // read after the other would take seconds on a busy cluster.
            let mut values = futures::stream::iter(wanted)
                .map(|key| async move {
                    let value = self.kv.get(&key).await;
                    (key, value)
                })
                .buffer_unordered(RESYNC_READS);
            while let Some((key, value)) = values.next().await {
                let Some(value) = value.map_err(|e| e.to_string())? else {
                    continue;
                };
                if let Some(m) = key.strip_prefix(members_prefix) {
                    members.insert(m.to_owned(), MemberView::parse(&value));
                } else if key == plan_key {
                    plan = Plan::parse(&value);
                } else if let Some(p) = key
                    .strip_prefix(owners_prefix)
                    .and_then(|p| p.parse::<u16>().ok())
                {
                    owners.insert(p, String::from_utf8_lossy(&value).into_owned());
                }
            }
            Ok(View {
                watch,
                members,
                owners,
                laying_out,
                plan,
            })
        };
        tokio::time::timeout(limit, read)
            .await
            .map_err(|_| format!("no answer within {limit:?}"))?
    }

    /// Runs the membership until `stop` resolves, sending acquisitions and releases to
    /// `events`. On `stop` it leaves the group (its key deleted at once, so the others
    /// rebalance without waiting for the TTL), releases every partition through
    /// `events`, waits for each handover to finish (by the drain's deadline, sent on
    /// `deadline`), and returns. A handover outside shutdown lets running dispatches
    /// finish for up to `finish_within` (the handler timeout and the settling after it).
    pub(super) async fn run(
        mut self,
        events: tokio::sync::mpsc::Sender<GroupEvent>,
        stop: tokio_util::sync::CancellationToken,
        deadline: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
        finish_within: Duration,
    ) {
        let ttl = self.settings.lease_ttl;
        let heartbeat = ttl / 3;
        let members_prefix = format!("{}.members.", self.prefix);
        let owners_prefix = format!("{}.owners.", self.prefix);
        let layout_key = self.layout_key();
        let plan_key = self.plan_key();
        let wants = self.settings.partitions;
        let plans = self.settings.balance;
        // The lane's plan as last read, and what this pod knows while it plans.
        let mut plan: Option<Plan> = None;
        let mut planning = Planning::default();
        let mut members: BTreeMap<String, MemberView> = BTreeMap::new();
        let mut warned: BTreeSet<String> = BTreeSet::new();
        // A change of the partition count under way at start is finished first.
        let mut phase = if self.runs == 0 {
            Phase::Switching { to: wants }
        } else {
            Phase::Steady
        };
        // A pod holds the layout key: nothing is claimed meanwhile.
        let mut laying_out = false;
        let mut check_layout_at = Instant::now() + RESYNC;
        // The layout check running, and the count this pod ran with when it started.
        let mut layout_check: Option<(u16, tokio::task::JoinHandle<_>)> = None;
        // While switching: when the layout is next read from the stream.
        let mut look_at = Instant::now();
        // Partitions whose lease key exists, by holder.
        let mut owners: BTreeMap<u16, String> = BTreeMap::new();
        let mut held: BTreeMap<u16, Held> = BTreeMap::new();
        let mut handovers = tokio::task::JoinSet::new();
        let mut last_beat: Option<Instant> = None;
        // Nothing is claimed before the watch has delivered the bucket's current state
        // (or a TTL has passed): a pod that has not seen the other members yet would
        // take partitions that are theirs, only to hand them back.
        let started = Instant::now();
        let mut synced = false;
        let mut watch = None;
        // The view is read from the bucket itself at start, after a watch error, after
        // any failed write (a leader loss can leave a watch stalled without an error: it
        // would never show the expiries this pod waits for), and every RESYNC.
        let mut resync_at = Some(Instant::now());
        let mut tick = tokio::time::interval(Duration::from_millis(
            (ttl.as_millis() as u64 / 6).clamp(100, 1000),
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if watch.is_none() || resync_at.is_some_and(|at| Instant::now() >= at) {
                // Every blocking call of the loop yields to `stop`: a drain with NATS
                // gone must not wait for reads that cannot succeed.
                // The leases held are renewed while the bucket is read: a slow read
                // (a busy cluster) must not cost this pod its partitions.
                let read = self.resync(&members_prefix, &owners_prefix, ttl);
                let Some(read) = self.renewing(&mut held, &stop, read).await else {
                    break;
                };
                match read {
                    Ok(view) => {
                        watch = Some(view.watch);
                        (members, owners, laying_out, plan) =
                            (view.members, view.owners, view.laying_out, view.plan);
                        // What this pod holds stays in the view until its renewal says
                        // otherwise (a read racing a renewal must not free it).
                        for p in held.keys() {
                            owners.entry(*p).or_insert_with(|| self.member.clone());
                        }
                        synced = true;
                        resync_at = Some(Instant::now() + RESYNC);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the ownership bucket");
                        // Deleted under the running pods (by hand, or a new cluster):
                        // made again, so that leases can be taken again. Epochs are
                        // creation times, so the new leases still fence the old owners.
                        let missing = tokio::select! {
                            biased;
                            () = stop.cancelled() => break,
                            got = self.js.get_key_value(&self.settings.bucket) => got.is_err(),
                        };
                        if missing {
                            let made = tokio::select! {
                                biased;
                                () = stop.cancelled() => break,
                                made = bucket(&self.js, &self.settings) => made,
                            };
                            match made {
                                Ok(store) => {
                                    tracing::warn!(bucket = %self.settings.bucket, "the ownership bucket was missing; created it again");
                                    self.kv = store;
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "creating the ownership bucket again")
                                }
                            }
                        }
                        resync_at = Some(Instant::now() + Duration::from_millis(500));
                    }
                }
            }
            // Wait for a change or the tick.
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                entry = async {
                    match watch.as_mut() {
                        Some(w) => w.next().await,
                        None => std::future::pending().await,
                    }
                } => match entry {
                    Some(Ok(entry)) => {
                        let runs = self.runs;
                        let mut apply = |entry: kv::Entry| {
                            let live = entry.operation == kv::Operation::Put;
                            if let Some(m) = entry.key.strip_prefix(&members_prefix) {
                                if live {
                                    let theirs = MemberView::parse(&entry.value);
                                    // A pod that wants another count keeps the lane on
                                    // the one in force until every pod wants the same.
                                    if theirs.wants != wants && warned.insert(m.to_owned()) {
                                        tracing::warn!(
                                            member = m,
                                            theirs = theirs.wants,
                                            ours = wants,
                                            runs,
                                            "a pod of this lane wants another TGPIPE_PARTITIONS: the lane keeps the count in force until every pod wants the same"
                                        );
                                    }
                                    members.insert(m.to_owned(), theirs);
                                } else {
                                    members.remove(m);
                                }
                            } else if entry.key == layout_key {
                                laying_out = live;
                            } else if entry.key == plan_key {
                                plan = if live { Plan::parse(&entry.value) } else { None };
                            } else if let Some(p) = entry
                                .key
                                .strip_prefix(&owners_prefix)
                                .and_then(|p| p.parse::<u16>().ok())
                            {
                                if live {
                                    owners.insert(p, String::from_utf8_lossy(&entry.value).into_owned());
                                } else {
                                    owners.remove(&p);
                                }
                            }
                        };
                        apply(entry);
                        // Changes come in bursts (a pod leaving releases all its
                        // partitions within milliseconds): take the burst together, so
                        // that the partitions it frees are claimed at once.
                        let burst = tokio::time::Instant::now() + Duration::from_millis(20);
                        if let Some(w) = watch.as_mut() {
                            while let Ok(Some(Ok(entry))) = tokio::time::timeout_at(burst, w.next()).await {
                                apply(entry);
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "ownership watch");
                        watch = None;
                    }
                    None => watch = None,

                },
                _ = tick.tick() => {}
                // A change of the partition count is followed closely: the lane is paused.
                () = tokio::time::sleep(Duration::from_millis(200)),
                    if matches!(phase, Phase::Switching { .. }) => {}
                Some(done) = handovers.join_next(), if !handovers.is_empty() => {
                    if let Ok(p) = done { held.remove(&p); }
                }
            }
            let now = Instant::now();
            synced |= now.duration_since(started) >= ttl;
            // Heartbeat.
            if last_beat.is_none_or(|b| now.duration_since(b) >= heartbeat) {
                let me_view = MemberView {
                    runs: self.runs,
                    wants,
                    plans,
                };
                let put = self
                    .kv
                    .put(self.member_key(&self.member), Bytes::from(me_view.value()));
                let put = tokio::time::timeout(heartbeat, put);
                let Some(put) = self.renewing(&mut held, &stop, put).await else {
                    break;
                };
                match put {
                    Ok(Ok(_)) => {
                        last_beat = Some(now);
                        members.insert(self.member.clone(), me_view);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "membership heartbeat");
                        resync_at = Some(Instant::now());
                    }
                    Err(_) => {
                        tracing::warn!("membership heartbeat: no answer");
                        resync_at = Some(Instant::now());
                    }
                }
            }
            // Renew what is held, all at once: one slow answer delays no other lease.
            // A lease not renewed in time is lost by its watchdog, not here.
            let failed = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                failed = self.renew(&mut held, heartbeat) => failed,
            };
            if failed {
                resync_at = Some(Instant::now());
            }
            // Lost partitions are over for this pod; the consuming side stops them. Its
            // own lease is no longer taken for granted: a claim (create-if-absent) finds
            // out whether the key expired or another pod holds it.
            for (p, h) in &held {
                if h.own.is_lost() && !h.releasing && owners.get(p) == Some(&self.member) {
                    owners.remove(p);
                }
            }
            held.retain(|_, h| !h.own.is_lost() || h.releasing);
            // A change of the partition count: when every member wants the same other
            // count, every pod gives all its partitions up; once no lease is left, one pod
            // lays the consumers out again and every pod runs with the new count.
            let target = switch_target(&members, self.runs);
            if synced && phase == Phase::Steady {
                if let Some(to) = target {
                    tracing::info!(lane = %self.lane, from = self.runs, to, "every pod of the lane wants another partition count; handing every partition over to change it");
                    phase = Phase::Switching { to };
                } else if let Some((runs, check)) =
                    layout_check.take_if(|(_, check)| check.is_finished())
                {
                    // A check started before a change of the count says nothing of it.
                    if let Ok(Ok(layout)) = check.await
                        && runs == self.runs
                        && layout != Layout::Complete(self.runs)
                    {
                        tracing::warn!(lane = %self.lane, runs = self.runs, ?layout, "the lane's consumers were laid out again; handing every partition over");
                        phase = Phase::Switching { to: wants };
                    }
                } else if layout_check.is_none() && (laying_out || now >= check_layout_at) {
                    // Another pod is laying the consumers out, or a slow check that they
                    // are still the ones this pod runs with. Listing the consumers waits
                    // on every one's Raft group: it runs beside the loop, which keeps
                    // renewing the leases meanwhile.
                    check_layout_at = now + RESYNC;
                    let (stream, lane) =
                        (self.consumers.stream.clone(), self.consumers.lane.clone());
                    layout_check = Some((
                        self.runs,
                        tokio::spawn(
                            async move { super::lane::layout_in_force(&stream, &lane).await },
                        ),
                    ));
                }
            }
            if let Phase::Switching { to } = phase {
                for (p, h) in held.iter_mut() {
                    if h.releasing || h.own.is_lost() {
                        continue;
                    }
                    let until = tokio::time::Instant::now() + finish_within;
                    let (event, handover) = self.release(*p, h, until);
                    if events.send(event).await.is_err() {
                        return;
                    }
                    handovers.spawn(handover);
                }
                // A pod that holds nothing follows a layout another pod made; the layout
                // is made only once no lease of the old count is left.
                if held.is_empty() && synced {
                    let me_view = MemberView {
                        runs: self.runs,
                        wants,
                        plans,
                    };
                    // Not while a pod lays the consumers out: listing them as they are
                    // made waits for their Raft groups. Its member key says when it is done.
                    let look = now >= look_at && !laying_out;
                    if look {
                        look_at = now + Duration::from_secs(2);
                    }
                    let step = SwitchStep {
                        to,
                        wanted: target == Some(to),
                        no_lease: owners.is_empty(),
                        done_by_peer: members.values().any(|m| m.runs == to),
                        look,
                        me: me_view,
                    };
                    let step = tokio::select! {
                        biased;
                        () = stop.cancelled() => break,
                        step = self.switch_step(step) => step,
                    };
                    if let Some((n, consumers)) = step {
                        tracing::info!(lane = %self.lane, from = self.runs, partitions = n, "the lane runs with a new partition count");
                        self.runs = n;
                        phase = Phase::Steady;
                        check_layout_at = Instant::now() + RESYNC;
                        // Members learn the count this pod runs with at once.
                        last_beat = None;
                        if events.send(GroupEvent::Layout(n, consumers)).await.is_err() {
                            return;
                        }
                    }
                }
                if phase != Phase::Steady {
                    super::metrics::partitions_owned(&self.lane, 0);
                    // The consumers are being laid out again: no backlog to read.
                    self.consumers.backlog.set_planner(false);
                    continue;
                }
            }
            let list: Vec<String> = members.keys().cloned().collect();
            let me = list.iter().position(|m| *m == self.member);
            // The lane's plan while every member follows plans and it is for these
            // members and this count; hashing otherwise.
            let planned = plans && members.values().all(|m| m.plans);
            let assignment: Vec<Option<usize>> = match &plan {
                Some(pl) if planned && pl.applies(self.runs, &list) => {
                    pl.owners.iter().map(|i| Some(*i)).collect()
                }
                _ => assign(self.runs, &list),
            };
            let mut claims = Vec::new();
            for p in 0..self.runs {
                let mine = me.is_some() && assignment[usize::from(p)] == me;
                match held.get_mut(&p) {
                    Some(h) if !mine && !h.releasing => {
                        let until = tokio::time::Instant::now() + finish_within;
                        let (event, handover) = self.release(p, h, until);
                        if events.send(event).await.is_err() {
                            return;
                        }
                        handovers.spawn(handover);
                    }
                    None if mine && !owners.contains_key(&p) && synced && !laying_out => {
                        claims.push(p)
                    }
                    _ => {}
                }
            }
            // Free partitions are claimed all at once: a handover waits for the slowest.
            let me_ = &self;
            let claiming = futures::future::join_all(claims.into_iter().map(|p| async move {
                let sent = Instant::now();
                let key = me_.owner_key(Partition(p));
                let rev = me_.kv.create(&key, me_.member.clone().into()).await;
                let epoch = match &rev {
                    Ok(rev) => Some(me_.epoch_of(&key, *rev).await),
                    Err(_) => None,
                };
                (p, sent, rev, epoch)
            }));
            let Some(claimed) = self.renewing(&mut held, &stop, claiming).await else {
                break;
            };
            for (p, sent, rev, epoch) in claimed {
                let (Ok(rev), Some(epoch)) = (rev, epoch) else {
                    continue;
                };
                let own = Arc::new(Ownership::new(Partition(p), self.runs, epoch, sent, ttl));
                tokio::spawn(Arc::clone(&own).watchdog(self.lane.clone()));
                owners.insert(p, self.member.clone());
                held.insert(
                    p,
                    Held {
                        own: Arc::clone(&own),
                        revision: Arc::new(AtomicU64::new(rev)),
                        renewed: sent,
                        releasing: false,
                        gone: Arc::new(AtomicBool::new(false)),
                    },
                );
                if events.send(GroupEvent::Acquired(own)).await.is_err() {
                    return;
                }
            }
            // The first member plans the lane from its partitions' backlogs.
            let planner = planned
                && synced
                && !laying_out
                && list.len() > 1
                && list.first() == Some(&self.member);
            self.consumers.backlog.set_planner(planner);
            if !planner {
                planning.settled_since = None;
            } else {
                let step = self.plan_step(
                    &list,
                    &assignment,
                    &owners,
                    &mut planning,
                    &mut plan,
                    heartbeat,
                );
                let Some(made) = self.renewing(&mut held, &stop, step).await else {
                    break;
                };
                if !made {
                    resync_at = Some(Instant::now());
                }
            }
            super::metrics::partitions_owned(
                &self.lane,
                held.values().filter(|h| !h.releasing).count(),
            );
        }
        // Leave: the others rebalance now rather than after the TTL.
        let drain_until =
            (*deadline.borrow()).unwrap_or_else(|| tokio::time::Instant::now() + finish_within);
        match tokio::time::timeout(heartbeat, self.kv.delete(self.member_key(&self.member))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "leaving the group"),
            Err(_) => tracing::warn!("leaving the group: no answer"),
        }
        // The handovers end a second before the drain's deadline, so that the last
        // lease deletions and acknowledgements still go out.
        let handovers_until = drain_until
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(drain_until);
        for (p, h) in held.iter_mut() {
            if h.releasing || h.own.is_lost() {
                continue;
            }
            let (event, handover) = self.release(*p, h, handovers_until);
            if events.send(event).await.is_ok() {
                handovers.spawn(handover);
            }
        }
        // Keep the leases alive while the handovers finish.
        loop {
            tokio::select! {
                done = handovers.join_next() => match done {
                    Some(Ok(p)) => { held.remove(&p); }
                    Some(Err(_)) => {}
                    None => break,
                },
                () = tokio::time::sleep(heartbeat) => {
                    self.renew(&mut held, heartbeat).await;
                }
                () = tokio::time::sleep_until(drain_until) => break,
            }
        }
    }

    /// One step of the planner: a new plan when every partition is where the current
    /// assignment puts it and a backlog read since then shows a pod far from the mean;
    /// the plan put again before it could expire. False when a write failed.
    async fn plan_step(
        &self,
        list: &[String],
        assignment: &[Option<usize>],
        owners: &BTreeMap<u16, String>,
        planning: &mut Planning,
        plan: &mut Option<Plan>,
        heartbeat: Duration,
    ) -> bool {
        let now = Instant::now();
        if !super::balance::settled(assignment, list, owners) {
            planning.settled_since = None;
        } else {
            let since = *planning.settled_since.get_or_insert(now);
            let spaced = planning
                .made_at
                .is_none_or(|at| now.duration_since(at) >= super::balance::SPACING);
            let reading = self.consumers.backlog.last().filter(|r| {
                spaced
                    && r.at >= since + super::balance::SETTLED_FOR
                    && r.loads.len() == usize::from(self.runs)
            });
            let current: Vec<usize> = assignment.iter().map(|o| o.unwrap_or(0)).collect();
            if let Some(r) = reading
                && let Some(next) = super::balance::rebalance(
                    &current,
                    &r.loads,
                    list.len(),
                    self.settings.balance_slack,
                )
            {
                let moves = next.iter().zip(&current).filter(|(a, b)| a != b).count();
                let next = Plan {
                    partitions: self.runs,
                    members: list.to_vec(),
                    owners: next,
                };
                let put = self.kv.put(self.plan_key(), Bytes::from(next.value()));
                match tokio::time::timeout(heartbeat, put).await {
                    Ok(Ok(_)) => {
                        let pods = |a: &[usize]| {
                            let mut pods = vec![0u64; list.len()];
                            for (o, l) in a.iter().zip(&r.loads) {
                                pods[*o] += l;
                            }
                            pods
                        };
                        tracing::info!(
                            lane = %self.lane,
                            moves,
                            backlog_before = ?pods(&current),
                            backlog_after = ?pods(&next.owners),
                            "moving partitions from the busiest pods to the least busy"
                        );
                        super::metrics::backlog_plan(&self.lane, moves);
                        *plan = Some(next);
                        planning.put_at = Some(now);
                        planning.made_at = Some(now);
                        planning.settled_since = None;
                        return true;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "putting the lane's plan");
                        return false;
                    }
                    Err(_) => {
                        tracing::warn!("putting the lane's plan: no answer");
                        return false;
                    }
                }
            }
        }
        // The plan in force lives as long as its planner: put again before it expires.
        if let Some(pl) = plan.as_ref().filter(|pl| pl.applies(self.runs, list))
            && planning
                .put_at
                .is_none_or(|at| now.duration_since(at) >= heartbeat)
        {
            let put = self.kv.put(self.plan_key(), Bytes::from(pl.value()));
            match tokio::time::timeout(heartbeat, put).await {
                Ok(Ok(_)) => planning.put_at = Some(now),
                _ => {
                    tracing::warn!("putting the lane's plan again: no answer");
                    return false;
                }
            }
        }
        true
    }

    /// Runs `work` (a read or write of the bucket) while renewing the leases held, so
    /// that a slow answer from a busy cluster does not cost this pod its partitions.
    /// `None` when `stop` resolved first.
    async fn renewing<T>(
        &self,
        held: &mut BTreeMap<u16, Held>,
        stop: &tokio_util::sync::CancellationToken,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let heartbeat = self.settings.lease_ttl / 3;
        tokio::pin!(work);
        loop {
            // Beside the work, not before it: a renewal under way when the work is done
            // is dropped (its revision is read again on the next renewal).
            let renewal = async {
                tokio::time::sleep(heartbeat / 2).await;
                self.renew(held, heartbeat).await;
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => return None,
                out = &mut work => return Some(out),
                _ = renewal => {}
            }
        }
    }

    /// Renews every held lease that is due, concurrently, each bounded by `limit`.
    /// Returns true when a write failed (the view is then read again).
    async fn renew(&self, held: &mut BTreeMap<u16, Held>, limit: Duration) -> bool {
        let ttl = self.settings.lease_ttl;
        let heartbeat = ttl / 3;
        let now = Instant::now();
        let due: Vec<(u16, Arc<Ownership>, Arc<AtomicU64>)> = held
            .iter()
            .filter(|(_, h)| {
                !h.own.is_lost()
                    && !h.gone.load(Ordering::Acquire)
                    && now.duration_since(h.renewed) >= heartbeat
            })
            .map(|(p, h)| (*p, Arc::clone(&h.own), Arc::clone(&h.revision)))
            .collect();
        let results = futures::future::join_all(due.into_iter().map(|(p, own, revision)| {
            let key = self.owner_key(Partition(p));
            async move {
                // The deadline counts from before the write: the server's expiry runs
                // from when it applied it, which is later.
                let sent = Instant::now();
                let rev = revision.load(Ordering::Acquire);
                let result = tokio::time::timeout(
                    limit,
                    self.kv.update(&key, self.member.clone().into(), rev),
                )
                .await;
                let outcome = match result {
                    Ok(Ok(new)) => {
                        revision.store(new, Ordering::Release);
                        own.renewed(sent, ttl);
                        Renewal::Renewed
                    }
                    Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        // A renewal applied whose answer was lost looks the same as a
                        // takeover: the key says which.
                        match self.kv.entry(&key).await {
                            Ok(Some(entry))
                                if entry.operation == kv::Operation::Put
                                    && entry.value[..] == *self.member.as_bytes() =>
                            {
                                revision.store(entry.revision, Ordering::Release);
                                Renewal::Retry
                            }
                            Ok(_) => Renewal::Taken,
                            Err(_) => Renewal::Failed,
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, partition = %Partition(p), "renewing the partition lease");
                        Renewal::Failed
                    }
                    Err(_) => {
                        tracing::warn!(partition = %Partition(p), "renewing the partition lease: no answer");
                        Renewal::Failed
                    }
                };
                (p, sent, outcome)
            }
        }))
        .await;
        let mut failed = false;
        for (p, sent, outcome) in results {
            let Some(h) = held.get_mut(&p) else { continue };
            match outcome {
                Renewal::Renewed => h.renewed = sent,
                // Asked again at the next tick with the revision the key has.
                Renewal::Retry => {}
                Renewal::Taken => {
                    tracing::warn!(partition = %Partition(p), "partition lease taken over; stopping it");
                    h.own.lose();
                    super::metrics::partition_lost(&self.lane);
                }
                Renewal::Failed => failed = true,
            }
        }
        failed
    }

    /// The epoch of a lease created at `revision`: its creation time at the server, in
    /// microseconds. Read back from the bucket; this pod's clock if that read fails.
    async fn epoch_of(&self, key: &str, revision: u64) -> u64 {
        // A read may reach a replica that has not applied the write yet: asked again.
        let mut read = None;
        for attempt in 0..4u32 {
            if let Ok(Some(entry)) = self.kv.entry_for_revision(key, revision).await {
                read = Some(entry);
                break;
            }
            tokio::time::sleep(Duration::from_millis(25 << attempt)).await;
        }
        let created = match read {
            Some(entry) => entry.created.unix_timestamp_nanos() / 1000,
            None => {
                tracing::warn!(
                    key,
                    "cannot read the lease back; its epoch is this pod's clock"
                );
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as i128)
            }
        };
        u64::try_from(created).unwrap_or(0)
    }

    /// Starts giving `h` up: the event that tells the consuming side to stop the
    /// partition, and the handover that deletes the lease once it has (or once `until`
    /// passed and the partition's dispatches were cancelled).
    fn release(
        &self,
        p: u16,
        h: &mut Held,
        until: tokio::time::Instant,
    ) -> (
        GroupEvent,
        impl std::future::Future<Output = u16> + Send + 'static,
    ) {
        h.releasing = true;
        h.own.release.cancel();
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            GroupEvent::Release(Arc::clone(&h.own), Released(tx)),
            self.handover(p, rx, until, h),
        )
    }

    /// Waits for the consuming side to finish the partition, then deletes the lease.
    fn handover(
        &self,
        p: u16,
        finished: tokio::sync::oneshot::Receiver<()>,
        until: tokio::time::Instant,
        h: &Held,
    ) -> impl std::future::Future<Output = u16> + Send + 'static {
        let kv = self.kv.clone();
        let lane = self.lane.clone();
        let member = self.member.clone();
        let key = self.owner_key(Partition(p));
        let (own, gone, revision) = (
            Arc::clone(&h.own),
            Arc::clone(&h.gone),
            Arc::clone(&h.revision),
        );
        async move {
            let started = Instant::now();
            tokio::pin!(finished);
            if tokio::time::timeout_at(until, &mut finished).await.is_err() {
                // Still running past its bound: cancelled, so that the next owner never
                // runs the partition at the same time.
                tracing::warn!(partition = %Partition(p), "dispatches still running at the handover's deadline; cancelling them");
                own.lose();
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut finished).await;
            }
            // Renewals stop; the lease is deleted only at the revision this pod wrote
            // last, never someone else's.
            gone.store(true, Ordering::Release);
            let mut rev = revision.load(Ordering::Acquire);
            // Bounded: with NATS gone, the lease simply expires after its TTL.
            let delete = async {
                for _ in 0..3 {
                    match kv.delete_expect_revision(&key, Some(rev)).await {
                        Ok(()) => break,
                        Err(e) => match kv.entry(&key).await {
                            Ok(Some(entry))
                                if entry.operation == kv::Operation::Put
                                    && entry.value[..] == *member.as_bytes() =>
                            {
                                rev = entry.revision;
                            }
                            _ => {
                                tracing::debug!(error = %e, partition = %Partition(p), "the lease is no longer this pod's");
                                break;
                            }
                        },
                    }
                }
            };
            let limit = (tokio::time::Instant::now() + Duration::from_secs(3))
                .min(until + Duration::from_secs(1));
            if tokio::time::timeout_at(limit, delete).await.is_err() {
                tracing::warn!(partition = %Partition(p), "deleting the partition lease: no answer; it expires after its TTL");
            }
            own.alive.store(false, Ordering::Release);
            own.ended.cancel();
            super::metrics::handover(&lane, started.elapsed());
            tracing::info!(partition = %Partition(p), took = ?started.elapsed(), "partition handed over");
            p
        }
    }
}

/// The group's keys as read from the bucket, and the watch that follows them.
struct View {
    watch: kv::Watch,
    members: BTreeMap<String, MemberView>,
    owners: BTreeMap<u16, String>,
    /// A pod holds the layout key: it is changing the lane's partition count.
    laying_out: bool,
    /// The lane's plan, if one is in the bucket.
    plan: Option<Plan>,
}

/// What the planner of a lane keeps between its steps.
#[derive(Debug, Default)]
struct Planning {
    /// Since when every partition has been held where the assignment puts it.
    settled_since: Option<Instant>,
    /// When the plan was last put into the bucket.
    put_at: Option<Instant>,
    /// When this pod last made a plan.
    made_at: Option<Instant>,
}

/// What one lease renewal found.
enum Renewal {
    Renewed,
    /// The lease is this pod's at a newer revision (an answer was lost): renew again.
    Retry,
    /// Another pod holds it.
    Taken,
    /// No answer or an error: the lease may still be this pod's until its deadline.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read of the bucket that a busy cluster answered late stopped the renewals:
    /// the pod lost every partition it held, and reran their updates in flight.
    #[tokio::test]
    async fn a_slow_read_of_the_ownership_bucket_does_not_cost_the_pod_its_leases() {
        let nats = tgpipe_testkit::NatsServer::start();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        let stream = js
            .create_stream(jetstream::stream::Config {
                name: "TG_UPDATES".into(),
                subjects: vec!["tg.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let settings = GroupSettings {
            bucket: "tgpipe_groups".into(),
            lease_ttl: Duration::from_secs(2),
            replicas: 1,
            partitions: 4,
            balance: false,
            balance_slack: 4,
        };
        let kv = bucket(&js, &settings).await.unwrap();
        let consumers = Consumers {
            stream,
            lane: Lane::new("default", None).unwrap(),
            settings: ConsumerSettings {
                shards: 64,
                partitions: 4,
                max_ack_pending: 1000,
                ack_wait: Duration::from_secs(30),
                pin_timeout: Duration::from_secs(30),
            },
            backlog: Arc::new(Backlog::new(4)),
        };
        let group = Group::new(kv, js, "TG_UPDATES", consumers, 4, "a-1".into(), settings);
        let key = group.owner_key(Partition(0));
        let rev = group.kv.create(&key, "a-1".into()).await.unwrap();
        let own = Arc::new(Ownership::new(
            Partition(0),
            4,
            1,
            Instant::now(),
            group.settings.lease_ttl,
        ));
        tokio::spawn(Arc::clone(&own).watchdog("default".into()));
        let mut held = BTreeMap::from([(
            0,
            Held {
                own: Arc::clone(&own),
                revision: Arc::new(AtomicU64::new(rev)),
                renewed: Instant::now(),
                releasing: false,
                gone: Arc::new(AtomicBool::new(false)),
            },
        )]);
        // A read that takes twice the lease's TTL.
        let slow = tokio::time::sleep(group.settings.lease_ttl * 2);
        let stop = tokio_util::sync::CancellationToken::new();
        assert_eq!(group.renewing(&mut held, &stop, slow).await, Some(()));
        assert!(
            !own.is_lost(),
            "the lease expired while the bucket was read"
        );
        let entry = group.kv.entry(&key).await.unwrap().unwrap();
        assert_eq!(entry.operation, kv::Operation::Put);
        assert!(entry.revision > rev, "renewed meanwhile");
    }

    fn members(n: usize) -> Vec<String> {
        let mut m: Vec<String> = (0..n).map(|i| format!("worker-{i}-abcdef{i:02}")).collect();
        m.sort();
        m
    }

    #[test]
    fn assignment_is_balanced() {
        for n in 1..=7 {
            let a = assign(16, &members(n));
            let mut load = vec![0; n];
            for owner in &a {
                load[owner.unwrap()] += 1;
            }
            let (lo, hi) = (16 / n, 16usize.div_ceil(n));
            assert!(
                load.iter().all(|l| (lo..=hi).contains(l)),
                "{n} members: {load:?}"
            );
            assert_eq!(load.iter().sum::<usize>(), 16);
        }
        assert_eq!(assign(4, &[]), vec![None; 4]);
    }

    #[test]
    fn a_join_moves_few_partitions() {
        let three = members(3);
        let mut four = three.clone();
        four.push("worker-9-new".into());
        four.sort();
        let a = assign(16, &three);
        let b = assign(16, &four);
        let moved = (0..16)
            .filter(|&p| three[a[p].unwrap()] != four[b[p].unwrap()])
            .count();
        // A perfect move is 4 (16/4); round-robin would move 12.
        assert!(moved <= 8, "moved {moved}");
    }

    #[test]
    fn member_keys_say_the_count_run_the_count_wanted_and_whether_plans_are_followed() {
        let same = MemberView {
            runs: 16,
            wants: 16,
            plans: false,
        };
        assert_eq!(
            same.value(),
            "partitions=16",
            "as before counts could change"
        );
        let moving = MemberView {
            runs: 16,
            wants: 64,
            plans: true,
        };
        assert_eq!(moving.value(), "partitions=16 want=64 balance=backlog");
        assert_eq!(MemberView::parse(moving.value().as_bytes()), moving);
        assert_eq!(MemberView::parse(b"partitions=16"), same);
        assert!(!MemberView::parse(b"partitions=16 balance=count").plans);
        assert_eq!(
            MemberView::parse(b"\xff junk"),
            MemberView {
                runs: 0,
                wants: 0,
                plans: false
            }
        );
    }

    #[test]
    fn the_count_changes_only_when_every_member_wants_the_same_other_one() {
        let view = |pairs: &[(u16, u16)]| -> BTreeMap<String, MemberView> {
            pairs
                .iter()
                .enumerate()
                .map(|(i, (runs, wants))| {
                    (
                        format!("m{i}"),
                        MemberView {
                            runs: *runs,
                            wants: *wants,
                            plans: true,
                        },
                    )
                })
                .collect()
        };
        assert_eq!(switch_target(&view(&[(16, 64), (16, 64)]), 16), Some(64));
        // An older pod (or one set to the old count) keeps the lane where it is.
        assert_eq!(switch_target(&view(&[(16, 64), (16, 16)]), 16), None);
        // Two new counts asked for: none wins.
        assert_eq!(switch_target(&view(&[(16, 64), (16, 32)]), 16), None);
        assert_eq!(switch_target(&view(&[(64, 64), (16, 64)]), 64), None);
        // A member whose key says nothing readable blocks a change.
        assert_eq!(switch_target(&view(&[(16, 64), (0, 0)]), 16), None);
        assert_eq!(switch_target(&BTreeMap::new(), 16), None);
    }

    #[test]
    fn member_ids_are_key_safe_and_unique() {
        let a = member_id("tgpipe-worker-7d9f/x.y");
        let b = member_id("tgpipe-worker-7d9f/x.y");
        assert_ne!(a, b);
        assert!(a.starts_with("tgpipe-worker-7d9f-x-y-"));
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert!(member_id("").starts_with("worker-"));
    }
}
