//! The wall clock the engine reads: record append times, timestamp bounds, retention by age,
//! idempotent producers' expiry, commit times and their expiry. The system clock by default; a
//! `ManualClock` lets a test or a simulation move time by hand (timers that only schedule work,
//! such as the retention check interval, keep running on the monotonic clock, and files keep
//! the file system's times).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A wall clock: the system's, or a manual one's. Cheap to clone.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<AtomicU64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(None)
    }

    pub fn now(&self) -> SystemTime {
        match &self.0 {
            None => SystemTime::now(),
            Some(nanos) => UNIX_EPOCH + Duration::from_nanos(nanos.load(Ordering::Relaxed)),
        }
    }

    /// `now()` in milliseconds since the epoch (0 before it).
    pub fn now_ms(&self) -> i64 {
        self.now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Clock::system"),
            Some(_) => write!(f, "Clock::manual({:?})", self.now()),
        }
    }
}

/// Two clocks are equal when they are the same clock.
impl PartialEq for Clock {
    fn eq(&self, other: &Clock) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Clock {}

/// A clock that moves only when told; `clock()` gives the `Clock` to configure an engine with.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Starts at `start` (times before the epoch start at the epoch; after 2554, at 2554).
    pub fn new(start: SystemTime) -> ManualClock {
        let nanos =
            start.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        ManualClock(Arc::new(AtomicU64::new(nanos)))
    }

    pub fn clock(&self) -> Clock {
        Clock(Some(Arc::clone(&self.0)))
    }

    /// Moves time forward by `by` (saturating).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_add(by)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let manual = ManualClock::new(start);
        let (a, b) = (manual.clock(), manual.clock());
        assert_eq!(a.now(), start);
        manual.advance(Duration::from_millis(1500));
        assert_eq!(b.now(), start + Duration::from_millis(1500));
        assert_eq!(a.now_ms(), 1_700_000_001_500);
        assert_eq!(a, b);
        assert_ne!(a, Clock::system());
        assert_ne!(a, ManualClock::new(start).clock(), "another manual clock is another clock");
        let before = SystemTime::now();
        assert!(Clock::system().now() >= before);
    }
}
