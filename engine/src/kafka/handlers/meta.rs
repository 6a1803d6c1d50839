//! ApiVersions, Metadata, InitProducerId, FindCoordinator: what a client asks before it works.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, FindCoordinatorRequest, InitProducerIdRequest,
    InitProducerIdResponse, MetadataRequest, ProducerId,
};

use super::super::codec::{self, Outgoing, Prefix};
use super::super::server::Ctx;
use super::super::versions::SUPPORTED;
use super::{str_bytes, topic_name};
use crate::engine::{EngineError, TopicInfo};

/// The only broker: this server.
pub const NODE_ID: i32 = 0;
pub const CLUSTER_ID: &str = "spate-single-node";

/// ApiVersions is answered even at versions beyond ours: with UNSUPPORTED_VERSION and our
/// ranges, encoded as v0, so the client can pick a version we speak (KIP-511).
pub fn api_versions(prefix: Prefix, mut frame: Bytes) -> Result<Option<Outgoing>, String> {
    let (min, max) = super::super::versions::range(ApiKey::ApiVersions).unwrap_or((0, 0));
    let api_keys: Vec<ApiVersion> = SUPPORTED
        .iter()
        .map(|&(key, min, max)| {
            ApiVersion::default().with_api_key(key as i16).with_min_version(min).with_max_version(max)
        })
        .collect();
    let mut response = ApiVersionsResponse::default().with_api_keys(api_keys);
    let version = if (min..=max).contains(&prefix.api_version) {
        codec::decode_header(&mut frame, ApiKey::ApiVersions, prefix.api_version)
            .map_err(|e| e.to_string())?;
        let _: ApiVersionsRequest =
            codec::decode_body(&mut frame, prefix.api_version, "ApiVersions").map_err(|e| e.to_string())?;
        prefix.api_version
    } else {
        response.error_code = ResponseError::UnsupportedVersion.code();
        0
    };
    codec::encode_response(ApiKey::ApiVersions, version, prefix.correlation_id, &response)
        .map(Some)
        .map_err(|e| e.to_string())
}

pub async fn metadata(ctx: &Rc<Ctx>, request: MetadataRequest, version: i16) -> MetadataResponse {
    let (host, port) = &ctx.shared.advertised;
    let broker = MetadataResponseBroker::default()
        .with_node_id(BrokerId(NODE_ID))
        .with_host(str_bytes(host))
        .with_port(i32::from(*port));
    // v0 asks for every topic with an empty list; later versions with a null one. v10+ may
    // name a topic by ID instead (a null name).
    let wanted: Option<Vec<Wanted>> = match request.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .map(|t| match t.name {
                    Some(n) if !n.0.is_empty() || t.topic_id.is_nil() => Wanted::Name(n.0.to_string()),
                    _ => Wanted::Id(t.topic_id),
                })
                .collect(),
        ),
    };
    // Clients before v4 cannot say; Kafka creates for them when auto creation is on.
    let allow_create = version < 4 || request.allow_auto_topic_creation;
    let mut topics = Vec::new();
    match wanted {
        None => {
            for info in ctx.engine.list_topics() {
                topics.push(describe_topic(&info));
            }
        }
        Some(names) => {
            for wanted in names {
                let name = match wanted {
                    Wanted::Name(name) => name,
                    Wanted::Id(id) => {
                        topics.push(match ctx.engine.topic_by_id(&crate::engine::TopicId(*id.as_bytes())) {
                            Ok(info) => describe_topic(&info),
                            Err(e) => MetadataResponseTopic::default()
                                .with_topic_id(id)
                                .with_error_code(super::super::errors::code(&e).code()),
                        });
                        continue;
                    }
                };
                let found = match ctx.engine.topic(&name) {
                    Err(EngineError::UnknownTopic(_))
                        if allow_create && ctx.shared.config.auto_create_topics =>
                    {
                        if !ctx.shared.auto_create_allowed() {
                            // Over the creation rate: the client asks again, as it does while a
                            // topic is being created.
                            topics.push(
                                MetadataResponseTopic::default()
                                    .with_name(Some(topic_name(&name)))
                                    .with_error_code(
                                        kafka_protocol::error::ResponseError::LeaderNotAvailable.code(),
                                    ),
                            );
                            continue;
                        }
                        auto_create(ctx, &name).await
                    }
                    other => other,
                };
                topics.push(match found {
                    Ok(info) => describe_topic(&info),
                    Err(e) => MetadataResponseTopic::default()
                        .with_name(Some(topic_name(&name)))
                        .with_error_code(super::super::errors::code(&e).code()),
                });
            }
        }
    }
    MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_cluster_id(Some(str_bytes(CLUSTER_ID)))
        .with_controller_id(BrokerId(NODE_ID))
        .with_topics(topics)
}

/// A topic a Metadata request asks about.
enum Wanted {
    Name(String),
    Id(uuid::Uuid),
}

async fn auto_create(ctx: &Rc<Ctx>, name: &str) -> Result<TopicInfo, EngineError> {
    let (owned, partitions, config) =
        (name.to_string(), ctx.shared.config.default_partitions, ctx.shared.config.topic_defaults.clone());
    let created = ctx.admin(move |engine| engine.create_topic(&owned, partitions, config)).await;
    match created {
        Ok(()) => tracing::info!(topic = name, partitions, "topic created on first use"),
        // Two clients asked at once: the other one made it.
        Err(EngineError::TopicExists(_)) => {}
        Err(e) => return Err(e),
    }
    ctx.engine.topic(name)
}

fn describe_topic(info: &TopicInfo) -> MetadataResponseTopic {
    let partitions = (0..info.partitions)
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p as i32)
                .with_leader_id(BrokerId(NODE_ID))
                .with_leader_epoch(0)
                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                .with_isr_nodes(vec![BrokerId(NODE_ID)])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&info.name)))
        .with_topic_id(uuid::Uuid::from_bytes(info.id.0))
        // `__consumer_offsets` and the CDC connector's `__spate_cdc`: written by the server only.
        .with_is_internal(info.name.starts_with("__"))
        .with_partitions(partitions)
}

pub async fn init_producer_id(ctx: &Rc<Ctx>, request: InitProducerIdRequest) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default();
    if request.transactional_id.is_some() {
        // Transactions are not implemented; see docs/protocol.md.
        return response
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    response.with_producer_id(ProducerId(ctx.shared.producer_ids.allocate())).with_producer_epoch(0)
}

pub async fn find_coordinator(
    ctx: &Rc<Ctx>,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let (host, port) = &ctx.shared.advertised;
    // Key type 0 is a consumer group; 1 (transactions) is not implemented.
    let error = if request.key_type == 0 { 0 } else { ResponseError::CoordinatorNotAvailable.code() };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(NODE_ID))
                    .with_host(str_bytes(host))
                    .with_port(i32::from(*port))
                    .with_error_code(error)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default()
        .with_error_code(error)
        .with_node_id(BrokerId(if error == 0 { NODE_ID } else { -1 }))
        .with_host(str_bytes(if error == 0 { host } else { "" }))
        .with_port(if error == 0 { i32::from(*port) } else { -1 })
}
