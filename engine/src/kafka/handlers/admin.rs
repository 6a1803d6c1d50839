//! CreateTopics, DeleteTopics, DescribeConfigs, with Kafka's topic config names mapped onto
//! [`LogConfig`] (the table is in docs/protocol.md).

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_response::{DeletableTopicResult, DeleteTopicsResponse};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalAlterConfigsResourceResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};

use super::super::errors;
use super::super::server::Ctx;
use super::{str_bytes, topic_name};
use crate::engine::EngineError;
use crate::log::{Cleanup, Durability, LogConfig};

/// Resource types of DescribeConfigs.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Config source: a topic's own setting.
const SOURCE_TOPIC: i8 = 1;

/// Applies one Kafka topic config to `config`.
pub fn apply_config(config: &mut LogConfig, name: &str, value: Option<&str>) -> Result<(), String> {
    let value = value.ok_or_else(|| format!("{name}: a value is required"))?;
    let number = || value.parse::<i64>().map_err(|_| format!("{name}={value:?} is not a whole number"));
    let positive =
        || number().and_then(|n| u64::try_from(n).map_err(|_| format!("{name}={value} is negative")));
    let optional_ms = || number().map(|n| if n < 0 { None } else { Some(Duration::from_millis(n as u64)) });
    match name {
        "segment.bytes" => config.segment_bytes = positive()?,
        "segment.ms" => config.segment_age = Duration::from_millis(positive()?),
        "retention.bytes" => config.retention_bytes = number().map(|n| u64::try_from(n).ok())?,
        "retention.ms" => config.retention_age = optional_ms()?,
        "max.message.bytes" => config.batch_bytes_max = positive()?,
        "index.interval.bytes" => {
            // Index memory is about 20 bytes per interval of log: a floor keeps it a small
            // fraction of the data.
            let bytes = positive()?;
            if bytes < INDEX_INTERVAL_BYTES_MIN {
                return Err(format!("index.interval.bytes={bytes}: at least {INDEX_INTERVAL_BYTES_MIN}"));
            }
            config.index_interval_bytes = bytes;
        }
        "message.timestamp.after.max.ms" => config.timestamp_after_max = optional_ms()?,
        "message.timestamp.before.max.ms" => config.timestamp_before_max = optional_ms()?,
        "spate.durability" => config.durability = value.parse::<Durability>()?,
        "cleanup.policy" => config.cleanup = value.parse::<Cleanup>()?,
        "delete.retention.ms" => config.compaction.delete_retention = Duration::from_millis(positive()?),
        "min.compaction.lag.ms" => config.compaction.min_lag = Duration::from_millis(positive()?),
        "max.compaction.lag.ms" => {
            let ms = positive()?;
            if ms == 0 {
                return Err("max.compaction.lag.ms must be positive".into());
            }
            config.compaction.max_lag = (ms < i64::MAX as u64).then(|| Duration::from_millis(ms));
        }
        "remote.storage.enable" => {
            config.archive = value.parse().map_err(|_| format!("{name}={value:?}: true or false"))?
        }
        "spate.archive.retention.ms" => config.archive_retention_age = optional_ms()?,
        "spate.archive.retention.bytes" => {
            config.archive_retention_bytes = number().map(|n| u64::try_from(n).ok())?
        }
        "min.cleanable.dirty.ratio" => {
            let ratio = value
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("min.cleanable.dirty.ratio={value:?}: a number from 0 to 1"))?;
            config.compaction.min_dirty_ratio_ppm = (ratio * 1e6).round() as u32;
        }
        // Single-node facts, accepted when they state what is true anyway.
        "min.insync.replicas" | "unclean.leader.election.enable" if value == "1" || value == "false" => {}
        "message.timestamp.type" if value == "CreateTime" => {}
        "compression.type" if value == "producer" => {}
        other => return Err(format!("unknown or unsupported topic config {other}={value}")),
    }
    Ok(())
}

/// Smallest `index.interval.bytes` a client may set.
pub const INDEX_INTERVAL_BYTES_MIN: u64 = 1024;

