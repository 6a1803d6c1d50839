//! The listener in-process, where the engine's limits can be made small.

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::BytesMut;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_request::{PartitionProduceData, ProduceRequest, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceResponse, RequestHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::{Server, ServerConfig};
use crate::io::BackendChoice;
use crate::log::LogConfig;
use crate::record::{BatchBuilder, BatchOptions, Record};
use crate::{Engine, EngineConfig};

fn produce_frame(topic: &str, correlation_id: i32, producer_id: i64, sequence: i32) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchOptions {
        producer_id,
        producer_epoch: 0,
        base_sequence: sequence,
        ..BatchOptions::default()
    });
    b.push(&Record { timestamp: 1, key: None, value: Some(b"v"), headers: &[] });
    produce_request_frame(topic, correlation_id, b.finish())
}

/// A Produce v7 frame (acks -1) of `batch` for partition 0 of `topic`.
fn produce_request_frame(topic: &str, correlation_id: i32, batch: Vec<u8>) -> Vec<u8> {
    let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch.into()))]),
    ]);
    request_frame(ApiKey::Produce, 7, correlation_id, &request)
}

/// A request frame: size, header v1, `request` encoded at `version`.
fn request_frame(api: ApiKey, version: i16, correlation_id: i32, request: &impl Encodable) -> Vec<u8> {
    header_request_frame(api, version, 1, correlation_id, request)
}

/// [`request_frame`] with header v2, as flexible versions have it.
fn flexible_request_frame(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &impl Encodable,
) -> Vec<u8> {
    header_request_frame(api, version, 2, correlation_id, request)
}

fn header_request_frame(
    api: ApiKey,
    version: i16,
    header_version: i16,
    correlation_id: i32,
    request: &impl Encodable,
) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id);
    let mut buf = BytesMut::new();
    header.encode(&mut buf, header_version).unwrap();
    request.encode(&mut buf, version).unwrap();
    let mut frame = (buf.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&buf);
    frame
}

/// With mailboxes of two requests, pipelined produces overflow them; they must still reach
/// the partition in the order sent (an idempotent producer would see a sequence gap otherwise).
#[test]
fn pipelined_produces_stay_in_order_when_mailboxes_are_full() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        shards: 2,
        mailbox_capacity: 2,
        io_backend: BackendChoice::Fallback,
        ..EngineConfig::default()
    };
    let engine = Engine::open(dir.path(), config).unwrap();
    // The first connection lives on shard 0; its partition on shard 1, whose mailbox drains
    // while shard 0 keeps sending (the case where a later request could overtake).
    let topic = (0..).map(|i| format!("ordered-{i}")).find(|t| crate::shard_of(t, 0, 2) == 1).unwrap();
    engine.create_topic(&topic, 1, LogConfig::default()).unwrap();
    let server = Server::start(
        &engine,
        ServerConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            in_flight_per_connection: 16,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    let rounds = 20;
    let mut offsets = Vec::new();
    for round in 0..rounds {
        let frames: Vec<u8> = (0..16).flat_map(|i| produce_frame(&topic, i, 99, round * 16 + i)).collect();
        s.write_all(&frames).unwrap();
        for i in 0..16 {
            let mut size = [0u8; 4];
            s.read_exact(&mut size).unwrap();
            let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
            s.read_exact(&mut body).unwrap();
            assert_eq!(i32::from_be_bytes(body[..4].try_into().unwrap()), i, "responses in request order");
            let r = ProduceResponse::decode(&mut bytes::Bytes::from(body).slice(4..), 7).unwrap();
            let p = &r.responses[0].partition_responses[0];
            assert_eq!(p.error_code, 0, "round {round} request {i}: error {}", p.error_code);
            offsets.push(p.base_offset);
        }
    }
    assert_eq!(offsets, (0..i64::from(rounds) * 16).collect::<Vec<_>>());
    drop(s);
    server.shutdown();
    engine.shutdown().unwrap();
}

fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut size = [0u8; 4];
    s.read_exact(&mut size).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).unwrap();
    body
}

