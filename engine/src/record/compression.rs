//! Decompressing the records block of a compressed batch, within a size limit.
//!
//! Kafka producers compress everything after a batch's 61-byte header with one of four codecs.
//! The log validates what it stores (as Kafka's `LogValidator` does), so it must read inside
//! compressed batches; a decompressed size limit keeps a small, hostile batch from expanding
//! into gigabytes. Formats, as Kafka clients write them:
//! - gzip: a gzip stream (RFC 1952);
//! - snappy: either snappy-java's ("xerial") framing, a 16-byte magic header then blocks
//!   each prefixed with a big-endian u32 length, or a single raw snappy block (librdkafka);
//! - lz4: the LZ4 frame format;
//! - zstd: a zstd frame.
//!
//! The codecs are crates (`flate2`, `snap`, `lz4_flex`, `zstd`), not code of ours.

use std::io::Read;

use super::attributes::Compression;
use super::error::RecordError;

/// snappy-java's stream header.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

/// Decompresses `input` (compressed with `codec`) into `out`, which is cleared first. Fails
/// if the result would pass `max_len` bytes, or if the input is not valid for the codec.
pub fn decompress(
    codec: Compression,
    input: &[u8],
    max_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    out.clear();
    let bad = |reason: String| RecordError::Decompression { codec, reason };
    match codec {
        Compression::None => {
            if input.len() > max_len {
                return Err(RecordError::DecompressedTooLarge { codec, max_len });
            }
            out.extend_from_slice(input);
            Ok(())
        }
        Compression::Gzip => read_bounded(codec, flate2::read::GzDecoder::new(input), max_len, out),
        Compression::Lz4 => read_bounded(codec, lz4_flex::frame::FrameDecoder::new(input), max_len, out),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(|e| bad(e.to_string()))?;
            read_bounded(codec, decoder, max_len, out)
        }
        Compression::Snappy => {
            if input.len() >= XERIAL_HEADER_LEN && input.starts_with(XERIAL_MAGIC) {
                let mut rest = &input[XERIAL_HEADER_LEN..];
                while !rest.is_empty() {
                    let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                        return Err(bad(format!("{} bytes where a block length belongs", rest.len())));
                    };
                    let len = u32::from_be_bytes(*len) as usize;
                    let Some(block) = tail.get(..len) else {
                        return Err(bad(format!("block of {len} bytes, {} left", tail.len())));
                    };
                    snappy_block(codec, block, max_len, out)?;
                    rest = &tail[len..];
                }
                Ok(())
            } else {
                snappy_block(codec, input, max_len, out)
            }
        }
    }
}

/// Compresses `input` with `codec` as Kafka clients do (snappy as one raw block, as librdkafka
/// writes it).
pub fn compress(codec: Compression, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match codec {
        Compression::None => input.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(input).and_then(|()| e.finish()).expect("writing to a Vec cannot fail")
        }
        Compression::Snappy => snap::raw::Encoder::new().compress_vec(input).expect("any input compresses"),
        Compression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(input).expect("writing to a Vec cannot fail");
            e.finish().expect("writing to a Vec cannot fail")
        }
        Compression::Zstd => zstd::encode_all(input, 3).expect("writing to a Vec cannot fail"),
    }
}

/// Re-encodes an uncompressed batch with its records block compressed by `codec` (header
/// fields, length and CRC updated).
pub fn compress_batch(batch: &[u8], codec: Compression) -> Result<Vec<u8>, RecordError> {
    let header = super::BatchHeader::parse(batch)?;
    let body = batch
        .get(super::BATCH_HEADER_LEN..header.total_len())
        .ok_or(RecordError::Truncated { needed: header.total_len(), available: batch.len() })?;
    let compressed = compress(codec, body);
    let mut out = batch[..super::BATCH_HEADER_LEN].to_vec();
    out.extend_from_slice(&compressed);
    let length = i32::try_from(out.len() - super::LOG_OVERHEAD)
        .map_err(|_| RecordError::TooLarge { field: "batch length", len: out.len() })?;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    let attributes = (header.attributes.0 & !0x07) | codec.id();
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Appends one raw snappy block to `out`, checking its declared length before allocating.
fn snappy_block(
    codec: Compression,
    block: &[u8],
    max_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let len = snap::raw::decompress_len(block)
        .map_err(|e| RecordError::Decompression { codec, reason: e.to_string() })?;
    if out.len().saturating_add(len) > max_len {
        return Err(RecordError::DecompressedTooLarge { codec, max_len });
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| RecordError::Decompression { codec, reason: e.to_string() })?;
    Ok(())
}

/// Reads a decoder to its end into `out`, refusing more than `max_len` bytes.
fn read_bounded(
    codec: Compression,
    decoder: impl Read,
    max_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let limit = u64::try_from(max_len).unwrap_or(u64::MAX).saturating_add(1);
    decoder
        .take(limit)
        .read_to_end(out)
        .map_err(|e| RecordError::Decompression { codec, reason: e.to_string() })?;
    if out.len() > max_len {
        return Err(RecordError::DecompressedTooLarge { codec, max_len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODECS: [Compression; 5] =
        [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        for codec in CODECS {
            decompress(codec, &compress(codec, &data), 1 << 20, &mut out).unwrap();
            assert_eq!(out, data, "{codec:?}");
        }
    }

    #[test]
    fn xerial_framed_snappy_is_read_block_by_block() {
        let (a, b) = (vec![1u8; 40_000], vec![2u8; 30_000]);
        let mut framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        for part in [&a, &b] {
            let block = snap::raw::Encoder::new().compress_vec(part).unwrap();
            framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
            framed.extend_from_slice(&block);
        }
        let mut out = Vec::new();
        decompress(Compression::Snappy, &framed, 1 << 20, &mut out).unwrap();
        assert_eq!(out, [a, b].concat());
        framed.truncate(framed.len() - 3);
        assert!(matches!(
            decompress(Compression::Snappy, &framed, 1 << 20, &mut out),
            Err(RecordError::Decompression { .. })
        ));
    }

    #[test]
    fn a_bomb_is_refused_at_the_limit_for_every_codec() {
        // 64 MiB of zeros compress to a few kilobytes.
        let zeros = vec![0u8; 64 << 20];
        let mut out = Vec::new();
        for codec in CODECS {
            let small = compress(codec, &zeros);
            let err = decompress(codec, &small, 1 << 20, &mut out).unwrap_err();
            assert_eq!(err, RecordError::DecompressedTooLarge { codec, max_len: 1 << 20 }, "{codec:?}");
            assert!(out.capacity() <= 2 << 20 || codec == Compression::None, "{codec:?}: {}", out.capacity());
        }
    }

    #[test]
    fn garbage_is_a_typed_error_never_a_panic() {
        let mut out = Vec::new();
        for codec in CODECS.into_iter().skip(1) {
            for seed in 0..200u32 {
                let junk: Vec<u8> =
                    (0..(seed % 97)).map(|i| (i.wrapping_mul(seed).wrapping_add(7) % 256) as u8).collect();
                let _ = decompress(codec, &junk, 1 << 16, &mut out);
            }
            let e = decompress(codec, b"definitely not compressed", 1 << 16, &mut out);
            assert!(matches!(e, Err(RecordError::Decompression { .. })), "{codec:?}: {e:?}");
        }
    }
}
