//! Where connections live (they move to the shard owning their partitions), and idempotent
//! produce as seen on the wire.

use std::net::TcpStream;

use crate::bad_input::round_trip;
use crate::server::Spate;

/// Encodes a request with `kafka-protocol`'s client side.
pub fn request<R: kafka_protocol::protocol::Encodable + kafka_protocol::protocol::HeaderVersion>(
    api: kafka_protocol::messages::ApiKey,
    version: i16,
    body: &R,
) -> Vec<u8> {
    use kafka_protocol::protocol::Encodable;
    let header = kafka_protocol::messages::RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(3);
    let mut buf = bytes::BytesMut::new();
    header.encode(&mut buf, R::header_version(version)).unwrap();
    body.encode(&mut buf, version).unwrap();
    let mut frame = (buf.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&buf);
    frame
}

#[test]
fn a_connection_moves_to_the_shard_that_owns_the_partitions_it_reads() {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
    use kafka_protocol::messages::{ApiKey, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let dir = tempfile::tempdir().unwrap();
    let spate = Spate::start(&dir.path().join("data"));
    let topic = "placement";
    let create =
        CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(topic)))
            .with_num_partitions(2)
            .with_replication_factor(1)]);
    // Connections are placed on shards 0, 1, 0, ... in accept order: this one on 0.
    let mut admin = TcpStream::connect(spate.addr).unwrap();
    let (_, body) = round_trip(&mut admin, &request(ApiKey::CreateTopics, 4, &create)).unwrap();
    assert!(body.len() > 4);
    drop(admin);
    // The next two land on shards 1 and 0; each reads the partition the other shard owns.
    let owned_by = |shard: usize| (0..2).find(|&p| spate::shard_of(topic, p, 2) == shard).unwrap() as i32;
    for (connection_shard, partition) in [(1, owned_by(0)), (0, owned_by(1))] {
        let mut s = TcpStream::connect(spate.addr).unwrap();
        let fetch = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str(topic)))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_partition_max_bytes(1 << 20)])]);
        let frame = request(ApiKey::Fetch, 11, &fetch);
        for _ in 0..20 {
            let (id, _) = round_trip(&mut s, &frame).unwrap();
            assert_eq!(id, 3, "connection on shard {connection_shard}");
        }
    }
    let remote = spate.metric("spate_partition_reads_total{hop=\"remote\"}");
    let local = spate.metric("spate_partition_reads_total{hop=\"local\"}");
    assert_eq!(spate.metric("spate_connections_moved_total"), 2.0);
    assert_eq!(remote, 2.0, "one read each before the move");
    assert_eq!(local, 38.0);
}

#[test]
fn a_retried_idempotent_produce_gets_the_first_offsets_and_a_gap_is_refused_on_the_wire() {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, ProduceRequest, TopicProduceData};
    use kafka_protocol::messages::{
        ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceResponse, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, StrBytes};
    use spate::record::{BatchBuilder, BatchOptions, Record};

    let dir = tempfile::tempdir().unwrap();
    let spate = Spate::start(&dir.path().join("data"));
    let mut s = TcpStream::connect(spate.addr).unwrap();
    let init =
        InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000);
    let (_, body) = round_trip(&mut s, &request(ApiKey::InitProducerId, 4, &init)).unwrap();
    // Flexible versions (InitProducerId v4, Produce v9) put a tagged-field count after the
    // correlation id: one zero byte.
    let init = InitProducerIdResponse::decode(&mut bytes::Bytes::from(body).slice(1..), 4).unwrap();
    assert_eq!(init.error_code, 0);
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert!(pid > 0);
    let produce = |seq: i32, count: usize| {
        let mut b = BatchBuilder::new(BatchOptions {
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            ..BatchOptions::default()
        });
        for _ in 0..count {
            b.push(&Record { timestamp: 1, key: None, value: Some(b"v"), headers: &[] });
        }
        let req = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("idem-wire")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(b.finish().into()))]),
        ]);
        request(ApiKey::Produce, 9, &req)
    };
    // The topic exists once Metadata asks for it (auto-creation); Produce alone does not create.
    let metadata = kafka_protocol::messages::MetadataRequest::default()
        .with_topics(Some(vec![kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("idem-wire"))))]));
    round_trip(&mut s, &request(ApiKey::Metadata, 9, &metadata)).unwrap();
    let mut answer = |frame: &[u8]| {
        let (_, body) = round_trip(&mut s, frame).unwrap();
        let r = ProduceResponse::decode(&mut bytes::Bytes::from(body).slice(1..), 9).unwrap();
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    };
    let first = answer(&produce(0, 3));
    assert_eq!(first, (0, 0));
    assert_eq!(answer(&produce(0, 3)), (0, 0), "the retry is acknowledged with the first write's offsets");
    assert_eq!(answer(&produce(5, 1)).0, 45, "a gap is OUT_OF_ORDER_SEQUENCE_NUMBER");
    assert_eq!(answer(&produce(3, 1)), (0, 3), "the next in sequence lands after the first three");
}

