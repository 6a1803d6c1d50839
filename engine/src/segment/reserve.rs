//! Disk space reserved ahead of the appends, and the budget that bounds it.
//!
//! Appends into blocks reserved with `fallocate` (`KEEP_SIZE`: the file's length, and so
//! recovery, is unchanged) skip the file system's block allocation on the write path, which
//! measured 25–40% faster sustained appends (docs/benchmarks.md, "Space reservation"). But a
//! reservation is disk space nobody can use, so it is bounded four ways:
//!
//! 1. **By write rate.** An active segment reserves a step at a time when its appends reach
//!    the end of what it reserved. The step is what the partition wrote in the last second
//!    (since its previous step), rounded up to a power of two, between
//!    [`ReservePolicy::step_min_bytes`] and [`ReservePolicy::step_max_bytes`]: a partition
//!    that writes a record a minute reserves the minimum, a busy one up to the maximum.
//! 2. **Per shard.** All active segments of a shard together hold at most
//!    [`ReservePolicy::shard_max_bytes`] reserved and not yet written.
//! 3. **By free space.** Nothing is reserved while the file system's free space would fall
//!    below [`ReservePolicy::free_floor_bytes`] (checked at most once a second).
//! 4. **In time.** What a segment reserved and did not write is given back when it is sealed,
//!    when it has taken no append for [`ReservePolicy::idle`], when the engine stops, and at
//!    recovery (which cuts each active file to its valid length).
//!
//! The budget is shared by a shard's partitions (atomics inside the shard's
//! [`super::files::ShardDisk`], used by one thread only: no lock, no contention).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How much disk space active segments may reserve ahead of their appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservePolicy {
    /// Smallest step (also the first step of a segment).
    pub step_min_bytes: u64,
    /// Largest step.
    pub step_max_bytes: u64,
    /// Reserved and not yet written, over all active segments of a shard.
    pub shard_max_bytes: u64,
    /// Free space the file system keeps: `None` means 5% of its size.
    pub free_floor_bytes: Option<u64>,
    /// A segment that took no append for this long gives its reservation back.
    pub idle: Duration,
}

impl Default for ReservePolicy {
    fn default() -> Self {
        ReservePolicy {
            step_min_bytes: 1 << 20,
            step_max_bytes: 64 << 20,
            shard_max_bytes: 512 << 20,
            free_floor_bytes: None,
            idle: Duration::from_secs(30),
        }
    }
}

impl ReservePolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.step_min_bytes == 0 || self.step_min_bytes > self.step_max_bytes {
            return Err(format!(
                "reservation steps: minimum {} must be positive and at most the maximum {}",
                self.step_min_bytes, self.step_max_bytes
            ));
        }
        if self.idle.is_zero() {
            return Err("reservation idle time must be positive".into());
        }
        Ok(())
    }

    /// The step for a segment that wrote `bytes` in `elapsed` since its previous step.
    pub fn step(&self, bytes: u64, elapsed: Duration) -> u64 {
        let per_second = if elapsed.is_zero() {
            u64::MAX
        } else {
            let rate = bytes as f64 / elapsed.as_secs_f64();
            if rate >= u64::MAX as f64 {
                u64::MAX
            } else {
                rate as u64
            }
        };
        per_second
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .clamp(self.step_min_bytes, self.step_max_bytes)
    }
}

/// A shard's reservation budget: what its active segments reserved and have not written yet.
#[derive(Debug)]
pub struct ReserveBudget {
    policy: ReservePolicy,
    reserved_bytes: AtomicU64,
    /// Free bytes of the file system at the last check, and when that was (µs since `epoch`).
    free_bytes: AtomicU64,
    free_checked_us: AtomicU64,
    epoch: Instant,
}

impl ReserveBudget {
    pub fn new(policy: ReservePolicy) -> ReserveBudget {
        ReserveBudget {
            policy,
            reserved_bytes: AtomicU64::new(0),
            free_bytes: AtomicU64::new(0),
            free_checked_us: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        }
    }

    pub fn policy(&self) -> &ReservePolicy {
        &self.policy
    }

