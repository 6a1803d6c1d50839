//! Malformed input: each corruption is reported with the right typed error, and
//! `batches()` separates an incomplete tail from corruption.

use super::*;

fn one(key: &[u8], value: &[u8]) -> Owned {
    Owned { timestamp: 7, key: Some(key.to_vec()), value: Some(value.to_vec()), headers: vec![] }
}

/// Records of `bytes` after resealing, as a list of results.
fn results(bytes: &mut [u8]) -> Vec<Result<RecordView<'_>, RecordError>> {
    reseal(bytes);
    let batch = Batch::parse(bytes).unwrap();
    batch.records().collect()
}

#[test]
fn trailing_bytes_after_last_record() {
    let mut b = build(BatchOptions::default(), &[one(b"k", b"v")]);
    b.extend_from_slice(&[0, 0, 0]);
    let r = results(&mut b);
    assert_eq!(r.len(), 2);
    assert!(r[0].is_ok());
    assert_eq!(r[1], Err(RecordError::TrailingBytes { declared: 1, trailing: 3 }));
}

#[test]
fn fewer_records_than_declared() {
    let mut b = build(BatchOptions::default(), &[one(b"k", b"v")]);
    b[57..61].copy_from_slice(&3i32.to_be_bytes());
    let r = results(&mut b);
    assert_eq!(r.len(), 2);
    let e = r[1].clone().unwrap_err();
    assert_eq!(e, RecordError::RecordCountMismatch { declared: 3, found: 1 });
    assert_eq!(e.to_string(), "batch declares 3 records but holds only 1");
}

#[test]
fn more_records_than_declared() {
    let mut b = build(BatchOptions::default(), &[one(b"k", b"v"), one(b"k", b"v")]);
    b[57..61].copy_from_slice(&1i32.to_be_bytes());
    let r = results(&mut b);
    assert!(matches!(r[1], Err(RecordError::TrailingBytes { declared: 1, .. })));
}

#[test]
fn record_length_longer_than_fields() {
    let mut b = build(BatchOptions::default(), &[one(b"k", b"v")]);
    // Record body is 8 bytes (zigzag 16); claim 9 and supply one spare byte.
    assert_eq!(b[61], 16);
    b[61] = 18;
    b.push(0);
    let r = results(&mut b);
    assert_eq!(r, vec![Err(RecordError::RecordSizeMismatch { declared: 9, consumed: 8 })]);
}

#[test]
fn record_length_shorter_than_fields() {
    let mut b = build(BatchOptions::default(), &[one(b"k", b"value")]);
    b[61] -= 2; // one byte less: the value overruns the record
    let r = results(&mut b);
    assert!(matches!(r[0], Err(RecordError::Truncated { .. })), "{r:?}");
}

#[test]
fn record_length_past_batch_end() {
    let mut b = build(BatchOptions::default(), &[one(b"k", b"v")]);
    b[61] = 0x7e; // 63 bytes, more than the batch holds
    let r = results(&mut b);
    assert_eq!(r, vec![Err(RecordError::Truncated { needed: 63, available: 8 })]);
}

#[test]
fn negative_lengths() {
    // Record: len, attrs, ts delta, offset delta, key len @65.
    let mut b = build(BatchOptions::default(), &[one(b"", b"v")]);
    assert_eq!(b[65], 0); // empty key
    b[65] = 3; // zigzag -2
    let r = results(&mut b);
    let e = r[0].clone().unwrap_err();
    assert_eq!(e, RecordError::BadFieldLength { field: "key length", value: -2 });
    assert_eq!(e.to_string(), "invalid key length -2");

    let mut b = build(BatchOptions::default(), &[one(b"k", b"v")]);
    b[61] = 1; // record length -1
    assert_eq!(results(&mut b), vec![Err(RecordError::BadFieldLength { field: "record length", value: -1 })]);

    let mut r = one(b"k", b"v");
    r.headers.push((b"".to_vec(), None));
    let mut b = build(BatchOptions::default(), &[r]);
    let hk = b.len() - 2; // header key length, then value length -1
    assert_eq!(&b[hk..], &[0, 1]);
    b[hk] = 1; // header key length -1: keys are never null
    assert_eq!(
        results(&mut b),
        vec![Err(RecordError::BadFieldLength { field: "header key length", value: -1 })]
    );
}

