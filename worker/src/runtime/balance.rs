//! Balancing a lane by its backlog: which pod owns which partition when the partitions'
//! work is uneven.
//!
//! Rendezvous hashing gives every pod the same number of partitions, but chats hash
//! unevenly: 300 chats over 5 pods put 61 on a pod on average, and about 7 more or fewer
//! by chance. Where a lane waits on the Bot API, the busiest pod sets the lane's pace.
//!
//! So one pod of the lane, its **planner** (the first member in sorted order), reads
//! every partition's backlog from its consumer: updates not yet delivered plus updates
//! delivered and not yet acknowledged. When a pod's backlog is further from the mean
//! than a pod's run slots and 2% of the mean, it moves partitions from the busiest pod
//! to the least busy one, and puts the result into the group's bucket as the lane's
//! **plan** (`<stream>.<lane>.plan`).
//!
//! Every pod follows the plan while it names exactly the live members and the partition
//! count in force, and every member says it follows plans (`balance=load` in its member
//! key). Otherwise each pod falls back to rendezvous hashing, which needs no plan.
//!
//! Hysteresis keeps partitions from flapping: the planner plans again only once every
//! partition is owned where the last plan put it, only from backlogs read
//! [`SETTLED_FOR`] after that, and not within [`SPACING`] of its last plan. A move must take a real amount of work
//! off the busiest pod.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Pods within this share of the mean backlog (in percent) are left alone, and within
/// the slack the planner is given (a pod's run slots: updates running are not waiting).
const TOLERANCE_PERCENT: u64 = 2;

/// A plan follows the last one after this long at the earliest, so that a lane under
/// lasting overload does not move partitions all the time.
pub(super) const SPACING: Duration = Duration::from_secs(2);

/// A plan is made from a backlog read at least this long after every partition came to
/// be held where the assignment puts it: a handover's replay settles first.
pub(super) const SETTLED_FOR: Duration = Duration::from_secs(1);

/// The lane's backlog by partition, as this pod last read it from the consumers.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    /// Set while this pod plans the lane: every partition is read, not only its own.
    every: AtomicBool,
    last: Mutex<Option<Reading>>,
    /// The planner's slack: a stream holding no more has nothing to balance.
    slack: u64,
}

/// One reading of every partition's backlog.
#[derive(Debug, Clone)]
pub(super) struct Reading {
    /// When the reading started.
    pub at: Instant,
    /// Backlog by partition (undelivered plus unacknowledged).
    pub loads: Vec<u64>,
}

impl Backlog {
    /// The backlogs of a lane whose pods may be `slack` updates apart.
    pub(super) fn new(slack: u64) -> Backlog {
        Backlog {
            slack,
            ..Backlog::default()
        }
    }

    /// Updates a pod may have above or below the mean.
    pub(super) fn slack(&self) -> u64 {
        self.slack
    }

    /// Whether every partition is to be read (this pod plans).
    pub(super) fn every_partition(&self) -> bool {
        self.every.load(Ordering::Acquire)
    }

    /// This pod plans the lane (or no longer does).
    pub(super) fn set_planner(&self, on: bool) {
        self.every.store(on, Ordering::Release);
        if !on {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Records a reading of every partition, started at `at`.
    pub(super) fn record(&self, at: Instant, loads: Vec<u64>) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Reading { at, loads });
    }

    /// The last reading of every partition.
    pub(super) fn last(&self) -> Option<Reading> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Who owns each partition, as the planner put it: valid for one member list and one
/// partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    /// The partition count it is for.
    pub partitions: u16,
    /// The members it is for, sorted.
    pub members: Vec<String>,
    /// The owner of each partition, as an index into `members`.
    pub owners: Vec<usize>,
}

impl Plan {
    /// `partitions=64 members=a,b,c owners=0,2,1,...`; `None` for anything else.
    pub(super) fn parse(value: &[u8]) -> Option<Plan> {
        let text = std::str::from_utf8(value).ok()?;
        let field = |name: &str| text.split_whitespace().find_map(|f| f.strip_prefix(name));
        let partitions: u16 = field("partitions=")?.parse().ok()?;
        let members: Vec<String> = field("members=")?.split(',').map(str::to_owned).collect();
        let owners = field("owners=")?
            .split(',')
            .map(|i| i.parse::<usize>().ok().filter(|i| *i < members.len()))
            .collect::<Option<Vec<usize>>>()?;
        let sorted = members.windows(2).all(|w| w[0] < w[1]);
        (owners.len() == usize::from(partitions) && sorted && members.iter().all(|m| !m.is_empty()))
            .then_some(Plan {
                partitions,
                members,
                owners,
            })
    }

