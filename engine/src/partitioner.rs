//! Choosing a partition for a key exactly as Kafka's Java client does, so that records with the
//! same key land in the same partition whether they come through Spate's API or a Kafka client.
//!
//! Kafka's default partitioner hashes the serialized key with its variant of MurmurHash2
//! (seed `0x9747b28c`) and takes `(hash & 0x7fffffff) % partitions`. librdkafka's
//! `murmur2_random` partitioner computes the same. Records without a key are spread by the
//! caller (Spate uses round robin).

/// Kafka's `Utils.murmur2`: MurmurHash2, 32-bit, seed `0x9747b28c`, little-endian blocks.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key` among `partitions` (> 0).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafka_utils_murmur2() {
        // Values computed by org.apache.kafka.common.utils.Utils.murmur2.
        for (key, want) in [
            ("1", -1_993_445_489),
            ("12", 126_087_238),
            ("123", -267_702_483),
            ("1234", -1_614_185_708),
            ("12345", -1_188_365_604),
        ] {
            assert_eq!(murmur2(key.as_bytes()), want, "{key}");
        }
    }

    #[test]
    fn partition_is_the_positive_hash_modulo_the_count() {
        assert_eq!(partition_for_key(b"1", 1), 0);
        // (-1993445489 & 0x7fffffff) = 154038159
        assert_eq!(partition_for_key(b"1", 7), 154_038_159 % 7);
        assert_eq!(partition_for_key(b"12", 10), 126_087_238 % 10);
        for p in 1..50 {
            assert!(partition_for_key(b"any key", p) < p);
        }
    }
}
