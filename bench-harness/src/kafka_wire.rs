//! The Kafka wire protocol as the harness's clients speak it: requests encoded with
//! `kafka-protocol`, frames read over blocking sockets into reused buffers.

use std::io::Read;
use std::net::TcpStream;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, ProduceRequest, TopicProduceData};
use kafka_protocol::messages::{ApiKey, BrokerId, RequestHeader, TopicName};
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};

pub const PRODUCE_VERSION: i16 = 7;
pub const FETCH_VERSION: i16 = 11;

/// A request frame: size, header, body.
pub fn encode_request<R: Encodable + HeaderVersion>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("spate-bench")));
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    header.encode(&mut buf, R::header_version(version)).expect("request header encodes");
    body.encode(&mut buf, version).expect("request encodes");
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    buf.freeze()
}

/// Reads one response frame into `buf` (its allocation is reused once the previous frame's
/// `Bytes` are dropped) and returns the frame, without copying it.
pub fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> anyhow::Result<Bytes> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size)?;
    let size = i32::from_be_bytes(size);
    anyhow::ensure!(size >= 4, "response frame of {size} bytes");
    buf.clear();
    buf.resize(size as usize, 0);
    stream.read_exact(&mut buf[..])?;
    Ok(buf.split().freeze())
}

/// A Produce request (acks -1) of one batch to one partition.
pub fn produce_request(topic: &'static str, partition: u32, batch: &Bytes) -> ProduceRequest {
    ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str(topic)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition as i32)
                .with_records(Some(batch.clone()))]),
    ])
}

/// A Produce request for one partition written as a real client writes it: the frame up to
/// the records (size, header, fields, the records' length), then the batch from the client's
/// own buffer in the same `writev`, never copied into a request buffer. Produce v7 ends with
/// the last partition's records, so nothing follows the batch.
pub fn write_produce(
    stream: &mut TcpStream,
    topic: &'static str,
    partition: u32,
    correlation_id: i32,
    batch: &[u8],
) -> std::io::Result<()> {
    use std::io::{IoSlice, Write};
    const _: () = assert!(PRODUCE_VERSION < 9, "flexible versions put tagged fields after the records");
    let empty = produce_request(topic, partition, &Bytes::new());
    let mut prefix =
        BytesMut::from(&encode_request(ApiKey::Produce, PRODUCE_VERSION, correlation_id, &empty)[..]);
    let len = prefix.len();
    let size = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) + batch.len() as i32;
    prefix[..4].copy_from_slice(&size.to_be_bytes());
    prefix[len - 4..].copy_from_slice(&(batch.len() as i32).to_be_bytes());
    let mut slices = [IoSlice::new(&prefix), IoSlice::new(batch)];
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match stream.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A Fetch request of `partitions` (partition, offset) of `topic`, `max_bytes` each, waiting up
/// to `max_wait_ms` for a first byte (0: answered at once).
pub fn fetch_request(
    topic: &'static str,
    partitions: &[(u32, i64)],
    max_bytes: u64,
    max_wait_ms: i32,
) -> FetchRequest {
    let wanted: Vec<FetchPartition> = partitions
        .iter()
        .map(|&(p, o)| {
            FetchPartition::default()
                .with_partition(p as i32)
                .with_fetch_offset(o)
                .with_partition_max_bytes(max_bytes as i32)
        })
        .collect();
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(i32::MAX)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(topic)))
            .with_partitions(wanted)])
}

/// The offset after the last whole batch in `records` (RecordBatch v2 headers).
pub fn next_offset(records: &[u8]) -> anyhow::Result<i64> {
    let mut at = 0;
    let mut next = None;
    while at + 27 <= records.len() {
        let base = i64::from_be_bytes(records[at..at + 8].try_into()?);
        let length = i32::from_be_bytes(records[at + 8..at + 12].try_into()?) as usize;
        let last_delta = i32::from_be_bytes(records[at + 23..at + 27].try_into()?);
        if at + 12 + length > records.len() {
            break;
        }
        next = Some(base + i64::from(last_delta) + 1);
        at += 12 + length;
    }
    next.ok_or_else(|| anyhow::anyhow!("no whole batch in a fetch response"))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn a_produce_written_from_the_batch_buffer_is_the_encoded_request() {
        let batch = Bytes::from(crate::workload::batch(100, 7));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        write_produce(&mut client, "t", 3, 42, &batch).unwrap();
        drop(client);
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        let expected = encode_request(ApiKey::Produce, PRODUCE_VERSION, 42, &produce_request("t", 3, &batch));
        assert_eq!(got, &expected[..]);
    }
}
