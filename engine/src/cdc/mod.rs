//! Change data capture from PostgreSQL: a publication's tables become compacted topics.
//!
//! A [`Cdc`] connector owns one logical replication slot (pgoutput). On its first start it
//! creates the slot with an exported snapshot, copies every published table under that
//! snapshot (`op: "r"` records), and then streams from the slot's consistent point, so the copy
//! and the stream meet with no gap and no overlap. Each table `<schema>.<table>` becomes the
//! compacted topic `<prefix>.<schema>.<table>`: key = the primary key as a JSON object, value =
//! the Debezium envelope, and a tombstone after each delete.
//!
//! Durability: a transaction's records are appended (and synced) before the position after its
//! commit is stored in the internal compacted topic `__spate_cdc` and only then confirmed to
//! PostgreSQL, so a crash of either side loses nothing. After a restart transactions below the
//! stored position are skipped, and within the transaction a crash interrupted each record
//! carries its position (`spate.cdc.position`: snapshot epoch, commit LSN and sequence number)
//! so the records already written are not written again. See docs/cdc.md.

mod envelope;
mod sink;
mod source;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use envelope::{Column, Op, Table, UNAVAILABLE};
pub use sink::{Position, POSITION_HEADER, STATE_TOPIC};

use crate::Engine;

/// What a connector reads and where it writes. The `[cdc]` section of `spate serve`'s config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcConfig {
    /// A libpq connection string or URI of the database (without `replication=`); the role
    /// needs the REPLICATION attribute and SELECT on the published tables.
    pub url: String,
    /// The publication whose tables are captured (`CREATE PUBLICATION ... FOR TABLE ...`).
    pub publication: String,
    /// The replication slot the connector owns: created on the first start, dropped and
    /// re-created when a new snapshot is needed.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Topics are `<topic_prefix>.<schema>.<table>`.
    pub topic_prefix: String,
    /// Partitions of each table's topic (records are placed by key, as Kafka clients do).
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// How often a heartbeat message is written to the WAL and the slot's lag measured, so an
    /// idle database still lets the slot advance.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// Records buffered before they are appended, within a transaction too (bounds memory).
    #[serde(default = "default_flush_bytes")]
    pub flush_bytes: usize,
}

fn default_slot() -> String {
    "spate".to_string()
}
fn default_partitions() -> u32 {
    1
}
fn default_heartbeat_ms() -> u64 {
    10_000
}
fn default_flush_bytes() -> usize {
    4 << 20
}

