//! The one error type of the record layer.
//!
//! Every variant carries the numbers that made the input invalid, so a log line
//! or a client error says what was wrong without re-reading the bytes.

use super::attributes::Compression;

/// Why bytes are not a valid RecordBatch v2 (or why records cannot be encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The input ends before a field or a length-prefixed item does.
    #[error("truncated: needed {needed} bytes, only {available} available")]
    Truncated {
        /// Bytes the item needs.
        needed: usize,
        /// Bytes that were there.
        available: usize,
    },
    /// The magic byte is not 2; older message formats are not supported.
    #[error("unsupported magic {0} (expected 2)")]
    BadMagic(i8),
    /// The batch length field is below the smallest possible batch.
    #[error("batch length {0} below minimum 49")]
    BadLength(i32),
    /// The last offset delta field is negative.
    #[error("last offset delta {0} is negative")]
    BadLastOffsetDelta(i32),
    /// The records count field is negative.
    #[error("records count {0} is negative")]
    BadRecordsCount(i32),
    /// The stored CRC-32C does not match the bytes.
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC in the batch header.
        stored: u32,
        /// CRC of the covered bytes.
        computed: u32,
    },
    /// A varint does not terminate within its maximum length.
    #[error("malformed varint: longer than {max_len} bytes")]
    BadVarint {
        /// 5 for 32-bit varints, 10 for 64-bit varlongs.
        max_len: usize,
    },
    /// A length or count field holds a value the format does not allow
    /// (for example a key length below -1).
    #[error("invalid {field} {value}")]
    BadFieldLength {
        /// Which field, e.g. "key length".
        field: &'static str,
        /// The decoded value.
        value: i32,
    },
    /// A record's fields end before the record length says the record does.
    #[error("record length {declared} but its fields take {consumed} bytes")]
    RecordSizeMismatch {
        /// Record length from its length prefix.
        declared: usize,
        /// Bytes its fields actually took.
        consumed: usize,
    },
    /// The batch bytes end before the declared number of records.
    #[error("batch declares {declared} records but holds only {found}")]
    RecordCountMismatch {
        /// `recordsCount` from the header.
        declared: i32,
        /// Records decoded before the bytes ran out.
        found: i32,
    },
    /// Bytes remain in the batch after the declared number of records.
    #[error("{trailing} bytes after the last of {declared} records")]
    TrailingBytes {
        /// `recordsCount` from the header.
        declared: i32,
        /// Bytes left over.
        trailing: usize,
    },
    /// The batch is compressed; this layer frames it but does not decode records.
    #[error("compressed batch ({0:?}): records not decoded here")]
    Compressed(Compression),
    /// A compressed block does not decompress.
    #[error("{codec:?} block does not decompress: {reason}")]
    Decompression { codec: Compression, reason: String },
    /// A compressed block decompresses to more than the limit.
    #[error("{codec:?} block decompresses to more than {max_len} bytes")]
    DecompressedTooLarge { codec: Compression, max_len: usize },
    /// The compression bits name no known codec.
    #[error("unknown compression codec {0}")]
    UnknownCompression(i16),
    /// A value is too large for the format's i32 length fields.
    #[error("{field} of {len} exceeds the format limit of 2147483647")]
    TooLarge {
        /// What was too large, e.g. "key length".
        field: &'static str,
        /// Its size.
        len: usize,
    },
}