    /// The value put into the bucket.
    pub(super) fn value(&self) -> String {
        let owners: Vec<String> = self.owners.iter().map(usize::to_string).collect();
        format!(
            "partitions={} members={} owners={}",
            self.partitions,
            self.members.join(","),
            owners.join(",")
        )
    }

    /// Whether it is the plan for these members (sorted) and this partition count.
    pub(super) fn applies(&self, partitions: u16, members: &[String]) -> bool {
        self.partitions == partitions && self.members == members
    }
}

/// A better assignment than `current` (owner index by partition, over `members` pods)
/// for these backlogs, or `None` when every pod is close enough to the mean: within
/// `slack` updates or 2% of it, whichever is more.
///
/// Moves one partition at a time from the busiest pod to the least busy one: the
/// partition that evens the two out best. Each move lowers the spread of the pods'
/// backlogs, so the moves end. Partitions without backlog never move.
pub(super) fn rebalance(
    current: &[usize],
    loads: &[u64],
    members: usize,
    slack: u64,
) -> Option<Vec<usize>> {
    if members < 2 || current.len() != loads.len() || current.iter().any(|i| *i >= members) {
        return None;
    }
    let mut pods = vec![0u64; members];
    for (owner, load) in current.iter().zip(loads) {
        pods[*owner] += load;
    }
    let total: u64 = pods.iter().sum();
    let mean = total / members as u64;
    let allowed = slack.max(mean * TOLERANCE_PERCENT / 100);
    let mut plan = current.to_vec();
    let mut moved = false;
    for _ in 0..current.len() {
        let busiest = (0..members).max_by_key(|i| (pods[*i], *i))?;
        let idlest = (0..members).min_by_key(|i| (pods[*i], *i))?;
        if pods[busiest] <= mean + allowed && pods[idlest] + allowed >= mean {
            break;
        }
        let gap = pods[busiest] - pods[idlest];
        // The partition whose move leaves the two closest: the larger of the two after
        // the move is as small as can be, and smaller than the busiest was.
        let best = (0..plan.len())
            .filter(|p| plan[*p] == busiest && loads[*p] > 0 && loads[*p] < gap)
            .max_by_key(|p| (loads[*p].min(gap - loads[*p]), std::cmp::Reverse(*p)));
        let Some(p) = best else { break };
        plan[p] = idlest;
        pods[busiest] -= loads[p];
        pods[idlest] += loads[p];
        moved = true;
    }
    moved.then_some(plan)
}

