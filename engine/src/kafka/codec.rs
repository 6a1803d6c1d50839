//! Frames in and out: the request header, body decoding, and responses as a list of chunks in
//! which record bytes stay in their segment files.
//!
//! A Kafka frame is a 4-byte big-endian size followed by that many bytes. Requests start with
//! `api_key: i16, api_version: i16, correlation_id: i32`, which is all the connection needs to
//! decide whether it will read the rest (see [`FrameLimits`]). Responses are encoded by the
//! `kafka-protocol` codecs; a fetch response's record fields are encoded with a placeholder that
//! is then cut out and replaced by a reference to the file range (see [`encode_with_slices`]),
//! so record bytes never pass through a user-space buffer on their way to the socket.

use std::fs::File;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

use crate::log::ReadSlice;

/// Bytes of the fixed request prefix: api key, api version, correlation id.
pub const PREFIX_BYTES: usize = 8;

/// The fixed start of every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

impl Prefix {
    pub fn parse(bytes: &[u8]) -> Option<Prefix> {
        let b = bytes.get(..PREFIX_BYTES)?;
        Some(Prefix {
            api_key: i16::from_be_bytes([b[0], b[1]]),
            api_version: i16::from_be_bytes([b[2], b[3]]),
            correlation_id: i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// How large a request may be. Produce requests carry record batches and get the large limit;
/// every other request is metadata and gets a small one, so a client cannot make the server
/// buffer 100 MiB of anything but records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub produce_bytes_max: usize,
    pub other_bytes_max: usize,
}

impl FrameLimits {
    pub fn for_api(&self, api_key: i16) -> usize {
        if api_key == ApiKey::Produce as i16 {
            self.produce_bytes_max
        } else {
            self.other_bytes_max
        }
    }
}

/// Why a request could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
}

/// Decodes the request header of `frame` (which starts at the api key), leaving `frame` at the
/// body. The API and version must be known: the header's own version depends on them.
pub fn decode_header(frame: &mut Bytes, api: ApiKey, version: i16) -> Result<RequestHeader, DecodeError> {
    let header_version = api.request_header_version(version);
    RequestHeader::decode(frame, header_version)
        .map_err(|e| DecodeError::Malformed { what: "request header", reason: e.to_string() })
}

/// Decodes a request body of type `R` at `version`.
pub fn decode_body<R: Decodable>(
    body: &mut Bytes,
    version: i16,
    what: &'static str,
) -> Result<R, DecodeError> {
    R::decode(body, version).map_err(|e| DecodeError::Malformed { what, reason: e.to_string() })
}

/// Part of a response on its way to the socket.
#[derive(Debug, Clone)]
pub enum Chunk {
    Bytes(Bytes),
    /// A byte range of a segment file, sent with `sendfile`.
    File {
        file: Arc<File>,
        position: u64,
        len: u64,
    },
}

impl Chunk {
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        match self {
            Chunk::Bytes(b) => b.len() as u64,
            Chunk::File { len, .. } => *len,
        }
    }
}

/// A whole response frame, size prefix included.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub chunks: Vec<Chunk>,
}

#[cfg(test)]
impl Outgoing {
    pub fn len(&self) -> u64 {
        self.chunks.iter().map(Chunk::len).sum()
    }

    /// Bytes that go out with `sendfile`.
    pub fn file_bytes(&self) -> u64 {
        self.chunks.iter().filter(|c| matches!(c, Chunk::File { .. })).map(Chunk::len).sum()
    }
}

/// Why a response could not be encoded (a value out of range for its version: a bug, or a
/// field the client's version cannot carry).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the {api:?} v{version} response: {reason}")]
pub struct EncodeError {
    pub api: ApiKey,
    pub version: i16,
    pub reason: String,
}

/// Encodes header + body after a size prefix.
pub fn encode_response<R: Encodable + HeaderVersion>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Outgoing, EncodeError> {
    let buf = encode_frame(api, version, correlation_id, body)?;
    Ok(Outgoing { chunks: vec![Chunk::Bytes(buf.freeze())] })
}

fn encode_frame<R: Encodable + HeaderVersion>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<BytesMut, EncodeError> {
    let err = |e: anyhow::Error| EncodeError { api, version, reason: e.to_string() };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = R::header_version(version);
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    header.encode(&mut buf, header_version).map_err(err)?;
    body.encode(&mut buf, version).map_err(err)?;
    let size = i32::try_from(buf.len() - 4).map_err(|_| EncodeError {
        api,
        version,
        reason: format!("{} bytes do not fit a frame", buf.len()),
    })?;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf)
}

/// Bytes of a placeholder: long and random enough that it cannot occur by chance in the rest
/// of a response (which holds no record bytes, only names, numbers and the placeholders).
pub const PLACEHOLDER_BYTES: usize = 16;

/// A placeholder for slice `index`: a per-response random nonce and the index.
pub fn placeholder(nonce: u64, index: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(PLACEHOLDER_BYTES);
    b.put_u64(nonce);
    b.put_u32(0x5350_4154); // "SPAT"
    b.put_u32(index);
    b.freeze()
}