    /// Bytes reserved and not yet written, over the segments using this budget.
    pub fn reserved_bytes(&self) -> u64 {
        self.reserved_bytes.load(Ordering::Relaxed)
    }

    /// How much of `want` bytes a segment in `dir` may reserve now (0: none).
    pub(crate) fn grant(&self, dir: &Path, want: u64, now: Instant) -> u64 {
        let room = self.policy.shard_max_bytes.saturating_sub(self.reserved_bytes());
        let granted = want.min(room);
        // Less than a minimum step (unless that is all that was asked) is not worth a call.
        if granted == 0 || granted < self.policy.step_min_bytes.min(want) {
            return 0;
        }
        let want = granted;
        let Some((free, total)) = self.free_space(dir, now) else { return 0 };
        let floor = self.policy.free_floor_bytes.unwrap_or(total / 20);
        if free.saturating_sub(want) < floor {
            return 0;
        }
        want
    }

    /// Adds (or, negative, returns) reserved bytes.
    pub(crate) fn adjust(&self, delta: i64) {
        if delta >= 0 {
            self.reserved_bytes.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            self.reserved_bytes.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// (free, total) bytes of the file system holding `dir`, at most a second old. The free
    /// figure is lowered by what was granted since the check.
    fn free_space(&self, dir: &Path, now: Instant) -> Option<(u64, u64)> {
        let now_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        let checked = self.free_checked_us.load(Ordering::Relaxed);
        if checked != u64::MAX && now_us.saturating_sub(checked) < 1_000_000 {
            return Some((self.free_bytes.load(Ordering::Relaxed), TOTAL.load(Ordering::Relaxed)));
        }
        let (free, total) = statvfs(dir)?;
        self.free_bytes.store(free, Ordering::Relaxed);
        TOTAL.store(total, Ordering::Relaxed);
        self.free_checked_us.store(now_us, Ordering::Relaxed);
        Some((free, total))
    }
}

/// Size of the file system at the last check (the same for every budget in practice).
static TOTAL: AtomicU64 = AtomicU64::new(0);

/// (available, total) bytes of the file system holding `dir`.
fn statvfs(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statvfs` is plain data, valid when zeroed; the call writes it for a
    // NUL-terminated path that lives across the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let block = st.f_frsize as u64;
    Some((st.f_bavail as u64 * block, st.f_blocks as u64 * block))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_the_write_rate_within_bounds() {
        let p = ReservePolicy::default();
        let sec = Duration::from_secs(1);
        assert_eq!(p.step(100, sec), 1 << 20, "a slow partition reserves the minimum");
        assert_eq!(p.step(3 << 20, sec), 4 << 20, "3 MiB/s rounds up to 4 MiB");
        assert_eq!(p.step(10 << 20, sec / 10), 64 << 20, "100 MiB/s is capped at the maximum");
        assert_eq!(p.step(1 << 20, Duration::ZERO), 64 << 20);
        assert_eq!(p.step(8 << 20, sec * 4), 2 << 20, "spread over four seconds");
    }

    #[test]
    fn grants_stop_at_the_shard_cap_and_the_free_space_floor() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let policy =
            ReservePolicy { shard_max_bytes: 3 << 20, free_floor_bytes: Some(0), ..ReservePolicy::default() };
        let b = ReserveBudget::new(policy);
        assert_eq!(b.grant(dir.path(), 2 << 20, now), 2 << 20);
        b.adjust(2 << 20);
        assert_eq!(b.grant(dir.path(), 2 << 20, now), 1 << 20, "what is left under the cap");
        b.adjust(1 << 20);
        assert_eq!(b.grant(dir.path(), 1 << 20, now), 0, "the cap is reached");
        b.adjust(-(3 << 20));
        assert_eq!(b.reserved_bytes(), 0);
        let (free, _) = statvfs(dir.path()).unwrap();
        let floor = ReservePolicy { free_floor_bytes: Some(free), ..ReservePolicy::default() };
        assert_eq!(ReserveBudget::new(floor).grant(dir.path(), 1 << 20, now), 0, "below the floor");
    }
}
