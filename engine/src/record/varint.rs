//! Zigzag varints as Kafka records use them (protobuf `sint32`/`sint64`).
//!
//! Decoders read from the front of a slice and return the value and the bytes
//! consumed; they never read past the slice. Like Kafka's `ByteUtils`, a varint
//! may take at most 5 bytes and a varlong at most 10; a longer encoding is an
//! error, and excess high bits in the last byte are dropped (Kafka accepts
//! them, so refusing them would reject batches Kafka itself accepts).

use super::error::RecordError;

/// Longest encoding of a 32-bit varint.
pub(crate) const MAX_VARINT_LEN: usize = 5;
/// Longest encoding of a 64-bit varlong.
pub(crate) const MAX_VARLONG_LEN: usize = 10;

#[inline]
const fn zigzag32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

#[inline]
const fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Decodes an unsigned LEB128 value of at most `max_len` bytes.
#[inline]
fn decode_unsigned(buf: &[u8], max_len: usize) -> Result<(u64, usize), RecordError> {
    // Most lengths and deltas in real batches fit one byte.
    if let Some(&b) = buf.first() {
        if b < 0x80 {
            return Ok((u64::from(b), 1));
        }
    }
    let mut value = 0u64;
    for i in 0..max_len {
        let Some(&b) = buf.get(i) else {
            return Err(RecordError::Truncated { needed: i + 1, available: buf.len() });
        };
        // i <= 9, so the shift is at most 63: bits past 64 fall off, never a panic.
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(RecordError::BadVarint { max_len })
}

/// Decodes a zigzag varint (i32) from the front of `buf`.
#[inline]
pub(crate) fn decode_varint(buf: &[u8]) -> Result<(i32, usize), RecordError> {
    let (raw, n) = decode_unsigned(buf, MAX_VARINT_LEN)?;
    // Keep the low 32 bits, as Kafka's int arithmetic does.
    let u = raw as u32;
    Ok((((u >> 1) as i32) ^ -((u & 1) as i32), n))
}

/// Decodes a zigzag varlong (i64) from the front of `buf`.
#[inline]
pub(crate) fn decode_varlong(buf: &[u8]) -> Result<(i64, usize), RecordError> {
    let (u, n) = decode_unsigned(buf, MAX_VARLONG_LEN)?;
    Ok((((u >> 1) as i64) ^ -((u & 1) as i64), n))
}

#[inline]
fn put_unsigned(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` as a zigzag varint.
#[inline]
pub(crate) fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_unsigned(out, u64::from(zigzag32(v)));
}

/// Appends `v` as a zigzag varlong.
#[inline]
pub(crate) fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_unsigned(out, zigzag64(v));
}

#[inline]
const fn unsigned_len(v: u64) -> usize {
    // Significant bits, at least 1, in groups of 7.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Encoded size of `v` as a zigzag varint.
#[inline]
pub(crate) const fn varint_len(v: i32) -> usize {
    unsigned_len(zigzag32(v) as u64)
}

/// Encoded size of `v` as a zigzag varlong.
#[inline]
pub(crate) const fn varlong_len(v: i64) -> usize {
    unsigned_len(zigzag64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc32(v: i32) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        out
    }

    fn enc64(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varlong(&mut out, v);
        out
    }

    #[test]
    fn known_encodings() {
        assert_eq!(enc32(0), [0x00]);
        assert_eq!(enc32(-1), [0x01]);
        assert_eq!(enc32(1), [0x02]);
        assert_eq!(enc32(-64), [0x7f]);
        assert_eq!(enc32(64), [0x80, 0x01]);
        assert_eq!(enc32(i32::MAX), [0xfe, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(enc32(i32::MIN), [0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(enc64(i64::MIN), [0xff; 9].iter().chain(&[0x01]).copied().collect::<Vec<_>>());
    }

    #[test]
    fn varint_extremes_round_trip() {
        for v in [0, 1, -1, 63, -64, 64, -65, i32::MAX, i32::MIN, i32::MAX - 1, i32::MIN + 1] {
            let e = enc32(v);
            assert_eq!(e.len(), varint_len(v), "len of {v}");
            assert_eq!(decode_varint(&e), Ok((v, e.len())), "{v}");
        }
        assert_eq!(varint_len(i32::MIN), 5);
        assert_eq!(varint_len(i32::MAX), 5);
    }

    #[test]
    fn varlong_extremes_round_trip() {
        for v in [0, 1, -1, i64::MAX, i64::MIN, i64::from(i32::MAX) + 1, i64::from(i32::MIN) - 1] {
            let e = enc64(v);
            assert_eq!(e.len(), varlong_len(v), "len of {v}");
            assert_eq!(decode_varlong(&e), Ok((v, e.len())), "{v}");
        }
        assert_eq!(varlong_len(i64::MIN), 10);
        assert_eq!(varlong_len(i64::MAX), 10);
    }

    #[test]
    fn overlong_is_rejected() {
        assert_eq!(decode_varint(&[0x80; 6]), Err(RecordError::BadVarint { max_len: 5 }));
        assert_eq!(
            decode_varint(&[0xff, 0xff, 0xff, 0xff, 0x80, 0x00]),
            Err(RecordError::BadVarint { max_len: 5 })
        );
        assert_eq!(decode_varlong(&[0x80; 11]), Err(RecordError::BadVarint { max_len: 10 }));
        // A padded but terminated encoding within the limit is accepted, as in Kafka.
        assert_eq!(decode_varint(&[0x82, 0x80, 0x00]), Ok((1, 3)));
    }

    #[test]
    fn excess_high_bits_in_last_byte_are_dropped() {
        // 5th byte 0x7f carries bits 28..35; only 28..32 survive, as in Kafka.
        let (v, n) = decode_varint(&[0xff, 0xff, 0xff, 0xff, 0x7f]).unwrap();
        assert_eq!((v, n), (i32::MIN, 5));
    }

    #[test]
    fn truncated_is_rejected() {
        assert_eq!(decode_varint(&[]), Err(RecordError::Truncated { needed: 1, available: 0 }));
        assert_eq!(decode_varint(&[0x80, 0x80]), Err(RecordError::Truncated { needed: 3, available: 2 }));
        let full = enc64(i64::MIN);
        assert_eq!(decode_varlong(&full[..9]), Err(RecordError::Truncated { needed: 10, available: 9 }));
    }

    #[test]
    fn lengths_match_encoding_everywhere() {
        for shift in 0..64 {
            for v in [1i64 << shift, (1i64 << shift).wrapping_neg(), (1i64 << shift).wrapping_sub(1)] {
                assert_eq!(enc64(v).len(), varlong_len(v), "{v}");
                let w = v as i32;
                assert_eq!(enc32(w).len(), varint_len(w), "{w}");
            }
        }
    }
}
