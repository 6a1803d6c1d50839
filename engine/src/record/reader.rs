//! A bounds-checked cursor over untrusted bytes.
//!
//! Every read either returns a sub-slice of the input or a typed error; nothing
//! here indexes past the slice, so decoders built on it cannot panic on input.

use super::error::RecordError;
use super::varint::{decode_varint, decode_varlong};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline]
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// The bytes not yet read.
    #[inline]
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    #[inline]
    pub(crate) fn i8(&mut self) -> Result<i8, RecordError> {
        let (&b, rest) = self.buf.split_first().ok_or(RecordError::Truncated { needed: 1, available: 0 })?;
        self.buf = rest;
        Ok(b as i8)
    }

    #[inline]
    pub(crate) fn varint(&mut self) -> Result<i32, RecordError> {
        let (v, n) = decode_varint(self.buf)?;
        self.buf = self.buf.get(n..).unwrap_or_default();
        Ok(v)
    }

    #[inline]
    pub(crate) fn varlong(&mut self) -> Result<i64, RecordError> {
        let (v, n) = decode_varlong(self.buf)?;
        self.buf = self.buf.get(n..).unwrap_or_default();
        Ok(v)
    }

    #[inline]
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if n > self.buf.len() {
            return Err(RecordError::Truncated { needed: n, available: self.buf.len() });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A varint length then that many bytes; `-1` means null. Kafka's Java
    /// reader treats any negative length as null, but only -1 is ever written,
    /// so anything below -1 is reported as corruption.
    #[inline]
    pub(crate) fn nullable_bytes(&mut self, field: &'static str) -> Result<Option<&'a [u8]>, RecordError> {
        let len = self.varint()?;
        if len == -1 {
            return Ok(None);
        }
        let n = usize::try_from(len).map_err(|_| RecordError::BadFieldLength { field, value: len })?;
        self.bytes(n).map(Some)
    }

    /// A varint length (non-negative) then that many bytes.
    #[inline]
    pub(crate) fn sized_bytes(&mut self, field: &'static str) -> Result<&'a [u8], RecordError> {
        let n = self.count(field)?;
        self.bytes(n)
    }

    /// A non-negative varint count or length.
    #[inline]
    pub(crate) fn count(&mut self, field: &'static str) -> Result<usize, RecordError> {
        let v = self.varint()?;
        usize::try_from(v).map_err(|_| RecordError::BadFieldLength { field, value: v })
    }
}
