//! Produce: every partition's batches go to the shard that owns the partition, all in flight at
//! once; the response waits for each partition's durability (acks 1 and -1) or is not sent
//! (acks 0). Batches go to the shards as slices of the request frame, never copied.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader};

use super::super::codec::{self, Outgoing};
use super::super::errors;
use super::super::server::Ctx;
use super::{partition_index, str_bytes};
use crate::engine::{Backpressure, EngineError, ProduceAck};
use crate::record::{BatchHeader, LOG_OVERHEAD};

/// Why a partition's records were refused before reaching the engine.
struct Refused(ResponseError, String);

pub async fn handle(
    ctx: &Rc<Ctx>,
    header: &RequestHeader,
    mut body: Bytes,
    owner: &mut Option<usize>,
    budget: super::FrameBudget,
) -> Result<Option<Outgoing>, String> {
    let version = header.request_api_version;
    let request: ProduceRequest =
        codec::decode_body(&mut body, version, "Produce").map_err(|e| e.to_string())?;
    *owner = super::sole_owner(
        ctx,
        request.topic_data.iter().flat_map(|t| t.partition_data.iter().map(|p| (t.name.0.as_str(), p.index))),
    );
    let acks = request.acks;
    let refuse_all = if !matches!(acks, -1..=1) {
        Some(Refused(ResponseError::InvalidRequiredAcks, format!("acks={acks}: only 0, 1 and -1 exist")))
    } else if request.transactional_id.is_some() {
        Some(Refused(
            ResponseError::TransactionalIdAuthorizationFailed,
            "transactions are not supported".into(),
        ))
    } else {
        None
    };
    // Send everything first (each partition a task on this shard), then collect in order.
    let mut pending = Vec::new();
    for topic in request.topic_data {
        let name: Rc<str> = Rc::from(topic.name.0.as_str());
        for p in topic.partition_data {
            let index = p.index;
            let task = match (&refuse_all, split_batches(p.records, version)) {
                (Some(Refused(code, why)), _) => Err(Refused(*code, why.clone())),
                (None, Err(refused)) => Err(refused),
                (None, Ok(batches)) => {
                    let (ctx, name) = (Rc::clone(ctx), Rc::clone(&name));
                    Ok(tokio::task::spawn_local(async move { append_all(&ctx, &name, index, batches).await }))
                }
            };
            pending.push((Rc::clone(&name), index, task));
        }
    }
    // The batches are slices of the frame, staged as they are: the frame's memory, and its
    // room in the request budget that travels with it, stay taken until the shards have
    // written them.
    drop((body, budget));
    let mut responses: Vec<TopicProduceResponse> = Vec::new();
    let mut any_error = None;
    for (name, index, task) in pending {
        let mut partition = PartitionProduceResponse::default().with_index(index).with_log_append_time_ms(-1);
        let outcome = match task {
            Err(Refused(code, why)) => Err((code, why)),
            Ok(handle) => match handle.await {
                Ok(Ok(ack)) => Ok(ack),
                Ok(Err(e)) => Err((errors::code(&e), e.to_string())),
                Err(e) => Err((ResponseError::UnknownServerError, e.to_string())),
            },
        };
        match outcome {
            Ok(ack) => partition.base_offset = ack.base_offset,
            Err((code, why)) => {
                tracing::debug!(topic = %name, partition = index, error = %why, "produce refused");
                partition.error_code = code.code();
                partition.base_offset = -1;
                partition.error_message = Some(str_bytes(&why));
                any_error.get_or_insert(why);
            }
        }
        match responses.last_mut() {
            Some(t) if t.name.0.as_str() == &*name => t.partition_responses.push(partition),
            _ => responses.push(
                TopicProduceResponse::default()
                    .with_name(super::topic_name(&name))
                    .with_partition_responses(vec![partition]),
            ),
        }
    }
    if acks == 0 {
        // No response is read by the client; an error can only be signalled by closing, as
        // Kafka does.
        return match any_error {
            Some(why) => Err(format!("acks=0 produce failed: {why}")),
            None => Ok(None),
        };
    }
    let response = ProduceResponse::default().with_responses(responses);
    codec::encode_response(ApiKey::Produce, version, header.correlation_id, &response)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Appends a partition's batches in order; the ack covers all of them.
async fn append_all(
    ctx: &Ctx,
    topic: &str,
    index: i32,
    batches: Vec<Bytes>,
) -> Result<ProduceAck, EngineError> {
    let partition = partition_index(index)
        .map_err(|_| EngineError::UnknownPartition { topic: topic.into(), partition: u32::MAX })?;
    let mut first: Option<ProduceAck> = None;
    let mut last = None;
    // Queue every batch before awaiting any, so they share a group commit.
    let mut waits = Vec::with_capacity(batches.len());
    for batch in batches {
        // Sent now, in order with everything this shard sends the partition's owner.
        waits.push(ctx.engine.produce_batch_async(topic, partition, batch, &Backpressure::Buffer));
    }
    for w in waits {
        let ack = w.await?;
        first.get_or_insert(ack);
        last = Some(ack);
    }
    match (first, last) {
        (Some(f), Some(l)) => {
            Ok(ProduceAck { partition, base_offset: f.base_offset, last_offset: l.last_offset })
        }
        _ => Err(EngineError::NoRecords),
    }
}

/// Splits a partition's record set into its RecordBatch v2 batch, refusing what clients may
/// not send (Kafka's `ProduceRequest.validateRecords`): nothing, more than one batch, old
/// message formats, zstd before Produce v7, transactional or control batches.
fn split_batches(records: Option<Bytes>, version: i16) -> Result<Vec<Bytes>, Refused> {
    let corrupt = |why: String| Refused(ResponseError::CorruptMessage, why);
    let mut records = records.ok_or_else(|| corrupt("null records".into()))?;
    let mut out = Vec::new();
    while !records.is_empty() {
        if records.len() < LOG_OVERHEAD {
            return Err(corrupt(format!("{} trailing bytes are not a batch", records.len())));
        }
        let length = i32::from_be_bytes([records[8], records[9], records[10], records[11]]);
        let total = usize::try_from(length).ok().and_then(|l| l.checked_add(LOG_OVERHEAD));
        let Some(total) = total.filter(|&t| t <= records.len()) else {
            return Err(corrupt(format!("batch length {length} runs past the {} bytes sent", records.len())));
        };
        let batch = records.split_to(total);
        let header = BatchHeader::parse(&batch).map_err(|e| corrupt(e.to_string()))?;
        if header.attributes.is_transactional() || header.attributes.is_control() {
            return Err(Refused(
                ResponseError::InvalidRecord,
                "transactional and control batches are not supported".into(),
            ));
        }
        if version < 7 && header.attributes.compression() == Ok(crate::record::Compression::Zstd) {
            return Err(Refused(
                ResponseError::UnsupportedCompressionType,
                format!("Produce requests with version {version} may not use zstd (v7 and above may)"),
            ));
        }
        if !out.is_empty() {
            return Err(Refused(
                ResponseError::InvalidRecord,
                format!(
                    "Produce requests with version {version} are only allowed to contain exactly one record batch per partition"
                ),
            ));
        }
        out.push(batch);
    }
    if out.is_empty() {
        return Err(corrupt("no batches".into()));
    }
    Ok(out)
}
