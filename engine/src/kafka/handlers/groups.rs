//! JoinGroup, SyncGroup, Heartbeat, LeaveGroup, ListGroups, DescribeGroups over the
//! coordinator's state machine (`crate::group`).

use std::rc::Rc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse, DescribeGroupsRequest, GroupId, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest, RequestHeader, SyncGroupRequest,
    SyncGroupResponse,
};

use super::super::server::Ctx;
use super::str_bytes;
use crate::group::{GroupError, JoinRequest};

/// The Kafka error code of a group error.
pub fn group_code(e: GroupError) -> ResponseError {
    match e {
        GroupError::UnknownMemberId => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        GroupError::MemberIdRequired => ResponseError::MemberIdRequired,
        GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
        GroupError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        GroupError::GroupIdNotFound => ResponseError::GroupIdNotFound,
        GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup,
        GroupError::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached,
        GroupError::ProtocolsTooLarge | GroupError::InvalidRequest => ResponseError::InvalidRequest,
        GroupError::UnsupportedAssignor => ResponseError::UnsupportedAssignor,
        GroupError::FencedMemberEpoch => ResponseError::FencedMemberEpoch,
        GroupError::StaleMemberEpoch => ResponseError::StaleMemberEpoch,
        GroupError::UnreleasedInstanceId => ResponseError::UnreleasedInstanceId,
    }
}

fn ms(v: i32) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

pub async fn join(ctx: &Rc<Ctx>, request: JoinGroupRequest, header: &RequestHeader) -> JoinGroupResponse {
    let version = header.request_api_version;
    let req = JoinRequest {
        group: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.map(|s| s.to_string()),
        client_id: header.client_id.as_ref().map_or(String::new(), |c| c.to_string()),
        client_host: format!("/{}", ctx.peer.ip()),
        protocol_type: request.protocol_type.to_string(),
        protocols: request.protocols.into_iter().map(|p| (p.name.to_string(), p.metadata)).collect(),
        session_timeout: ms(request.session_timeout_ms),
        // v0 has no rebalance timeout: it is the session timeout.
        rebalance_timeout: if version >= 1 {
            ms(request.rebalance_timeout_ms)
        } else {
            ms(request.session_timeout_ms)
        },
        require_known_member_id: version >= 4,
    };
    let (tx, rx) = oneshot::channel();
    let handed_out = ctx.shared.coordinator.call(move |g| g.join(req, Instant::now(), tx)).await.flatten();
    let outcome = rx.await.unwrap_or(Err(GroupError::CoordinatorNotAvailable));
    let mut response = JoinGroupResponse::default().with_generation_id(-1);
    match outcome {
        Ok(o) => {
            response.generation_id = o.generation;
            response.protocol_type = Some(str_bytes(&o.protocol_type));
            response.protocol_name = Some(str_bytes(&o.protocol_name));
            response.leader = str_bytes(&o.leader);
            response.member_id = str_bytes(&o.member_id);
            response.members = o
                .members
                .into_iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&m.member_id))
                        .with_group_instance_id(m.group_instance_id.map(|s| str_bytes(&s)))
                        .with_metadata(m.metadata)
                })
                .collect();
        }
        Err(e) => {
            response.error_code = group_code(e).code();
            if let Some(id) = handed_out {
                response.member_id = str_bytes(&id);
            }
        }
    }
    response
}

pub async fn sync(ctx: &Rc<Ctx>, request: SyncGroupRequest) -> SyncGroupResponse {
    let (tx, rx) = oneshot::channel();
    let assignments =
        request.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect();
    let (group, member, generation) =
        (request.group_id.0.to_string(), request.member_id.to_string(), request.generation_id);
    // Gone: `tx` goes with the job, and the answer below is COORDINATOR_NOT_AVAILABLE.
    let _ = ctx
        .shared
        .coordinator
        .call(move |g| g.sync(&group, &member, generation, assignments, Instant::now(), tx))
        .await;
    match rx.await.unwrap_or(Err(GroupError::CoordinatorNotAvailable)) {
        Ok(o) => SyncGroupResponse::default()
            .with_protocol_type(Some(str_bytes(&o.protocol_type)))
            .with_protocol_name(Some(str_bytes(&o.protocol_name)))
            .with_assignment(o.assignment),
        Err(e) => SyncGroupResponse::default().with_error_code(group_code(e).code()),
    }
}

pub async fn heartbeat(ctx: &Rc<Ctx>, request: HeartbeatRequest) -> HeartbeatResponse {
    let (group, member, generation) =
        (request.group_id.0.to_string(), request.member_id.to_string(), request.generation_id);
    let result = ctx
        .shared
        .coordinator
        .call(move |g| g.heartbeat(&group, &member, generation, Instant::now()))
        .await
        .unwrap_or(Err(GroupError::CoordinatorNotAvailable));
    HeartbeatResponse::default().with_error_code(result.err().map_or(0, |e| group_code(e).code()))
}

