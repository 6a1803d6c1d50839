//! Kafka RecordBatch v2 (magic 2): the unit Spate stores on disk exactly as it
//! travels on the wire.
//!
//! Model: this layer is pure and sans-I/O. It turns byte slices into borrowed,
//! validated views ([`Batch`], [`RecordView`]) and turns records into bytes
//! ([`BatchBuilder`]); it never touches files or sockets, so the segment and log
//! layers own all buffering and can hand it any slice they have.
//!
//! Guarantees:
//! - Decoding never panics on input bytes and never reads outside the slice it is
//!   given: every malformed input is a typed [`RecordError`].
//! - Decoding does not allocate: keys, values and headers are sub-slices of the
//!   input.
//! - A [`Batch`] exists only for bytes whose header is valid, whose full length is
//!   present and whose CRC-32C matches; records inside are validated lazily by
//!   [`Batch::records`], which also checks the record count and that the records
//!   end exactly at the batch end.
//! - Encoding appends into caller-owned `Vec<u8>`s so a hot path can reuse them.
//! - Compressed batches are framed and CRC-checked like any other; their records
//!   are decoded after [`compression::decompress`] into a caller-owned buffer,
//!   within a size limit ([`Batch::records_in`]).

mod attributes;
mod batch;
mod builder;
pub mod compression;
mod error;
mod header;
mod reader;
mod records;
mod rewrite;
mod varint;

#[cfg(test)]
mod tests;

pub use attributes::{Attributes, Compression, TimestampType};
pub use batch::{batches, Batch, BatchIter};
pub use builder::{BatchBuilder, BatchOptions, Record};
pub use error::RecordError;
pub use header::{
    set_base_offset, set_partition_leader_epoch, verify_crc, BatchHeader, BATCH_HEADER_LEN, LOG_OVERHEAD,
    MAGIC_V2, MIN_BATCH_LENGTH,
};
pub use records::{HeaderIter, RecordIter, RecordView};
pub use rewrite::{fill_batch, rewrite_batch};
