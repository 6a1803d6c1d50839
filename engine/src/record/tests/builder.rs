//! Hand-checked encoding and builder behaviour.

use super::*;

/// Bitwise CRC-32C (reflected Castagnoli polynomial), independent of the
/// `crc32c` crate the module uses.
fn crc32c_reference(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn crc32c_is_castagnoli() {
    // The standard check value of CRC-32C.
    assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    assert_eq!(crc32c_reference(b"123456789"), 0xe306_9283);
}

#[test]
fn known_small_batch_bytes() {
    let mut b = BatchBuilder::new(BatchOptions {
        base_offset: 5,
        producer_id: 7,
        producer_epoch: 1,
        base_sequence: 0,
        partition_leader_epoch: 3,
        attributes: Attributes::default(),
    });
    b.push(&Record { timestamp: 1000, key: Some(b"k"), value: Some(b"v"), headers: &[(b"h", Some(b"x"))] });
    assert_eq!(b.encoded_len(), 74);
    let bytes = b.finish();

    #[rustfmt::skip]
    let mut expected: Vec<u8> = vec![
        0, 0, 0, 0, 0, 0, 0, 5,         // baseOffset @0
        0, 0, 0, 62,                    // batchLength @8 = 74 - 12
        0, 0, 0, 3,                     // partitionLeaderEpoch @12
        2,                              // magic @16
        0, 0, 0, 0,                     // crc @17, filled below
        0, 0,                           // attributes @21
        0, 0, 0, 0,                     // lastOffsetDelta @23
        0, 0, 0, 0, 0, 0, 0x03, 0xe8,   // baseTimestamp @27 = 1000
        0, 0, 0, 0, 0, 0, 0x03, 0xe8,   // maxTimestamp @35
        0, 0, 0, 0, 0, 0, 0, 7,         // producerId @43
        0, 1,                           // producerEpoch @51
        0, 0, 0, 0,                     // baseSequence @53
        0, 0, 0, 1,                     // recordsCount @57
        // record @61: length 12 (zigzag 24), attributes, ts delta 0, offset delta 0,
        // key len 1 (zigzag 2) "k", value len 1 "v", 1 header: len 1 "h", len 1 "x"
        0x18, 0, 0, 0, 0x02, b'k', 0x02, b'v', 0x02, 0x02, b'h', 0x02, b'x',
    ];
    let crc = crc32c_reference(&expected[21..]);
    expected[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(bytes, expected);
    verify_crc(&bytes).unwrap();

    let batch = Batch::parse(&bytes).unwrap();
    assert_eq!(batch.header().crc, crc);
    assert_eq!(batch.total_len(), 74);
    let recs = decode_all(&batch).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].0, 5);
    assert_eq!(recs[0].1.headers, vec![(b"h".to_vec(), Some(b"x".to_vec()))]);
}

#[test]
fn empty_batch_is_valid() {
    let bytes = BatchBuilder::new(BatchOptions { base_offset: 9, ..Default::default() }).finish();
    assert_eq!(bytes.len(), BATCH_HEADER_LEN);
    let batch = Batch::parse(&bytes).unwrap();
    let h = batch.header();
    assert_eq!((h.records_count, h.last_offset_delta, h.last_offset()), (0, 0, 9));
    assert_eq!((h.base_timestamp, h.max_timestamp), (-1, -1));
    assert_eq!(batch.records().count(), 0);
}

#[test]
fn header_fields_and_deltas() {
    let opts = BatchOptions {
        base_offset: 100,
        producer_id: 12,
        producer_epoch: 2,
        base_sequence: 40,
        partition_leader_epoch: 0,
        attributes: Attributes::default().with_transactional(true),
    };
    // Out-of-order timestamps: base is the first, max the largest, deltas signed.
    let recs: Vec<Owned> = [50, 10, 70]
        .iter()
        .map(|&t| Owned { timestamp: t, key: None, value: Some(vec![1]), headers: vec![] })
        .collect();
    let bytes = build(opts, &recs);
    let batch = Batch::parse(&bytes).unwrap();
    let h = *batch.header();
    assert_eq!(h.base_timestamp, 50);
    assert_eq!(h.max_timestamp, 70);
    assert_eq!(h.last_offset_delta, 2);
    assert_eq!(h.last_offset(), 102);
    assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (12, 2, 40));
    assert!(h.attributes.is_transactional());
    let views: Vec<RecordView<'_>> = batch.records().map(Result::unwrap).collect();
    let deltas: Vec<(i32, i64)> = views.iter().map(|r| (r.offset_delta, r.timestamp_delta)).collect();
    assert_eq!(deltas, vec![(0, 0), (1, -40), (2, 20)]);
    let got: Vec<(i64, Owned)> = decode_all(&batch).unwrap();
    assert_eq!(
        got.into_iter().map(|(o, r)| (o, r.timestamp)).collect::<Vec<_>>(),
        vec![(100, 50), (101, 10), (102, 70)]
    );
}