fn heartbeat_frame(correlation_id: i32) -> Vec<u8> {
    use kafka_protocol::messages::{GroupId, HeartbeatRequest};
    let request = HeartbeatRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_member_id(StrBytes::from_static_str("m"))
        .with_generation_id(1);
    request_frame(ApiKey::Heartbeat, 0, correlation_id, &request)
}

/// An engine of one shard on the fallback backend in `dir`, with `topic` (one partition) if
/// given, and a server for it on a free loopback port.
fn one_shard_server(dir: &std::path::Path, topic: Option<&str>) -> (Engine, Server) {
    let config = EngineConfig { shards: 1, io_backend: BackendChoice::Fallback, ..EngineConfig::default() };
    let engine = Engine::open(dir, config).unwrap();
    if let Some(topic) = topic {
        engine.create_topic(topic, 1, LogConfig::default()).unwrap();
    }
    let listen = ([127, 0, 0, 1], 0).into();
    let server = Server::start(&engine, ServerConfig { listen, ..ServerConfig::default() }).unwrap();
    (engine, server)
}

/// A panic inside the coordinator (a bug) costs the request it served, not the coordinator.
#[test]
fn the_coordinator_survives_a_panicking_job() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, server) = one_shard_server(dir.path(), None);
    server.shared().coordinator.post(|_| panic!("a bug in group coordination"));
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    s.write_all(&heartbeat_frame(3)).unwrap();
    let body = read_frame(&mut s);
    assert_eq!(i32::from_be_bytes(body[..4].try_into().unwrap()), 3);
    // UNKNOWN_MEMBER_ID (25), from a coordinator still running (not COORDINATOR_NOT_AVAILABLE).
    assert_eq!(i16::from_be_bytes(body[4..6].try_into().unwrap()), 25);
    drop(s);
    server.shutdown();
    engine.shutdown().unwrap();
}

/// Group coordination runs on its own thread: while it is busy (here, held by the test), a
/// heartbeat waits for it but the shard its connection lives on keeps serving produces.
#[test]
fn a_busy_coordinator_does_not_hold_up_the_shard() {
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let (engine, server) = one_shard_server(dir.path(), Some("t"));
    let (release, held) = std::sync::mpsc::channel::<()>();
    server.shared().coordinator.post(move |_| {
        let _ = held.recv();
    });
    let mut group_client = TcpStream::connect(server.local_addr()).unwrap();
    group_client.write_all(&heartbeat_frame(7)).unwrap();
    std::thread::sleep(Duration::from_millis(200)); // the heartbeat reaches the coordinator's queue

    let mut producer = TcpStream::connect(server.local_addr()).unwrap();
    producer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    producer.write_all(&produce_frame("t", 1, -1, -1)).unwrap();
    let body = read_frame(&mut producer);
    let r = ProduceResponse::decode(&mut bytes::Bytes::from(body).slice(4..), 7).unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);

    group_client.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut size = [0u8; 4];
    assert!(group_client.read_exact(&mut size).is_err(), "the heartbeat waits for the coordinator");
    release.send(()).unwrap();
    group_client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = read_frame(&mut group_client);
    assert_eq!(i32::from_be_bytes(body[..4].try_into().unwrap()), 7, "answered once it is free");
    drop((group_client, producer));
    server.shutdown();
    engine.shutdown().unwrap();
}

/// A produce frame of `values.len()` records of `value_bytes` bytes, record `i` filled with
/// `values[i]`.
fn large_produce_frame(topic: &str, correlation_id: i32, values: &[u8], value_bytes: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchOptions::default());
    for &v in values {
        b.push(&Record { timestamp: 1, key: None, value: Some(&vec![v; value_bytes]), headers: &[] });
    }
    produce_request_frame(topic, correlation_id, b.finish())
}

