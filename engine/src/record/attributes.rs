//! Batch attributes: the i16 bit field at byte 21 of a v2 batch header.
//!
//! Bits 0-2 hold the compression codec, bit 3 the timestamp type, bit 4 the
//! transactional flag, bit 5 the control flag and bit 6 the delete-horizon flag.
//! Unknown bits are kept as they are: [`Attributes`] wraps the raw value so a
//! batch can be re-written without losing bits a newer producer may set.

use super::error::RecordError;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;
const DELETE_HORIZON_BIT: i16 = 1 << 6;

/// Compression codec of a batch's records section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Records are stored as they are.
    None,
    /// gzip.
    Gzip,
    /// Snappy (xerial framing in Kafka).
    Snappy,
    /// LZ4 frame format.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The codec id as stored in attribute bits 0-2.
    pub const fn id(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec for an id; ids 5-7 name no codec.
    pub const fn from_id(id: i16) -> Result<Compression, RecordError> {
        match id {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(RecordError::UnknownCompression(other)),
        }
    }
}

/// What a batch's timestamps mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// Set by the producer per record.
    CreateTime,
    /// Set by the broker on append: every record's timestamp is the batch's
    /// `max_timestamp`.
    LogAppendTime,
}

/// The raw attributes of a batch, with typed accessors and builder-style setters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attributes(pub i16);

impl Attributes {
    /// The compression codec; an error for ids 5-7.
    pub const fn compression(self) -> Result<Compression, RecordError> {
        Compression::from_id(self.0 & COMPRESSION_MASK)
    }

    /// The timestamp type (bit 3).
    pub const fn timestamp_type(self) -> TimestampType {
        if self.0 & TIMESTAMP_TYPE_BIT != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// Whether the batch belongs to a transaction (bit 4).
    pub const fn is_transactional(self) -> bool {
        self.0 & TRANSACTIONAL_BIT != 0
    }

    /// Whether the batch holds control records such as commit markers (bit 5).
    pub const fn is_control(self) -> bool {
        self.0 & CONTROL_BIT != 0
    }

    /// Whether `base_timestamp` holds a compaction delete horizon (bit 6).
    pub const fn has_delete_horizon(self) -> bool {
        self.0 & DELETE_HORIZON_BIT != 0
    }

    /// These attributes with the compression bits set to `c`.
    pub const fn with_compression(self, c: Compression) -> Attributes {
        Attributes((self.0 & !COMPRESSION_MASK) | c.id())
    }

    /// These attributes with the timestamp type bit set for `t`.
    pub const fn with_timestamp_type(self, t: TimestampType) -> Attributes {
        self.with_bit(TIMESTAMP_TYPE_BIT, matches!(t, TimestampType::LogAppendTime))
    }

    /// These attributes with the transactional bit set to `on`.
    pub const fn with_transactional(self, on: bool) -> Attributes {
        self.with_bit(TRANSACTIONAL_BIT, on)
    }

    /// These attributes with the control bit set to `on`.
    pub const fn with_control(self, on: bool) -> Attributes {
        self.with_bit(CONTROL_BIT, on)
    }

    /// These attributes with the delete-horizon bit set to `on`.
    pub const fn with_delete_horizon(self, on: bool) -> Attributes {
        self.with_bit(DELETE_HORIZON_BIT, on)
    }

    const fn with_bit(self, bit: i16, on: bool) -> Attributes {
        if on {
            Attributes(self.0 | bit)
        } else {
            Attributes(self.0 & !bit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip() {
        let a = Attributes::default()
            .with_compression(Compression::Zstd)
            .with_timestamp_type(TimestampType::LogAppendTime)
            .with_transactional(true)
            .with_control(true)
            .with_delete_horizon(true);
        assert_eq!(a.0, 4 | 8 | 16 | 32 | 64);
        assert_eq!(a.compression(), Ok(Compression::Zstd));
        assert_eq!(a.timestamp_type(), TimestampType::LogAppendTime);
        assert!(a.is_transactional() && a.is_control() && a.has_delete_horizon());
        let b = a
            .with_compression(Compression::None)
            .with_timestamp_type(TimestampType::CreateTime)
            .with_transactional(false)
            .with_control(false)
            .with_delete_horizon(false);
        assert_eq!(b, Attributes::default());
    }

    #[test]
    fn unknown_bits_are_kept() {
        let a = Attributes(0x0100).with_transactional(true);
        assert_eq!(a.0, 0x0110);
    }

    #[test]
    fn compression_ids() {
        for c in
            [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
        {
            assert_eq!(Compression::from_id(c.id()), Ok(c));
        }
        for id in 5..8 {
            assert_eq!(Attributes(id).compression(), Err(RecordError::UnknownCompression(id)));
        }
    }
}
