//! The group state machine (see the module documentation of `group`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// A group's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name Kafka tools show.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// Why a group call failed; each maps to one Kafka error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("illegal generation")]
    IllegalGeneration,
    #[error("rebalance in progress")]
    RebalanceInProgress,
    #[error("inconsistent group protocol")]
    InconsistentGroupProtocol,
    #[error("member id required")]
    MemberIdRequired,
    #[error("invalid session timeout")]
    InvalidSessionTimeout,
    #[error("invalid group id")]
    InvalidGroupId,
    #[error("group is full or shutting down")]
    CoordinatorNotAvailable,
    #[error("group id not found")]
    GroupIdNotFound,
    #[error("group is not empty")]
    NonEmptyGroup,
    #[error("group has reached its maximum size")]
    GroupMaxSizeReached,
    #[error("too many assignment protocols, or protocol metadata too large")]
    ProtocolsTooLarge,
    /// A request breaks a limit of the coordinator (too many partitions named, say).
    #[error("invalid request")]
    InvalidRequest,
    /// A consumer-protocol member named an assignor the coordinator does not have.
    #[error("unsupported assignor")]
    UnsupportedAssignor,
    /// A consumer-protocol member's epoch is not its current one: it must rejoin.
    #[error("fenced member epoch")]
    FencedMemberEpoch,
    /// An offset commit at a member epoch other than the member's.
    #[error("stale member epoch")]
    StaleMemberEpoch,
    /// A static member joined while another member still has its instance id.
    #[error("unreleased instance id")]
    UnreleasedInstanceId,
}

/// Limits the coordinator enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub session_min: Duration,
    pub session_max: Duration,
    /// How long a group with no members waits for more before completing its first rebalance.
    pub initial_rebalance_delay: Duration,
}

/// A JoinGroup, decoded.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group: String,
    /// Empty for a new member.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub protocol_type: String,
    /// (assignor name, subscription metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// Whether the client understands MEMBER_ID_REQUIRED (JoinGroup v4+).
    pub require_known_member_id: bool,
}

/// One member as the leader sees it in a join answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

/// The answer to a join once the rebalance completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol_name: String,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata, for the leader only; empty for the others.
    pub members: Vec<JoinedMember>,
}

/// The answer to a sync: this member's assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    pub protocol_type: String,
    pub protocol_name: String,
    pub assignment: Bytes,
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol_name: String,
    pub generation: i32,
    pub members: Vec<MemberDescription>,
}

type JoinWaiter = oneshot::Sender<Result<JoinOutcome, GroupError>>;
type SyncWaiter = oneshot::Sender<Result<SyncOutcome, GroupError>>;

#[derive(Debug)]
struct Member {
    id: String,
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    protocols: Vec<(String, Bytes)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    assignment: Bytes,
    /// Last sign of life: a heartbeat, join or sync.
    seen: Instant,
    join: Option<JoinWaiter>,
    sync: Option<SyncWaiter>,
}

impl Member {
    /// The subscription metadata the member sent for `protocol` (empty if none).
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(n, _)| n == protocol).map(|(_, md)| md.clone()).unwrap_or_default()
    }
}

#[derive(Debug)]
struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: String,
    protocol_name: String,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined with them, and when.
    pending: HashMap<String, Instant>,
    /// When the current rebalance gives up on members that did not rejoin.
    rebalance_deadline: Option<Instant>,
    /// A new group's first rebalance does not complete before this (more members may come).
    complete_after: Option<Instant>,
}

impl Group {
    fn new() -> Group {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol_name: String::new(),
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
            complete_after: None,
        }
    }
}

/// Every group the server coordinates.
#[derive(Debug)]
pub struct Groups {
    groups: HashMap<String, Group>,
    timeouts: Timeouts,
    next_member: u64,
    /// The groups of the KIP-848 consumer protocol; a group id is one or the other.
    pub consumer: super::consumer::ConsumerGroups,
}

/// Members one group may hold; joins beyond it are refused (GROUP_MAX_SIZE_REACHED).
pub const MEMBERS_MAX: usize = 1_000;
/// Longest group id: the longest consumer name of committed offsets.
pub const GROUP_ID_BYTES_MAX: usize = crate::engine::CONSUMER_NAME_BYTES_MAX;
/// Assignment protocols one member may offer, and the metadata bytes of each: the checks of a
/// join compare every member's protocols, so these keep that work small.
pub const PROTOCOLS_MAX: usize = 16;
pub const PROTOCOL_METADATA_BYTES_MAX: usize = 64 << 10;
/// Groups the coordinator holds at most.
pub const GROUPS_MAX: usize = 100_000;
/// Member ids handed out with MEMBER_ID_REQUIRED and not yet used, per group.
pub const PENDING_MAX: usize = 1_000;

