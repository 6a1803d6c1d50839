//! Topic metadata: names, partition counts and per-topic configuration, kept durably as one small
//! text file per topic (`<dir>/topics/<name>.topic`, `key=value` lines).
//!
//! Files are replaced atomically (write a temporary file, fsync, rename, fsync the directory),
//! so a crash leaves either the old or the new description, never half of one.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::EngineError;
use crate::log::{Durability, LogConfig};

/// A topic as the engine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: Arc<str>,
    pub id: TopicId,
    pub partitions: u32,
    pub config: LogConfig,
}

/// A topic's UUID (Kafka's topic ID, KIP-516): random when the topic is created, kept in its
/// description file, never reused — a topic deleted and created again under the same name gets
/// a new one, so a client holding the old ID cannot read the new topic by mistake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(pub [u8; 16]);

impl TopicId {
    /// The all-zero UUID: "no ID" in Kafka's protocol.
    pub const NONE: TopicId = TopicId([0; 16]);

    /// A random version-4 UUID (never the all-zero one, nor Kafka's reserved `...0001`).
    pub fn random() -> Result<TopicId, std::io::Error> {
        loop {
            let mut b = [0u8; 16];
            fill_random(&mut b)?;
            b[6] = (b[6] & 0x0f) | 0x40;
            b[8] = (b[8] & 0x3f) | 0x80;
            let id = TopicId(b);
            if id.0[..15].iter().any(|&x| x != 0) {
                return Ok(id);
            }
        }
    }

    pub fn is_none(&self) -> bool {
        *self == TopicId::NONE
    }
}

fn fill_random(buf: &mut [u8]) -> Result<(), std::io::Error> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a live, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lower-case hex.
impl std::fmt::Display for TopicId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for TopicId {
    type Err = String;

    fn from_str(s: &str) -> Result<TopicId, String> {
        let dashes = s.char_indices().filter(|&(_, c)| c == '-').map(|(i, _)| i).collect::<Vec<_>>();
        if !s.is_ascii() || s.len() != 36 || dashes != [8, 13, 18, 23] {
            return Err(format!("{s:?} is not a UUID"));
        }
        let hex: String = s.chars().filter(|&c| c != '-').collect();
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte =
                u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| format!("{s:?} is not a UUID"))?;
        }
        Ok(TopicId(b))
    }
}

/// Kafka's rules for topic names: 1 to 249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), EngineError> {
    let bad = |reason| Err(EngineError::InvalidTopicName { name: name.to_string(), reason });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

pub fn encode(info: &TopicInfo) -> String {
    let c = &info.config;
    let opt = |v: Option<u128>| v.map_or("none".to_string(), |v| v.to_string());
    format!(
        "# Spate topic description; edit with the engine, not by hand.\n\
         id={}\npartitions={}\nsegment_bytes={}\nsegment_age_ms={}\nretention_bytes={}\nretention_ms={}\n\
         index_interval_bytes={}\nbatch_bytes_max={}\ndurability={}\n\
         timestamp_after_max_ms={}\ntimestamp_before_max_ms={}\n\
         cleanup_policy={}\ndelete_retention_ms={}\nmin_compaction_lag_ms={}\nmax_compaction_lag_ms={}\n\
         min_cleanable_dirty_ratio_ppm={}\narchive={}\narchive_retention_bytes={}\narchive_retention_ms={}\n",
        info.id,
        info.partitions,
        c.segment_bytes,
        millis(c.segment_age),
        opt(c.retention_bytes.map(u128::from)),
        opt(c.retention_age.map(millis)),
        c.index_interval_bytes,
        c.batch_bytes_max,
        c.durability,
        opt(c.timestamp_after_max.map(millis)),
        opt(c.timestamp_before_max.map(millis)),
        c.cleanup,
        millis(c.compaction.delete_retention),
        millis(c.compaction.min_lag),
        opt(c.compaction.max_lag.map(millis)),
        c.compaction.min_dirty_ratio_ppm,
        c.archive,
        opt(c.archive_retention_bytes.map(u128::from)),
        opt(c.archive_retention_age.map(millis)),
    )
}

pub fn decode(name: &str, text: &str) -> Result<TopicInfo, String> {
    let mut partitions = None;
    let mut id = TopicId::NONE;
    let mut c = LogConfig::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) =
            line.split_once('=').ok_or_else(|| format!("line {}: expected key=value", n + 1))?;
        let num = || value.parse::<u64>().map_err(|e| format!("line {}: {key}: {e}", n + 1));
        let opt = || if value == "none" { Ok(None) } else { num().map(Some) };
        match key {
            "id" => id = value.parse().map_err(|e| format!("line {}: id: {e}", n + 1))?,
            "partitions" => partitions = Some(u32::try_from(num()?).map_err(|e| e.to_string())?),
            "segment_bytes" => c.segment_bytes = num()?,
            "segment_age_ms" => c.segment_age = Duration::from_millis(num()?),
            "retention_bytes" => c.retention_bytes = opt()?,
            "retention_ms" => c.retention_age = opt()?.map(Duration::from_millis),
            "index_interval_bytes" => c.index_interval_bytes = num()?,
            "batch_bytes_max" => c.batch_bytes_max = num()?,
            "durability" => c.durability = value.parse::<Durability>()?,
            "timestamp_after_max_ms" => c.timestamp_after_max = opt()?.map(Duration::from_millis),
            "timestamp_before_max_ms" => c.timestamp_before_max = opt()?.map(Duration::from_millis),
            "cleanup_policy" => c.cleanup = value.parse()?,
            "delete_retention_ms" => c.compaction.delete_retention = Duration::from_millis(num()?),
            "min_compaction_lag_ms" => c.compaction.min_lag = Duration::from_millis(num()?),
            "max_compaction_lag_ms" => c.compaction.max_lag = opt()?.map(Duration::from_millis),
            "archive" => c.archive = value.parse().map_err(|e| format!("line {}: archive: {e}", n + 1))?,
            "archive_retention_bytes" => c.archive_retention_bytes = opt()?,
            "archive_retention_ms" => c.archive_retention_age = opt()?.map(Duration::from_millis),
            "min_cleanable_dirty_ratio_ppm" => {
                c.compaction.min_dirty_ratio_ppm = u32::try_from(num()?).map_err(|e| e.to_string())?
            }
            // Keys from a newer version are kept out rather than guessed at.
            other => return Err(format!("line {}: unknown key {other:?}", n + 1)),
        }
    }
    let partitions = partitions.filter(|&p| p > 0).ok_or("missing or zero partitions")?;
    c.validate()?;
    // A description written before topics had IDs has none: the engine gives it one at open.
    Ok(TopicInfo { name: Arc::from(name), id, partitions, config: c })
}