/// Kafka's produce validation on the wire: a partition's records hold exactly one batch, and a
/// compressed batch is decompressed and checked. A refused batch leaves nothing behind.
#[test]
fn invalid_produces_get_kafka_error_codes_and_store_nothing() {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, ProduceRequest, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceResponse, TopicName};
    use kafka_protocol::protocol::{Decodable, StrBytes};
    use spate::record::compression::compress_batch;
    use spate::record::{BatchBuilder, BatchOptions, Compression, Record};

    let dir = tempfile::tempdir().unwrap();
    let spate = Spate::start(&dir.path().join("data"));
    let mut s = TcpStream::connect(spate.addr).unwrap();
    let metadata = kafka_protocol::messages::MetadataRequest::default()
        .with_topics(Some(vec![kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("checked"))))]));
    round_trip(&mut s, &request(ApiKey::Metadata, 9, &metadata)).unwrap();
    let batch = |values: &[&[u8]]| {
        let mut b = BatchBuilder::new(BatchOptions::default());
        for v in values {
            b.push(&Record { timestamp: 1, key: None, value: Some(v), headers: &[] });
        }
        b.finish()
    };
    let mut produce = |records: Vec<u8>, version: i16| {
        let req = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("checked")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records.into()))]),
        ]);
        let (_, body) = round_trip(&mut s, &request(ApiKey::Produce, version, &req)).unwrap();
        let skip = if version >= 9 { 1 } else { 0 };
        let r = ProduceResponse::decode(&mut bytes::Bytes::from(body).slice(skip..), version).unwrap();
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    };
    // Two valid batches in one partition: INVALID_RECORD (87), as Kafka answers.
    let two = [batch(&[b"a"]), batch(&[b"b"])].concat();
    assert_eq!(produce(two, 9).0, 87);
    // A gzip batch whose header claims one record more than its block holds: CORRUPT_MESSAGE.
    let mut short = compress_batch(&batch(&[b"x", b"y"]), Compression::Gzip).unwrap();
    short[57..61].copy_from_slice(&3i32.to_be_bytes());
    short[23..27].copy_from_slice(&2i32.to_be_bytes());
    let crc = crc32c::crc32c(&short[21..]);
    short[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(produce(short, 9).0, 2);
    // 72 MiB of zeros in a small zstd batch: MESSAGE_TOO_LARGE (10).
    let zeros = vec![0u8; 8 << 20];
    let bomb = compress_batch(&batch(&[zeros.as_slice(); 9]), Compression::Zstd).unwrap();
    assert!(bomb.len() < 1 << 20);
    assert_eq!(produce(bomb, 9).0, 10);
    // zstd before Produce v7: UNSUPPORTED_COMPRESSION_TYPE (76).
    let small_zstd = compress_batch(&batch(&[b"z"]), Compression::Zstd).unwrap();
    assert_eq!(produce(small_zstd.clone(), 6).0, 76);
    // Nothing of those was stored: the next good batches get offsets 0 and 1.
    assert_eq!(produce(small_zstd, 9), (0, 0));
    assert_eq!(produce(compress_batch(&batch(&[b"ok"]), Compression::Lz4).unwrap(), 9), (0, 1));
}