pub async fn leave(ctx: &Rc<Ctx>, request: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let group = request.group_id.0.to_string();
    let unavailable = || Err(GroupError::CoordinatorNotAvailable);
    if version < 3 {
        let member = request.member_id.to_string();
        let result = ctx
            .shared
            .coordinator
            .call(move |g| g.leave(&group, &member, None, Instant::now()))
            .await
            .unwrap_or_else(unavailable);
        return LeaveGroupResponse::default()
            .with_error_code(result.err().map_or(0, |e| group_code(e).code()));
    }
    let leaving: Vec<(String, Option<String>)> = request
        .members
        .iter()
        .map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|s| s.to_string())))
        .collect();
    let Some(results) = ctx
        .shared
        .coordinator
        .call(move |g| {
            let now = Instant::now();
            leaving
                .iter()
                .map(|(member, instance)| g.leave(&group, member, instance.as_deref(), now))
                .collect::<Vec<_>>()
        })
        .await
    else {
        return LeaveGroupResponse::default()
            .with_error_code(group_code(GroupError::CoordinatorNotAvailable).code());
    };
    let members = request
        .members
        .into_iter()
        .zip(results)
        .map(|(m, result)| {
            MemberResponse::default()
                .with_member_id(m.member_id)
                .with_group_instance_id(m.group_instance_id)
                .with_error_code(result.err().map_or(0, |e| group_code(e).code()))
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}

pub async fn list(ctx: &Rc<Ctx>, request: ListGroupsRequest) -> ListGroupsResponse {
    let states: Vec<String> = request.states_filter.iter().map(|s| s.to_string()).collect();
    let types: Vec<String> = request.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let Some((classic, consumer)) = ctx.shared.coordinator.call(|g| (g.list(), g.consumer.list())).await
    else {
        return ListGroupsResponse::default()
            .with_error_code(group_code(GroupError::CoordinatorNotAvailable).code());
    };
    // (id, protocol type, state, group type)
    let all = classic
        .into_iter()
        .map(|(id, protocol_type, state)| (id, protocol_type, state.name(), "classic"))
        .chain(consumer.into_iter().map(|(id, state)| (id, "consumer".to_string(), state, "consumer")));
    let groups = all
        .filter(|(_, _, state, _)| states.is_empty() || states.iter().any(|s| s == state))
        .filter(|(_, _, _, kind)| types.is_empty() || types.iter().any(|t| t == kind))
        .map(|(id, protocol_type, state, kind)| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&id)))
                .with_protocol_type(str_bytes(&protocol_type))
                .with_group_state(str_bytes(state))
                .with_group_type(str_bytes(kind))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

/// ConsumerGroupHeartbeat (KIP-848): topics go by ID on the wire and by name in the state
/// machine.
pub async fn consumer_heartbeat(
    ctx: &Rc<Ctx>,
    request: ConsumerGroupHeartbeatRequest,
) -> ConsumerGroupHeartbeatResponse {
    use crate::group::consumer::{Assignment, Heartbeat};
    use kafka_protocol::messages::consumer_group_heartbeat_response::{
        Assignment as WireAssignment, TopicPartitions,
    };
    let fail = |e: ResponseError, why: &str| {
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(e.code())
            .with_error_message(Some(str_bytes(why)))
            .with_member_epoch(-1)
    };
    if request.subscribed_topic_regex.as_ref().is_some_and(|r| !r.is_empty()) {
        return fail(
            ResponseError::InvalidRegularExpression,
            "regular-expression subscriptions are not supported",
        );
    }
    let engine = &ctx.engine;
    let owned = request.topic_partitions.map(|tps| {
        let mut owned = Assignment::new();
        for tp in tps {
            if let Ok(info) = engine.topic_by_id(&crate::engine::TopicId(*tp.topic_id.as_bytes())) {
                let ps = owned.entry(info.name.to_string()).or_default();
                ps.extend(tp.partitions.iter().filter_map(|&p| u32::try_from(p).ok()));
            }
        }
        owned
    });
    let hb = Heartbeat {
        group: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.map(|s| s.to_string()),
        // -1: unchanged since the last heartbeat.
        rebalance_timeout: (request.rebalance_timeout_ms >= 0).then(|| ms(request.rebalance_timeout_ms)),
        subscribed: request
            .subscribed_topic_names
            .map(|ts| ts.into_iter().map(|t| t.0.to_string()).collect()),
        assignor: request.server_assignor.map(|s| s.to_string()),
        owned,
    };
    // Partition counts read on the coordinator thread, from the engine's topic table.
    let topics = engine.clone();
    let reply = ctx
        .shared
        .coordinator
        .call(move |g| {
            g.consumer_heartbeat(hb, Instant::now(), &|t: &str| topics.topic(t).ok().map(|i| i.partitions))
        })
        .await
        .unwrap_or(Err(GroupError::CoordinatorNotAvailable));
    match reply {
        Err(e) => fail(group_code(e), &e.to_string()),
        Ok(r) => {
            let assignment = r.assignment.map(|a| {
                let topic_partitions = a
                    .into_iter()
                    .filter_map(|(topic, ps)| {
                        let info = engine.topic(&topic).ok()?;
                        Some(
                            TopicPartitions::default()
                                .with_topic_id(uuid::Uuid::from_bytes(info.id.0))
                                .with_partitions(ps.into_iter().map(|p| p as i32).collect()),
                        )
                    })
                    .collect();
                WireAssignment::default().with_topic_partitions(topic_partitions)
            });
            ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(str_bytes(&r.member_id)))
                .with_member_epoch(r.member_epoch)
                .with_heartbeat_interval_ms(
                    i32::try_from(r.heartbeat_interval.as_millis()).unwrap_or(i32::MAX),
                )
                .with_assignment(assignment)
        }
    }
}

