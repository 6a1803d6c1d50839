//! ListOffsets, DeleteRecords, OffsetCommit, OffsetFetch: positions in partitions, and groups' committed ones
//! (stored durably in the engine's offsets topic).

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, GroupId, ListOffsetsRequest, OffsetCommitRequest,
    OffsetFetchRequest,
};

use super::super::errors;
use super::super::server::Ctx;
use super::groups::group_code;
use super::{partition_index, str_bytes, topic_name};
use crate::engine::CommittedOffset;
use crate::engine::{EngineError, OffsetSpec};

pub async fn list_offsets(ctx: &Rc<Ctx>, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut topics = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::new();
        for p in topic.partitions {
            let spec = match p.timestamp {
                -1 => OffsetSpec::Latest,
                -2 => OffsetSpec::Earliest,
                ts => OffsetSpec::Timestamp(ts),
            };
            let mut out = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            let result = match (p.timestamp, partition_index(p.partition_index)) {
                (ts, _) if ts < -2 => Err(EngineError::BadTimestamp(ts)),
                (_, Err(e)) => Err(e),
                (_, Ok(index)) => {
                    let engine = ctx.engine.clone();
                    engine.list_offset_async(&name, index, spec).await
                }
            };
            match result {
                Ok(Some((offset, timestamp))) => {
                    out.offset = offset;
                    out.timestamp = timestamp;
                }
                // No batch at or after that time: Kafka answers -1.
                Ok(None) => {
                    out.offset = -1;
                    out.timestamp = -1;
                }
                Err(EngineError::BadTimestamp(_)) => out.error_code = ResponseError::InvalidRequest.code(),
                Err(e) => {
                    out.error_code = errors::code(&e).code();
                    out.offset = -1;
                    out.timestamp = -1;
                }
            }
            partitions.push(out);
        }
        topics.push(ListOffsetsTopicResponse::default().with_name(topic.name).with_partitions(partitions));
    }
    ListOffsetsResponse::default().with_topics(topics)
}

pub async fn commit(ctx: &Rc<Ctx>, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = request.group_id.0.to_string();
    let (group2, member, generation) =
        (group.clone(), request.member_id.to_string(), request.generation_id_or_member_epoch);
    let partitions: Vec<(String, u32)> = request
        .topics
        .iter()
        .take(super::REQUEST_PARTITIONS_MAX)
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), u32::try_from(p.partition_index).unwrap_or(u32::MAX)))
        })
        .take(super::REQUEST_PARTITIONS_MAX)
        .collect();
    let allowed = ctx
        .shared
        .coordinator
        .call(move |g| g.check_commit_of(&group2, &member, generation, &partitions))
        .await
        .unwrap_or(Err(crate::group::GroupError::CoordinatorNotAvailable));
    let named: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    let allowed = allowed.and_then(|()| {
        super::check_partition_count(named).map_err(|_| crate::group::GroupError::InvalidRequest)
    });
    let mut topics = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        // All commits of the request go out at once; each is durable when answered.
        let mut pending = Vec::new();
        for p in topic.partitions {
            let index = p.partition_index;
            let started = match (&allowed, partition_index(index)) {
                (Err(e), _) => Err(group_code(*e)),
                (Ok(()), Err(e)) => Err(errors::code(&e)),
                (Ok(()), Ok(partition)) => {
                    let engine = ctx.engine.clone();
                    let (group, name) = (group.clone(), name.clone());
                    let offset = p.committed_offset;
                    let metadata = p.committed_metadata.as_ref().map_or(String::new(), |m| m.to_string());
                    Ok(tokio::task::spawn_local(async move {
                        engine.commit_offset_async(&group, &name, partition, offset, &metadata).await
                    }))
                }
            };
            pending.push((index, started));
        }
        let mut partitions = Vec::new();
        for (index, started) in pending {
            let code = match started {
                Err(code) => code.code(),
                Ok(task) => match task.await {
                    Ok(Ok(())) => 0,
                    Ok(Err(e)) => commit_error(&e).code(),
                    Err(_) => ResponseError::UnknownServerError.code(),
                },
            };
            partitions.push(
                OffsetCommitResponsePartition::default().with_partition_index(index).with_error_code(code),
            );
        }
        topics.push(OffsetCommitResponseTopic::default().with_name(topic.name).with_partitions(partitions));
    }
    OffsetCommitResponse::default().with_topics(topics)
}

fn commit_error(e: &EngineError) -> ResponseError {
    match e {
        EngineError::InvalidConsumerName { .. } => ResponseError::InvalidGroupId,
        EngineError::NegativeOffset(_) => ResponseError::InvalidCommitOffsetSize,
        other => errors::code(other),
    }
}