#[test]
fn large_frames_in_reused_buffers_keep_their_bytes_and_give_their_budget_back() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineConfig { shards: 1, ..EngineConfig::default() }).unwrap();
    engine.create_topic("large", 1, LogConfig::default()).unwrap();
    let config = ServerConfig { listen: ([127, 0, 0, 1], 0).into(), ..ServerConfig::default() };
    let budget = config.request_bytes_in_flight_max;
    let server = Server::start(&engine, config).unwrap();
    // Frames of about 300 KiB, eight in flight at a time, every record's bytes its own: a
    // buffer handed to a new frame while an earlier one still used it would mix them.
    let (per_frame, value_bytes) = (30u8, 10_000);
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    let mut next = 0u8;
    for round in 0..4 {
        let mut frames = Vec::new();
        for i in 0..8 {
            let values: Vec<u8> = (0..per_frame).map(|j| next.wrapping_add(j)).collect();
            next = next.wrapping_add(per_frame);
            frames.extend(large_produce_frame("large", round * 8 + i, &values, value_bytes));
        }
        s.write_all(&frames).unwrap();
        for _ in 0..8 {
            let body = read_frame(&mut s);
            let r = ProduceResponse::decode(&mut bytes::Bytes::from(body).slice(4..), 7).unwrap();
            assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        }
    }
    drop(s);
    let total = 4 * 8 * i64::from(per_frame);
    let (mut offset, mut expected) = (0i64, 0u8);
    while offset < total {
        let fetched = engine.fetch("large", 0, offset, crate::FetchOptions::default()).unwrap();
        for r in fetched.records(offset).unwrap() {
            let v = r.value.unwrap();
            assert!(v.len() == value_bytes && v.iter().all(|&b| b == expected), "record {}", r.offset);
            expected = expected.wrapping_add(1);
            offset = r.offset + 1;
        }
    }
    // Every frame was written and dropped: all of the budget is back, none held by a
    // connection that is gone.
    let shared = server.shared();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while shared.request_bytes.available_permits() != budget {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {budget} budget bytes back",
            shared.request_bytes.available_permits()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    server.shutdown();
    engine.shutdown().unwrap();
}

/// Produce frames hold their room in the budget until written, so they draw on the part
/// outside the small-request reserve, as large frames do: with that part taken, a produce
/// waits and a small request is still answered at once.
#[test]
fn produce_frames_cannot_take_the_room_kept_for_small_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, server) = one_shard_server(dir.path(), Some("held"));
    // Producers holding the whole outside part, as frames waiting for their writes would.
    let large = &server.shared().large_request_bytes;
    let all = large.available_permits();
    let held = large.try_acquire_many(all as u32).unwrap();
    let mut producer = TcpStream::connect(server.local_addr()).unwrap();
    producer.write_all(&produce_frame("held", 1, -1, -1)).unwrap();
    let mut other = TcpStream::connect(server.local_addr()).unwrap();
    other.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    other.write_all(&heartbeat_frame(2)).unwrap();
    let body = read_frame(&mut other);
    assert_eq!(i32::from_be_bytes(body[..4].try_into().unwrap()), 2, "the heartbeat is answered");
    // The produce is still waiting for room.
    producer.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
    let mut size = [0u8; 4];
    assert!(producer.read_exact(&mut size).is_err(), "a produce was answered without room");
    assert_eq!(engine.list_offset("held", 0, crate::OffsetSpec::Latest).unwrap(), Some(0));
    drop(held);
    producer.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let body = read_frame(&mut producer);
    let r = ProduceResponse::decode(&mut bytes::Bytes::from(body).slice(4..), 7).unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    drop((producer, other));
    server.shutdown();
    engine.shutdown().unwrap();
}

