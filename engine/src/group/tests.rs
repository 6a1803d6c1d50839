use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

const SESSION: Duration = Duration::from_secs(10);

fn groups() -> Groups {
    Groups::new(Timeouts {
        session_min: Duration::from_secs(1),
        session_max: Duration::from_secs(60),
        initial_rebalance_delay: Duration::from_millis(300),
    })
}

fn request(member_id: &str, protocols: &[&str]) -> JoinRequest {
    JoinRequest {
        group: "g".into(),
        member_id: member_id.into(),
        group_instance_id: None,
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|p| (p.to_string(), Bytes::from(format!("meta-{member_id}"))))
            .collect(),
        session_timeout: SESSION,
        rebalance_timeout: Duration::from_secs(5),
        require_known_member_id: true,
    }
}

type JoinRx = oneshot::Receiver<Result<JoinOutcome, GroupError>>;

/// Joins with an empty id, gets MEMBER_ID_REQUIRED and the id, and rejoins with it.
fn join_new(g: &mut Groups, now: Instant, protocols: &[&str]) -> (String, JoinRx) {
    let (tx, rx) = oneshot::channel();
    let id = g.join(request("", protocols), now, tx).expect("a member id is handed out");
    assert_eq!(rx.try_recv().unwrap(), Err(GroupError::MemberIdRequired));
    let (tx, rx) = oneshot::channel();
    assert_eq!(g.join(request(&id, protocols), now, tx), None);
    (id, rx)
}

fn sync(
    g: &mut Groups,
    id: &str,
    generation: i32,
    assignments: Vec<(String, Bytes)>,
    now: Instant,
) -> oneshot::Receiver<Result<SyncOutcome, GroupError>> {
    let (tx, rx) = oneshot::channel();
    g.sync("g", id, generation, assignments, now, tx);
    rx
}

/// Three members join within the initial delay, get one generation and one leader; the
/// leader's assignments reach everyone.
fn stable_group_of_three(g: &mut Groups, t0: Instant) -> (Vec<String>, i32) {
    let joins: Vec<_> = (0..3).map(|_| join_new(g, t0, &["range", "roundrobin"])).collect();
    for (_, rx) in &joins {
        assert!(rx.try_recv().is_err(), "nobody is answered before the initial delay");
    }
    g.tick(t0 + Duration::from_millis(301));
    let outcomes: Vec<JoinOutcome> = joins.iter().map(|(_, rx)| rx.try_recv().unwrap().unwrap()).collect();
    let generation = outcomes[0].generation;
    let leader = outcomes[0].leader.clone();
    assert!(outcomes
        .iter()
        .all(|o| o.generation == generation && o.leader == leader && o.protocol_name == "range"));
    let with_members: Vec<_> = outcomes.iter().filter(|o| !o.members.is_empty()).collect();
    assert_eq!(with_members.len(), 1, "only the leader sees the members");
    assert_eq!(with_members[0].member_id, leader);
    assert_eq!(with_members[0].members.len(), 3);
    let ids: Vec<String> = joins.iter().map(|(id, _)| id.clone()).collect();
    let now = t0 + Duration::from_millis(302);
    let followers: Vec<_> = ids
        .iter()
        .filter(|id| **id != leader)
        .map(|id| (id.clone(), sync(g, id, generation, vec![], now)))
        .collect();
    for (_, rx) in &followers {
        assert!(rx.try_recv().is_err(), "followers wait for the leader's sync");
    }
    let assignments = ids.iter().map(|id| (id.clone(), Bytes::from(format!("for-{id}")))).collect();
    let leader_rx = sync(g, &leader, generation, assignments, now);
    assert_eq!(leader_rx.try_recv().unwrap().unwrap().assignment, Bytes::from(format!("for-{leader}")));
    for (id, rx) in followers {
        assert_eq!(rx.try_recv().unwrap().unwrap().assignment, Bytes::from(format!("for-{id}")));
    }
    assert_eq!(g.describe("g").unwrap().state, GroupState::Stable);
    (ids, generation)
}

#[test]
fn members_join_once_and_the_leaders_assignment_reaches_every_member() {
    let mut g = groups();
    let t0 = Instant::now();
    let (ids, generation) = stable_group_of_three(&mut g, t0);
    for id in &ids {
        assert_eq!(g.heartbeat("g", id, generation, t0 + Duration::from_secs(1)), Ok(()));
    }
    assert_eq!(g.heartbeat("g", &ids[0], generation - 1, t0), Err(GroupError::IllegalGeneration));
    assert_eq!(g.heartbeat("g", "stranger", generation, t0), Err(GroupError::UnknownMemberId));
    assert_eq!(g.check_commit("g", &ids[1], generation), Ok(()));
    assert_eq!(g.check_commit("g", &ids[1], generation + 1), Err(GroupError::IllegalGeneration));
    assert_eq!(
        g.check_commit("g", "", -1),
        Err(GroupError::UnknownMemberId),
        "a group with members refuses outsiders"
    );
    assert_eq!(g.check_commit("other", "", -1), Ok(()), "a consumer outside any group may commit");
}

