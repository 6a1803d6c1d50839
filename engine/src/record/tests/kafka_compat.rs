//! Differential tests against the `kafka-protocol` crate, both directions.
//!
//! Known differences, where Spate follows Kafka's Java implementation:
//! - kafka-protocol's encoder never sets attribute bit 3 (timestamp type), so it
//!   cannot write LogAppendTime batches; its decoder reads the bit.
//! - For LogAppendTime batches, Kafka (`DefaultRecordBatch.RecordIterator`) gives
//!   every record the batch's maxTimestamp; kafka-protocol returns
//!   baseTimestamp + delta. Spate does the former and exposes the delta too.
//! - kafka-protocol uses the smallest timestamp as baseTimestamp; Java producers
//!   (and Spate's builder) use the first record's. Both are valid: deltas are signed.
//! - kafka-protocol keeps headers in a map keyed by UTF-8 strings, so tests feed
//!   it unique UTF-8 keys; Spate keeps them as ordered byte pairs.

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records as kp;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

use super::*;

fn kp_record(offset: i64, timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> kp::Record {
    kp::Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: kp::TimestampType::Creation,
        offset,
        sequence: -1,
        timestamp,
        key: key.map(Bytes::copy_from_slice),
        value: value.map(Bytes::copy_from_slice),
        headers: Default::default(),
    }
}

fn kp_encode(records: &[kp::Record]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let opts = kp::RecordEncodeOptions { version: 2, compression: kp::Compression::None };
    kp::RecordBatchEncoder::encode(&mut buf, records, &opts).unwrap();
    buf.to_vec()
}

fn kp_decode(bytes: &[u8]) -> Vec<kp::RecordSet> {
    kp::RecordBatchDecoder::decode_all(&mut Bytes::copy_from_slice(bytes)).unwrap()
}

fn kp_to_owned(r: &kp::Record) -> (i64, Owned) {
    (
        r.offset,
        Owned {
            timestamp: r.timestamp,
            key: r.key.as_ref().map(|b| b.to_vec()),
            value: r.value.as_ref().map(|b| b.to_vec()),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_ref().map(|b| b.to_vec())))
                .collect(),
        },
    )
}

#[test]
fn known_small_batch_matches_kafka_protocol() {
    let mut theirs = kp_record(5, 1000, Some(b"k"), Some(b"v"));
    theirs.partition_leader_epoch = 3;
    theirs.producer_id = 7;
    theirs.producer_epoch = 1;
    theirs.sequence = 0;
    theirs.headers.insert(StrBytes::from_static_str("h"), Some(Bytes::from_static(b"x")));
    let ours = BatchBuilder::new(BatchOptions {
        base_offset: 5,
        producer_id: 7,
        producer_epoch: 1,
        base_sequence: 0,
        partition_leader_epoch: 3,
        attributes: Attributes::default(),
    });
    let mut ours = ours;
    ours.push(&Record {
        timestamp: 1000,
        key: Some(b"k"),
        value: Some(b"v"),
        headers: &[(b"h", Some(b"x"))],
    });
    assert_eq!(ours.finish(), kp_encode(&[theirs]));
}

/// Checks that kafka-protocol decodes our batch `bytes` built from `opts` and `recs`.
fn check_theirs_decode_ours(opts: BatchOptions, recs: &[Owned], bytes: &[u8]) {
    let sets = kp_decode(bytes);
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].version, 2);
    assert_eq!(sets[0].compression, kp::Compression::None);
    let got = &sets[0].records;
    assert_eq!(got.len(), recs.len());
    for (i, (g, want)) in got.iter().zip(recs).enumerate() {
        let (offset, owned) = kp_to_owned(g);
        assert_eq!(offset, opts.base_offset + i as i64);
        // kafka-protocol reports base + delta even for LogAppendTime.
        assert_eq!(&owned, want);
        assert_eq!(g.producer_id, opts.producer_id);
        assert_eq!(g.producer_epoch, opts.producer_epoch);
        assert_eq!(g.partition_leader_epoch, opts.partition_leader_epoch);
        assert_eq!(g.sequence, opts.base_sequence.wrapping_add(i as i32));
        assert_eq!(g.transactional, opts.attributes.is_transactional());
        assert_eq!(g.control, opts.attributes.is_control());
        let log_append = opts.attributes.timestamp_type() == TimestampType::LogAppendTime;
        assert_eq!(g.timestamp_type == kp::TimestampType::LogAppend, log_append);
    }
}