/// (topic, partitions) asked for, or every partition of every topic the group committed on.
async fn committed(
    ctx: &Rc<Ctx>,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<(String, Vec<(i32, Result<Option<CommittedOffset>, EngineError>)>)>, EngineError> {
    let engine = ctx.engine.clone();
    if let Some(t) = &topics {
        super::check_partition_count(t.iter().map(|(_, ps)| ps.len()).sum())?;
    }
    let topics = match topics {
        Some(t) => t,
        None => {
            let all = engine.committed_offsets_async(group).await?;
            let mut by_topic: Vec<(String, Vec<i32>)> = Vec::new();
            for (topic, partition, _) in all {
                match by_topic.iter_mut().find(|(t, _)| **t == *topic) {
                    Some((_, ps)) => ps.push(partition as i32),
                    None => by_topic.push((topic.to_string(), vec![partition as i32])),
                }
            }
            by_topic
        }
    };
    let mut out = Vec::new();
    for (topic, partitions) in topics {
        let mut results = Vec::new();
        for p in partitions {
            let result = match partition_index(p) {
                Err(e) => Err(e),
                Ok(index) => engine.committed_offset_async(group, &topic, index).await,
            };
            results.push((p, result));
        }
        out.push((topic, results));
    }
    Ok(out)
}

/// (offset, metadata, error code) of one partition of an OffsetFetch answer.
fn fetched_offset(result: &Result<Option<CommittedOffset>, EngineError>) -> (i64, &str, i16) {
    match result {
        Ok(Some(c)) => (c.offset, &c.metadata, 0),
        Ok(None) => (-1, "", 0),
        // A partition that does not exist has no committed offset; Kafka says -1 too.
        Err(EngineError::UnknownTopic(_) | EngineError::UnknownPartition { .. }) => (-1, "", 0),
        Err(e) => (-1, "", errors::code(e).code()),
    }
}

/// The committed offsets of a group as a response's topics, for either shape of OffsetFetch
/// (v8 batches groups with types of their own; the fields are the same).
macro_rules! offset_topics {
    ($topics:expr, $topic:ty, $partition:ty) => {
        $topics
            .into_iter()
            .map(|(name, parts)| {
                <$topic>::default().with_name(topic_name(&name)).with_partitions(
                    parts
                        .iter()
                        .map(|(p, r)| {
                            let (offset, metadata, code) = fetched_offset(r);
                            <$partition>::default()
                                .with_partition_index(*p)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(-1)
                                .with_metadata(Some(str_bytes(metadata)))
                                .with_error_code(code)
                        })
                        .collect(),
                )
            })
            .collect()
    };
}

pub async fn fetch(ctx: &Rc<Ctx>, request: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::new();
        for g in request.groups {
            let asked = g
                .topics
                .map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
            let group = g.group_id.0.to_string();
            let mut out = OffsetFetchResponseGroup::default().with_group_id(GroupId(str_bytes(&group)));
            match committed(ctx, &group, asked).await {
                Ok(topics) => {
                    out.topics =
                        offset_topics!(topics, OffsetFetchResponseTopics, OffsetFetchResponsePartitions)
                }
                Err(e) => out.error_code = commit_error(&e).code(),
            }
            groups.push(out);
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let group = request.group_id.0.to_string();
    let asked = request
        .topics
        .map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
    let mut response = OffsetFetchResponse::default();
    match committed(ctx, &group, asked).await {
        Ok(topics) => {
            response.topics = offset_topics!(topics, OffsetFetchResponseTopic, OffsetFetchResponsePartition)
        }
        Err(e) => response.error_code = commit_error(&e).code(),
    }
    response
}

/// DeleteRecords: each partition's log start moves to the given offset (-1: the high
/// watermark); the answer is the new log start (its low watermark).
pub async fn delete_records(ctx: &Rc<Ctx>, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let named: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    let too_many = super::check_partition_count(named).is_err();
    let mut topics = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::new();
        for p in topic.partitions {
            let mut out = DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            let result = match (p.offset, partition_index(p.partition_index)) {
                _ if too_many => Err(ResponseError::InvalidRequest),
                (_, Err(e)) => Err(errors::code(&e)),
                (offset, _) if offset < -1 => Err(ResponseError::OffsetOutOfRange),
                (offset, Ok(index)) => {
                    let engine = ctx.engine.clone();
                    let offset = (offset >= 0).then_some(offset);
                    engine.delete_records_async(&name, index, offset).await.map_err(|e| match e {
                        EngineError::InvalidTopicName { .. } => ResponseError::InvalidTopicException,
                        e => errors::code(&e),
                    })
                }
            };
            match result {
                Ok(low) => out.low_watermark = low,
                Err(code) => {
                    out.error_code = code.code();
                    out.low_watermark = -1;
                }
            }
            partitions.push(out);
        }
        topics.push(DeleteRecordsTopicResult::default().with_name(topic.name).with_partitions(partitions));
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
