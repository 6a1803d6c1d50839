//! Request handlers: decode, call the engine or the coordinator, encode.
//!
//! Each handler takes the decoded request and returns the response message; [`handle`] does
//! the framing around it. A request that cannot be decoded, or names an API or version that is
//! not implemented, closes the connection (as Kafka does), except ApiVersions, which answers
//! UNSUPPORTED_VERSION with the supported ranges so that the client can retry.

mod admin;
pub(crate) mod fetch;
mod groups;
mod meta;
mod offsets;
mod produce;

use std::future::Future;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use super::codec::{self, Outgoing, Prefix};
use super::server::Ctx;
use super::versions;
use crate::engine::EngineError;

/// A handler's result, with what the metrics need.
#[derive(Debug)]
pub struct Handled {
    pub api: &'static str,
    pub started: Instant,
    /// `Ok(None)`: no response is due (Produce with acks=0). `Err`: close the connection.
    pub response: Result<Option<Outgoing>, String>,
    /// The shard owning every partition the request named, when one shard owns them all
    /// (Produce and Fetch): where the connection would serve such requests without a hop.
    pub owner: Option<usize>,
}

/// The one shard owning all of `partitions` of the engine, if there is one.
pub fn sole_owner<'a>(ctx: &Ctx, partitions: impl IntoIterator<Item = (&'a str, i32)>) -> Option<usize> {
    let shards = ctx.engine.shards();
    let mut owner = None;
    for (topic, p) in partitions {
        let s = crate::engine::shard_of(topic, u32::try_from(p).ok()?, shards);
        match owner {
            None => owner = Some(s),
            Some(o) if o == s => {}
            Some(_) => return None,
        }
    }
    owner
}

/// Partitions one Fetch, OffsetCommit or OffsetFetch may name: each costs a request to a
/// shard, and a commit a record on disk.
pub const REQUEST_PARTITIONS_MAX: usize = 10_000;

/// Refuses a request naming more than [`REQUEST_PARTITIONS_MAX`] partitions.
fn check_partition_count(partitions: usize) -> Result<(), EngineError> {
    if partitions > REQUEST_PARTITIONS_MAX {
        return Err(EngineError::TooManyPartitionsInRequest { partitions, max: REQUEST_PARTITIONS_MAX });
    }
    Ok(())
}

