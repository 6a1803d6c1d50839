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
    DescribeGroupsRequest, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsRequest, RequestHeader, SyncGroupRequest, SyncGroupResponse,
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
    let Some(listed) = ctx.shared.coordinator.call(|g| g.list()).await else {
        return ListGroupsResponse::default()
            .with_error_code(group_code(GroupError::CoordinatorNotAvailable).code());
    };
    let groups = listed
        .into_iter()
        .filter(|(_, _, state)| states.is_empty() || states.iter().any(|s| s == state.name()))
        .map(|(id, protocol_type, state)| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&id)))
                .with_protocol_type(str_bytes(&protocol_type))
                .with_group_state(str_bytes(state.name()))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
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