/// Encodes a response whose nullable-bytes record fields hold `placeholder(nonce, i)` for the
/// i-th of `slices`, and replaces each placeholder, with its length prefix, by the slice's real
/// length and a file chunk. `flexible` says whether the version encodes bytes with a varint
/// length (compact) or an i32.
pub fn encode_with_slices<R: Encodable + HeaderVersion>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
    nonce: u64,
    slices: &[ReadSlice],
    flexible: bool,
) -> Result<Outgoing, EncodeError> {
    let err = |reason: String| EncodeError { api, version, reason };
    let frame = encode_frame(api, version, correlation_id, body)?.freeze();
    let mut chunks = Vec::with_capacity(2 * slices.len() + 1);
    let mut from = 4; // the size prefix is rewritten below
    let mut total: u64 = 0;
    for (i, slice) in slices.iter().enumerate() {
        let marker = placeholder(nonce, i as u32);
        let at = find(&frame[from..], &marker)
            .map(|p| p + from)
            .ok_or_else(|| err(format!("placeholder {i} not found")))?;
        // The length prefix the codec wrote for the 16-byte placeholder.
        let prefix_len = if flexible { 1 } else { 4 };
        let prefix_at = at
            .checked_sub(prefix_len)
            .filter(|&p| p >= from)
            .ok_or_else(|| err("placeholder at the start".into()))?;
        let mut head = BytesMut::with_capacity(prefix_at - from + 5);
        head.extend_from_slice(&frame[from..prefix_at]);
        if flexible {
            put_unsigned_varint(&mut head, slice.len + 1);
        } else {
            let len = i32::try_from(slice.len).map_err(|_| err(format!("slice of {} bytes", slice.len)))?;
            head.put_i32(len);
        }
        total += head.len() as u64 + slice.len;
        chunks.push(Chunk::Bytes(head.freeze()));
        if slice.len > 0 {
            chunks.push(Chunk::File {
                file: Arc::clone(&slice.file),
                position: slice.position,
                len: slice.len,
            });
        }
        from = at + PLACEHOLDER_BYTES;
    }
    let tail = frame.slice(from..);
    total += tail.len() as u64;
    chunks.push(Chunk::Bytes(tail));
    let size = i32::try_from(total).map_err(|_| err(format!("{total} bytes do not fit a frame")))?;
    chunks.insert(0, Chunk::Bytes(Bytes::copy_from_slice(&size.to_be_bytes())));
    Ok(Outgoing { chunks })
}

fn put_unsigned_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchResponse, FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;
    use std::io::Write;

    fn slice_of(bytes: &[u8]) -> ReadSlice {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"xx").unwrap();
        f.write_all(bytes).unwrap();
        ReadSlice { file: Arc::new(f), position: 2, len: bytes.len() as u64, first_offset: 0, next_offset: 1 }
    }

    fn flatten(out: &Outgoing) -> Vec<u8> {
        let mut v = Vec::new();
        for c in &out.chunks {
            match c {
                Chunk::Bytes(b) => v.extend_from_slice(b),
                Chunk::File { file, position, len } => {
                    let mut buf = vec![0; *len as usize];
                    std::os::unix::fs::FileExt::read_exact_at(&**file, &mut buf, *position).unwrap();
                    v.extend_from_slice(&buf);
                }
            }
        }
        v
    }

    fn response(records: Vec<Option<Bytes>>) -> FetchResponse {
        let partitions = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                PartitionData::default().with_partition_index(i as i32).with_high_watermark(7).with_records(r)
            })
            .collect();
        FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(partitions)])
    }

    /// The spliced frame must be byte for byte what the codec makes with the records inline.
    #[test]
    fn spliced_fetch_responses_equal_the_codec_output_at_every_version() {
        let payloads: [&[u8]; 3] = [b"first batch bytes", b"", &[0xAB; 300]];
        for version in 4..=12 {
            let inline = response(payloads.iter().map(|p| Some(Bytes::copy_from_slice(p))).collect());
            let expected = flatten(&encode_response(ApiKey::Fetch, version, 9, &inline).unwrap());
            let nonce = 0x1234_5678_9abc_def0;
            let marked = response((0..3).map(|i| Some(placeholder(nonce, i))).collect());
            let slices: Vec<_> = payloads.iter().map(|p| slice_of(p)).collect();
            let out = encode_with_slices(ApiKey::Fetch, version, 9, &marked, nonce, &slices, version >= 12)
                .unwrap();
            assert_eq!(flatten(&out), expected, "v{version}");
            assert_eq!(out.len(), expected.len() as u64);
            assert_eq!(out.file_bytes(), 317);
        }
    }

    #[test]
    fn the_prefix_reads_the_first_eight_bytes() {
        let p = Prefix::parse(&[0, 1, 0, 11, 0, 0, 1, 0, 9]).unwrap();
        assert_eq!(p, Prefix { api_key: 1, api_version: 11, correlation_id: 256 });
        assert_eq!(Prefix::parse(&[0; 7]), None);
    }
}