fn topic_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.topic"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io { path: path.to_path_buf(), source }
}

/// Writes a topic's description atomically and durably.
pub fn store(dir: &Path, info: &TopicInfo) -> Result<(), EngineError> {
    let path = topic_path(dir, &info.name);
    // `<name>.tmp` keeps a 249-character name within the 255 bytes a file name may have.
    let tmp = dir.join(format!("{}.tmp", info.name));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(encode(info).as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

pub fn remove(dir: &Path, name: &str) -> Result<(), EngineError> {
    let path = topic_path(dir, name);
    std::fs::remove_file(&path).map_err(io_err(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Every topic described in `dir`, sorted by name; leftover temporary files are removed.
pub fn load_all(dir: &Path) -> Result<Vec<TopicInfo>, EngineError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else { continue };
        if file.ends_with(".tmp") {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        let Some(name) = file.strip_suffix(".topic") else { continue };
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let info =
            decode(name, &text).map_err(|reason| EngineError::BadTopicFile { path: path.clone(), reason })?;
        out.push(info);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka_rules() {
        for ok in ["orders", "a.b-c_d", "X9", &"x".repeat(249)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "with space", "slash/y", "ünï", &"x".repeat(250)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn descriptions_round_trip_and_bad_ones_are_refused() {
        let info = TopicInfo {
            name: Arc::from("orders"),
            id: TopicId::random().unwrap(),
            partitions: 12,
            config: LogConfig {
                retention_bytes: Some(1 << 30),
                retention_age: None,
                durability: Durability::Interval(Duration::from_millis(5)),
                ..LogConfig::default()
            },
        };
        assert_eq!(decode("orders", &encode(&info)).unwrap(), info);
        assert_eq!(decode("t", "partitions=2\n").unwrap().id, TopicId::NONE, "older files have no id");
        assert!(decode("t", "id=nope\npartitions=2\n").unwrap_err().contains("id"));
        assert!(decode("t", "partitions=0\n").is_err());
        assert!(decode("t", "partitions=2\nmystery=1\n").unwrap_err().contains("unknown key"));
        assert!(decode("t", "partitions=2\nsegment_bytes=x\n").is_err());
        assert!(decode("t", "partitions=2\nsegment_bytes=10\n").unwrap_err().contains("segment_bytes"));
    }

    #[test]
    fn ids_are_random_v4_uuids_and_round_trip_as_text() {
        let a = TopicId::random().unwrap();
        let b = TopicId::random().unwrap();
        assert_ne!(a, b);
        assert!(!a.is_none());
        assert_eq!(a.0[6] >> 4, 4, "version 4");
        assert_eq!(a.0[8] >> 6, 0b10, "RFC 4122 variant");
        let text = a.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<TopicId>().unwrap(), a);
        assert_eq!(
            TopicId([0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8]).to_string(),
            "12345678-9abc-def0-0102-030405060708"
        );
        for bad in [
            "",
            "12345678-9abc-def0-0102-03040506070",
            "g2345678-9abc-def0-0102-030405060708",
            "1234567-89abc-def0-0102-030405060708",
            "ü2345678-9abc-def0-0102-03040506070",
        ] {
            assert!(bad.parse::<TopicId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn store_load_remove() {
        let dir = tempfile::tempdir().unwrap();
        let a = TopicInfo {
            name: Arc::from("a"),
            id: TopicId::random().unwrap(),
            partitions: 1,
            config: LogConfig::default(),
        };
        let b = TopicInfo {
            name: Arc::from("b"),
            id: TopicId::random().unwrap(),
            partitions: 3,
            config: LogConfig::default(),
        };
        store(dir.path(), &b).unwrap();
        store(dir.path(), &a).unwrap();
        std::fs::write(dir.path().join("c.tmp"), "partial").unwrap();
        assert_eq!(load_all(dir.path()).unwrap(), vec![a.clone(), b]);
        assert!(!dir.path().join("c.tmp").exists());

        remove(dir.path(), "b").unwrap();
        assert_eq!(load_all(dir.path()).unwrap(), vec![a.clone()]);
        // The longest valid name fits the file system's 255-byte name limit, temporary file too.
        let long = TopicInfo {
            name: Arc::from("x".repeat(249)),
            id: TopicId::random().unwrap(),
            partitions: 1,
            config: LogConfig::default(),
        };
        store(dir.path(), &long).unwrap();
        assert_eq!(load_all(dir.path()).unwrap(), vec![a, long]);
    }
}
