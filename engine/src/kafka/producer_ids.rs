//! Producer ids for idempotent producers (InitProducerId).
//!
//! Ids must never repeat, across restarts too, or a new producer could inherit an old one's
//! sequence numbers. Each server run starts its ids at `start_ms << 20` (its start time in Unix
//! milliseconds, shifted): a later run starts above every id an earlier one handed out unless
//! the earlier one handed out more than 2^20 ids per millisecond it was up.

use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Debug)]
pub struct ProducerIds {
    next: AtomicI64,
}

impl Default for ProducerIds {
    fn default() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as i64)
            .max(1);
        ProducerIds { next: AtomicI64::new(ms << 20) }
    }
}

impl ProducerIds {
    pub fn allocate(&self) -> i64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positive_unique_and_above_an_earlier_runs() {
        let earlier = ProducerIds::default();
        let a = earlier.allocate();
        let b = earlier.allocate();
        assert!(a > 0 && b == a + 1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(ProducerIds::default().allocate() > b);
    }
}