#[test]
fn compression_bits_are_cleared() {
    let opts = BatchOptions {
        attributes: Attributes::default().with_compression(Compression::Zstd),
        ..Default::default()
    };
    let bytes = build(opts, &[Owned { timestamp: 1, key: None, value: None, headers: vec![] }]);
    let batch = Batch::parse(&bytes).unwrap();
    assert_eq!(batch.header().attributes.compression(), Ok(Compression::None));
    assert_eq!(batch.records().count(), 1);
}

#[test]
fn log_append_time_records_take_max_timestamp() {
    let opts = BatchOptions {
        attributes: Attributes::default().with_timestamp_type(TimestampType::LogAppendTime),
        ..Default::default()
    };
    let recs: Vec<Owned> =
        [5, 9, 7].iter().map(|&t| Owned { timestamp: t, key: None, value: None, headers: vec![] }).collect();
    let bytes = build(opts, &recs);
    let batch = Batch::parse(&bytes).unwrap();
    let ts: Vec<(i64, i64)> = batch
        .records()
        .map(|r| r.map(|r| (r.timestamp, r.timestamp_delta)))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ts, vec![(9, 0), (9, 4), (9, 2)]);
}

#[test]
fn finish_into_appends_and_reuses() {
    let mut b = BatchBuilder::new(BatchOptions::default());
    let mut out = b"prefix".to_vec();
    b.push(&Record { timestamp: 1, key: Some(b"a"), value: Some(&[0; 100]), headers: &[] });
    b.push(&Record { timestamp: 2, key: Some(b"b"), value: Some(&[1; 100]), headers: &[] });
    assert_eq!(b.len(), 2);
    let expected_len = b.encoded_len();
    let r1 = b.finish_into(&mut out);
    assert_eq!(r1, 6..6 + expected_len);
    assert!(b.is_empty());
    assert_eq!(b.encoded_len(), BATCH_HEADER_LEN);

    b.reset(BatchOptions { base_offset: 2, ..Default::default() });
    b.push(&Record { timestamp: 3, key: None, value: Some(b"c"), headers: &[] });
    let r2 = b.finish_into(&mut out);
    assert_eq!(r2.start, r1.end);
    assert_eq!(r2.end, out.len());

    let got: Vec<Batch<'_>> = batches(&out[6..]).collect::<Result<_, _>>().unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].as_bytes(), &out[r1]);
    assert_eq!(got[1].header().base_offset, 2);
    assert_eq!(got[1].header().records_count, 1);
    assert_eq!(got[1].records().next().unwrap().unwrap().value, Some(&b"c"[..]));
}

#[test]
fn finish_in_place_seals_without_copying_and_matches_finish() {
    let records: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 50]).collect();
    let build = |b: &mut BatchBuilder| {
        for v in &records {
            b.push(&Record { timestamp: 5, key: None, value: Some(v), headers: &[] });
        }
    };
    let mut reference = BatchBuilder::new(BatchOptions::default());
    build(&mut reference);
    let expected = reference.finish();
    let mut b = BatchBuilder::with_capacity(BatchOptions::default(), 4096);
    for _ in 0..2 {
        build(&mut b);
        let at = b.finish_in_place().as_ptr();
        assert_eq!(b.finish_in_place(), &expected[..]);
        let batch = batches(b.finish_in_place()).next().unwrap().unwrap();
        assert_eq!(batch.header().records_count, 3);
        // The next batch is built in the same buffer.
        b.reset(BatchOptions::default());
        build(&mut b);
        assert_eq!(b.finish_in_place().as_ptr(), at);
        b.reset(BatchOptions::default());
    }
    // Pushing after finishing extends the same batch, sealed again on the next finish.
    build(&mut b);
    b.finish_in_place();
    b.push(&Record { timestamp: 6, key: None, value: Some(b"more"), headers: &[] });
    let batch = batches(b.finish_in_place()).next().unwrap().unwrap();
    assert_eq!(batch.header().records_count, 4);
}

#[test]
fn oversized_record_is_rejected_without_change() {
    // 2100 headers sharing one 1 MiB value: over 2 GiB encoded, no 2 GiB allocation.
    let big = vec![0u8; 1 << 20];
    let headers: Vec<(&[u8], Option<&[u8]>)> = (0..2100).map(|_| (&b"h"[..], Some(&big[..]))).collect();
    let mut b = BatchBuilder::new(BatchOptions::default());
    let e = b.try_push(&Record { timestamp: 0, key: None, value: None, headers: &headers }).unwrap_err();
    assert!(matches!(e, RecordError::TooLarge { field: "record length", .. }), "{e}");
    assert!(b.is_empty());
    assert_eq!(b.encoded_len(), BATCH_HEADER_LEN);
}
