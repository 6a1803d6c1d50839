//! Sparse indexes of one segment: offset → file position, and timestamp → offset.
//!
//! Both are kept in memory while a segment is active and written to disk, whole, when it is
//! sealed (see `docs/segment-format.md`). An entry is added after at least
//! `index_interval_bytes` of log since the previous one, so a lookup lands at most that many bytes
//! before the wanted batch, and memory per segment is `segment_bytes / index_interval_bytes`
//! entries of 8 (offset) and 12 (time) bytes.
//!
//! On disk an index file is a 24-byte header — magic `SPIX`, version, kind, entry count, the log
//! length it describes, and a CRC-32C over header and entries — followed by big-endian entries.
//! A file whose CRC, length or log length does not match is not trusted: the segment is rescanned.

/// One offset index entry: the batch whose base offset is `base + relative_offset` starts at `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// One time index entry: `timestamp` is the largest timestamp of any batch up to and including
/// the batch at `base + relative_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

const MAGIC: &[u8; 4] = b"SPIX";
const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 24;
const KIND_OFFSET: u8 = 1;
const KIND_TIME: u8 = 2;
const OFFSET_ENTRY_LEN: usize = 8;
const TIME_ENTRY_LEN: usize = 12;

/// Offset index of one segment; entries strictly increasing in both fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    pub fn push(&mut self, entry: OffsetEntry) {
        if let Some(last) = self.entries.last() {
            debug_assert!(entry.relative_offset > last.relative_offset && entry.position > last.position);
        }
        self.entries.push(entry);
    }

    pub fn entries(&self) -> &[OffsetEntry] {
        &self.entries
    }

    /// The last entry at or before `relative_offset`: the position to start scanning from.
    pub fn floor(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let i = self.entries.partition_point(|e| e.relative_offset <= relative_offset);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    /// The last entry whose position is at or before `position`.
    pub fn floor_position(&self, position: u32) -> Option<OffsetEntry> {
        let i = self.entries.partition_point(|e| e.position <= position);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    /// Drops entries at or past `position` (after a truncation).
    pub fn truncate_to_position(&mut self, position: u32) {
        let keep = self.entries.partition_point(|e| e.position < position);
        self.entries.truncate(keep);
    }

    pub fn encode(&self, log_len: u64) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_LEN);
        for e in &self.entries {
            body.extend_from_slice(&e.relative_offset.to_be_bytes());
            body.extend_from_slice(&e.position.to_be_bytes());
        }
        frame(KIND_OFFSET, self.entries.len(), log_len, &body)
    }

    /// Decodes an index file; `None` if it is not a valid index for a log of `log_len` bytes.
    pub fn decode(bytes: &[u8], log_len: u64) -> Option<OffsetIndex> {
        let body = unframe(bytes, KIND_OFFSET, OFFSET_ENTRY_LEN, log_len)?;
        let mut index = OffsetIndex::default();
        for chunk in body.chunks_exact(OFFSET_ENTRY_LEN) {
            let e = OffsetEntry {
                relative_offset: u32::from_be_bytes(chunk[0..4].try_into().ok()?),
                position: u32::from_be_bytes(chunk[4..8].try_into().ok()?),
            };
            let ordered = index
                .entries
                .last()
                .is_none_or(|l| e.relative_offset > l.relative_offset && e.position > l.position);
            if !ordered || u64::from(e.position) >= log_len.max(1) {
                return None;
            }
            index.entries.push(e);
        }
        Some(index)
    }
}

/// Time index of one segment; timestamps and offsets non-decreasing / increasing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    /// Adds an entry if it raises the largest timestamp; returns whether it was added.
    pub fn push(&mut self, entry: TimeEntry) -> bool {
        match self.entries.last_mut() {
            Some(last) if entry.timestamp <= last.timestamp => false,
            Some(last) if entry.relative_offset == last.relative_offset => {
                last.timestamp = entry.timestamp;
                true
            }
            _ => {
                self.entries.push(entry);
                true
            }
        }
    }

    pub fn entries(&self) -> &[TimeEntry] {
        &self.entries
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// The last entry whose timestamp is below `timestamp`: every batch before its offset has only
    /// smaller timestamps, so a search for the first timestamp >= `timestamp` may start there.
    pub fn floor_below(&self, timestamp: i64) -> Option<TimeEntry> {
        let i = self.entries.partition_point(|e| e.timestamp < timestamp);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    pub fn truncate_to_relative_offset(&mut self, relative_offset: u32) {
        let keep = self.entries.partition_point(|e| e.relative_offset < relative_offset);
        self.entries.truncate(keep);
    }

    pub fn encode(&self, log_len: u64) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.entries.len() * TIME_ENTRY_LEN);
        for e in &self.entries {
            body.extend_from_slice(&e.timestamp.to_be_bytes());
            body.extend_from_slice(&e.relative_offset.to_be_bytes());
        }
        frame(KIND_TIME, self.entries.len(), log_len, &body)
    }

    pub fn decode(bytes: &[u8], log_len: u64) -> Option<TimeIndex> {
        let body = unframe(bytes, KIND_TIME, TIME_ENTRY_LEN, log_len)?;
        let mut index = TimeIndex::default();
        for chunk in body.chunks_exact(TIME_ENTRY_LEN) {
            let e = TimeEntry {
                timestamp: i64::from_be_bytes(chunk[0..8].try_into().ok()?),
                relative_offset: u32::from_be_bytes(chunk[8..12].try_into().ok()?),
            };
            let ordered = index
                .entries
                .last()
                .is_none_or(|l| e.timestamp > l.timestamp && e.relative_offset > l.relative_offset);
            if !ordered {
                return None;
            }
            index.entries.push(e);
        }
        Some(index)
    }
}