impl CdcConfig {
    /// A config with the defaults for everything but the three required settings.
    pub fn new(
        url: impl Into<String>,
        publication: impl Into<String>,
        topic_prefix: impl Into<String>,
    ) -> Self {
        CdcConfig {
            url: url.into(),
            publication: publication.into(),
            slot: default_slot(),
            topic_prefix: topic_prefix.into(),
            partitions: default_partitions(),
            heartbeat_interval_ms: default_heartbeat_ms(),
            flush_bytes: default_flush_bytes(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let slot_ok = !self.slot.is_empty()
            && self.slot.len() <= 63
            && self.slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !slot_ok {
            return Err(format!(
                "cdc slot {:?}: 1 to 63 characters of lower-case letters, digits and '_' (PostgreSQL's rule)",
                self.slot
            ));
        }
        if self.publication.is_empty() {
            return Err("cdc publication is empty".into());
        }
        if self.url.is_empty() {
            return Err("cdc url is empty".into());
        }
        crate::topics::validate_name(&self.topic_prefix)
            .map_err(|e| format!("cdc topic_prefix {:?}: {e}", self.topic_prefix))?;
        if self.topic_prefix.starts_with("__") {
            return Err(format!(
                "cdc topic_prefix {:?}: names starting with '__' are internal",
                self.topic_prefix
            ));
        }
        if self.partitions == 0 || self.partitions > crate::TOPIC_PARTITIONS_MAX {
            return Err(format!("cdc partitions must be 1 to {}", crate::TOPIC_PARTITIONS_MAX));
        }
        if self.heartbeat_interval_ms == 0 {
            return Err("cdc heartbeat_interval_ms must be positive".into());
        }
        if self.flush_bytes == 0 {
            return Err("cdc flush_bytes must be positive".into());
        }
        Ok(())
    }

    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
}

/// A connector's counters, shared with its thread.
#[derive(Debug, Default)]
pub struct CdcStats {
    /// 1 while streaming, 0 while connecting, copying or failed.
    pub up: AtomicU64,
    /// Rows copied by initial snapshots.
    pub snapshot_rows: AtomicU64,
    /// Snapshots completed.
    pub snapshots: AtomicU64,
    /// Transactions written (skipped duplicates not counted).
    pub transactions: AtomicU64,
    /// Records appended to table topics (tombstones included).
    pub records: AtomicU64,
    /// Records not written again after a restart because they were already there.
    pub duplicates_skipped: AtomicU64,
    /// Sessions that ended in an error (each is retried).
    pub errors: AtomicU64,
    /// The position stored durably and confirmed to PostgreSQL.
    pub confirmed_lsn: AtomicU64,
    /// Bytes of WAL between the server's current position and the slot's confirmed position,
    /// measured at each heartbeat (-1: not measured yet).
    pub slot_lag_bytes: AtomicI64,
    /// Commit time (ms since the epoch) of the last transaction written.
    pub last_commit_ms: AtomicI64,
}

impl CdcStats {
    fn new() -> CdcStats {
        CdcStats { slot_lag_bytes: AtomicI64::new(-1), ..CdcStats::default() }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A running connector: a thread of its own with a small tokio runtime, reconnecting with
/// backoff (1 s doubling to 30 s) after any error. Stops when dropped or on [`Cdc::stop`].
#[derive(Debug)]
pub struct Cdc {
    stats: Arc<CdcStats>,
    stop: pg_walstream::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    slot: String,
}

impl Cdc {
    /// Starts capturing into `engine`. Fails only on a bad config; connection problems are
    /// logged and retried.
    pub fn start(engine: &Engine, config: CdcConfig) -> Result<Cdc, String> {
        config.validate()?;
        let stats = Arc::new(CdcStats::new());
        let stop = pg_walstream::CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("spate-cdc")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the cdc runtime: {e}"))?;
        let (engine, stats2, stop2, slot) =
            (engine.clone(), Arc::clone(&stats), stop.clone(), config.slot.clone());
        let thread = std::thread::Builder::new()
            .name("spate-cdc".into())
            .spawn(move || {
                // On a worker thread: the PostgreSQL connections block in place there.
                runtime.block_on(async move {
                    let stats = Arc::clone(&stats2);
                    if let Err(e) = tokio::spawn(source::run(engine, config, stats2, stop2)).await {
                        stats.up.store(0, Ordering::Relaxed);
                        tracing::error!(error = %e, "the cdc connector stopped on a panic");
                    }
                });
                // Tasks of a session cut short by the stop may still be closing their
                // connections (which can block); they get a moment, not forever.
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .map_err(|e| format!("starting the cdc thread: {e}"))?;
        Ok(Cdc { stats, stop, thread: Some(thread), slot })
    }

    pub fn stats(&self) -> &Arc<CdcStats> {
        &self.stats
    }

    /// Stops streaming (what was confirmed stays confirmed) and waits for the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// A Prometheus collector of this connector's counters (`spate_cdc_*{slot=...}`).
    pub fn collector(&self) -> Box<dyn prometheus_client::collector::Collector> {
        Box::new(StatsCollector { stats: Arc::clone(&self.stats), slot: self.slot.clone() })
    }
}

impl Drop for Cdc {
    fn drop(&mut self) {
        self.halt();
    }
}

#[derive(Debug)]
struct StatsCollector {
    stats: Arc<CdcStats>,
    slot: String,
}

impl prometheus_client::collector::Collector for StatsCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        let s = &self.stats;
        let labels = [("slot", self.slot.as_str())];
        let gauges: [(&str, &str, i64); 4] = [
            ("cdc_up", "1 while the connector streams from its slot", s.up.load(Ordering::Relaxed) as i64),
            (
                "cdc_slot_lag_bytes",
                "WAL bytes between the server's position and the slot's confirmed position (-1: not measured)",
                s.slot_lag_bytes.load(Ordering::Relaxed),
            ),
            (
                "cdc_confirmed_lsn",
                "Position stored in Spate and confirmed to PostgreSQL",
                s.confirmed_lsn.load(Ordering::Relaxed) as i64,
            ),
            (
                "cdc_last_commit_timestamp_ms",
                "Commit time of the last transaction written",
                s.last_commit_ms.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(m.encode_family(&labels)?)?;
        }
        let counters: [(&str, &str, &AtomicU64); 6] = [
            ("cdc_snapshot_rows", "Rows copied by initial snapshots", &s.snapshot_rows),
            ("cdc_snapshots", "Initial snapshots completed", &s.snapshots),
            ("cdc_transactions", "Transactions written", &s.transactions),
            ("cdc_records", "Records appended to table topics", &s.records),
            ("cdc_duplicates_skipped", "Records already written before a restart", &s.duplicates_skipped),
            ("cdc_errors", "Sessions that ended in an error", &s.errors),
        ];
        for (name, help, value) in counters {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value.load(Ordering::Relaxed)).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let c: CdcConfig = toml::from_str(
            "url = \"postgresql://spate@localhost/shop\"\npublication = \"shop\"\ntopic_prefix = \"pg\"\n",
        )
        .unwrap();
        assert_eq!(c, CdcConfig::new("postgresql://spate@localhost/shop", "shop", "pg"));
        assert_eq!(c.slot, "spate");
        assert!(c.validate().is_ok());
        let bad = |f: fn(&mut CdcConfig)| {
            let mut c = c.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.slot = "Bad-Slot".into()).contains("slot"));
        assert!(bad(|c| c.topic_prefix = "__x".into()).contains("internal"));
        assert!(bad(|c| c.topic_prefix = "a b".into()).contains("topic_prefix"));
        assert!(bad(|c| c.partitions = 0).contains("partitions"));
        assert!(bad(|c| c.publication.clear()).contains("publication"));
        assert!(toml::from_str::<CdcConfig>(
            "url = \"x\"\npublication = \"p\"\ntopic_prefix = \"t\"\ntypo = 1\n"
        )
        .is_err());
    }
}
