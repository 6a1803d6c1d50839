//! Consumer groups of the KIP-848 protocol (`group.protocol=consumer`): the broker computes the
//! assignment, and members converge to it one heartbeat at a time.
//!
//! Model. A group has an *epoch*, bumped whenever its membership or subscriptions (or the
//! partition counts of the topics they name) change; a *target assignment* computed by the
//! server-side assignor (`uniform`, the default, or `range`) for that epoch; and for each member
//! its current *member epoch* and the partitions it currently holds. A member whose target lost
//! partitions it holds is first told to give them up (its epoch stays); once its heartbeat
//! shows it no longer owns them, it moves to the target epoch and is given its new partitions —
//! except those another member has not released yet, which it gets on a later heartbeat. So a
//! partition is never held by two members at once, and nobody waits for the whole group.
//!
//! Sans-IO like the classic groups: callers pass the time and the topics' partition counts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::state::{GroupError, GROUP_ID_BYTES_MAX, MEMBERS_MAX};

/// Partitions by topic name.
pub type Assignment = BTreeMap<String, BTreeSet<u32>>;

/// The timing the coordinator gives consumer-protocol members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerTimeouts {
    /// `group.consumer.session.timeout.ms` (45 s).
    pub session: Duration,
    /// `group.consumer.heartbeat.interval.ms` (5 s).
    pub heartbeat_interval: Duration,
}

impl Default for ConsumerTimeouts {
    fn default() -> Self {
        ConsumerTimeouts { session: Duration::from_secs(45), heartbeat_interval: Duration::from_secs(5) }
    }
}

/// A ConsumerGroupHeartbeat, as the state machine needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeat {
    pub group: String,
    /// Empty on the first heartbeat of a v0 client (the coordinator gives one).
    pub member_id: String,
    /// 0 to join, -1 to leave, -2 to leave as a static member that will come back.
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    /// `None`: unchanged since the last heartbeat (-1 on the wire).
    pub rebalance_timeout: Option<Duration>,
    /// `None`: unchanged since the last heartbeat.
    pub subscribed: Option<Vec<String>>,
    pub assignor: Option<String>,
    /// What the member holds now (`None`: unchanged).
    pub owned: Option<Assignment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval: Duration,
    /// The member's assignment, when it changed (or the member must be told again).
    pub assignment: Option<Assignment>,
}

#[derive(Debug, Clone)]
struct Member {
    instance_id: Option<String>,
    epoch: i32,
    /// The epoch before the last move: commits made at it while the new epoch was on its way
    /// to the member still count.
    previous_epoch: i32,
    /// What the member holds, as far as the coordinator knows.
    assigned: Assignment,
    /// Partitions the member was told to give up and has not yet shown it gave up.
    revoking: Assignment,
    /// When `revoking` became non-empty.
    revoking_since: Option<Instant>,
    subscribed: Vec<String>,
    assignor: String,
    rebalance_timeout: Duration,
    deadline: Instant,
    /// The assignment last sent, so that unchanged ones are not sent again.
    sent: Option<Assignment>,
}

#[derive(Debug, Default)]
struct Group {
    epoch: i32,
    assignment_epoch: i32,
    target: HashMap<String, Assignment>,
    members: BTreeMap<String, Member>,
    /// Partition counts of the subscribed topics the target was computed for.
    topics: BTreeMap<String, u32>,
}

/// A member as ConsumerGroupDescribe shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerMemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub member_epoch: i32,
    pub subscribed: Vec<String>,
    pub assignment: Assignment,
    pub target: Assignment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupDescription {
    /// `Empty`, `Assigning`, `Reconciling` or `Stable`.
    pub state: &'static str,
    pub epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: Vec<ConsumerMemberDescription>,
}

/// Every consumer-protocol group.
#[derive(Debug, Default)]
pub struct ConsumerGroups {
    groups: HashMap<String, Group>,
    pub timeouts: ConsumerTimeouts,
    next_member: u64,
}

