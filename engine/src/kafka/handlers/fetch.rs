//! Fetch: every partition read at once from its shard; if fewer than `min_bytes` arrived, long
//! polls from where each partition's data ended, woken by appends, until enough has arrived or
//! `max_wait` passes. Record bytes go out as file ranges (`sendfile`), never copied here.

use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchResponse, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, RequestHeader};

use super::super::codec::{self, Outgoing};
use super::super::errors;
use super::super::server::Ctx;
use super::{partition_index, topic_name};
use crate::engine::{EngineError, FetchOptions, Fetched};
use crate::log::ReadSlice;

/// A wait longer than this is cut to it (Kafka clients ask for 100 ms to a few seconds).
const MAX_WAIT_CAP: Duration = Duration::from_secs(60);
/// Bytes one partition may return in one response, and a whole response: whatever the client
/// asks, so that a response always fits the protocol's `i32` frame size.
const PARTITION_BYTES_CAP: u64 = 64 << 20;
const RESPONSE_BYTES_CAP: u64 = 1 << 30;

struct Want {
    topic: Rc<str>,
    /// The topic ID the request named it by (v13+; nil before).
    id: uuid::Uuid,
    partition: i32,
    offset: i64,
    max_bytes: u64,
}

pub async fn handle(
    ctx: &Rc<Ctx>,
    header: &RequestHeader,
    mut body: Bytes,
    owner: &mut Option<usize>,
    budget: super::FrameBudget,
) -> Result<Option<Outgoing>, String> {
    let version = header.request_api_version;
    let mut request: FetchRequest =
        codec::decode_body(&mut body, version, "Fetch").map_err(|e| e.to_string())?;
    if version >= 13 {
        // v13+ names topics by ID: from here on they go by name. An unknown ID gets the empty
        // name, which no topic has (UNKNOWN_TOPIC_ID in the response).
        for t in &mut request.topics {
            let id = crate::engine::TopicId(*t.topic_id.as_bytes());
            let name = ctx.engine.topic_by_id(&id).map(|info| info.name);
            t.topic = topic_name(name.as_deref().unwrap_or(""));
        }
    }
    // The long poll below holds none of the request budget.
    drop((body, budget));
    *owner = super::sole_owner(
        ctx,
        request.topics.iter().flat_map(|t| t.partitions.iter().map(|p| (t.topic.0.as_str(), p.partition))),
    );
    // Reads served by this shard, and by others through their mailboxes (counted per request).
    let shards = ctx.engine.shards();
    let (mut local, mut remote) = (0, 0);
    for t in &request.topics {
        for p in &t.partitions {
            match u32::try_from(p.partition) {
                Ok(p) if crate::engine::shard_of(t.topic.0.as_str(), p, shards) == ctx.shard => local += 1,
                _ => remote += 1,
            }
        }
    }
    for (hop, n) in [("local", local), ("remote", remote)] {
        if n > 0 {
            ctx.shared
                .metrics
                .partition_reads
                .get_or_create(&super::super::metrics::HopLabel { hop })
                .inc_by(n);
        }
    }
    let started = Instant::now();
    let max_wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0)).min(MAX_WAIT_CAP);
    let deadline = started + max_wait;
    let min_bytes = u64::try_from(request.min_bytes).unwrap_or(0);
    let response_max_bytes = u64::try_from(request.max_bytes).unwrap_or(0).min(RESPONSE_BYTES_CAP);
    let named: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    if let Err(e) = super::check_partition_count(named) {
        tracing::debug!(error = %e, "fetch refused");
        let wants: Vec<Want> = request
            .topics
            .iter()
            .flat_map(|t| {
                let name: Rc<str> = Rc::from(t.topic.0.as_str());
                let id = t.topic_id;
                t.partitions.iter().map(move |p| Want {
                    topic: Rc::clone(&name),
                    id,
                    partition: p.partition,
                    offset: p.fetch_offset,
                    max_bytes: 0,
                })
            })
            .collect();
        let results = wants
            .iter()
            .map(|_| {
                Err(EngineError::TooManyPartitionsInRequest {
                    partitions: named,
                    max: super::REQUEST_PARTITIONS_MAX,
                })
            })
            .collect();
        let included = vec![false; wants.len()];
        return encode(version, header.correlation_id, &wants, results, &included);
    }
    let mut wants = Vec::new();
    for topic in request.topics {
        let name: Rc<str> = Rc::from(topic.topic.0.as_str());
        for p in topic.partitions {
            wants.push(Want {
                topic: Rc::clone(&name),
                id: topic.topic_id,
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: u64::try_from(p.partition_max_bytes).unwrap_or(0).min(PARTITION_BYTES_CAP),
            });
        }
    }
    let results = loop {
        let results = read_all(ctx, &wants).await;
        let available: u64 = results.iter().map(|r| r.as_ref().map_or(0, |f| f.slice.len)).sum();
        let errors = results.iter().any(Result::is_err);
        if available >= min_bytes || errors || Instant::now() >= deadline || wants.is_empty() {
            break results;
        }
        // Wait for any partition to get bytes past what it has now, then read them all again.
        let from: Vec<i64> = wants
            .iter()
            .zip(&results)
            .map(|(w, r)| {
                r.as_ref().map_or(w.offset, |f| if f.slice.len > 0 { f.slice.next_offset } else { w.offset })
            })
            .collect();
        wait_for_any(ctx, &wants, &from, deadline).await;
    };
    let included = included(&wants, &results, response_max_bytes);
    read_ahead(ctx, &wants, &results, &included);
    encode(version, header.correlation_id, &wants, results, &included)
}