impl Groups {
    pub fn new(timeouts: Timeouts) -> Groups {
        Groups { groups: HashMap::new(), timeouts, next_member: 0, consumer: Default::default() }
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        let client: String = client_id.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
        let prefix = if client.is_empty() { "member" } else { &client };
        format!("{prefix}-{:016x}", self.next_member ^ 0x5ba7_e000_0000_0000)
    }

    /// Handles a JoinGroup: answers `waiter` at once (an error, or the current generation), or
    /// parks it until the rebalance completes. Returns the member id handed out when the answer
    /// is `MemberIdRequired` (the client rejoins with it).
    pub fn join(&mut self, req: JoinRequest, now: Instant, waiter: JoinWaiter) -> Option<String> {
        let answer = |w: JoinWaiter, r| {
            let _ = w.send(r);
            None
        };
        if req.group.is_empty() || req.group.len() > GROUP_ID_BYTES_MAX {
            return answer(waiter, Err(GroupError::InvalidGroupId));
        }
        // A consumer-protocol group takes no classic members (Kafka's answer).
        if self.consumer.contains(&req.group) {
            return answer(waiter, Err(GroupError::InconsistentGroupProtocol));
        }
        if req.protocols.len() > PROTOCOLS_MAX
            || req
                .protocols
                .iter()
                .any(|(name, md)| name.len() > 255 || md.len() > PROTOCOL_METADATA_BYTES_MAX)
        {
            return answer(waiter, Err(GroupError::ProtocolsTooLarge));
        }
        if req.session_timeout < self.timeouts.session_min || req.session_timeout > self.timeouts.session_max
        {
            return answer(waiter, Err(GroupError::InvalidSessionTimeout));
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return answer(waiter, Err(GroupError::InconsistentGroupProtocol));
        }
        if !self.groups.contains_key(&req.group) && self.groups.len() >= GROUPS_MAX {
            return answer(waiter, Err(GroupError::CoordinatorNotAvailable));
        }
        let new_id = if req.member_id.is_empty() { Some(self.new_member_id(&req.client_id)) } else { None };
        let timeouts = self.timeouts;
        let group = self.groups.entry(req.group.clone()).or_insert_with(Group::new);
        // Every member must share the protocol type and at least one assignor with the group.
        if !group.members.is_empty() || group.state != GroupState::Empty {
            let compatible = group.protocol_type == req.protocol_type
                && (group.members.is_empty()
                    || req.protocols.iter().any(|(name, _)| {
                        group.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == name))
                    }));
            if !compatible && !group.members.is_empty() {
                return answer(waiter, Err(GroupError::InconsistentGroupProtocol));
            }
        }
        let member_id = match new_id {
            Some(id) => {
                // Static members keep their place: a known instance id takes over its member.
                if let Some(instance) = &req.group_instance_id {
                    if let Some(old) = group
                        .members
                        .values()
                        .find(|m| m.group_instance_id.as_ref() == Some(instance))
                        .map(|m| m.id.clone())
                    {
                        if let Some(mut m) = group.members.remove(&old) {
                            fail_waiters(&mut m, GroupError::UnknownMemberId);
                        }
                        if group.leader.as_deref() == Some(old.as_str()) {
                            group.leader = Some(id.clone());
                        }
                    }
                } else if req.require_known_member_id {
                    // A client looping on empty joins cannot grow this without bound.
                    if group.pending.len() >= PENDING_MAX {
                        if let Some(oldest) =
                            group.pending.iter().min_by_key(|(_, &t)| t).map(|(id, _)| id.clone())
                        {
                            group.pending.remove(&oldest);
                        }
                    }
                    group.pending.insert(id.clone(), now);
                    answer(waiter, Err(GroupError::MemberIdRequired));
                    return Some(id);
                }
                id
            }
            None => {
                let known = group.members.contains_key(&req.member_id)
                    || group.pending.remove(&req.member_id).is_some();
                if !known {
                    return answer(waiter, Err(GroupError::UnknownMemberId));
                }
                req.member_id.clone()
            }
        };
        if !group.members.contains_key(&member_id) && group.members.len() >= MEMBERS_MAX {
            return answer(waiter, Err(GroupError::GroupMaxSizeReached));
        }
        let changed = match group.members.get(&member_id) {
            Some(m) => m.protocols != req.protocols,
            None => true,
        };
        let member = group.members.entry(member_id.clone()).or_insert_with(|| Member {
            id: member_id.clone(),
            group_instance_id: req.group_instance_id.clone(),
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            protocols: Vec::new(),
            session_timeout: req.session_timeout,
            rebalance_timeout: req.rebalance_timeout,
            assignment: Bytes::new(),
            seen: now,
            join: None,
            sync: None,
        });
        member.protocols = req.protocols;
        member.session_timeout = req.session_timeout;
        member.rebalance_timeout = req.rebalance_timeout;
        member.seen = now;
        if let Some(old) = member.join.replace(waiter) {
            let _ = old.send(Err(GroupError::RebalanceInProgress));
        }
        if group.protocol_type.is_empty() {
            group.protocol_type = req.protocol_type;
        }
        match group.state {
            GroupState::Empty => {
                // A new group waits a little for the rest of its members.
                let delay = timeouts.initial_rebalance_delay;
                group.state = GroupState::PreparingRebalance;
                group.complete_after = Some(now + delay);
                group.rebalance_deadline = Some(now + delay.max(req.rebalance_timeout));
            }
            GroupState::PreparingRebalance => {}
            GroupState::CompletingRebalance | GroupState::Stable => {
                if changed
                    || group.leader.as_deref() == Some(member_id.as_str())
                    || group.state == GroupState::CompletingRebalance
                {
                    start_rebalance(group, now);
                } else {
                    // A known member rejoining with the same protocols while stable: answer
                    // with the current generation at once.
                    let outcome = outcome_for(group, &member_id);
                    if let Some(w) = group.members.get_mut(&member_id).and_then(|m| m.join.take()) {
                        let _ = w.send(Ok(outcome));
                    }
                    return None;
                }
            }
        }
        try_complete_join(group, now);
        None
    }

    /// Handles a SyncGroup: the leader's carries every member's assignment.
    pub fn sync(
        &mut self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
        waiter: SyncWaiter,
    ) {
        let Some(group) = self.groups.get_mut(group_id) else {
            let _ = waiter.send(Err(GroupError::UnknownMemberId));
            return;
        };
        let Some(member) = group.members.get_mut(member_id) else {
            let _ = waiter.send(Err(GroupError::UnknownMemberId));
            return;
        };
        member.seen = now;
        if generation != group.generation {
            let _ = waiter.send(Err(GroupError::IllegalGeneration));
            return;
        }
        match group.state {
            GroupState::PreparingRebalance | GroupState::Empty => {
                let _ = waiter.send(Err(GroupError::RebalanceInProgress));
            }
            GroupState::Stable => {
                let _ = waiter.send(Ok(SyncOutcome {
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: group.protocol_name.clone(),
                    assignment: member.assignment.clone(),
                }));
            }
            GroupState::CompletingRebalance => {
                if let Some(old) = member.sync.replace(waiter) {
                    let _ = old.send(Err(GroupError::RebalanceInProgress));
                }
                if group.leader.as_deref() == Some(member_id) {
                    let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for m in group.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    group.state = GroupState::Stable;
                    let (protocol_type, protocol_name) =
                        (group.protocol_type.clone(), group.protocol_name.clone());
                    for m in group.members.values_mut() {
                        if let Some(w) = m.sync.take() {
                            let _ = w.send(Ok(SyncOutcome {
                                protocol_type: protocol_type.clone(),
                                protocol_name: protocol_name.clone(),
                                assignment: m.assignment.clone(),
                            }));
                        }
                    }
                }
            }
        }
    }

    /// Handles a Heartbeat.
    pub fn heartbeat(
        &mut self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<(), GroupError> {
        let group = self.groups.get_mut(group_id).ok_or(GroupError::UnknownMemberId)?;
        let member = group.members.get_mut(member_id).ok_or(GroupError::UnknownMemberId)?;
        member.seen = now;
        if group.state == GroupState::PreparingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        if generation != group.generation {
            return Err(GroupError::IllegalGeneration);
        }
        Ok(())
    }

    /// Handles a LeaveGroup for one member (by member id, or by instance id when the member id
    /// is empty). Returns whether it was a member.
    pub fn leave(
        &mut self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        now: Instant,
    ) -> Result<(), GroupError> {
        let group = self.groups.get_mut(group_id).ok_or(GroupError::UnknownMemberId)?;
        let id = if member_id.is_empty() {
            group
                .members
                .values()
                .find(|m| {
                    m.group_instance_id.as_deref().is_some()
                        && m.group_instance_id.as_deref() == group_instance_id
                })
                .map(|m| m.id.clone())
                .ok_or(GroupError::UnknownMemberId)?
        } else {
            member_id.to_string()
        };
        let mut member = group.members.remove(&id).ok_or(GroupError::UnknownMemberId)?;
        fail_waiters(&mut member, GroupError::UnknownMemberId);
        member_gone(group, &id, now);
        Ok(())
    }

    /// Expires members whose sessions ran out and completes rebalances whose time is up. Call
    /// it periodically; returns the earliest time it needs to be called again.
    pub fn tick(&mut self, now: Instant) -> Option<Instant> {
        self.consumer.tick(now);
        let mut next: Option<Instant> = None;
        let mut earliest = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for group in self.groups.values_mut() {
            group.pending.retain(|_, &mut since| now < since + Duration::from_secs(300));
            // A member waiting in a join is alive; the others must heartbeat.
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| m.join.is_none() && now >= m.seen + m.session_timeout)
                .map(|m| m.id.clone())
                .collect();
            for id in expired {
                tracing::info!(member = %id, "session expired");
                if let Some(mut m) = group.members.remove(&id) {
                    fail_waiters(&mut m, GroupError::UnknownMemberId);
                }
                member_gone(group, &id, now);
            }
            if group.state == GroupState::PreparingRebalance {
                try_complete_join(group, now);
            }
            for m in group.members.values() {
                if m.join.is_none() {
                    earliest(m.seen + m.session_timeout);
                }
            }
            if group.state == GroupState::PreparingRebalance {
                for t in [group.rebalance_deadline, group.complete_after].into_iter().flatten() {
                    earliest(t);
                }
            }
        }
        // Forget groups nobody uses (their committed offsets stay in the offsets topic).
        self.groups
            .retain(|_, g| !(g.state == GroupState::Empty && g.members.is_empty() && g.pending.is_empty()));
        next
    }

    /// Whether an OffsetCommit from this member at this generation may be applied: a member of
    /// the current generation, except while that generation is being synced.
    /// A commit with generation -1 and no member id comes from a consumer outside any group
    /// (manual assignment): allowed while the group has no members.
    pub fn check_commit(&self, group_id: &str, member_id: &str, generation: i32) -> Result<(), GroupError> {
        self.check_commit_of(group_id, member_id, generation, &[])
    }

    /// [`Groups::check_commit`] for a commit of `partitions`, which consumer-protocol groups
    /// check (see `ConsumerGroups::check_commit`).
    pub fn check_commit_of(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        partitions: &[(String, u32)],
    ) -> Result<(), GroupError> {
        if self.consumer.contains(group_id) {
            return self.consumer.check_commit(group_id, member_id, generation, partitions);
        }
        let Some(group) = self.groups.get(group_id) else {
            return if generation < 0 { Ok(()) } else { Err(GroupError::IllegalGeneration) };
        };
        if generation < 0 && member_id.is_empty() {
            return if group.members.is_empty() { Ok(()) } else { Err(GroupError::UnknownMemberId) };
        }
        if !group.members.contains_key(member_id) {
            return Err(GroupError::UnknownMemberId);
        }
        if generation != group.generation {
            return Err(GroupError::IllegalGeneration);
        }
        // While members rejoin, the old generation's commits still count (they are what the
        // new owners resume from); once the new generation exists, its members must finish
        // syncing first (Kafka's rules).
        if group.state == GroupState::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        Ok(())
    }

    /// Ids of the groups with members: their committed offsets are in use and do not expire.
    pub fn with_members(&self) -> Vec<String> {
        let mut ids: Vec<String> =
            self.groups.iter().filter(|(_, g)| !g.members.is_empty()).map(|(id, _)| id.clone()).collect();
        ids.extend(self.consumer.with_members());
        ids
    }

    /// A ConsumerGroupHeartbeat: refused for a group id that is a classic group with members.
    pub fn consumer_heartbeat(
        &mut self,
        hb: super::consumer::Heartbeat,
        now: Instant,
        partitions: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<super::consumer::HeartbeatReply, GroupError> {
        if self.groups.get(&hb.group).is_some_and(|g| !g.members.is_empty()) {
            return Err(GroupError::GroupIdNotFound);
        }
        self.consumer.heartbeat(hb, now, partitions)
    }

    /// (group id, protocol type, state) of every group.
    pub fn list(&self) -> Vec<(String, String, GroupState)> {
        let mut all: Vec<_> =
            self.groups.iter().map(|(id, g)| (id.clone(), g.protocol_type.clone(), g.state)).collect();
        all.sort();
        all
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let g = self.groups.get(group_id)?;
        Some(GroupDescription {
            state: g.state,
            protocol_type: g.protocol_type.clone(),
            protocol_name: g.protocol_name.clone(),
            generation: g.generation,
            members: g
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata(&g.protocol_name),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }
}

fn fail_waiters(member: &mut Member, error: GroupError) {
    if let Some(w) = member.join.take() {
        let _ = w.send(Err(error));
    }
    if let Some(w) = member.sync.take() {
        let _ = w.send(Err(error));
    }
}

fn start_rebalance(group: &mut Group, now: Instant) {
    let timeout = group.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default();
    tracing::debug!(
        generation = group.generation,
        members = group.members.len(),
        ?timeout,
        "rebalance starts"
    );
    group.state = GroupState::PreparingRebalance;
    group.rebalance_deadline = Some(now + timeout);
    // Syncs waiting for an assignment of the old generation will never get one.
    for m in group.members.values_mut() {
        if let Some(w) = m.sync.take() {
            let _ = w.send(Err(GroupError::RebalanceInProgress));
        }
    }
}

/// The last member is gone: a new generation with nobody in it.
fn become_empty(group: &mut Group) {
    group.state = GroupState::Empty;
    group.generation += 1;
    group.leader = None;
    group.protocol_name.clear();
    group.protocol_type.clear();
    group.rebalance_deadline = None;
    group.complete_after = None;
}

/// A member left or expired: the others must rebalance.
fn member_gone(group: &mut Group, id: &str, now: Instant) {
    if group.leader.as_deref() == Some(id) {
        group.leader = None;
    }
    if group.members.is_empty() {
        become_empty(group);
    } else if group.state != GroupState::PreparingRebalance {
        start_rebalance(group, now);
    } else {
        try_complete_join(group, now);
    }
}

/// Completes the rebalance if every member has rejoined (after the initial delay of a new
/// group), or if the deadline passed (removing those that did not rejoin).
fn try_complete_join(group: &mut Group, now: Instant) {
    if group.state != GroupState::PreparingRebalance {
        return;
    }
    let deadline_passed = group.rebalance_deadline.is_none_or(|d| now >= d);
    let all_joined = group.members.values().all(|m| m.join.is_some());
    let delay_over = group.complete_after.is_none_or(|t| now >= t);
    if !(all_joined && delay_over || deadline_passed) {
        return;
    }
    group.complete_after = None;
    // Whoever did not rejoin in time is out.
    group.members.retain(|_, m| m.join.is_some());
    if group.members.is_empty() {
        become_empty(group);
        return;
    }
    // The assignor every member supports that the members rank highest in total.
    let mut best: Option<(usize, String)> = None;
    if let Some(first) = group.members.values().next() {
        for (name, _) in &first.protocols {
            let mut score = 0;
            let mut everywhere = true;
            for m in group.members.values() {
                match m.protocols.iter().position(|(n, _)| n == name) {
                    Some(rank) => score += rank,
                    None => everywhere = false,
                }
            }
            if everywhere && best.as_ref().is_none_or(|(s, _)| score < *s) {
                best = Some((score, name.clone()));
            }
        }
    }
    let Some((_, protocol)) = best else {
        // Cannot happen: joins with no common protocol are refused. Fail everyone rather than
        // hand out a broken generation.
        for m in group.members.values_mut() {
            fail_waiters(m, GroupError::InconsistentGroupProtocol);
        }
        return;
    };
    group.generation += 1;
    group.protocol_name = protocol;
    group.state = GroupState::CompletingRebalance;
    group.rebalance_deadline = None;
    if group.leader.as_ref().is_none_or(|l| !group.members.contains_key(l)) {
        group.leader = group.members.keys().next().cloned();
    }
    tracing::debug!(
        generation = group.generation,
        protocol = %group.protocol_name,
        leader = ?group.leader,
        members = group.members.len(),
        "rebalance completes"
    );
    let ids: Vec<String> = group.members.keys().cloned().collect();
    for id in ids {
        let outcome = outcome_for(group, &id);
        if let Some(m) = group.members.get_mut(&id) {
            m.seen = now;
            m.assignment = Bytes::new();
            if let Some(w) = m.join.take() {
                let _ = w.send(Ok(outcome));
            }
        }
    }
}

fn outcome_for(group: &Group, member_id: &str) -> JoinOutcome {
    let leader = group.leader.clone().unwrap_or_default();
    let members = if leader == member_id {
        group
            .members
            .values()
            .map(|m| JoinedMember {
                member_id: m.id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                metadata: m.metadata(&group.protocol_name),
            })
            .collect()
    } else {
        Vec::new()
    };
    JoinOutcome {
        generation: group.generation,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol_name.clone(),
        leader,
        member_id: member_id.to_string(),
        members,
    }
}