/// Topic IDs: Metadata v12 returns them and answers by them, Fetch v13 reads by them,
/// DeleteTopics v6 deletes by them, and an unknown or stale ID is UNKNOWN_TOPIC_ID.
#[test]
fn topics_are_named_by_id_in_metadata_fetch_and_delete_topics() {
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{
        DeleteTopicsRequest, DeleteTopicsResponse, FetchRequest, FetchResponse, MetadataRequest,
        MetadataResponse,
    };
    const UNKNOWN_TOPIC_ID: i16 = 100;
    let dir = tempfile::tempdir().unwrap();
    let (engine, server) = one_shard_server(dir.path(), Some("ids"));
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.write_all(&produce_frame("ids", 1, -1, -1)).unwrap();
    read_frame(&mut s);
    let id = uuid::Uuid::from_bytes(engine.topic("ids").unwrap().id.0);
    // Flexible responses: correlation id, then the header's tagged fields.
    let body = |frame: Vec<u8>| bytes::Bytes::from(frame).slice(5..);
    let metadata = |s: &mut TcpStream, topics: Option<Vec<MetadataRequestTopic>>| {
        s.write_all(&flexible_request_frame(
            ApiKey::Metadata,
            12,
            2,
            &MetadataRequest::default().with_topics(topics),
        ))
        .unwrap();
        MetadataResponse::decode(&mut body(read_frame(s)), 12).unwrap()
    };

    let all = metadata(&mut s, None);
    let t = all.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "ids")).unwrap();
    assert_eq!(t.topic_id, id);
    let by_id =
        metadata(&mut s, Some(vec![MetadataRequestTopic::default().with_name(None).with_topic_id(id)]));
    assert_eq!(by_id.topics[0].name.as_ref().unwrap().0.as_str(), "ids");
    assert_eq!(by_id.topics[0].error_code, 0);
    let unknown = uuid::Uuid::from_bytes([7; 16]);
    let missing =
        metadata(&mut s, Some(vec![MetadataRequestTopic::default().with_name(None).with_topic_id(unknown)]));
    assert_eq!((missing.topics[0].error_code, missing.topics[0].topic_id), (UNKNOWN_TOPIC_ID, unknown));

    let fetch = |s: &mut TcpStream, id: uuid::Uuid| {
        let request = FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(vec![
            FetchTopic::default().with_topic_id(id).with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)]),
        ]);
        s.write_all(&flexible_request_frame(ApiKey::Fetch, 13, 3, &request)).unwrap();
        FetchResponse::decode(&mut body(read_frame(s)), 13).unwrap()
    };
    let fetched = fetch(&mut s, id);
    let topic = &fetched.responses[0];
    assert_eq!(topic.topic_id, id);
    assert_eq!(topic.partitions[0].error_code, 0);
    assert_eq!(topic.partitions[0].high_watermark, 1);
    assert!(topic.partitions[0].records.as_ref().is_some_and(|r| !r.is_empty()), "the record by topic ID");
    let fetched = fetch(&mut s, unknown);
    assert_eq!(fetched.responses[0].partitions[0].error_code, UNKNOWN_TOPIC_ID);

    let request = DeleteTopicsRequest::default()
        .with_topics(vec![DeleteTopicState::default().with_topic_id(id)])
        .with_timeout_ms(5000);
    s.write_all(&flexible_request_frame(ApiKey::DeleteTopics, 6, 4, &request)).unwrap();
    let deleted = DeleteTopicsResponse::decode(&mut body(read_frame(&mut s)), 6).unwrap();
    assert_eq!(deleted.responses[0].error_code, 0);
    assert_eq!(deleted.responses[0].name.as_ref().unwrap().0.as_str(), "ids");
    assert!(engine.topic("ids").is_err());
    engine.create_topic("ids", 1, LogConfig::default()).unwrap();
    let stale =
        metadata(&mut s, Some(vec![MetadataRequestTopic::default().with_name(None).with_topic_id(id)]));
    assert_eq!(stale.topics[0].error_code, UNKNOWN_TOPIC_ID, "a recreated topic has a new ID");
    drop(s);
    server.shutdown();
    engine.shutdown().unwrap();
}