/// Which partitions' data goes into the response: the first partition with data always gets
/// its batches, as in Kafka; later ones only what fits under the request's `max_bytes` (and
/// the whole response under `RESPONSE_BYTES_CAP`).
fn included(wants: &[Want], results: &[Result<Fetched, EngineError>], response_max_bytes: u64) -> Vec<bool> {
    let mut total: u64 = 0;
    wants
        .iter()
        .zip(results)
        .map(|(_, r)| {
            let Ok(f) = r else { return false };
            let len = f.slice.len;
            let fits = total + len <= response_max_bytes;
            let take = len > 0 && (total == 0 || fits) && total + len <= RESPONSE_BYTES_CAP;
            if take {
                total += len;
            }
            take
        })
        .collect()
}

/// Reads every wanted partition now, all requests in flight at once. A partition this
/// connection's shard does not own may have been read ahead at the end of the previous fetch
/// (see [`read_ahead`]); that read is used if it is for the same offset and found data.
async fn read_all(ctx: &Rc<Ctx>, wants: &[Want]) -> Vec<Result<Fetched, EngineError>> {
    let mut pending = Vec::with_capacity(wants.len());
    let mut early = Vec::with_capacity(wants.len());
    for w in wants {
        let ahead = ctx.read_ahead.borrow_mut().remove(&(Rc::clone(&w.topic), w.partition));
        // Only a read of this very topic (not one deleted and created again since), recent
        // enough to be worth its pinned file, for the offset and size asked.
        let live = ctx.engine.topic_handle(&w.topic);
        let read: FetchFuture = match ahead {
            Some(a)
                if a.offset == w.offset
                    && a.max_bytes == w.max_bytes
                    && a.started.elapsed() < READ_AHEAD_TTL
                    && live.as_ref().is_some_and(|t| Arc::ptr_eq(t, &a.topic)) =>
            {
                early.push(true);
                a.read
            }
            _ => {
                early.push(false);
                Box::pin(fetch_one(ctx, &w.topic, w.partition, w.offset, now_options(w)))
            }
        };
        pending.push(read);
    }
    let mut out = Vec::with_capacity(pending.len());
    for p in pending {
        out.push(p.await);
    }
    // A read ahead that found nothing (or failed) may be stale: read those again.
    let again: Vec<usize> =
        (0..wants.len()).filter(|&i| early[i] && !matches!(&out[i], Ok(f) if f.slice.len > 0)).collect();
    let retries: Vec<_> = again
        .iter()
        .map(|&i| {
            fetch_one(ctx, &wants[i].topic, wants[i].partition, wants[i].offset, now_options(&wants[i]))
        })
        .collect();
    for (i, retry) in again.into_iter().zip(retries) {
        out[i] = retry.await;
    }
    out
}

fn now_options(w: &Want) -> FetchOptions {
    FetchOptions { max_bytes: w.max_bytes.max(1), min_bytes: 0, max_wait: Duration::ZERO }
}

type FetchFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Fetched, EngineError>>>>;

/// A fetch started before it was asked for.
pub(crate) struct ReadAhead {
    offset: i64,
    max_bytes: u64,
    /// The topic it read ([`crate::Engine::topic_handle`]).
    topic: Arc<str>,
    started: Instant,
    read: FetchFuture,
}

impl std::fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead").field("offset", &self.offset).field("max_bytes", &self.max_bytes).finish()
    }
}

/// Partitions of one connection read ahead at most (each read may pin a segment file).
const READ_AHEAD_MAX: usize = 16;

/// A read ahead not asked for within this long is dropped (with the file it holds).
const READ_AHEAD_TTL: Duration = Duration::from_secs(2);

/// Starts, for each partition of another shard that returned data, the read the client will
/// most likely ask for next (from where this one ended), so that its cross-shard round trip
/// overlaps with sending this response instead of delaying the next one. The data below the
/// high watermark never changes, so a read made a little early is still right; one that found
/// nothing is not trusted and is read again when asked.
fn read_ahead(ctx: &Rc<Ctx>, wants: &[Want], results: &[Result<Fetched, EngineError>], included: &[bool]) {
    let shards = ctx.engine.shards();
    for ((w, r), &sent) in wants.iter().zip(results).zip(included) {
        let Ok(f) = r else { continue };
        let Ok(partition) = u32::try_from(w.partition) else { continue };
        if !sent || f.slice.len == 0 || crate::engine::shard_of(&w.topic, partition, shards) == ctx.shard {
            continue;
        }
        let Some(topic) = ctx.engine.topic_handle(&w.topic) else { continue };
        let mut cache = ctx.read_ahead.borrow_mut();
        cache.retain(|_, a| a.started.elapsed() < READ_AHEAD_TTL);
        if cache.len() >= READ_AHEAD_MAX {
            return;
        }
        let next = f.slice.next_offset;
        let read = Box::pin(fetch_one(ctx, &w.topic, w.partition, next, now_options(w)));
        cache.insert(
            (Rc::clone(&w.topic), w.partition),
            ReadAhead { offset: next, max_bytes: w.max_bytes, topic, started: Instant::now(), read },
        );
    }
}