pub const ASSIGNORS: [&str; 2] = ["uniform", "range"];
/// Topics one member may subscribe to, and the longest member and instance ids.
pub const SUBSCRIBED_MAX: usize = 10_000;
pub const MEMBER_ID_BYTES_MAX: usize = 255;
/// Consumer-protocol groups the coordinator holds at most.
pub const CONSUMER_GROUPS_MAX: usize = 100_000;
/// A member's rebalance timeout when it never gave one.
const REBALANCE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(300);

impl ConsumerGroups {
    pub fn new(timeouts: ConsumerTimeouts) -> ConsumerGroups {
        ConsumerGroups { groups: HashMap::new(), timeouts, next_member: 0 }
    }

    pub fn contains(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Handles a heartbeat. `partitions` gives a topic's partition count (`None`: no such
    /// topic; a subscription to it is kept and assigned once it exists).
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        now: Instant,
        partitions: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<HeartbeatReply, GroupError> {
        if hb.group.is_empty() || hb.group.len() > GROUP_ID_BYTES_MAX {
            return Err(GroupError::InvalidGroupId);
        }
        if let Some(a) = &hb.assignor {
            if !ASSIGNORS.contains(&a.as_str()) {
                return Err(GroupError::UnsupportedAssignor);
            }
        }
        let too_long = |id: &Option<String>| id.as_ref().is_some_and(|i| i.len() > MEMBER_ID_BYTES_MAX);
        if hb.member_id.len() > MEMBER_ID_BYTES_MAX
            || too_long(&hb.instance_id)
            || hb
                .subscribed
                .as_ref()
                .is_some_and(|s| s.len() > SUBSCRIBED_MAX || s.iter().any(|t| t.len() > 249))
        {
            return Err(GroupError::InvalidRequest);
        }
        let interval = self.timeouts.heartbeat_interval;
        let session = self.timeouts.session;
        if hb.member_epoch < 0 {
            let group = self.groups.get_mut(&hb.group).ok_or(GroupError::UnknownMemberId)?;
            group.members.remove(&hb.member_id).ok_or(GroupError::UnknownMemberId)?;
            group.epoch += 1;
            return Ok(HeartbeatReply {
                member_id: hb.member_id,
                member_epoch: hb.member_epoch,
                heartbeat_interval: interval,
                assignment: None,
            });
        }
        if !self.groups.contains_key(&hb.group) {
            if hb.member_epoch != 0 {
                return Err(GroupError::UnknownMemberId);
            }
            if self.groups.len() >= CONSUMER_GROUPS_MAX {
                return Err(GroupError::CoordinatorNotAvailable);
            }
        }
        let member_id = if hb.member_id.is_empty() {
            self.next_member += 1;
            format!("consumer-{:016x}", self.next_member ^ 0x84b0_0000_0000_0000)
        } else {
            hb.member_id.clone()
        };
        let group = self.groups.entry(hb.group.clone()).or_default();
        let mut changed = false;
        if hb.member_epoch == 0 {
            if !group.members.contains_key(&member_id) {
                let Some(subscribed) = hb.subscribed.clone() else {
                    return Err(GroupError::InvalidRequest);
                };
                if group.members.len() >= MEMBERS_MAX {
                    return Err(GroupError::GroupMaxSizeReached);
                }
                // An instance id is one member's: another one is refused until that member
                // leaves or its session ends.
                if let Some(instance) = &hb.instance_id {
                    if group.members.values().any(|m| m.instance_id.as_deref() == Some(instance.as_str())) {
                        return Err(GroupError::UnreleasedInstanceId);
                    }
                }
                group.members.insert(
                    member_id.clone(),
                    Member {
                        instance_id: hb.instance_id.clone(),
                        epoch: 0,
                        previous_epoch: 0,
                        assigned: Assignment::new(),
                        revoking: Assignment::new(),
                        revoking_since: None,
                        subscribed,
                        assignor: hb.assignor.clone().unwrap_or_else(|| ASSIGNORS[0].to_string()),
                        rebalance_timeout: hb.rebalance_timeout.unwrap_or(REBALANCE_TIMEOUT_DEFAULT),
                        deadline: now + session,
                        sent: None,
                    },
                );
                changed = true;
            } else if let Some(m) = group.members.get_mut(&member_id) {
                // A member rejoining after a fence of its own: it holds nothing now.
                m.assigned.clear();
                m.revoking.clear();
                m.revoking_since = None;
                m.epoch = 0;
                m.sent = None;
            }
        }
        let Some(member) = group.members.get_mut(&member_id) else {
            return Err(GroupError::UnknownMemberId);
        };
        let held = |m: &Member, owned: &Assignment| {
            owned.iter().all(|(t, ps)| {
                ps.iter().all(|p| contains(&m.assigned, t, *p) || contains(&m.revoking, t, *p))
            })
        };
        if hb.member_epoch > 0 && hb.member_epoch != member.epoch {
            // The answer that moved it on was lost: at the epoch before, holding nothing it
            // should not, it is told again.
            let retry =
                hb.member_epoch == member.previous_epoch && hb.owned.as_ref().is_none_or(|o| held(member, o));
            if !retry {
                return Err(GroupError::FencedMemberEpoch);
            }
            member.sent = None;
        }
        member.deadline = now + session;
        if let Some(t) = hb.rebalance_timeout {
            member.rebalance_timeout = t;
        }
        if let Some(subscribed) = hb.subscribed {
            if subscribed != member.subscribed {
                member.subscribed = subscribed;
                changed = true;
            }
        }
        if let Some(a) = hb.assignor {
            if a != member.assignor {
                member.assignor = a;
                changed = true;
            }
        }
        // The member reports what it holds: revocations it has carried out are done; if it
        // still holds what it was told to give up, the answer may have been lost: say it again.
        if let Some(owned) = &hb.owned {
            if !member.revoking.is_empty() {
                if overlaps(owned, &member.revoking) {
                    member.sent = None;
                } else {
                    member.revoking.clear();
                    member.revoking_since = None;
                }
            }
            if member.sent.as_ref() != Some(owned) && member.revoking.is_empty() {
                // It holds something else than it was told: tell it again.
                member.sent = None;
            }
        }
        // Subscribed topics' partition counts: a change (a topic created or grown) re-assigns.
        let mut topics = BTreeMap::new();
        for m in group.members.values() {
            for t in &m.subscribed {
                if let Some(n) = partitions(t) {
                    topics.insert(t.clone(), n);
                }
            }
        }
        if topics != group.topics {
            group.topics = topics;
            changed = true;
        }
        if changed {
            group.epoch += 1;
        }
        if group.assignment_epoch < group.epoch {
            group.target = assign(group);
            group.assignment_epoch = group.epoch;
        }
        reconcile(group, &member_id, now);
        let member = group.members.get_mut(&member_id).expect("present");
        let assignment = if member.sent.as_ref() != Some(&member.assigned) {
            member.sent = Some(member.assigned.clone());
            Some(member.assigned.clone())
        } else {
            None
        };
        Ok(HeartbeatReply { member_id, member_epoch: member.epoch, heartbeat_interval: interval, assignment })
    }

    /// Removes members whose session ran out, and members that kept partitions past their
    /// rebalance timeout after being told to give them up.
    pub fn tick(&mut self, now: Instant) {
        for (id, group) in &mut self.groups {
            let gone: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    now >= m.deadline || m.revoking_since.is_some_and(|t| now >= t + m.rebalance_timeout)
                })
                .map(|(m, _)| m.clone())
                .collect();
            for m in gone {
                tracing::info!(group = %id, member = %m, "consumer group member expired");
                group.members.remove(&m);
                group.epoch += 1;
            }
        }
        self.groups.retain(|_, g| !g.members.is_empty());
    }

    /// Whether an OffsetCommit (or a fetch of offsets with a member epoch) from this member at
    /// this epoch may be applied. A commit with no member id and a negative epoch comes from
    /// outside the group (manual assignment): allowed while the group has no members.
    /// `partitions`: those the commit names. At the epoch just before the member's current one
    /// (the heartbeat that moved it on may have crossed the commit), only partitions it still
    /// holds.
    pub fn check_commit(
        &self,
        group: &str,
        member_id: &str,
        epoch: i32,
        partitions: &[(String, u32)],
    ) -> Result<(), GroupError> {
        let Some(g) = self.groups.get(group) else {
            return if epoch < 0 { Ok(()) } else { Err(GroupError::GroupIdNotFound) };
        };
        if member_id.is_empty() && epoch < 0 {
            return if g.members.is_empty() { Ok(()) } else { Err(GroupError::UnknownMemberId) };
        }
        let m = g.members.get(member_id).ok_or(GroupError::UnknownMemberId)?;
        let still_held = partitions.iter().all(|(t, p)| contains(&m.assigned, t, *p));
        if epoch != m.epoch && !(epoch == m.previous_epoch && epoch > 0 && still_held) {
            return Err(GroupError::StaleMemberEpoch);
        }
        Ok(())
    }

    pub fn with_members(&self) -> Vec<String> {
        self.groups.iter().filter(|(_, g)| !g.members.is_empty()).map(|(id, _)| id.clone()).collect()
    }

    /// (group id, state) of every group.
    pub fn list(&self) -> Vec<(String, &'static str)> {
        let mut all: Vec<_> = self.groups.iter().map(|(id, g)| (id.clone(), state(g))).collect();
        all.sort();
        all
    }

    pub fn describe(&self, group: &str) -> Option<ConsumerGroupDescription> {
        let g = self.groups.get(group)?;
        Some(ConsumerGroupDescription {
            state: state(g),
            epoch: g.epoch,
            assignment_epoch: g.assignment_epoch,
            assignor: g.members.values().next().map_or(ASSIGNORS[0].to_string(), |m| m.assignor.clone()),
            members: g
                .members
                .iter()
                .map(|(id, m)| ConsumerMemberDescription {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    member_epoch: m.epoch,
                    subscribed: m.subscribed.clone(),
                    assignment: m.assigned.clone(),
                    target: g.target.get(id).cloned().unwrap_or_default(),
                })
                .collect(),
        })
    }
}