/// KIP-848 over raw frames: a member joins and is given every partition by topic ID,
/// ConsumerGroupDescribe shows it, a stale epoch is fenced, an unknown assignor and a regular
/// expression are refused, and a group id cannot be both classic and consumer.
#[test]
fn consumer_group_heartbeats_assign_by_topic_id_and_describe_shows_the_group() {
    use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
    use kafka_protocol::messages::{
        ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
        ConsumerGroupHeartbeatResponse, GroupId, JoinGroupRequest, JoinGroupResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let (engine, server) = one_shard_server(dir.path(), None);
    engine.create_topic("events", 3, LogConfig::default()).unwrap();
    let id = uuid::Uuid::from_bytes(engine.topic("events").unwrap().id.0);
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    let body = |frame: Vec<u8>| bytes::Bytes::from(frame).slice(5..);
    let beat = |s: &mut TcpStream, r: ConsumerGroupHeartbeatRequest| {
        s.write_all(&flexible_request_frame(ApiKey::ConsumerGroupHeartbeat, 1, 9, &r)).unwrap();
        ConsumerGroupHeartbeatResponse::decode(&mut body(read_frame(s)), 1).unwrap()
    };
    let join = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("modern")))
        .with_member_id(StrBytes::from_static_str("m-1"))
        .with_member_epoch(0)
        .with_rebalance_timeout_ms(30_000)
        .with_subscribed_topic_names(Some(vec![TopicName(StrBytes::from_static_str("events"))]))
        .with_topic_partitions(Some(Vec::new()));
    let r = beat(&mut s, join.clone());
    assert_eq!(r.error_code, 0, "{r:?}");
    assert_eq!(r.member_epoch, 1);
    let a = r.assignment.expect("an assignment");
    assert_eq!(a.topic_partitions.len(), 1);
    assert_eq!(a.topic_partitions[0].topic_id, id, "by topic ID");
    assert_eq!(a.topic_partitions[0].partitions, vec![0, 1, 2]);
    // The same heartbeat again, owning what it was given: nothing new to say.
    let owned = TopicPartitions::default().with_topic_id(id).with_partitions(vec![0, 1, 2]);
    let steady = join
        .clone()
        .with_member_epoch(1)
        .with_subscribed_topic_names(None)
        .with_topic_partitions(Some(vec![owned]));
    let r = beat(&mut s, steady.clone());
    assert_eq!((r.error_code, r.member_epoch, r.assignment.is_none()), (0, 1, true), "{r:?}");
    let r = beat(&mut s, steady.clone().with_member_epoch(7));
    assert_eq!(r.error_code, ResponseError::FencedMemberEpoch.code());
    let r = beat(
        &mut s,
        join.clone()
            .with_member_id(StrBytes::from_static_str("m-2"))
            .with_server_assignor(Some(StrBytes::from_static_str("sticky"))),
    );
    assert_eq!(r.error_code, ResponseError::UnsupportedAssignor.code());
    let r = beat(&mut s, join.clone().with_subscribed_topic_regex(Some(StrBytes::from_static_str("ev.*"))));
    assert_eq!(r.error_code, ResponseError::InvalidRegularExpression.code());

    let describe = ConsumerGroupDescribeRequest::default().with_group_ids(vec![
        GroupId(StrBytes::from_static_str("modern")),
        GroupId(StrBytes::from_static_str("nobody")),
    ]);
    s.write_all(&flexible_request_frame(ApiKey::ConsumerGroupDescribe, 1, 10, &describe)).unwrap();
    let d = ConsumerGroupDescribeResponse::decode(&mut body(read_frame(&mut s)), 1).unwrap();
    let g = &d.groups[0];
    assert_eq!((g.error_code, g.group_state.as_str(), g.group_epoch), (0, "Stable", 1));
    assert_eq!(g.members.len(), 1);
    assert_eq!(g.members[0].member_id.as_str(), "m-1");
    assert_eq!(g.members[0].assignment.topic_partitions[0].topic_name.0.as_str(), "events");
    assert_eq!(d.groups[1].error_code, ResponseError::GroupIdNotFound.code());

    // The group id is a consumer group: a classic JoinGroup is refused.
    let classic = JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("modern")))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(StrBytes::from_static_str("consumer"));
    s.write_all(&request_frame(ApiKey::JoinGroup, 5, 11, &classic)).unwrap();
    let j = JoinGroupResponse::decode(&mut bytes::Bytes::from(read_frame(&mut s)).slice(4..), 5).unwrap();
    assert_eq!(j.error_code, ResponseError::InconsistentGroupProtocol.code());
    // Leaving ends the group.
    let r = beat(&mut s, steady.with_member_epoch(-1));
    assert_eq!((r.error_code, r.member_epoch), (0, -1));
    drop(s);
    server.shutdown();
    engine.shutdown().unwrap();
}
