//! Damage found by recovery, the operator's acceptance of it, and the fence a failed partition
//! leaves behind.
//!
//! **Damage.** A sealed segment was durable before its successor existed, so a crash cannot
//! damage it: bytes that fail validation there are damage (bit rot, a truncated or overwritten
//! file). Recovery keeps every intact batch around the damage and reports each damaged range
//! as a [`Damage`]. A damaged partition serves what is intact and refuses writes, so that an
//! operator decides: restore the file and restart, or accept the loss.
//!
//! **Acceptance** (`<dir>/accepted-damage`): one line per damaged range the operator accepted,
//! `<file name> <position> <length> <first lost offset> <offset after the loss>`. A partition
//! whose damage is all listed there takes writes again; its files stay as they are, so
//! nothing is deleted by the acceptance either.
//!
//! **Fence** (`<dir>/fence`): written when a partition fails, holding its high watermark at
//! that moment. Producers whose batches lay beyond it were told that they failed; the next
//! recovery cuts the log back to the fence, so none of those batches becomes visible after a
//! restart, even if its bytes reached the disk. Both files are replaced atomically (write a
//! temporary file, fsync, rename, fsync the directory).

use std::fmt;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::LogError;
use crate::io::{Io, Write};

/// File of a partition's accepted damage.
pub const ACCEPTED_FILE: &str = "accepted-damage";

/// File of a failed partition's fence.
pub const FENCE_FILE: &str = "fence";

/// A damaged byte range of a sealed segment, and the offsets it costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub file: PathBuf,
    pub position: u64,
    pub len: u64,
    /// The offsets `[lost_from, lost_to)` that are no longer readable.
    pub lost_from: i64,
    pub lost_to: i64,
    pub reason: String,
}

/// A partition's damage, and whether an operator accepted it (then it takes writes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DamageReport {
    pub ranges: Vec<Damage>,
    pub accepted: bool,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes {}..{}: offsets {}..{} lost ({})",
            self.file.display(),
            self.position,
            self.position + self.len,
            self.lost_from,
            self.lost_to,
            self.reason
        )
    }
}

impl Damage {
    fn line(&self) -> String {
        let name = self.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        format!("{name} {} {} {} {}", self.position, self.len, self.lost_from, self.lost_to)
    }
}

/// Whether every range of `damage` is listed in the partition's accepted-damage file.
pub(super) fn all_accepted(dir: &Path, damage: &[Damage]) -> Result<bool, LogError> {
    let path = dir.join(ACCEPTED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(damage.is_empty()),
        Err(e) => return Err(LogError::fs(&path, e)),
    };
    let accepted: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    Ok(damage.iter().all(|d| accepted.contains(&d.line().as_str())))
}

/// Records `damage` as accepted (adding to what was accepted before).
pub(super) fn accept(io: &mut dyn Io, dir: &Path, damage: &[Damage]) -> Result<(), LogError> {
    let path = dir.join(ACCEPTED_FILE);
    let mut text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "# Damaged ranges accepted as lost: file position length lost_from lost_to\n".to_string()
        }
        Err(e) => return Err(LogError::fs(&path, e)),
    };
    for d in damage {
        let line = d.line();
        if !text.lines().any(|l| l.trim() == line) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    replace_file(io, dir, ACCEPTED_FILE, text.as_bytes())
}

/// The fence a failed partition left, if any: the offset the log must be cut back to.
pub(super) fn read_fence(dir: &Path) -> Result<Option<i64>, LogError> {
    let path = dir.join(FENCE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::fs(&path, e)),
    };
    let offset = text
        .lines()
        .find_map(|l| l.strip_prefix("high_watermark="))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .ok_or_else(|| {
            LogError::fs(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "fence file without high_watermark=<offset>",
                ),
            )
        })?;
    Ok(Some(offset))
}

/// Writes the fence of a partition that failed with its high watermark at `high_watermark`.
pub(crate) fn write_fence(io: &mut dyn Io, dir: &Path, high_watermark: i64) -> Result<(), LogError> {
    let text = format!(
        "# This partition failed; recovery cuts the log back to this offset.\nhigh_watermark={high_watermark}\n"
    );
    replace_file(io, dir, FENCE_FILE, text.as_bytes())
}

/// Removes the fence once recovery has cut the log back to it durably.
pub(super) fn remove_fence(io: &mut dyn Io, dir: &Path) -> Result<(), LogError> {
    let path = dir.join(FENCE_FILE);
    match io.remove_file(&path) {
        Ok(()) => super::sync_dir(io, dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::fs(&path, e)),
    }
}

/// Replaces `dir/name` atomically and durably.
pub(super) fn replace_file(io: &mut dyn Io, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), LogError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let f = io.create_file(&tmp, true).map_err(|e| LogError::fs(&tmp, e))?;
    let bufs = [std::io::IoSlice::new(bytes)];
    let write = Write { fd: f.as_fd(), offset: 0, bufs: &bufs };
    io.submit(std::slice::from_ref(&write), &[f.as_fd()])
        .map_err(|e| LogError::Io { dir: dir.to_path_buf(), source: std::sync::Arc::new(e) })?;
    io.rename(&tmp, &path).map_err(|e| LogError::fs(&path, e))?;
    super::sync_dir(io, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn damage(position: u64) -> Damage {
        Damage {
            file: PathBuf::from("/x/00000000000000000000.log"),
            position,
            len: 10,
            lost_from: 3,
            lost_to: 4,
            reason: "CRC mismatch".into(),
        }
    }

    #[test]
    fn acceptance_covers_exactly_the_listed_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let io = &mut crate::io::fallback::FallbackIo::new();
        assert!(all_accepted(dir.path(), &[]).unwrap());
        assert!(!all_accepted(dir.path(), &[damage(5)]).unwrap());
        accept(io, dir.path(), &[damage(5)]).unwrap();
        accept(io, dir.path(), &[damage(5)]).unwrap();
        assert!(all_accepted(dir.path(), &[damage(5)]).unwrap());
        assert!(!all_accepted(dir.path(), &[damage(5), damage(6)]).unwrap(), "new damage is not accepted");
        let text = std::fs::read_to_string(dir.path().join(ACCEPTED_FILE)).unwrap();
        assert_eq!(text.lines().filter(|l| l.starts_with("0000")).count(), 1, "{text}");
    }

    #[test]
    fn fences_round_trip_and_go_away() {
        let dir = tempfile::tempdir().unwrap();
        let io = &mut crate::io::fallback::FallbackIo::new();
        assert_eq!(read_fence(dir.path()).unwrap(), None);
        write_fence(io, dir.path(), 42).unwrap();
        assert_eq!(read_fence(dir.path()).unwrap(), Some(42));
        std::fs::write(dir.path().join(FENCE_FILE), "garbage").unwrap();
        assert!(read_fence(dir.path()).is_err(), "a fence that does not parse is not ignored");
        remove_fence(io, dir.path()).unwrap();
        assert_eq!(read_fence(dir.path()).unwrap(), None);
    }
}
