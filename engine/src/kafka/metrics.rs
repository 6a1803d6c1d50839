//! Prometheus metrics of the server and of each shard, in the text exposition format.
//!
//! Server metrics (connections, requests and their latency by API, zero-copy bytes) are live
//! counters. Shard metrics (appends, bytes, fsyncs, sync latency) are read from the shards at
//! each scrape and encoded from that snapshot.

use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::engine::{LatencyBuckets, ShardStats};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    pub api: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HopLabel {
    pub hop: &'static str,
}

/// The server's live metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub connections_accepted: Counter,
    pub connections_refused: Counter,
    pub connections_moved: Counter,
    /// Connections closed after `connections_max_idle` without a request.
    pub connections_idle_closed: Counter,
    pub requests: Family<ApiLabel, Counter>,
    pub request_seconds: Family<ApiLabel, Histogram>,
    /// Frames that were closed on: malformed, oversized, unknown API or version.
    pub bad_frames: Counter,
    pub zero_copy_bytes: Counter,
    /// Partitions named in Fetch requests, by whether the connection's shard owns them.
    pub partition_reads: Family<HopLabel, Counter>,
    shards: std::sync::Arc<ShardSnapshot>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_collectors(Vec::new())
    }

    /// The server's metrics plus those of components beside it (the CDC connectors).
    pub fn with_collectors(collectors: Vec<Box<dyn Collector>>) -> Metrics {
        let mut registry = Registry::with_prefix("spate");
        let connections = Gauge::default();
        let connections_accepted = Counter::default();
        let connections_refused = Counter::default();
        let connections_moved = Counter::default();
        let connections_idle_closed = Counter::default();
        let requests = Family::<ApiLabel, Counter>::default();
        let request_seconds = Family::<ApiLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_025, 2.0, 18))
        });
        let bad_frames = Counter::default();
        let zero_copy_bytes = Counter::default();
        let partition_reads = Family::<HopLabel, Counter>::default();
        registry.register("connections", "Open Kafka client connections", connections.clone());
        registry.register("connections_accepted", "Kafka connections accepted", connections_accepted.clone());
        registry.register(
            "connections_refused",
            "Kafka connections closed at once (connections_max or the open-file limit reached)",
            connections_refused.clone(),
        );
        registry.register(
            "connections_moved",
            "Kafka connections moved to the shard owning all the partitions they use",
            connections_moved.clone(),
        );
        registry.register(
            "connections_idle_closed",
            "Kafka connections closed after connections_max_idle without a request",
            connections_idle_closed.clone(),
        );
        registry.register("requests", "Kafka requests answered, by API", requests.clone());
        registry.register(
            "request_seconds",
            "Kafka request latency from frame read to response written, by API",
            request_seconds.clone(),
        );
        registry.register(
            "bad_frames",
            "Frames that closed their connection: malformed, oversized, unknown API or version",
            bad_frames.clone(),
        );
        registry.register(
            "zero_copy_bytes",
            "Record bytes sent from segment files to sockets with sendfile",
            zero_copy_bytes.clone(),
        );
        registry.register(
            "partition_reads",
            "Partitions fetched, by whether the connection's shard owns them (local) or asks another (remote)",
            partition_reads.clone(),
        );
        let shards = std::sync::Arc::new(ShardSnapshot::default());
        registry.register_collector(Box::new(std::sync::Arc::clone(&shards)));
        for c in collectors {
            registry.register_collector(c);
        }
        Metrics {
            registry,
            connections,
            connections_accepted,
            connections_refused,
            connections_moved,
            connections_idle_closed,
            requests,
            request_seconds,
            bad_frames,
            zero_copy_bytes,
            partition_reads,
            shards,
        }
    }

    /// The text exposition of every metric, with shard metrics from `stats`.
    pub fn render(&self, stats: Vec<ShardStats>) -> String {
        *self.shards.stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.push_str("# encoding failed\n");
        }
        out
    }

    pub fn observe(&self, api: &'static str, seconds: f64) {
        let label = ApiLabel { api };
        self.requests.get_or_create(&label).inc();
        self.request_seconds.get_or_create(&label).observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

/// (name, help, how to read it from a shard's statistics).
type ShardCounter = (&'static str, &'static str, fn(&ShardStats) -> u64);

/// The shards' counters as of the last scrape.
#[derive(Debug, Default)]
struct ShardSnapshot {
    stats: Mutex<Vec<ShardStats>>,
}

impl Collector for ShardSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let counters: [ShardCounter; 5] = [
            ("appends", "Produce requests acknowledged, per shard", |s| s.produced),
            ("append_bytes", "Bytes written to segment files, per shard", |s| s.io.write_bytes),
            ("fsyncs", "fdatasync calls completed, per shard", |s| s.io.fsyncs),
            ("group_commits", "Group commits made, per shard", |s| s.commits),
            ("dropped", "Produce requests refused by Drop backpressure, per shard", |s| s.dropped),
        ];
        for (name, help, get) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &stats {
                let label = ShardLabel { shard: s.shard.to_string() };
                ConstCounter::new(get(s)).encode(family.encode_family(&label)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "sync_seconds",
            "Latency of group commits that synced (writes and fdatasync together), per shard",
            None,
            MetricType::Histogram,
        )?;
        for s in &stats {
            let label = ShardLabel { shard: s.shard.to_string() };
            let (sum, count, buckets) = histogram(&s.sync_latency);
            family.encode_family(&label)?.encode_histogram::<ShardLabel>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// Per-bucket counts with their upper bounds in seconds (the encoder makes them cumulative).
fn histogram(h: &LatencyBuckets) -> (f64, u64, Vec<(f64, u64)>) {
    let mut buckets = Vec::with_capacity(h.counts.len());
    for (i, &count) in h.counts.iter().enumerate() {
        let bound = LatencyBuckets::BOUNDS_US.get(i).map_or(f64::MAX, |&us| us as f64 / 1e6);
        buckets.push((bound, count));
    }
    (h.sum_us as f64 / 1e6, h.count, buckets)
}

/// Used by tests and the harness: the value of one sample line `name{labels} value`.
pub fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name_and_labels)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_counters_and_histograms_are_rendered_per_shard() {
        let m = Metrics::new();
        let mut s = ShardStats { shard: 1, produced: 7, ..ShardStats::default() };
        s.sync_latency.observe(std::time::Duration::from_micros(30));
        s.sync_latency.observe(std::time::Duration::from_micros(3000));
        m.zero_copy_bytes.inc_by(1234);
        m.observe("Produce", 0.001);
        let text = m.render(vec![s]);
        assert_eq!(sample(&text, "spate_appends_total{shard=\"1\"}"), Some(7.0));
        assert_eq!(sample(&text, "spate_zero_copy_bytes_total"), Some(1234.0));
        assert_eq!(sample(&text, "spate_sync_seconds_count{shard=\"1\"}"), Some(2.0));
        assert_eq!(
            sample(&text, "spate_sync_seconds_bucket{le=\"0.00005\",shard=\"1\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "spate_sync_seconds_bucket{le=\"0.0032\",shard=\"1\"}"),
            Some(2.0),
            "{text}"
        );
        assert_eq!(sample(&text, "spate_sync_seconds_bucket{le=\"+Inf\",shard=\"1\"}"), Some(2.0), "{text}");
        assert_eq!(sample(&text, "spate_requests_total{api=\"Produce\"}"), Some(1.0));
    }
}