#[test]
fn a_leave_makes_the_rest_rejoin_into_a_new_generation() {
    let mut g = groups();
    let t0 = Instant::now();
    let (ids, generation) = stable_group_of_three(&mut g, t0);
    let t1 = t0 + Duration::from_secs(1);
    g.leave("g", &ids[2], None, t1).unwrap();
    assert_eq!(g.heartbeat("g", &ids[0], generation, t1), Err(GroupError::RebalanceInProgress));
    assert_eq!(
        g.check_commit("g", &ids[0], generation),
        Ok(()),
        "commits of the old generation count while members rejoin"
    );
    let rejoin: Vec<_> = ids[..2]
        .iter()
        .map(|id| {
            let (tx, rx) = oneshot::channel();
            g.join(request(id, &["range", "roundrobin"]), t1, tx);
            rx
        })
        .collect();
    let outcomes: Vec<_> = rejoin.iter().map(|rx| rx.try_recv().unwrap().unwrap()).collect();
    assert!(outcomes.iter().all(|o| o.generation == generation + 1), "both rejoined: no need to wait");
    assert_eq!(g.describe("g").unwrap().members.len(), 2);
    assert_eq!(g.leave("g", &ids[2], None, t1), Err(GroupError::UnknownMemberId));
}

#[test]
fn a_member_whose_session_expires_is_removed_and_the_group_rebalances() {
    let mut g = groups();
    let t0 = Instant::now();
    let (ids, generation) = stable_group_of_three(&mut g, t0);
    // Two keep heartbeating, the third goes silent.
    let mut now = t0;
    for _ in 0..12 {
        now += Duration::from_secs(1);
        for id in &ids[..2] {
            let _ = g.heartbeat("g", id, generation, now);
        }
        g.tick(now);
    }
    let d = g.describe("g").unwrap();
    assert_eq!(d.members.len(), 2, "the silent member expired after its 10 s session");
    assert!(!d.members.iter().any(|m| m.member_id == ids[2]));
    assert_eq!(d.state, GroupState::PreparingRebalance);
    assert_eq!(g.heartbeat("g", &ids[0], generation, now), Err(GroupError::RebalanceInProgress));
}

#[test]
fn members_that_do_not_rejoin_by_the_rebalance_deadline_are_dropped() {
    let mut g = groups();
    let t0 = Instant::now();
    let (ids, generation) = stable_group_of_three(&mut g, t0);
    let t1 = t0 + Duration::from_secs(1);
    // A fourth member arrives: everyone must rejoin, but only it and one other do.
    let (new_id, new_rx) = join_new(&mut g, t1, &["range"]);
    let (tx, old_rx) = oneshot::channel();
    g.join(request(&ids[0], &["range", "roundrobin"]), t1, tx);
    g.tick(t1 + Duration::from_secs(4));
    assert!(new_rx.try_recv().is_err(), "still within the 5 s rebalance timeout");
    g.tick(t1 + Duration::from_secs(5));
    let a = new_rx.try_recv().unwrap().unwrap();
    let b = old_rx.try_recv().unwrap().unwrap();
    assert_eq!(a.generation, generation + 1);
    assert_eq!(b.generation, generation + 1);
    let members: Vec<_> = g.describe("g").unwrap().members.into_iter().map(|m| m.member_id).collect();
    assert_eq!(members.len(), 2);
    assert!(members.contains(&new_id) && members.contains(&ids[0]));
}

#[test]
fn joins_without_a_common_protocol_or_with_bad_timeouts_are_refused() {
    let mut g = groups();
    let t0 = Instant::now();
    let _ = join_new(&mut g, t0, &["range"]);
    let (tx, rx) = oneshot::channel();
    assert_eq!(g.join(request("", &["sticky-only"]), t0, tx), None);
    assert_eq!(rx.try_recv().unwrap(), Err(GroupError::InconsistentGroupProtocol));
    let mut r = request("", &["range"]);
    r.session_timeout = Duration::from_millis(10);
    let (tx, rx) = oneshot::channel();
    g.join(r, t0, tx);
    assert_eq!(rx.try_recv().unwrap(), Err(GroupError::InvalidSessionTimeout));
    let (tx, rx) = oneshot::channel();
    g.join(request("never-handed-out", &["range"]), t0, tx);
    assert_eq!(rx.try_recv().unwrap(), Err(GroupError::UnknownMemberId));
}

#[test]
fn an_emptied_group_is_forgotten_and_listed_until_then() {
    let mut g = groups();
    let t0 = Instant::now();
    let (ids, _) = stable_group_of_three(&mut g, t0);
    assert_eq!(g.list(), vec![("g".to_string(), "consumer".to_string(), GroupState::Stable)]);
    for id in &ids {
        g.leave("g", id, None, t0).unwrap();
    }
    assert_eq!(g.describe("g").unwrap().state, GroupState::Empty);
    g.tick(t0);
    assert!(g.list().is_empty());
}