#[test]
fn kafka_protocol_decodes_our_batches() {
    let recs = vec![
        Owned {
            timestamp: 1_700_000_000_000,
            key: Some(b"key-1".to_vec()),
            value: Some(vec![7; 300]),
            headers: vec![],
        },
        Owned {
            timestamp: 1_699_999_999_000,
            key: None,
            value: None,
            headers: vec![(b"a".to_vec(), None), (b"b".to_vec(), Some(b"".to_vec()))],
        },
        Owned {
            timestamp: 1_700_000_000_500,
            key: Some(vec![]),
            value: Some(b"v".to_vec()),
            headers: vec![(b"trace".to_vec(), Some(vec![1, 2, 3]))],
        },
    ];
    let opts = BatchOptions {
        base_offset: 1 << 40,
        producer_id: 99,
        producer_epoch: 4,
        base_sequence: 1000,
        partition_leader_epoch: 12,
        attributes: Attributes::default().with_transactional(true),
    };
    check_theirs_decode_ours(opts, &recs, &build(opts, &recs));

    let opts = BatchOptions {
        attributes: Attributes::default().with_timestamp_type(TimestampType::LogAppendTime),
        ..Default::default()
    };
    check_theirs_decode_ours(opts, &recs, &build(opts, &recs));
}

#[test]
fn our_parser_reads_kafka_protocol_batches() {
    // Offset gaps (as after compaction), out-of-order timestamps, and a change
    // of producer that makes kafka-protocol start a second batch.
    let mut theirs = vec![
        kp_record(10, 500, Some(b"a"), Some(b"1")),
        kp_record(12, 100, None, Some(b"2")),
        kp_record(15, 900, Some(b"c"), None),
        kp_record(16, 300, Some(b"d"), Some(&[9; 200])),
    ];
    theirs[1].headers.insert(StrBytes::from_static_str("x"), None);
    theirs[1].headers.insert(StrBytes::from_static_str("y"), Some(Bytes::from_static(b"yy")));
    // kafka-protocol batches consecutive records whose offset - sequence agree.
    for r in &mut theirs {
        r.sequence = (r.offset - 10) as i32;
    }
    theirs[3].producer_id = 5;
    let bytes = kp_encode(&theirs);

    let mut it = batches(&bytes);
    let first = it.next().unwrap().unwrap();
    let second = it.next().unwrap().unwrap();
    assert!(it.next().is_none());
    assert_eq!(it.position(), bytes.len());

    let h = first.header();
    assert_eq!((h.base_offset, h.last_offset(), h.records_count), (10, 15, 3));
    assert_eq!((h.base_timestamp, h.max_timestamp), (100, 900));
    assert_eq!(second.header().producer_id, 5);

    let ours: Vec<(i64, Owned)> = [first, second].iter().flat_map(|b| decode_all(b).unwrap()).collect();
    let want: Vec<(i64, Owned)> = theirs.iter().map(kp_to_owned).collect();
    assert_eq!(ours, want);
}

fn arb_compat_record() -> impl Strategy<Value = Owned> {
    (
        -1_000_000_000_000_000i64..1_000_000_000_000_000,
        option::of(vec(any::<u8>(), 0..40)),
        option::of(vec(any::<u8>(), 0..200)),
        btree_map("[a-zA-Z0-9._-]{0,10}", option::of(vec(any::<u8>(), 0..20)), 0..5),
    )
        .prop_map(|(timestamp, key, value, headers)| Owned {
            timestamp,
            key,
            value,
            headers: headers.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn differential_ours_to_kafka_protocol(
        recs in vec(arb_compat_record(), 1..12),
        base_offset in 0i64..(1 << 50),
        producer_id in -1i64..1000,
        base_sequence in -1i32..1000,
        transactional in any::<bool>(),
    ) {
        let opts = BatchOptions {
            base_offset,
            producer_id,
            producer_epoch: 0,
            base_sequence,
            partition_leader_epoch: 1,
            attributes: Attributes::default().with_transactional(transactional),
        };
        check_theirs_decode_ours(opts, &recs, &build(opts, &recs));
    }

    #[test]
    fn differential_kafka_protocol_to_ours(
        recs in vec(arb_compat_record(), 1..12),
        base_offset in 0i64..(1 << 50),
        gaps in vec(0i64..4, 12),
    ) {
        let mut offset = base_offset;
        let theirs: Vec<kp::Record> = recs
            .iter()
            .zip(&gaps)
            .map(|(r, gap)| {
                offset += gap;
                let mut k = kp_record(offset, r.timestamp, r.key.as_deref(), r.value.as_deref());
                // Keep offset - sequence constant so kafka-protocol emits one batch.
                k.sequence = (offset - base_offset) as i32;
                for (hk, hv) in &r.headers {
                    let hk = StrBytes::from_string(String::from_utf8(hk.clone()).unwrap());
                    k.headers.insert(hk, hv.clone().map(Bytes::from));
                }
                k
            })
            .collect();
        let bytes = kp_encode(&theirs);
        let batch = Batch::parse(&bytes).unwrap();
        prop_assert_eq!(batch.total_len(), bytes.len());
        prop_assert_eq!(batch.header().records_count as usize, recs.len());
        let want: Vec<(i64, Owned)> = theirs.iter().map(kp_to_owned).collect();
        prop_assert_eq!(decode_all(&batch).unwrap(), want);
    }
}