/// ConsumerGroupDescribe (KIP-848).
pub async fn consumer_describe(
    ctx: &Rc<Ctx>,
    request: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    use kafka_protocol::messages::consumer_group_describe_response::{
        Assignment as WireAssignment, DescribedGroup as Described, Member, TopicPartitions,
    };
    let ids: Vec<String> = request.group_ids.iter().map(|id| id.0.to_string()).collect();
    let Some(found) = ctx
        .shared
        .coordinator
        .call(move |g| {
            ids.iter().map(|id| (g.consumer.describe(id), g.describe(id).is_some())).collect::<Vec<_>>()
        })
        .await
    else {
        let error = group_code(GroupError::CoordinatorNotAvailable).code();
        let groups = request
            .group_ids
            .into_iter()
            .map(|id| Described::default().with_group_id(id).with_error_code(error))
            .collect();
        return ConsumerGroupDescribeResponse::default().with_groups(groups);
    };
    let engine = &ctx.engine;
    let wire = |a: &crate::group::consumer::Assignment| {
        let topic_partitions = a
            .iter()
            .filter_map(|(topic, ps)| {
                let info = engine.topic(topic).ok()?;
                Some(
                    TopicPartitions::default()
                        .with_topic_id(uuid::Uuid::from_bytes(info.id.0))
                        .with_topic_name(super::topic_name(topic))
                        .with_partitions(ps.iter().map(|&p| p as i32).collect()),
                )
            })
            .collect();
        WireAssignment::default().with_topic_partitions(topic_partitions)
    };
    let groups = request
        .group_ids
        .into_iter()
        .zip(found)
        .map(|(id, (description, classic))| match description {
            Some(d) => Described::default()
                .with_group_id(id)
                .with_group_state(str_bytes(d.state))
                .with_group_epoch(d.epoch)
                .with_assignment_epoch(d.assignment_epoch)
                .with_assignor_name(str_bytes(&d.assignor))
                .with_members(
                    d.members
                        .iter()
                        .map(|m| {
                            Member::default()
                                .with_member_id(str_bytes(&m.member_id))
                                .with_instance_id(m.instance_id.as_deref().map(str_bytes))
                                .with_member_epoch(m.member_epoch)
                                .with_subscribed_topic_names(
                                    m.subscribed.iter().map(|t| super::topic_name(t)).collect(),
                                )
                                .with_assignment(wire(&m.assignment))
                                .with_target_assignment(wire(&m.target))
                                .with_member_type(1)
                        })
                        .collect(),
                ),
            None => {
                let why = if classic { "not a consumer group" } else { "unknown group" };
                Described::default()
                    .with_group_id(id)
                    .with_error_code(ResponseError::GroupIdNotFound.code())
                    .with_error_message(Some(str_bytes(why)))
            }
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}

pub async fn describe(ctx: &Rc<Ctx>, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let ids: Vec<String> = request.groups.iter().map(|id| id.0.to_string()).collect();
    let Some(descriptions) =
        ctx.shared.coordinator.call(move |g| ids.iter().map(|id| g.describe(id)).collect::<Vec<_>>()).await
    else {
        let error = group_code(GroupError::CoordinatorNotAvailable).code();
        let groups = request
            .groups
            .into_iter()
            .map(|id| DescribedGroup::default().with_group_id(id).with_error_code(error))
            .collect();
        return DescribeGroupsResponse::default().with_groups(groups);
    };
    let groups = request
        .groups
        .into_iter()
        .zip(descriptions)
        .map(|(id, description)| {
            let described = DescribedGroup::default().with_group_id(id.clone());
            match description {
                // Kafka describes an unknown group as Dead with no members.
                None => described.with_group_state(str_bytes("Dead")),
                Some(d) => described
                    .with_group_state(str_bytes(d.state.name()))
                    .with_protocol_type(str_bytes(&d.protocol_type))
                    .with_protocol_data(str_bytes(&d.protocol_name))
                    .with_members(
                        d.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(str_bytes(&m.member_id))
                                    .with_group_instance_id(m.group_instance_id.map(|s| str_bytes(&s)))
                                    .with_client_id(str_bytes(&m.client_id))
                                    .with_client_host(str_bytes(&m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