#[test]
fn overlong_varint_in_record() {
    let mut b = build(BatchOptions::default(), &[one(b"k", b"v")]);
    b.truncate(61);
    b.extend_from_slice(&[0x80; 7]);
    assert_eq!(results(&mut b), vec![Err(RecordError::BadVarint { max_len: 5 })]);
}

#[test]
fn compressed_and_unknown_codecs() {
    let mut b = build(BatchOptions::default(), &[one(b"k", b"v")]);
    b[22] |= 1; // gzip
    let r = results(&mut b);
    let e = r[0].clone().unwrap_err();
    assert_eq!(r.len(), 1);
    assert_eq!(e, RecordError::Compressed(Compression::Gzip));
    assert_eq!(e.to_string(), "compressed batch (Gzip): records not decoded here");
    b[22] |= 7; // codec 7
    assert_eq!(results(&mut b), vec![Err(RecordError::UnknownCompression(7))]);
}

#[test]
fn truncated_batch_and_bad_crc() {
    let b = build(BatchOptions::default(), &[one(b"k", b"v")]);
    let n = b.len();
    assert_eq!(Batch::parse(&b[..n - 1]), Err(RecordError::Truncated { needed: n, available: n - 1 }));
    let mut c = b.clone();
    c[n - 1] ^= 0x40;
    assert!(matches!(Batch::parse(&c), Err(RecordError::CrcMismatch { .. })));
    let mut d = b;
    d[16] = 1;
    assert_eq!(Batch::parse(&d), Err(RecordError::BadMagic(1)));
}

fn three() -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut ends = Vec::new();
    let mut b = BatchBuilder::new(BatchOptions::default());
    for i in 0..3i64 {
        b.reset(BatchOptions { base_offset: i * 10, ..Default::default() });
        for j in 0..(i + 1) {
            b.push(&Record { timestamp: j, key: None, value: Some(b"payload"), headers: &[] });
        }
        ends.push(b.finish_into(&mut out).end);
    }
    (out, ends)
}

#[test]
fn batches_stop_at_incomplete_tail() {
    let (mut buf, ends) = three();
    let full = buf.clone();
    let last = &full[ends[1]..];
    buf.extend_from_slice(&last[..last.len() / 2]);
    let mut it = batches(&buf);
    for (i, end) in ends.iter().enumerate() {
        let batch = it.next().unwrap().unwrap();
        assert_eq!(batch.header().base_offset, i as i64 * 10);
        assert_eq!(batch.records().count(), i + 1);
        assert_eq!(it.position(), *end);
    }
    assert!(it.next().is_none());
    assert!(it.next().is_none());
    assert_eq!(it.position(), full.len());
    assert_eq!(it.remainder().len(), buf.len() - full.len());
}

#[test]
fn batches_stop_once_at_corruption() {
    let (mut buf, ends) = three();
    buf[ends[1] - 1] ^= 0xff; // last byte of the middle batch
    let mut it = batches(&buf);
    assert!(it.next().unwrap().is_ok());
    assert!(matches!(it.next(), Some(Err(RecordError::CrcMismatch { .. }))));
    assert!(it.next().is_none());
    assert_eq!(it.position(), ends[0]);
}

#[test]
fn batches_edge_cases() {
    assert!(batches(&[]).next().is_none());
    let (buf, _) = three();
    // Fewer than 17 bytes: cannot tell anything yet, so an incomplete tail.
    assert!(batches(&buf[..16]).next().is_none());
    // A zero-filled region (e.g. preallocated file space) is not a batch.
    assert_eq!(batches(&[0u8; 100]).next(), Some(Err(RecordError::BadMagic(0))));
    let mut short = buf[..61].to_vec();
    short[8..12].copy_from_slice(&12i32.to_be_bytes());
    assert_eq!(batches(&short).next(), Some(Err(RecordError::BadLength(12))));
}