/// The room a frame takes in the server's request byte budget. Handlers give it back as soon
/// as the request is decoded, so that waiting (long polls, rebalances) holds none of it. A
/// Produce frame's room is not here but in its bytes (`frames::FramePool::freeze`): the shards
/// stage and write the batches as slices of the frame, and the room goes when they drop them.
#[derive(Debug)]
pub(crate) struct FrameBudget(#[allow(dead_code)] Vec<tokio::sync::OwnedSemaphorePermit>);

impl FrameBudget {
    pub fn new(permits: Vec<tokio::sync::OwnedSemaphorePermit>) -> FrameBudget {
        FrameBudget(permits)
    }
}

pub(crate) async fn handle(
    ctx: &Rc<Ctx>,
    prefix: Prefix,
    mut frame: Bytes,
    started: Instant,
    budget: FrameBudget,
) -> Handled {
    let key = ApiKey::try_from(prefix.api_key).ok();
    let api = key.map_or("unknown", api_name);
    let mut owner = None;
    let response = match key {
        None => Err(format!("unknown API key {}", prefix.api_key)),
        Some(ApiKey::ApiVersions) => meta::api_versions(prefix, frame),
        Some(key) if !versions::supports(key, prefix.api_version) => {
            Err(format!("{key:?} v{} is not implemented", prefix.api_version))
        }
        Some(key) => match codec::decode_header(&mut frame, key, prefix.api_version) {
            Ok(header) => dispatch(ctx, key, header, frame, &mut owner, budget).await,
            Err(e) => Err(e.to_string()),
        },
    };
    Handled { api, started, response, owner }
}

async fn dispatch(
    ctx: &Rc<Ctx>,
    key: ApiKey,
    header: RequestHeader,
    body: Bytes,
    owner: &mut Option<usize>,
    budget: FrameBudget,
) -> Result<Option<Outgoing>, String> {
    let h = &header;
    let b = budget;
    match key {
        ApiKey::Metadata => run(h, body, b, |r| meta::metadata(ctx, r, h.request_api_version)).await,
        ApiKey::Produce => produce::handle(ctx, h, body, owner, b).await,
        ApiKey::Fetch => fetch::handle(ctx, h, body, owner, b).await,
        ApiKey::ListOffsets => run(h, body, b, |r| offsets::list_offsets(ctx, r)).await,
        ApiKey::DeleteRecords => run(h, body, b, |r| offsets::delete_records(ctx, r)).await,
        ApiKey::CreateTopics => {
            run(h, body, b, |r| admin::create_topics(ctx, r, h.request_api_version)).await
        }
        ApiKey::DeleteTopics => {
            run(h, body, b, |r| admin::delete_topics(ctx, r, h.request_api_version)).await
        }
        ApiKey::DescribeConfigs => run(h, body, b, |r| admin::describe_configs(ctx, r)).await,
        ApiKey::AlterConfigs => run(h, body, b, |r| admin::alter_configs(ctx, r)).await,
        ApiKey::IncrementalAlterConfigs => {
            run(h, body, b, |r| admin::incremental_alter_configs(ctx, r)).await
        }
        ApiKey::InitProducerId => run(h, body, b, |r| meta::init_producer_id(ctx, r)).await,
        ApiKey::FindCoordinator => {
            run(h, body, b, |r| meta::find_coordinator(ctx, r, h.request_api_version)).await
        }
        ApiKey::JoinGroup => run(h, body, b, |r| groups::join(ctx, r, h)).await,
        ApiKey::SyncGroup => run(h, body, b, |r| groups::sync(ctx, r)).await,
        ApiKey::Heartbeat => run(h, body, b, |r| groups::heartbeat(ctx, r)).await,
        ApiKey::LeaveGroup => run(h, body, b, |r| groups::leave(ctx, r, h.request_api_version)).await,
        ApiKey::ListGroups => run(h, body, b, |r| groups::list(ctx, r)).await,
        ApiKey::DescribeGroups => run(h, body, b, |r| groups::describe(ctx, r)).await,
        ApiKey::OffsetCommit => run(h, body, b, |r| offsets::commit(ctx, r)).await,
        ApiKey::OffsetFetch => run(h, body, b, |r| offsets::fetch(ctx, r, h.request_api_version)).await,
        ApiKey::ConsumerGroupHeartbeat => run(h, body, b, |r| groups::consumer_heartbeat(ctx, r)).await,
        ApiKey::ConsumerGroupDescribe => run(h, body, b, |r| groups::consumer_describe(ctx, r)).await,
        other => Err(format!("{other:?} is not implemented")),
    }
}

/// Decodes a request frame (starting at the api key, without the size) as the server would,
/// without running it: the entry point of the request fuzz target. Returns the API on success.
pub fn decode_request(frame: &[u8]) -> Result<ApiKey, String> {
    use kafka_protocol::messages as m;
    let prefix = Prefix::parse(frame).ok_or("frame shorter than a request prefix")?;
    let key = ApiKey::try_from(prefix.api_key).map_err(|_| format!("unknown API key {}", prefix.api_key))?;
    let version = prefix.api_version;
    if !versions::supports(key, version) {
        return Err(format!("{key:?} v{version} is not implemented"));
    }
    let mut body = Bytes::copy_from_slice(frame);
    codec::decode_header(&mut body, key, version).map_err(|e| e.to_string())?;
    fn body_as<R: Decodable>(body: &mut Bytes, version: i16) -> Result<(), String> {
        codec::decode_body::<R>(body, version, "request").map(drop).map_err(|e| e.to_string())
    }
    let b = &mut body;
    match key {
        ApiKey::Produce => body_as::<m::ProduceRequest>(b, version),
        ApiKey::Fetch => body_as::<m::FetchRequest>(b, version),
        ApiKey::ListOffsets => body_as::<m::ListOffsetsRequest>(b, version),
        ApiKey::DeleteRecords => body_as::<m::DeleteRecordsRequest>(b, version),
        ApiKey::Metadata => body_as::<m::MetadataRequest>(b, version),
        ApiKey::OffsetCommit => body_as::<m::OffsetCommitRequest>(b, version),
        ApiKey::OffsetFetch => body_as::<m::OffsetFetchRequest>(b, version),
        ApiKey::FindCoordinator => body_as::<m::FindCoordinatorRequest>(b, version),
        ApiKey::JoinGroup => body_as::<m::JoinGroupRequest>(b, version),
        ApiKey::Heartbeat => body_as::<m::HeartbeatRequest>(b, version),
        ApiKey::LeaveGroup => body_as::<m::LeaveGroupRequest>(b, version),
        ApiKey::SyncGroup => body_as::<m::SyncGroupRequest>(b, version),
        ApiKey::DescribeGroups => body_as::<m::DescribeGroupsRequest>(b, version),
        ApiKey::ListGroups => body_as::<m::ListGroupsRequest>(b, version),
        ApiKey::ApiVersions => body_as::<m::ApiVersionsRequest>(b, version),
        ApiKey::CreateTopics => body_as::<m::CreateTopicsRequest>(b, version),
        ApiKey::DeleteTopics => body_as::<m::DeleteTopicsRequest>(b, version),
        ApiKey::InitProducerId => body_as::<m::InitProducerIdRequest>(b, version),
        ApiKey::DescribeConfigs => body_as::<m::DescribeConfigsRequest>(b, version),
        ApiKey::AlterConfigs => body_as::<m::AlterConfigsRequest>(b, version),
        ApiKey::IncrementalAlterConfigs => body_as::<m::IncrementalAlterConfigsRequest>(b, version),
        ApiKey::ConsumerGroupHeartbeat => body_as::<m::ConsumerGroupHeartbeatRequest>(b, version),
        ApiKey::ConsumerGroupDescribe => body_as::<m::ConsumerGroupDescribeRequest>(b, version),
        other => Err(format!("{other:?} is not implemented")),
    }?;
    Ok(key)
}

/// Decodes the body as `Req`, runs `f`, encodes its response for the request's version.
async fn run<Req, Resp, F, Fut>(
    header: &RequestHeader,
    mut body: Bytes,
    budget: FrameBudget,
    f: F,
) -> Result<Option<Outgoing>, String>
where
    Req: Decodable,
    Resp: Encodable + HeaderVersion,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Resp>,
{
    let key = ApiKey::try_from(header.request_api_key).map_err(|_| "unknown API key".to_string())?;
    let version = header.request_api_version;
    let request: Req = codec::decode_body(&mut body, version, api_name(key)).map_err(|e| e.to_string())?;
    drop(body);
    drop(budget);
    let response = f(request).await;
    codec::encode_response(key, version, header.correlation_id, &response)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The API's name, for metrics and logs.
pub fn api_name(key: ApiKey) -> &'static str {
    match key {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        _ => "other",
    }
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

/// A partition index from the wire as the engine's `u32` (negative ones do not exist).
fn partition_index(p: i32) -> Result<u32, EngineError> {
    u32::try_from(p).map_err(|_| EngineError::UnknownPartition { topic: String::new(), partition: u32::MAX })
}