fn state(g: &Group) -> &'static str {
    if g.members.is_empty() {
        "Empty"
    } else if g.assignment_epoch < g.epoch {
        "Assigning"
    } else if g.members.values().all(|m| m.epoch == g.assignment_epoch && m.revoking.is_empty()) {
        "Stable"
    } else {
        "Reconciling"
    }
}

fn overlaps(a: &Assignment, b: &Assignment) -> bool {
    a.iter().any(|(t, ps)| b.get(t).is_some_and(|qs| ps.iter().any(|p| qs.contains(p))))
}

fn contains(a: &Assignment, topic: &str, p: u32) -> bool {
    a.get(topic).is_some_and(|ps| ps.contains(&p))
}

/// Moves one member toward its target: partitions to give up first (epoch unchanged), then the
/// new epoch with every target partition nobody else still holds.
fn reconcile(group: &mut Group, member_id: &str, now: Instant) {
    let target = group.target.get(member_id).cloned().unwrap_or_default();
    let held_elsewhere: std::collections::HashSet<(String, u32)> = group
        .members
        .iter()
        .filter(|(id, _)| id.as_str() != member_id)
        .flat_map(|(_, m)| {
            m.assigned
                .iter()
                .chain(m.revoking.iter())
                .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
        })
        .collect();
    let epoch = group.assignment_epoch;
    let member = group.members.get_mut(member_id).expect("present");
    if !member.revoking.is_empty() {
        return;
    }
    let mut revoke = Assignment::new();
    for (t, ps) in &member.assigned {
        for p in ps {
            if !contains(&target, t, *p) {
                revoke.entry(t.clone()).or_default().insert(*p);
            }
        }
    }
    if !revoke.is_empty() {
        for (t, ps) in &revoke {
            if let Some(held) = member.assigned.get_mut(t) {
                held.retain(|p| !ps.contains(p));
            }
        }
        member.assigned.retain(|_, ps| !ps.is_empty());
        member.revoking = revoke;
        member.revoking_since = Some(now);
        return;
    }
    if member.epoch != epoch {
        member.previous_epoch = member.epoch;
    }
    member.epoch = epoch;
    for (t, ps) in &target {
        for p in ps {
            if !held_elsewhere.contains(&(t.clone(), *p)) {
                member.assigned.entry(t.clone()).or_default().insert(*p);
            }
        }
    }
}

