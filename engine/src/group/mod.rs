//! Consumer groups. The Kafka "classic" group protocol (this file and `state.rs`): membership,
//! generations and rebalances, with the assignment computed by the group's leader client; and
//! the KIP-848 consumer protocol (`consumer.rs`), with the assignment computed here.
//!
//! Model: a group is `Empty`, `PreparingRebalance` (members are rejoining), `CompletingRebalance`
//! (the new generation is known; the leader is computing assignments) or `Stable`. A join, a
//! leave, a protocol change or a member's session expiring starts a rebalance; it completes when
//! every known member has rejoined or the rebalance timeout passes (members that did not rejoin
//! are removed). The leader's SyncGroup hands every member its assignment. Clients choose the
//! assignor (range, roundrobin, cooperative-sticky): the broker only picks a protocol every
//! member supports and relays the leader's assignments, as Kafka does.
//!
//! This module is sans-IO: callers pass the time in, and waiting joins and syncs are one-shot
//! channels answered when the state machine completes them. The Kafka handlers drive it and a
//! timer calls [`Groups::tick`].

pub mod consumer;
mod state;
#[cfg(test)]
mod tests;

pub use state::{
    GroupDescription, GroupError, GroupState, Groups, JoinOutcome, JoinRequest, JoinedMember,
    MemberDescription, SyncOutcome, Timeouts,
};