/// Owner index by partition, from a member list's plan or hashing, against who holds
/// each partition: true when every partition is held by the member it is assigned to.
pub(super) fn settled(
    assignment: &[Option<usize>],
    members: &[String],
    holders: &BTreeMap<u16, String>,
) -> bool {
    assignment.iter().enumerate().all(|(p, owner)| {
        let p = u16::try_from(p).unwrap_or(u16::MAX);
        match owner {
            Some(i) => holders.get(&p) == members.get(*i),
            None => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("worker-{i}-0000000{i}")).collect()
    }

    #[test]
    fn a_plan_reads_back_what_it_wrote() {
        let plan = Plan {
            partitions: 4,
            members: members(2),
            owners: vec![0, 1, 1, 0],
        };
        assert_eq!(
            plan.value(),
            "partitions=4 members=worker-0-00000000,worker-1-00000001 owners=0,1,1,0"
        );
        assert_eq!(Plan::parse(plan.value().as_bytes()), Some(plan.clone()));
        assert!(plan.applies(4, &members(2)));
        assert!(!plan.applies(8, &members(2)), "another partition count");
        assert!(!plan.applies(4, &members(3)), "another member list");
    }

    #[test]
    fn malformed_plans_are_refused() {
        for bad in [
            &b""[..],
            b"\xff\xfe",
            b"partitions=2 members=a,b",
            b"partitions=2 members=a,b owners=0",
            b"partitions=2 members=a,b owners=0,2",
            b"partitions=2 members=a,b owners=0,x",
            b"partitions=2 members=b,a owners=0,1",
            b"partitions=2 members=a,a owners=0,1",
            b"partitions=2 members=a,,b owners=0,1",
            b"partitions=99999 members=a owners=0",
        ] {
            assert_eq!(Plan::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // Unknown fields are carried over by older and newer pods alike.
        assert!(Plan::parse(b"v=2 partitions=1 members=a owners=0 weights=9").is_some());
    }

    #[test]
    fn an_even_backlog_moves_nothing() {
        let current: Vec<usize> = (0..64).map(|p| p % 5).collect();
        assert_eq!(rebalance(&current, &[40; 64], 5, 16), None);
        assert_eq!(rebalance(&current, &[0; 64], 5, 16), None, "an idle lane");
        // A busiest pod within the slack of the mean: its run slots hold that many.
        let mut loads = vec![1u64; 64];
        loads[0] = 30;
        assert_eq!(rebalance(&current, &loads, 5, 32), None);
        assert!(rebalance(&current, &loads, 5, 8).is_some());
        // A least busy pod far below the mean is evened out too.
        let mut loads = vec![100u64; 64];
        loads[4] = 10;
        loads[9] = 10;
        assert!(rebalance(&current, &loads, 5, 16).is_some());
    }

    #[test]
    fn an_uneven_backlog_is_evened_out_within_the_tolerance() {
        // 300 chats of 10 updates hashed into 64 partitions: some hold none, some 9.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut loads = vec![0u64; 64];
        for _ in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            loads[(seed % 64) as usize] += 10;
        }
        for n in [2usize, 3, 5, 7] {
            let current: Vec<usize> = (0..64).map(|p| p % n).collect();
            let plan = rebalance(&current, &loads, n, 16).unwrap_or(current.clone());
            let mut pods = vec![0u64; n];
            for (o, l) in plan.iter().zip(&loads) {
                pods[*o] += l;
            }
            let mean = 3000 / n as u64;
            let allowed = 16.max(mean * 2 / 100);
            let (max, min) = (*pods.iter().max().unwrap(), *pods.iter().min().unwrap());
            assert!(
                max <= mean + allowed && min + allowed >= mean,
                "{n} pods: {pods:?}"
            );
            // Partitions without backlog stay where they were.
            for p in 0..64 {
                if loads[p] == 0 {
                    assert_eq!(plan[p], current[p]);
                }
            }
        }
    }

    #[test]
    fn one_flooded_partition_gets_a_pod_of_its_own() {
        let current = vec![0, 1, 0, 1, 0, 1];
        let loads = [5000, 50, 50, 50, 50, 50];
        let plan = rebalance(&current, &loads, 2, 16).expect("a move");
        // The other partitions of its pod go to the other pod.
        assert_eq!(plan, vec![0, 1, 1, 1, 1, 1]);
        // And nothing more is to be gained: the flood cannot be split.
        assert_eq!(rebalance(&plan, &loads, 2, 16), None);
    }

    #[test]
    fn a_plan_is_settled_when_every_partition_is_held_by_its_owner() {
        let m = members(2);
        let assignment = vec![Some(0), Some(1)];
        let mut holders = BTreeMap::from([(0, m[0].clone())]);
        assert!(!settled(&assignment, &m, &holders), "partition 1 unheld");
        holders.insert(1, m[0].clone());
        assert!(!settled(&assignment, &m, &holders), "held by the wrong pod");
        holders.insert(1, m[1].clone());
        assert!(settled(&assignment, &m, &holders));
    }

    #[test]
    fn only_the_planner_reads_every_partition() {
        let b = Backlog::default();
        assert!(!b.every_partition());
        b.set_planner(true);
        assert!(b.every_partition());
        b.record(Instant::now(), vec![1, 2]);
        assert!(b.last().is_some());
        b.set_planner(false);
        assert!(
            b.last().is_none(),
            "a reading of a former planner is dropped"
        );
    }
}