/// The target assignment of every member.
fn assign(group: &Group) -> HashMap<String, Assignment> {
    let members: Vec<&String> = group.members.keys().collect();
    let assignor = group.members.values().next().map_or(ASSIGNORS[0], |m| m.assignor.as_str());
    let mut out: HashMap<String, Assignment> =
        members.iter().map(|m| ((*m).clone(), Assignment::new())).collect();
    if assignor == "range" {
        for (topic, &n) in &group.topics {
            let subscribers: Vec<&String> =
                members.iter().copied().filter(|m| group.members[*m].subscribed.contains(topic)).collect();
            if subscribers.is_empty() {
                continue;
            }
            let k = subscribers.len() as u32;
            let (per, extra) = (n / k, n % k);
            let mut next = 0;
            for (i, m) in subscribers.iter().enumerate() {
                let count = per + u32::from((i as u32) < extra);
                let ps = out.get_mut(*m).expect("member").entry(topic.clone()).or_default();
                ps.extend(next..next + count);
                next += count;
            }
        }
    } else {
        // Uniform: every partition to an eligible member, the counts as even as the
        // subscriptions allow, keeping the previous target where it stays balanced.
        let all: Vec<(String, u32)> =
            group.topics.iter().flat_map(|(t, &n)| (0..n).map(move |p| (t.clone(), p))).collect();
        let eligible = |m: &String, t: &str| group.members[m].subscribed.iter().any(|s| s == t);
        let mut count: HashMap<&String, usize> = members.iter().map(|m| (*m, 0)).collect();
        // Balanced: every member holds `floor` or, for `extra` of them, `floor + 1`
        // partitions (as the subscriptions allow); a member keeps what it had up to that.
        let (floor, mut extra) = (all.len() / members.len().max(1), all.len() % members.len().max(1));
        let mut unassigned = Vec::new();
        for (t, p) in &all {
            let keeper = members
                .iter()
                .copied()
                .find(|m| eligible(m, t) && group.target.get(*m).is_some_and(|a| contains(a, t, *p)));
            let room = |m: &String, count: &HashMap<&String, usize>, extra: usize| {
                count[m] < floor || (count[m] == floor && extra > 0)
            };
            match keeper {
                Some(m) if room(m, &count, extra) => {
                    if count[m] == floor {
                        extra -= 1;
                    }
                    out.get_mut(m).expect("member").entry(t.clone()).or_default().insert(*p);
                    *count.get_mut(m).expect("member") += 1;
                }
                _ => unassigned.push((t.clone(), *p)),
            }
        }
        for (t, p) in unassigned {
            let Some(m) = members.iter().copied().filter(|m| eligible(m, &t)).min_by_key(|m| (count[*m], *m))
            else {
                continue;
            };
            out.get_mut(m).expect("member").entry(t.clone()).or_default().insert(p);
            *count.get_mut(m).expect("member") += 1;
        }
    }
    for a in out.values_mut() {
        a.retain(|_, ps| !ps.is_empty());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(_: &str) -> Option<u32> {
        Some(6)
    }

    fn join(g: &mut ConsumerGroups, id: &str, now: Instant) -> HeartbeatReply {
        let hb = Heartbeat {
            group: "g".into(),
            member_id: id.into(),
            member_epoch: 0,
            rebalance_timeout: Some(Duration::from_secs(30)),
            subscribed: Some(vec!["t".into()]),
            ..Heartbeat::default()
        };
        g.heartbeat(hb, now, &parts).unwrap()
    }

    /// A heartbeat reporting what the member holds (`owned`), as a client does.
    fn beat(
        g: &mut ConsumerGroups,
        id: &str,
        epoch: i32,
        owned: &Assignment,
        now: Instant,
    ) -> HeartbeatReply {
        let hb = Heartbeat {
            group: "g".into(),
            member_id: id.into(),
            member_epoch: epoch,
            // As clients send it after joining: unchanged.
            rebalance_timeout: None,
            owned: Some(owned.clone()),
            ..Heartbeat::default()
        };
        g.heartbeat(hb, now, &parts).unwrap()
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    /// Members as a client runs them: each keeps what it was last given.
    fn converge(g: &mut ConsumerGroups, members: &mut BTreeMap<String, (i32, Assignment)>, now: Instant) {
        for _ in 0..10 {
            for (id, (epoch, owned)) in members.iter_mut() {
                let r = beat(g, id, *epoch, owned, now);
                *epoch = r.member_epoch;
                if let Some(a) = r.assignment {
                    *owned = a;
                }
            }
            // Never two owners of one partition, at any point.
            let mut seen = BTreeSet::new();
            for (_, owned) in members.values() {
                for (t, ps) in owned {
                    for p in ps {
                        assert!(seen.insert((t.clone(), *p)), "{t}-{p} held twice");
                    }
                }
            }
        }
    }

    #[test]
    fn members_converge_to_a_balanced_assignment_revoking_before_anyone_else_gets_a_partition() {
        let now = Instant::now();
        let mut g = ConsumerGroups::new(ConsumerTimeouts::default());
        let first = join(&mut g, "a", now);
        assert_eq!(first.member_epoch, 1);
        assert_eq!(count(first.assignment.as_ref().unwrap()), 6, "alone, it gets everything");
        let mut members = BTreeMap::from([("a".to_string(), (1, first.assignment.unwrap()))]);
        let b = join(&mut g, "b", now);
        assert_eq!(count(b.assignment.as_ref().unwrap()), 0, "nothing until a gives some up");
        members.insert("b".into(), (b.member_epoch, Assignment::new()));
        // a is told to give three up, at its old epoch.
        let r = beat(&mut g, "a", 1, &members["a"].1, now);
        assert_eq!(r.member_epoch, 1);
        assert_eq!(count(r.assignment.as_ref().unwrap()), 3);
        members.get_mut("a").unwrap().1 = r.assignment.unwrap();
        let c = join(&mut g, "c", now);
        members.insert("c".into(), (c.member_epoch, c.assignment.unwrap_or_default()));
        converge(&mut g, &mut members, now);
        let epochs: BTreeSet<i32> = members.values().map(|(e, _)| *e).collect();
        assert_eq!(epochs.len(), 1, "one epoch: {members:?}");
        let counts: Vec<usize> = members.values().map(|(_, a)| count(a)).collect();
        assert_eq!(counts, vec![2, 2, 2]);
        assert_eq!(g.describe("g").unwrap().state, "Stable");

        // b leaves: its partitions go to the others.
        let left = g.heartbeat(
            Heartbeat { group: "g".into(), member_id: "b".into(), member_epoch: -1, ..Heartbeat::default() },
            now,
            &parts,
        );
        assert_eq!(left.unwrap().member_epoch, -1);
        members.remove("b");
        converge(&mut g, &mut members, now);
        assert_eq!(members.values().map(|(_, a)| count(a)).sum::<usize>(), 6);
        assert!(members.values().all(|(_, a)| count(a) == 3));
    }

    #[test]
    fn an_expired_member_loses_its_partitions_and_a_stale_epoch_is_fenced() {
        let now = Instant::now();
        let mut g = ConsumerGroups::new(ConsumerTimeouts {
            session: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
        });
        let mut members = BTreeMap::new();
        for id in ["a", "b"] {
            let r = join(&mut g, id, now);
            members.insert(id.to_string(), (r.member_epoch, r.assignment.unwrap_or_default()));
        }
        converge(&mut g, &mut members, now);
        let epoch = members["a"].0;
        assert!(matches!(
            g.heartbeat(
                Heartbeat {
                    group: "g".into(),
                    member_id: "a".into(),
                    member_epoch: epoch + 5,
                    ..Heartbeat::default()
                },
                now,
                &parts
            ),
            Err(GroupError::FencedMemberEpoch)
        ));
        let held: Vec<(String, u32)> =
            members["a"].1.iter().flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p))).collect();
        let other: Vec<(String, u32)> =
            members["b"].1.iter().flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p))).collect();
        assert_eq!(g.check_commit("g", "a", epoch, &held), Ok(()));
        let previous = g.groups["g"].members["a"].previous_epoch;
        assert!(previous > 0 && previous < epoch);
        assert_eq!(
            g.check_commit("g", "a", previous, &held),
            Ok(()),
            "the epoch just before, for its partitions"
        );
        assert_eq!(
            g.check_commit("g", "a", previous, &other),
            Err(GroupError::StaleMemberEpoch),
            "not for partitions another member holds now"
        );
        assert_eq!(g.check_commit("g", "a", epoch + 1, &held), Err(GroupError::StaleMemberEpoch));
        assert_eq!(g.check_commit("g", "a", 0, &held), Err(GroupError::StaleMemberEpoch));
        assert_eq!(g.check_commit("g", "zz", epoch, &held), Err(GroupError::UnknownMemberId));
        // Only b goes on heartbeating; a's session runs out.
        let later = now + Duration::from_secs(6);
        let (e, owned) = members["b"].clone();
        beat(&mut g, "b", e, &owned, later);
        g.tick(now + Duration::from_secs(11));
        members.remove("a");
        converge(&mut g, &mut members, now + Duration::from_secs(11));
        assert_eq!(count(&members["b"].1), 6, "b took a's partitions");
    }

    #[test]
    fn a_member_that_keeps_revoked_partitions_past_its_rebalance_timeout_is_removed() {
        let now = Instant::now();
        let mut g = ConsumerGroups::new(ConsumerTimeouts::default());
        let a = join(&mut g, "a", now).assignment.unwrap();
        join(&mut g, "b", now);
        // a is told to give three up but goes on reporting all six (its heartbeats carry no
        // rebalance timeout: the one it joined with holds).
        let told = beat(&mut g, "a", 1, &a, now);
        assert_eq!(count(told.assignment.as_ref().unwrap()), 3);
        g.tick(now + Duration::from_secs(1));
        assert!(g.describe("g").unwrap().members.iter().any(|m| m.member_id == "a"), "within its timeout");
        // The answer may have been lost: as long as it holds them, it is told again.
        let again = beat(&mut g, "a", 1, &a, now + Duration::from_secs(10));
        assert_eq!(again.assignment, told.assignment, "told again");
        g.tick(now + Duration::from_secs(31));
        assert!(g.describe("g").unwrap().members.iter().all(|m| m.member_id != "a"));
    }

    #[test]
    fn the_range_assignor_gives_contiguous_ranges_per_topic() {
        let now = Instant::now();
        let mut g = ConsumerGroups::new(ConsumerTimeouts::default());
        let mut members = BTreeMap::new();
        for id in ["a", "b", "c", "d"] {
            let hb = Heartbeat {
                group: "g".into(),
                member_id: id.into(),
                member_epoch: 0,
                subscribed: Some(vec!["t".into()]),
                assignor: Some("range".into()),
                rebalance_timeout: Some(Duration::from_secs(30)),
                ..Heartbeat::default()
            };
            let r = g.heartbeat(hb, now, &parts).unwrap();
            members.insert(id.to_string(), (r.member_epoch, r.assignment.unwrap_or_default()));
        }
        converge(&mut g, &mut members, now);
        let got: Vec<Vec<u32>> = members.values().map(|(_, a)| a["t"].iter().copied().collect()).collect();
        assert_eq!(got, vec![vec![0, 1], vec![2, 3], vec![4], vec![5]]);
        let bad = Heartbeat {
            group: "g".into(),
            member_epoch: 0,
            assignor: Some("sticky".into()),
            ..Heartbeat::default()
        };
        assert_eq!(g.heartbeat(bad, now, &parts), Err(GroupError::UnsupportedAssignor));
    }

    #[test]
    fn a_fourth_member_gets_partitions_and_counts_stay_within_one() {
        let now = Instant::now();
        let mut g = ConsumerGroups::new(ConsumerTimeouts::default());
        let mut members = BTreeMap::new();
        for id in ["a", "b", "c"] {
            let r = join(&mut g, id, now);
            members.insert(id.to_string(), (r.member_epoch, r.assignment.unwrap_or_default()));
            converge(&mut g, &mut members, now);
        }
        let r = join(&mut g, "d", now);
        members.insert("d".into(), (r.member_epoch, r.assignment.unwrap_or_default()));
        converge(&mut g, &mut members, now);
        let mut counts: Vec<usize> = members.values().map(|(_, a)| count(a)).collect();
        counts.sort_unstable();
        assert_eq!(counts, vec![1, 1, 2, 2]);
    }

    #[test]
    fn an_instance_id_is_one_members_and_a_lost_answer_at_the_epoch_before_is_repeated() {
        let now = Instant::now();
        let mut g = ConsumerGroups::new(ConsumerTimeouts::default());
        let static_join = |id: &str| Heartbeat {
            group: "g".into(),
            member_id: id.into(),
            member_epoch: 0,
            instance_id: Some("host-1".into()),
            rebalance_timeout: Some(Duration::from_secs(30)),
            subscribed: Some(vec!["t".into()]),
            ..Heartbeat::default()
        };
        let first = g.heartbeat(static_join("a"), now, &parts).unwrap();
        assert_eq!(g.heartbeat(static_join("a2"), now, &parts), Err(GroupError::UnreleasedInstanceId));
        // b joins: a moves to a new epoch once it gives up three; that answer is lost.
        join(&mut g, "b", now);
        let all = first.assignment.unwrap();
        let told = beat(&mut g, "a", 1, &all, now).assignment.unwrap();
        let moved = beat(&mut g, "a", 1, &told, now);
        assert!(moved.member_epoch > 1);
        let retried = beat(&mut g, "a", 1, &told, now);
        assert_eq!(retried.member_epoch, moved.member_epoch, "not fenced: told its epoch again");
        assert_eq!(retried.assignment.as_ref(), Some(&told));
        // Leaving releases the instance id.
        let leave =
            Heartbeat { group: "g".into(), member_id: "a".into(), member_epoch: -2, ..Heartbeat::default() };
        g.heartbeat(leave.clone(), now, &parts).unwrap();
        assert_eq!(g.heartbeat(leave, now, &parts), Err(GroupError::UnknownMemberId), "left already");
        assert_eq!(
            g.heartbeat(static_join("a2"), now, &parts).map(|r| r.member_epoch).ok().map(|e| e > 0),
            Some(true)
        );
    }
}
