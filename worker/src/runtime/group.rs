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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;

use super::lane::{Lane, Partition};

/// How often the ownership view is read from the bucket again, besides the watch.
const RESYNC: Duration = Duration::from_secs(30);

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
    /// Partitions of the lane.
    pub partitions: u16,
}

/// Why the group could not be joined.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the ownership bucket `{bucket}`: {message}")]
pub(super) struct GroupError {
    bucket: String,
    message: String,
}

/// Opens the group's KV bucket, creating it when missing.
pub(super) async fn bucket(
    js: &jetstream::Context,
    settings: &GroupSettings,
) -> Result<kv::Store, GroupError> {
    let err = |e: &dyn std::fmt::Display| GroupError {
        bucket: settings.bucket.clone(),
        message: e.to_string(),
    };
    match js.get_key_value(&settings.bucket).await {
        Ok(store) => Ok(store),
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
            .map_err(|e| err(&e)),
    }
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

/// One held partition: its epoch, and the flag that fences this pod once it is lost.
#[derive(Debug)]
pub(super) struct Ownership {
    /// The partition.
    pub partition: Partition,
    /// The lease's revision at creation: larger for every later owner.
    pub epoch: u64,
    lost: AtomicBool,
    release: tokio_util::sync::CancellationToken,
}

impl Ownership {
    /// Whether the partition was lost (lease expired or taken): nothing of it may start.
    pub(super) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Whether this pod is giving the partition up (handover or shutdown).
    pub(super) fn is_released(&self) -> bool {
        self.release.is_cancelled()
    }

    /// Resolves when the partition is lost or being given up.
    pub(super) async fn released(&self) {
        self.release.cancelled().await;
    }

    /// A stand-alone ownership (tests and embedding).
    pub(super) fn new(partition: Partition, epoch: u64) -> Ownership {
        Ownership {
            partition,
            epoch,
            lost: AtomicBool::new(false),
            release: tokio_util::sync::CancellationToken::new(),
        }
    }

    fn lose(&self) {
        self.lost.store(true, Ordering::Release);
        self.release.cancel();
    }
}

/// What the group tells the consuming side.
pub(super) enum GroupEvent {
    /// This pod now owns the partition: start consuming it.
    Acquired(Arc<Ownership>),
    /// This pod must give the partition up: stop, finish, then call
    /// [`Released::done`].
    Release(Arc<Ownership>, Released),
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
    revision: u64,
    renewed: Instant,
    releasing: bool,
    /// Set by the handover just before it deletes the lease: renewals stop.
    gone: Arc<AtomicBool>,
}

/// This pod's membership of a lane's group.
pub(super) struct Group {
    kv: kv::Store,
    lane: String,
    prefix: String,
    member: String,
    settings: GroupSettings,
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
        stream: &str,
        lane: &Lane,
        member: String,
        settings: GroupSettings,
    ) -> Group {
        let stream: String = key_safe(stream, '_').collect();
        Group {
            kv,
            lane: lane.name().to_owned(),
            prefix: format!("{stream}.{}", lane.name()),
            member,
            settings,
        }
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
    ) -> Result<(kv::Watch, BTreeSet<String>, BTreeMap<u16, String>), String> {
        let read = async {
            let watch = self
                .kv
                .watch(format!("{}.>", self.prefix))
                .await
                .map_err(|e| e.to_string())?;
            let mut keys = self.kv.keys().await.map_err(|e| e.to_string())?;
            let (mut members, mut owners) = (BTreeSet::new(), BTreeMap::new());
            while let Some(key) = keys.next().await {
                let key = key.map_err(|e| e.to_string())?;
                if let Some(m) = key.strip_prefix(members_prefix) {
                    members.insert(m.to_owned());
                } else if let Some(p) = key
                    .strip_prefix(owners_prefix)
                    .and_then(|p| p.parse::<u16>().ok())
                    && let Some(holder) = self.kv.get(&key).await.map_err(|e| e.to_string())?
                {
                    owners.insert(p, String::from_utf8_lossy(&holder).into_owned());
                }
            }
            Ok((watch, members, owners))
        };
        tokio::time::timeout(limit, read)
            .await
            .map_err(|_| format!("no answer within {limit:?}"))?
    }

    /// Runs the membership until `stop` resolves, sending acquisitions and releases to
    /// `events`. On `stop` it leaves the group (its key deleted at once, so the others
    /// rebalance without waiting for the TTL), releases every partition through
    /// `events`, waits for each handover to finish (bounded by `grace`), and returns.
    pub(super) async fn run(
        self,
        events: tokio::sync::mpsc::Sender<GroupEvent>,
        stop: tokio_util::sync::CancellationToken,
        grace: Duration,
    ) {
        let ttl = self.settings.lease_ttl;
        let heartbeat = ttl / 3;
        let members_prefix = format!("{}.members.", self.prefix);
        let owners_prefix = format!("{}.owners.", self.prefix);
        let mut members: BTreeSet<String> = BTreeSet::new();
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
                match self.resync(&members_prefix, &owners_prefix, ttl).await {
                    Ok((w, m, o)) => {
                        watch = Some(w);
                        (members, owners) = (m, o);
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
                        let mut apply = |entry: kv::Entry| {
                            let live = entry.operation == kv::Operation::Put;
                            if let Some(m) = entry.key.strip_prefix(&members_prefix) {
                                if live {
                                    members.insert(m.to_owned());
                                } else {
                                    members.remove(m);
                                }
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
                Some(done) = handovers.join_next(), if !handovers.is_empty() => {
                    if let Ok(p) = done { held.remove(&p); }
                }
            }
            let now = Instant::now();
            synced |= now.duration_since(started) >= ttl;
            // Heartbeat.
            if last_beat.is_none_or(|b| now.duration_since(b) >= heartbeat) {
                match self
                    .kv
                    .put(self.member_key(&self.member), Bytes::from_static(b"live"))
                    .await
                {
                    Ok(_) => {
                        last_beat = Some(now);
                        members.insert(self.member.clone());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "membership heartbeat");
                        resync_at = Some(Instant::now());
                    }
                }
            }
            // Renew what is held; a lease not renewed within the TTL is lost.
            for (p, h) in held.iter_mut() {
                if h.own.is_lost() || h.gone.load(Ordering::Acquire) {
                    continue;
                }
                if now.duration_since(h.renewed) >= heartbeat {
                    match self
                        .kv
                        .update(
                            self.owner_key(Partition(*p)),
                            self.member.clone().into(),
                            h.revision,
                        )
                        .await
                    {
                        Ok(rev) => {
                            h.revision = rev;
                            h.renewed = Instant::now();
                        }
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            tracing::warn!(partition = %Partition(*p), "partition lease taken over; stopping it");
                            h.own.lose();
                            super::metrics::partition_lost(&self.lane);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, partition = %Partition(*p), "renewing the partition lease");
                            resync_at = Some(Instant::now());
                        }
                    }
                }
                // Half a second of margin for clocks and the server's expiry timer.
                if Instant::now().duration_since(h.renewed) + Duration::from_millis(500) >= ttl {
                    tracing::warn!(partition = %Partition(*p), "partition lease not renewed in time; stopping it");
                    h.own.lose();
                    super::metrics::partition_lost(&self.lane);
                }
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
            let list: Vec<String> = members.iter().cloned().collect();
            let me = list.iter().position(|m| *m == self.member);
            let assignment = assign(self.settings.partitions, &list);
            let mut claims = Vec::new();
            for p in 0..self.settings.partitions {
                let mine = me.is_some() && assignment[usize::from(p)] == me;
                match held.get_mut(&p) {
                    Some(h) if !mine && !h.releasing => {
                        let (event, handover) = self.release(p, h, grace);
                        if events.send(event).await.is_err() {
                            return;
                        }
                        handovers.spawn(handover);
                    }
                    None if mine && !owners.contains_key(&p) && synced => claims.push(p),
                    _ => {}
                }
            }
            // Free partitions are claimed all at once: a handover waits for the slowest.
            let me_ = &self;
            let claimed = futures::future::join_all(claims.into_iter().map(|p| async move {
                let rev = me_
                    .kv
                    .create(me_.owner_key(Partition(p)), me_.member.clone().into())
                    .await;
                (p, rev)
            }))
            .await;
            for (p, rev) in claimed {
                let Ok(rev) = rev else { continue };
                let own = Arc::new(Ownership::new(Partition(p), rev));
                owners.insert(p, self.member.clone());
                held.insert(
                    p,
                    Held {
                        own: Arc::clone(&own),
                        revision: rev,
                        renewed: Instant::now(),
                        releasing: false,
                        gone: Arc::new(AtomicBool::new(false)),
                    },
                );
                if events.send(GroupEvent::Acquired(own)).await.is_err() {
                    return;
                }
            }
            super::metrics::partitions_owned(
                &self.lane,
                held.values().filter(|h| !h.releasing).count(),
            );
        }
        // Leave: the others rebalance now rather than after the TTL.
        if let Err(e) = self.kv.delete(self.member_key(&self.member)).await {
            tracing::warn!(error = %e, "leaving the group");
        }
        for (p, h) in held.iter_mut() {
            if h.releasing || h.own.is_lost() {
                continue;
            }
            let (event, handover) = self.release(*p, h, grace);
            if events.send(event).await.is_ok() {
                handovers.spawn(handover);
            }
        }
        // Keep the leases alive while the handovers finish.
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(3);
        loop {
            tokio::select! {
                done = handovers.join_next() => match done {
                    Some(Ok(p)) => { held.remove(&p); }
                    Some(Err(_)) => {}
                    None => break,
                },
                () = tokio::time::sleep(heartbeat) => {
                    for (p, h) in held.iter_mut() {
                        if h.gone.load(Ordering::Acquire) {
                            continue;
                        }
                        if let Ok(rev) = self.kv.update(self.owner_key(Partition(*p)), self.member.clone().into(), h.revision).await {
                            h.revision = rev;
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }

    /// Starts giving `h` up: the event that tells the consuming side to stop the
    /// partition, and the handover that deletes the lease once it has.
    fn release(
        &self,
        p: u16,
        h: &mut Held,
        grace: Duration,
    ) -> (
        GroupEvent,
        impl std::future::Future<Output = u16> + Send + 'static,
    ) {
        h.releasing = true;
        h.own.release.cancel();
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            GroupEvent::Release(Arc::clone(&h.own), Released(tx)),
            self.handover(p, rx, grace, Arc::clone(&h.gone)),
        )
    }

    /// Waits for the consuming side to finish the partition, then deletes the lease.
    fn handover(
        &self,
        p: u16,
        finished: tokio::sync::oneshot::Receiver<()>,
        grace: Duration,
        gone: Arc<AtomicBool>,
    ) -> impl std::future::Future<Output = u16> + Send + 'static {
        let kv = self.kv.clone();
        let lane = self.lane.clone();
        let key = self.owner_key(Partition(p));
        async move {
            let started = Instant::now();
            let _ = tokio::time::timeout(grace + Duration::from_secs(3), finished).await;
            // Whatever revision it has now: it is ours until deleted (the renewals go on
            // in the loop meanwhile).
            gone.store(true, Ordering::Release);
            if let Err(e) = kv.delete(&key).await {
                tracing::warn!(error = %e, partition = %Partition(p), "deleting the partition lease");
            }
            super::metrics::handover(&lane, started.elapsed());
            tracing::info!(partition = %Partition(p), took = ?started.elapsed(), "partition handed over");
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