/// Starts one fetch now (in order with this shard's other requests to the owner); the
/// returned future finishes it.
fn fetch_one(
    ctx: &Ctx,
    topic: &str,
    partition: i32,
    offset: i64,
    options: FetchOptions,
) -> impl std::future::Future<Output = Result<Fetched, EngineError>> + 'static {
    let engine = ctx.engine.clone();
    let topic = topic.to_string();
    let first = partition_index(partition)
        .map(|p| engine.fetch_async(&topic, p, offset, options))
        .map_err(|_| EngineError::UnknownPartition { topic: topic.clone(), partition: u32::MAX });
    async move {
        match first {
            Err(e) => Err(e),
            Ok(f) => f.await,
        }
    }
}

/// Returns when any partition has data past `from`, or at the deadline.
async fn wait_for_any(ctx: &Rc<Ctx>, wants: &[Want], from: &[i64], deadline: Instant) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut tasks = Vec::with_capacity(wants.len());
    for (i, w) in wants.iter().enumerate() {
        let options = FetchOptions {
            max_bytes: 1,
            min_bytes: 1,
            max_wait: deadline.saturating_duration_since(Instant::now()),
        };
        let poll = fetch_one(ctx, &w.topic, w.partition, from[i], options);
        let tx = tx.clone();
        tasks.push(AbortOnDrop(tokio::task::spawn_local(async move {
            if matches!(poll.await, Ok(f) if f.slice.len > 0) {
                let _ = tx.try_send(());
            }
        })));
    }
    drop(tx);
    let woken = tokio::time::timeout_at(deadline.into(), rx.recv()).await;
    if matches!(woken, Ok(None)) {
        // Every poll ended without data before the deadline: the shards had no room for
        // waiting fetches, or a partition failed. Back off rather than spin.
        let pause = Instant::now() + Duration::from_millis(10);
        tokio::time::sleep_until(pause.min(deadline).into()).await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn encode(
    version: i16,
    correlation_id: i32,
    wants: &[Want],
    results: Vec<Result<Fetched, EngineError>>,
    included: &[bool],
) -> Result<Option<Outgoing>, String> {
    let nonce = nonce();
    let mut slices: Vec<ReadSlice> = Vec::new();
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    for ((w, result), &sent) in wants.iter().zip(results).zip(included) {
        let mut p = PartitionData::default()
            .with_partition_index(w.partition)
            .with_preferred_read_replica(BrokerId(-1))
            .with_records(Some(Bytes::new()));
        match result {
            Ok(f) => {
                p.high_watermark = f.high_watermark;
                p.last_stable_offset = f.high_watermark;
                p.log_start_offset = f.log_start_offset;
                p.aborted_transactions = Some(Vec::new());
                if sent {
                    p.records = Some(codec::placeholder(nonce, slices.len() as u32));
                    slices.push(f.slice);
                }
            }
            Err(e) => {
                p.error_code = match e {
                    EngineError::UnknownTopic(_) if version >= 13 => {
                        kafka_protocol::error::ResponseError::UnknownTopicId.code()
                    }
                    ref other => errors::code(other).code(),
                };
                p.high_watermark = -1;
                tracing::debug!(topic = %w.topic, partition = w.partition, error = %e, "fetch refused");
            }
        }
        match topics.last_mut() {
            Some(t) if t.topic.0.as_str() == &*w.topic && t.topic_id == w.id => t.partitions.push(p),
            _ => topics.push(
                FetchableTopicResponse::default()
                    .with_topic(topic_name(&w.topic))
                    .with_topic_id(w.id)
                    .with_partitions(vec![p]),
            ),
        }
    }
    let response = FetchResponse::default().with_session_id(0).with_responses(topics);
    codec::encode_with_slices(
        ApiKey::Fetch,
        version,
        correlation_id,
        &response,
        nonce,
        &slices,
        version >= 12,
    )
    .map(Some)
    .map_err(|e| e.to_string())
}

/// A value nobody can predict, for the response's placeholders.
fn nonce() -> u64 {
    thread_local! {
        static COUNTER: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        static KEYS: std::collections::hash_map::RandomState = std::collections::hash_map::RandomState::new();
    }
    let n = COUNTER.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    KEYS.with(|k| {
        let mut h = k.build_hasher();
        h.write_u64(n);
        h.finish()
    })
}