/// A topic's settings under Kafka's names.
pub fn describe_config(config: &LogConfig) -> Vec<(&'static str, String)> {
    let ms = |d: Option<Duration>| d.map_or("-1".to_string(), |d| d.as_millis().to_string());
    vec![
        ("cleanup.policy", config.cleanup.to_string()),
        ("delete.retention.ms", config.compaction.delete_retention.as_millis().to_string()),
        ("min.compaction.lag.ms", config.compaction.min_lag.as_millis().to_string()),
        (
            "max.compaction.lag.ms",
            config.compaction.max_lag.map_or(i64::MAX.to_string(), |d| d.as_millis().to_string()),
        ),
        ("min.cleanable.dirty.ratio", format!("{}", f64::from(config.compaction.min_dirty_ratio_ppm) / 1e6)),
        ("remote.storage.enable", config.archive.to_string()),
        ("spate.archive.retention.ms", ms(config.archive_retention_age)),
        (
            "spate.archive.retention.bytes",
            config.archive_retention_bytes.map_or("-1".into(), |b| b.to_string()),
        ),
        ("segment.bytes", config.segment_bytes.to_string()),
        ("segment.ms", config.segment_age.as_millis().to_string()),
        ("retention.bytes", config.retention_bytes.map_or("-1".into(), |b| b.to_string())),
        ("retention.ms", ms(config.retention_age)),
        ("max.message.bytes", config.batch_bytes_max.to_string()),
        ("index.interval.bytes", config.index_interval_bytes.to_string()),
        ("spate.durability", config.durability.to_string()),
        (
            "message.timestamp.after.max.ms",
            config.timestamp_after_max.map_or(i64::MAX.to_string(), |d| d.as_millis().to_string()),
        ),
        (
            "message.timestamp.before.max.ms",
            config.timestamp_before_max.map_or(i64::MAX.to_string(), |d| d.as_millis().to_string()),
        ),
        ("min.insync.replicas", "1".into()),
        ("message.timestamp.type", "CreateTime".into()),
        ("compression.type", "producer".into()),
    ]
}

pub async fn create_topics(
    ctx: &Rc<Ctx>,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut result = CreatableTopicResult::default().with_name(topic.name.clone());
        let partitions = match topic.num_partitions {
            -1 if topic.assignments.is_empty() => Ok(ctx.shared.config.default_partitions),
            -1 => u32::try_from(topic.assignments.len()).map_err(|_| ResponseError::InvalidPartitions),
            n => u32::try_from(n).ok().filter(|&n| n > 0).ok_or(ResponseError::InvalidPartitions),
        }
        .and_then(|n| {
            if n > crate::engine::TOPIC_PARTITIONS_MAX {
                Err(ResponseError::InvalidPartitions)
            } else {
                Ok(n)
            }
        });
        let mut config = ctx.shared.config.topic_defaults.clone();
        let checked =
            partitions.map_err(|code| (code, format!("{} partitions", topic.num_partitions))).and_then(|p| {
                if !matches!(topic.replication_factor, -1 | 1) {
                    return Err((
                        ResponseError::InvalidReplicationFactor,
                        format!("replication factor {}: this is a single node", topic.replication_factor),
                    ));
                }
                for c in &topic.configs {
                    apply_config(&mut config, c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))
                        .map_err(|why| (ResponseError::InvalidConfig, why))?;
                }
                config.validate().map_err(|why| (ResponseError::InvalidConfig, why))?;
                Ok(p)
            });
        let outcome = match checked {
            Err(e) => Err(e),
            Ok(p) if request.validate_only => crate::engine::topics::validate_name(&name)
                .map_err(|e| (errors::code(&e), e.to_string()))
                .and_then(|()| match ctx.engine.topic(&name) {
                    Ok(_) => {
                        Err((ResponseError::TopicAlreadyExists, format!("topic {name:?} already exists")))
                    }
                    Err(_) => Ok(p),
                }),
            Ok(p) => {
                let (owned, cfg) = (name.clone(), config.clone());
                ctx.admin(move |engine| engine.create_topic(&owned, p, cfg))
                    .await
                    .map(|()| p)
                    .map_err(|e| (errors::code(&e), e.to_string()))
            }
        };
        match outcome {
            Ok(p) => {
                result.num_partitions = p as i32;
                result.replication_factor = 1;
                // v7+: the new topic's ID (nil for validate_only, as Kafka).
                if let Some(info) = ctx.engine.topic(&name).ok().filter(|_| !request.validate_only) {
                    result.topic_id = uuid::Uuid::from_bytes(info.id.0);
                }
                if version >= 5 {
                    result.configs = Some(
                        describe_config(&config)
                            .into_iter()
                            .map(|(k, v)| {
                                CreatableTopicConfigs::default()
                                    .with_name(str_bytes(k))
                                    .with_value(Some(str_bytes(&v)))
                                    .with_config_source(SOURCE_TOPIC)
                            })
                            .collect(),
                    );
                }
            }
            Err((code, why)) => {
                result.error_code = code.code();
                result.error_message = Some(str_bytes(&why));
                result.num_partitions = -1;
                result.replication_factor = -1;
            }
        }
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

