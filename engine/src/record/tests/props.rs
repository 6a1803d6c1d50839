//! Property tests: round trip, CRC sensitivity, and no panics on any bytes.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::*;

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn arb_record() -> impl Strategy<Value = Owned> {
    (
        any::<i64>(),
        option::of(arb_bytes(64)),
        option::of(arb_bytes(256)),
        vec((arb_bytes(16), option::of(arb_bytes(32))), 0..5),
    )
        .prop_map(|(timestamp, key, value, headers)| Owned { timestamp, key, value, headers })
}

fn arb_opts() -> impl Strategy<Value = BatchOptions> {
    (any::<i64>(), any::<i64>(), any::<i16>(), any::<i32>(), any::<i32>(), any::<i16>()).prop_map(
        |(base_offset, producer_id, producer_epoch, base_sequence, ple, attrs)| BatchOptions {
            base_offset,
            producer_id,
            producer_epoch,
            base_sequence,
            partition_leader_epoch: ple,
            attributes: Attributes(attrs),
        },
    )
}

/// A valid batch of 0..8 records.
fn arb_batch() -> impl Strategy<Value = Vec<u8>> {
    (arb_opts(), vec(arb_record(), 0..8)).prop_map(|(opts, recs)| build(opts, &recs))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip(opts in arb_opts(), recs in vec(arb_record(), 0..10)) {
        let mut builder = BatchBuilder::new(opts);
        let bytes = build(opts, &recs);
        for r in &recs {
            let headers: Vec<(&[u8], Option<&[u8]>)> =
                r.headers.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect();
            builder.push(&Record { timestamp: r.timestamp, key: r.key.as_deref(), value: r.value.as_deref(), headers: &headers });
        }
        prop_assert_eq!(builder.encoded_len(), bytes.len());

        let batch = Batch::parse(&bytes).unwrap();
        prop_assert_eq!(batch.as_bytes(), &bytes[..]);
        let h = *batch.header();
        prop_assert_eq!(h.base_offset, opts.base_offset);
        prop_assert_eq!(h.partition_leader_epoch, opts.partition_leader_epoch);
        prop_assert_eq!(h.producer_id, opts.producer_id);
        prop_assert_eq!(h.producer_epoch, opts.producer_epoch);
        prop_assert_eq!(h.base_sequence, opts.base_sequence);
        prop_assert_eq!(h.attributes, opts.attributes.with_compression(Compression::None));
        prop_assert_eq!(h.records_count as usize, recs.len());
        prop_assert_eq!(h.last_offset_delta as usize, recs.len().saturating_sub(1));
        let max = recs.iter().map(|r| r.timestamp).max().unwrap_or(-1);
        prop_assert_eq!(h.max_timestamp, max);

        let log_append = opts.attributes.timestamp_type() == TimestampType::LogAppendTime;
        let want: Vec<(i64, Owned)> = recs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut r = r.clone();
                if log_append {
                    r.timestamp = max;
                }
                (opts.base_offset.saturating_add(i as i64), r)
            })
            .collect();
        prop_assert_eq!(decode_all(&batch).unwrap(), want);
    }

    #[test]
    fn crc_detects_any_flipped_byte(bytes in arb_batch(), pos in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let mut b = bytes;
        let i = 17 + pos.index(b.len() - 17);
        b[i] ^= mask;
        prop_assert!(verify_crc(&b).is_err(), "flip at {} undetected", i);
        prop_assert!(Batch::parse(&b).is_err());
        prop_assert!(matches!(batches(&b).next(), Some(Err(_))));
    }

    #[test]
    fn no_panic_on_random_bytes(buf in arb_bytes(512)) {
        exercise(&buf);
    }

    #[test]
    fn no_panic_on_random_body_in_valid_envelope(
        opts in arb_opts(),
        count in prop_oneof![0i32..4, 0..=i32::MAX],
        body in arb_bytes(256),
    ) {
        // A header with a correct length and CRC around random record bytes, so the
        // record decoder, not the CRC check, meets the garbage.
        let mut b = BatchBuilder::new(opts).finish();
        b[57..61].copy_from_slice(&count.to_be_bytes());
        b.extend_from_slice(&body);
        reseal(&mut b);
        prop_assert!(Batch::parse(&b).is_ok());
        exercise(&b);
    }

    #[test]
    fn no_panic_on_mutated_batches(
        batches_in in vec(arb_batch(), 1..4),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        fix_crc in any::<bool>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut buf: Vec<u8> = batches_in.concat();
        for (at, v) in &edits {
            let i = at.index(buf.len());
            buf[i] = *v;
        }
        if fix_crc && buf.len() >= BATCH_HEADER_LEN {
            // Reseal the first batch over whatever length it now claims, when it fits.
            let len = i32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
            if let Ok(len) = usize::try_from(len) {
                if let Some(end) = len.checked_add(LOG_OVERHEAD).filter(|&e| e >= BATCH_HEADER_LEN && e <= buf.len()) {
                    let crc = crc32c::crc32c(&buf[21..end]);
                    buf[17..21].copy_from_slice(&crc.to_be_bytes());
                }
            }
        }
        exercise(&buf);
        exercise(&buf[..cut.index(buf.len() + 1)]);
    }
}
