//! What one client (or many) may take from the server: descriptors, partitions, connections.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::bad_input::round_trip;
use crate::server::{kcat, python, run_kcat, run_python, Options, Spate};

/// An ApiVersions v0 request frame.
fn api_versions() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&2i16.to_be_bytes());
    body.extend_from_slice(b"fd");
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

/// Under an open-file limit of 400: topics that would need more descriptors than are left are
/// refused with POLICY_VIOLATION, connections beyond the limit are closed at once, and once
/// they go the server serves a new client again. It never runs out of descriptors mid-write.
#[test]
fn the_open_file_limit_refuses_partitions_and_connections_before_it_is_reached() {
    let (Some(python), Some(kcat)) = (python(), kcat()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let spate =
        Spate::start_with(&dir.path().join("data"), Options { open_files: Some(400), ..Options::default() });
    let b = spate.bootstrap();
    let refused = run_python(&python, "confluent_admin.py", &["create", &b, "too-wide", "500"]);
    assert_eq!(refused["error"], "POLICY_VIOLATION", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("open-file limit"), "{refused}");
    let fits = run_python(&python, "confluent_admin.py", &["create", &b, "fits", "20"]);
    assert_eq!(fits["error"], serde_json::Value::Null, "{fits}");

    // Four hundred connections: the ones past the limit are closed without an answer.
    let mut open = Vec::new();
    let mut answered = 0;
    let mut closed = 0;
    for _ in 0..400 {
        let Ok(mut s) = TcpStream::connect(spate.addr) else { break };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        match round_trip(&mut s, &api_versions()) {
            Ok(_) => answered += 1,
            Err(_) => closed += 1,
        }
        open.push(s);
    }
    assert!(answered > 100, "{answered} answered, {closed} closed");
    assert!(closed > 0, "{answered} answered, {closed} closed");
    assert!(spate.metric("spate_connections_refused_total") >= closed as f64);
    drop(open);
    // Back under the limit: a new client is served within a second or two, and data flows.
    let started = Instant::now();
    loop {
        let mut s = TcpStream::connect(spate.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if round_trip(&mut s, &api_versions()).is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "not served again after the connections closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    run_kcat(&kcat, &["-b", &b, "-P", "-t", "fits", "-p", "0"], "after\n");
    let out = run_kcat(&kcat, &["-b", &b, "-C", "-t", "fits", "-p", "0", "-o", "beginning", "-e", "-q"], "");
    assert_eq!(out, "after\n");
    let log = spate.server_log();
    assert!(log.contains("out of file descriptors; refusing connections"), "{log}");
    assert!(!log.contains("partition failed"), "{log}");
}

/// OffsetCommit metadata is kept with the offset and returned by OffsetFetch.
#[test]
fn committed_metadata_round_trips_through_a_real_client() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spate = Spate::start(&dir.path().join("data"));
    let r = run_python(
        &python,
        "confluent_admin.py",
        &["commit-metadata", &spate.bootstrap(), "meta", "job state 3"],
    );
    assert_eq!((r["offset"].as_i64(), r["metadata"].as_str()), (Some(3), Some("job state 3")), "{r}");
}

/// Committed offsets of a group that left expire after `offsets_retention_ms`; those of a group
/// with members are kept however long ago they were committed.
#[test]
fn offsets_of_an_empty_group_expire_and_a_live_group_keeps_its_own() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = "offsets_retention_ms = 2000\nretention_check_interval_ms = 200\n".to_string();
    let spate =
        Spate::start_with(&dir.path().join("data"), Options { config: Some(config), ..Options::default() });
    let r =
        run_python(&python, "confluent_admin.py", &["offsets-expire", &spate.bootstrap(), "expiring", "6"]);
    // -1001: no committed offset.
    assert_eq!((r["live"].as_i64(), r["gone"].as_i64()), (Some(2), Some(-1001)), "{r}");
    assert!(spate.server_log().contains("committed offsets expired"));
}

/// Everything a client controls is bounded, and each bound answers with a Kafka error code:
/// group id length, assignment protocols per member, partitions per OffsetCommit, OffsetFetch
/// and Fetch, and topics created on first use per second.
#[test]
fn client_controlled_sizes_are_bounded_with_kafka_error_codes() {
    use bytes::Bytes;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
    use kafka_protocol::messages::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
    use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequest, OffsetFetchRequestTopic};
    use kafka_protocol::messages::{
        ApiKey, FetchResponse, GroupId, JoinGroupResponse, MetadataResponse, OffsetCommitResponse,
        OffsetFetchResponse, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, StrBytes};

    use crate::placement::request;

    let dir = tempfile::tempdir().unwrap();
    let options = Options { config: Some("auto_create_topics_per_sec = 5\n".into()), ..Options::default() };
    let spate = Spate::start_with(&dir.path().join("data"), options);
    let mut s = TcpStream::connect(spate.addr).unwrap();
    let mut call = |frame: Vec<u8>| Bytes::from(round_trip(&mut s, &frame).unwrap().1);
    let name = |n: &str| TopicName(StrBytes::from_string(n.to_string()));

    // Topics created on first use: five now, the rest asked to retry.
    let asked: Vec<MetadataRequestTopic> = (0..20)
        .map(|i| MetadataRequestTopic::default().with_name(Some(name(&format!("auto-{i}")))))
        .collect();
    let r = MetadataResponse::decode(
        &mut call(request(
            ApiKey::Metadata,
            8,
            &MetadataRequest::default().with_topics(Some(asked)).with_allow_auto_topic_creation(true),
        )),
        8,
    )
    .unwrap();
    let created = r.topics.iter().filter(|t| t.error_code == 0).count();
    let retry = r.topics.iter().filter(|t| t.error_code == 5).count();
    assert_eq!((created, retry), (5, 15), "LEADER_NOT_AVAILABLE past the rate");

    let join = |group: &str, protocols: usize| {
        let protocols = (0..protocols)
            .map(|i| {
                JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_string(format!("p{i}")))
                    .with_metadata(Bytes::from_static(b"m"))
            })
            .collect();
        JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(StrBytes::from_static_str(""))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(protocols)
    };
    let long = "g".repeat(300);
    let r = JoinGroupResponse::decode(&mut call(request(ApiKey::JoinGroup, 5, &join(&long, 1))), 5).unwrap();
    assert_eq!(r.error_code, 24, "INVALID_GROUP_ID");
    let r = JoinGroupResponse::decode(&mut call(request(ApiKey::JoinGroup, 5, &join("ok", 17))), 5).unwrap();
    assert_eq!(r.error_code, 42, "INVALID_REQUEST for 17 protocols");

    // 10,001 partitions in one OffsetCommit, OffsetFetch and Fetch.
    let many = 10_001;
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("many")))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_topics(vec![OffsetCommitRequestTopic::default().with_name(name("auto-0")).with_partitions(
            (0..many)
                .map(|p| {
                    OffsetCommitRequestPartition::default().with_partition_index(p).with_committed_offset(1)
                })
                .collect(),
        )]);
    let r = OffsetCommitResponse::decode(&mut call(request(ApiKey::OffsetCommit, 7, &commit)), 7).unwrap();
    assert!(r.topics[0].partitions.iter().all(|p| p.error_code == 42), "every partition INVALID_REQUEST");
    let fetch_offsets = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("many")))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(name("auto-0"))
            .with_partition_indexes((0..many).collect())]));
    let r =
        OffsetFetchResponse::decode(&mut call(request(ApiKey::OffsetFetch, 5, &fetch_offsets)), 5).unwrap();
    assert_eq!(r.error_code, 42);
    let fetch = FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(vec![
        FetchTopic::default().with_topic(name("auto-0")).with_partitions(
            (0..many)
                .map(|p| FetchPartition::default().with_partition(p).with_partition_max_bytes(1024))
                .collect(),
        ),
    ]);
    let r = FetchResponse::decode(&mut call(request(ApiKey::Fetch, 11, &fetch)), 11).unwrap();
    assert!(r.responses[0].partitions.iter().all(|p| p.error_code == 42));
    assert_eq!(r.responses[0].partitions.len(), many as usize);
    assert!(spate.server_log().lines().all(|l| !l.contains("panicked")));
}

/// `offsets_for_times` finds the first record at or after a time inside a batch, not the batch.
#[test]
fn offsets_for_times_finds_the_record_inside_a_batch() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spate = Spate::start(&dir.path().join("data"));
    let r = run_python(&python, "confluent_admin.py", &["offsets-for-times", &spate.bootstrap(), "times"]);
    assert_eq!((r["between"].as_i64(), r["exact"].as_i64()), (Some(5), Some(7)), "{r}");
}