/// A read made ahead for a partition of another shard is never served once its topic has been
/// deleted and created again: the next fetch gets the new topic's records.
#[test]
fn a_read_ahead_of_a_deleted_and_recreated_topic_is_not_served() {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
    use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, ProduceRequest, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, FetchResponse, TopicName};
    use kafka_protocol::protocol::{Decodable, StrBytes};
    use spate::record::{batches, BatchBuilder, BatchOptions, Record};

    let dir = tempfile::tempdir().unwrap();
    let spate = Spate::start(&dir.path().join("data"));
    let topic = || TopicName(StrBytes::from_static_str("again"));
    let mut s = TcpStream::connect(spate.addr).unwrap();
    let mut call = |frame: Vec<u8>| bytes::Bytes::from(round_trip(&mut s, &frame).unwrap().1);
    let create =
        CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![CreatableTopic::default()
            .with_name(topic())
            .with_num_partitions(2)
            .with_replication_factor(1)]);
    let produce = |tag: &str| {
        let data = (0..2)
            .map(|p| {
                // Ten batches of one record each: a fetch of one batch leaves the rest to read.
                let mut records = Vec::new();
                for i in 0..10 {
                    let mut b = BatchBuilder::new(BatchOptions::default());
                    let v = format!("{tag}-{p}-{i}");
                    b.push(&Record {
                        timestamp: 1_700_000_000_000,
                        key: None,
                        value: Some(v.as_bytes()),
                        headers: &[],
                    });
                    records.push(b.finish());
                }
                (p, records)
            })
            .collect::<Vec<_>>();
        data
    };
    let fetch = |offset: i64| {
        FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default().with_topic(topic()).with_partitions(
                (0..2)
                    .map(|p| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(1)
                    })
                    .collect(),
            )])
    };
    let values = |body: bytes::Bytes| -> Vec<String> {
        let r = FetchResponse::decode(&mut body.clone(), 11).unwrap();
        let mut out = Vec::new();
        for p in &r.responses[0].partitions {
            let Some(records) = &p.records else { continue };
            for b in batches(records) {
                for rec in b.unwrap().records() {
                    out.push(String::from_utf8(rec.unwrap().value.unwrap().to_vec()).unwrap());
                }
            }
        }
        out.sort();
        out
    };
    let write = |tag: &str, call: &mut dyn FnMut(Vec<u8>) -> bytes::Bytes| {
        for (p, batches) in produce(tag) {
            for batch in batches {
                let req =
                    ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![
                        TopicProduceData::default().with_name(topic()).with_partition_data(vec![
                            PartitionProduceData::default().with_index(p).with_records(Some(batch.into())),
                        ]),
                    ]);
                call(request(ApiKey::Produce, 7, &req));
            }
        }
    };
    call(request(ApiKey::CreateTopics, 4, &create));
    write("old", &mut call);
    // Both partitions in one fetch (two shards own them, so the connection stays put): the one
    // of the other shard is read ahead from offset 1.
    assert_eq!(values(call(request(ApiKey::Fetch, 11, &fetch(0)))), ["old-0-0", "old-1-0"]);
    let delete = DeleteTopicsRequest::default().with_timeout_ms(5000).with_topic_names(vec![topic()]);
    call(request(ApiKey::DeleteTopics, 4, &delete));
    call(request(ApiKey::CreateTopics, 4, &create));
    write("new", &mut call);
    assert_eq!(values(call(request(ApiKey::Fetch, 11, &fetch(1)))), ["new-0-1", "new-1-1"], "no old bytes");
}