pub async fn delete_topics(
    ctx: &Rc<Ctx>,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // v6+ names a topic by name or by ID.
    let named: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        request.topics.into_iter().map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id)).collect()
    } else {
        request.topic_names.into_iter().map(|n| (Some(n.0.to_string()), uuid::Uuid::nil())).collect()
    };
    let mut responses = Vec::new();
    for (name, id) in named {
        let mut result = DeletableTopicResult::default().with_topic_id(id);
        let name = match name {
            Some(name) => name,
            None => match ctx.engine.topic_by_id(&crate::engine::TopicId(*id.as_bytes())) {
                Ok(info) => info.name.to_string(),
                Err(e) => {
                    result.error_code = errors::code(&e).code();
                    result.error_message = Some(str_bytes(&e.to_string()));
                    responses.push(result);
                    continue;
                }
            },
        };
        if let Ok(info) = ctx.engine.topic(&name) {
            result.topic_id = uuid::Uuid::from_bytes(info.id.0);
        }
        result.name = Some(topic_name(&name));
        let owned = name.clone();
        if let Err(e) = ctx.admin(move |engine| engine.delete_topic(&owned)).await {
            result.error_code = match e {
                EngineError::InvalidTopicName { .. } => ResponseError::InvalidTopicException.code(),
                ref other => errors::code(other).code(),
            };
            result.error_message = Some(str_bytes(&e.to_string()));
        }
        responses.push(result);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn describe_configs(ctx: &Rc<Ctx>, request: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let mut results = Vec::new();
    for resource in request.resources {
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let entries: Result<Vec<(&str, String)>, (ResponseError, String)> = match resource.resource_type {
            RESOURCE_TOPIC => ctx
                .engine
                .topic(resource.resource_name.as_str())
                .map(|info| describe_config(&info.config))
                .map_err(|e| (errors::code(&e), e.to_string())),
            RESOURCE_BROKER => Ok(vec![
                ("message.max.bytes", ctx.shared.config.produce_frame_bytes_max.to_string()),
                ("auto.create.topics.enable", ctx.shared.config.auto_create_topics.to_string()),
                ("num.partitions", ctx.shared.config.default_partitions.to_string()),
            ]),
            other => Err((ResponseError::InvalidRequest, format!("resource type {other} is not supported"))),
        };
        match entries {
            Ok(entries) => {
                let keys: Option<Vec<String>> =
                    resource.configuration_keys.map(|ks| ks.iter().map(|k| k.to_string()).collect());
                result.configs = entries
                    .into_iter()
                    .filter(|(k, _)| keys.as_ref().is_none_or(|ks| ks.iter().any(|x| x == k)))
                    .map(|(k, v)| {
                        DescribeConfigsResourceResult::default()
                            .with_name(str_bytes(k))
                            .with_value(Some(str_bytes(&v)))
                            .with_config_source(SOURCE_TOPIC)
                            .with_read_only(resource.resource_type == RESOURCE_BROKER)
                    })
                    .collect();
            }
            Err((code, why)) => {
                result.error_code = code.code();
                result.error_message = Some(str_bytes(&why));
            }
        }
        results.push(result);
    }
    DescribeConfigsResponse::default().with_results(results)
}

/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// The value `name` has for a topic with the server's defaults.
fn default_value(ctx: &Ctx, name: &str) -> Option<String> {
    describe_config(&ctx.shared.config.topic_defaults).into_iter().find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// Applies one IncrementalAlterConfigs operation to `config`.
fn apply_op(
    ctx: &Ctx,
    config: &mut LogConfig,
    name: &str,
    op: i8,
    value: Option<&str>,
) -> Result<(), String> {
    match op {
        OP_SET => apply_config(config, name, value),
        OP_DELETE => {
            let value = default_value(ctx, name).ok_or_else(|| format!("unknown topic config {name}"))?;
            apply_config(config, name, Some(&value))
        }
        OP_APPEND | OP_SUBTRACT if name == "cleanup.policy" => {
            let mut policies: Vec<String> =
                config.cleanup.to_string().split(',').map(str::to_string).collect();
            for v in value.unwrap_or_default().split(',').map(str::trim).filter(|v| !v.is_empty()) {
                if op == OP_APPEND && !policies.iter().any(|p| p == v) {
                    policies.push(v.to_string());
                } else if op == OP_SUBTRACT {
                    policies.retain(|p| p != v);
                }
            }
            apply_config(config, name, Some(&policies.join(",")))
        }
        OP_APPEND | OP_SUBTRACT => Err(format!("{name} is not a list: APPEND and SUBTRACT do not apply")),
        other => Err(format!("unknown config operation {other}")),
    }
}

/// Checks and stores a topic's new configuration; the resource's error code and message.
async fn alter_topic(
    ctx: &Rc<Ctx>,
    name: &str,
    config: Result<LogConfig, String>,
    validate_only: bool,
) -> (i16, Option<String>) {
    let checked = config.and_then(|c| c.validate().map(|()| c));
    match checked {
        Err(why) => (ResponseError::InvalidConfig.code(), Some(why)),
        Ok(_) if validate_only => (0, None),
        Ok(config) => {
            let owned = name.to_string();
            match ctx.admin(move |engine| engine.alter_topic(&owned, config)).await {
                Ok(()) => (0, None),
                Err(e) => (errors::code(&e).code(), Some(e.to_string())),
            }
        }
    }
}

pub async fn incremental_alter_configs(
    ctx: &Rc<Ctx>,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::new();
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let (code, message) = if resource.resource_type != RESOURCE_TOPIC {
            (ResponseError::InvalidRequest.code(), Some("only topic configs can be altered".to_string()))
        } else {
            let config = ctx.engine.topic(&name).map_err(|e| e.to_string()).and_then(|info| {
                let mut config = info.config;
                for c in &resource.configs {
                    apply_op(
                        ctx,
                        &mut config,
                        c.name.as_str(),
                        c.config_operation,
                        c.value.as_ref().map(|v| v.as_str()),
                    )?;
                }
                Ok(config)
            });
            match config {
                Err(why) if ctx.engine.topic(&name).is_err() => {
                    (ResponseError::UnknownTopicOrPartition.code(), Some(why))
                }
                config => alter_topic(ctx, &name, config, request.validate_only).await,
            }
        };
        responses.push(
            IncrementalAlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message.map(|m| str_bytes(&m)))
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// AlterConfigs replaces a topic's whole configuration: what it does not name goes back to the
/// server's default.
pub async fn alter_configs(ctx: &Rc<Ctx>, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut responses = Vec::new();
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let (code, message) = if resource.resource_type != RESOURCE_TOPIC {
            (ResponseError::InvalidRequest.code(), Some("only topic configs can be altered".to_string()))
        } else if let Err(e) = ctx.engine.topic(&name) {
            (ResponseError::UnknownTopicOrPartition.code(), Some(e.to_string()))
        } else {
            let mut config = ctx.shared.config.topic_defaults.clone();
            let applied = resource
                .configs
                .iter()
                .try_for_each(|c| {
                    apply_config(&mut config, c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))
                })
                .map(|()| config);
            alter_topic(ctx, &name, applied, request.validate_only).await
        };
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message.map(|m| str_bytes(&m)))
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}