fn frame(kind: u8, count: usize, log_len: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&[0, 0]);
    // Counts fit: a segment is at most u32::MAX bytes, entries are at least one batch apart.
    out.extend_from_slice(&(count as u32).to_be_bytes());
    out.extend_from_slice(&log_len.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out), body);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(body);
    debug_assert_eq!(out.len(), HEADER_LEN + body.len());
    out
}

/// The log length an index file records, if the file is whole (magic, version, entry count
/// and CRC check out), whatever log it is compared with. A seal writes index files only after
/// the log is durable, so a file that is not whole can only be one a crash cut short.
pub fn intact_log_len(bytes: &[u8]) -> Option<u64> {
    let header = bytes.get(..HEADER_LEN)?;
    let kind = header[5];
    let entry_len = match kind {
        KIND_OFFSET => OFFSET_ENTRY_LEN,
        KIND_TIME => TIME_ENTRY_LEN,
        _ => return None,
    };
    let log_len = u64::from_be_bytes(header[12..20].try_into().ok()?);
    unframe(bytes, kind, entry_len, log_len).map(|_| log_len)
}

fn unframe(bytes: &[u8], kind: u8, entry_len: usize, log_len: u64) -> Option<&[u8]> {
    let (header, body) = (bytes.get(..HEADER_LEN)?, bytes.get(HEADER_LEN..)?);
    if &header[0..4] != MAGIC || header[4] != VERSION || header[5] != kind {
        return None;
    }
    let count = u32::from_be_bytes(header[8..12].try_into().ok()?) as usize;
    let stored_log_len = u64::from_be_bytes(header[12..20].try_into().ok()?);
    let crc = u32::from_be_bytes(header[20..24].try_into().ok()?);
    if stored_log_len != log_len || body.len() != count.checked_mul(entry_len)? {
        return None;
    }
    (crc32c::crc32c_append(crc32c::crc32c(&header[..20]), body) == crc).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (OffsetIndex, TimeIndex) {
        let mut o = OffsetIndex::default();
        let mut t = TimeIndex::default();
        for i in 0..50u32 {
            o.push(OffsetEntry { relative_offset: i * 10, position: i * 4096 + 1 });
            t.push(TimeEntry { timestamp: 1_000 + i64::from(i) * 7, relative_offset: i * 10 + 3 });
        }
        (o, t)
    }

    #[test]
    fn floor_lookups() {
        let (o, t) = sample();
        assert_eq!(o.floor(0).unwrap().relative_offset, 0);
        assert_eq!(o.floor(9).unwrap().relative_offset, 0);
        assert_eq!(o.floor(10).unwrap().relative_offset, 10);
        assert_eq!(o.floor(10_000).unwrap().relative_offset, 490);
        assert_eq!(OffsetIndex::default().floor(5), None);
        assert_eq!(t.floor_below(1_000), None);
        assert_eq!(t.floor_below(1_001).unwrap().timestamp, 1_000);
        assert_eq!(t.floor_below(1_008).unwrap().timestamp, 1_007);
        assert_eq!(t.floor_below(i64::MAX).unwrap().timestamp, 1_000 + 49 * 7);
    }

    #[test]
    fn time_index_keeps_only_rising_timestamps() {
        let mut t = TimeIndex::default();
        assert!(t.push(TimeEntry { timestamp: 10, relative_offset: 0 }));
        assert!(!t.push(TimeEntry { timestamp: 9, relative_offset: 5 }));
        assert!(!t.push(TimeEntry { timestamp: 10, relative_offset: 6 }));
        assert!(t.push(TimeEntry { timestamp: 11, relative_offset: 7 }));
        assert_eq!(t.entries().len(), 2);
    }

    #[test]
    fn encode_decode_round_trip_and_rejects_any_damage() {
        let (o, t) = sample();
        let log_len = 50 * 4096 + 100;
        let ob = o.encode(log_len);
        let tb = t.encode(log_len);
        assert_eq!(OffsetIndex::decode(&ob, log_len).unwrap(), o);
        assert_eq!(TimeIndex::decode(&tb, log_len).unwrap(), t);
        // A different log length means the index is stale.
        assert!(OffsetIndex::decode(&ob, log_len + 1).is_none());
        // Wrong kind.
        assert!(TimeIndex::decode(&ob, log_len).is_none());
        // Every single flipped byte and every truncation is detected.
        for i in 0..ob.len() {
            let mut bad = ob.clone();
            bad[i] ^= 0x40;
            assert!(OffsetIndex::decode(&bad, log_len).is_none(), "flip at {i}");
        }
        for cut in 0..ob.len() {
            assert!(OffsetIndex::decode(&ob[..cut], log_len).is_none(), "cut at {cut}");
        }
        assert!(OffsetIndex::decode(&[], 0).is_none());
    }
}
