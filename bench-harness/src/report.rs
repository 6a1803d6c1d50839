//! Results: the JSON document of the output contract (docs/benchmarks.md), a table for people,
//! and latency plots next to the JSON. Fields that do not apply to a row are omitted, never
//! filled with zeros.

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// One result row.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub name: String,
    pub msgs_per_s: Option<f64>,
    pub bytes_per_s: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
    pub reference_bytes_per_s: Option<f64>,
    pub ratio_to_reference: Option<f64>,
    pub order_violations: Option<u64>,
    pub lost: Option<u64>,
    /// Scenario-specific numbers (fsyncs, memory, per-key violations, ...).
    pub extra: Vec<(&'static str, Value)>,
}

impl Row {
    pub fn named(name: impl Into<String>) -> Row {
        Row { name: name.into(), ..Row::default() }
    }

    /// Fills the latency columns from a histogram of microseconds.
    pub fn with_latency(mut self, h: &Histogram<u64>) -> Row {
        if !h.is_empty() {
            self.p50_us = Some(h.value_at_quantile(0.5) as f64);
            self.p99_us = Some(h.value_at_quantile(0.99) as f64);
            self.p999_us = Some(h.value_at_quantile(0.999) as f64);
            self.max_us = Some(h.max() as f64);
        }
        self
    }

    /// Sets throughput and, given the reference's bytes per second, the ratio to it.
    pub fn with_throughput(
        mut self,
        msgs: u64,
        bytes: u64,
        secs: f64,
        reference_bytes_per_s: Option<f64>,
    ) -> Row {
        self.msgs_per_s = Some(msgs as f64 / secs);
        self.bytes_per_s = Some(bytes as f64 / secs);
        if let Some(r) = reference_bytes_per_s {
            self.reference_bytes_per_s = Some(r);
            self.ratio_to_reference = Some(bytes as f64 / secs / r);
        }
        self
    }

    /// Records a reference measured before and after the engine, and says when it moved more
    /// than [`MOVED_MAX`] between the two (`reference_moved`).
    pub fn with_reference_pair(self, before: f64, after: f64) -> Row {
        let row =
            self.extra("reference_before_bytes_per_s", before).extra("reference_after_bytes_per_s", after);
        match moved(before, after) {
            Some(m) => row.extra("reference_moved", m),
            None => row,
        }
    }

    pub fn extra(mut self, key: &'static str, value: impl Into<Value>) -> Row {
        self.extra.push((key, value.into()));
        self
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        let fields = [
            ("msgs_per_s", self.msgs_per_s),
            ("bytes_per_s", self.bytes_per_s),
            ("p50_us", self.p50_us),
            ("p99_us", self.p99_us),
            ("p999_us", self.p999_us),
            ("max_us", self.max_us),
            ("reference_bytes_per_s", self.reference_bytes_per_s),
            ("ratio_to_reference", self.ratio_to_reference),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        if let Some(v) = self.order_violations {
            m.insert("order_violations".into(), json!(v));
        }
        if let Some(v) = self.lost {
            m.insert("lost".into(), json!(v));
        }
        for (k, v) in &self.extra {
            m.insert((*k).into(), v.clone());
        }
        Value::Object(m)
    }
}

/// The ratio to the reference, with the spread of the runs behind it (`ratio_min`–`ratio_max`)
/// when there were several, and how far the reference moved when it moved.
fn ratio_cell(r: &Row) -> String {
    let get = |k: &str| r.extra.iter().find(|(n, _)| *n == k).and_then(|(_, v)| v.as_f64());
    let Some(ratio) = r.ratio_to_reference else { return "-".into() };
    let mut cell = format!("{ratio:.3}");
    if let (Some(lo), Some(hi)) = (get("ratio_min"), get("ratio_max")) {
        if hi > lo {
            cell.push_str(&format!(" ({lo:.2}–{hi:.2})"));
        }
    }
    if let Some(m) = get("reference_moved") {
        cell.push_str(&format!(" (ref moved {:.0}%)", m * 100.0));
    }
    cell
}

/// A latency distribution to draw: one series per label, all on one plot.
#[derive(Debug, Clone)]
pub struct LatencyPlot {
    pub name: String,
    pub title: String,
    pub series: Vec<(String, Histogram<u64>)>,
}

/// What a scenario produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rows: Vec<Row>,
    pub plots: Vec<LatencyPlot>,
}

/// A latency row's ratios to its floor, and whether the floor moved between its runs.
fn floor_cell(r: &Row) -> String {
    let get = |key: &str| r.extra.iter().find(|(k, _)| *k == key).and_then(|(_, v)| v.as_f64());
    let (Some(a), Some(b), Some(c)) =
        (get("p50_ratio_to_floor"), get("p99_ratio_to_floor"), get("p999_ratio_to_floor"))
    else {
        return "-".into();
    };
    match get("floor_moved") {
        Some(m) => format!("{a:.1}/{b:.1}/{c:.1} (floor moved {:.0}%)", m * 100.0),
        None => format!("{a:.1}/{b:.1}/{c:.1}"),
    }
}

/// The median of measurements (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Engine runs alternating with runs of their reference, R E R E … E R: engine run `i` lies
/// between references `i` and `i + 1`, and is compared with the stronger of the two. Rates in
/// bytes per second.
#[derive(Debug, Clone, Default)]
pub struct Alternation {
    pub references: Vec<f64>,
    pub runs: Vec<f64>,
}

impl Alternation {
    /// Each run's ratio to the stronger reference beside it.
    pub fn ratios(&self) -> Vec<f64> {
        debug_assert_eq!(self.references.len(), self.runs.len() + 1);
        self.runs.iter().enumerate().map(|(i, r)| r / self.reference_of(i)).collect()
    }

    fn reference_of(&self, run: usize) -> f64 {
        self.references[run].max(self.references[run + 1])
    }

    /// The run whose ratio is the median (the lower middle one of an even count).
    pub fn median_run(&self) -> usize {
        let ratios = self.ratios();
        let mut order: Vec<usize> = (0..ratios.len()).collect();
        order.sort_by(|&a, &b| ratios[a].total_cmp(&ratios[b]));
        order[(order.len() - 1) / 2]
    }

    /// The largest move of the reference between neighbouring runs of it, when beyond
    /// [`MOVED_MAX`].
    pub fn moved(&self) -> Option<f64> {
        self.references.windows(2).filter_map(|w| moved(w[0], w[1])).reduce(f64::max)
    }

    /// `row` with the throughput of the median run (`msgs` and `bytes` per run) against its
    /// reference, the spread of the ratios, every run's rate, and `reference_moved` when the
    /// reference moved.
    pub fn fill(&self, row: Row, msgs: u64, bytes: u64) -> Row {
        let ratios = self.ratios();
        let m = self.median_run();
        let secs = bytes as f64 / self.runs[m];
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(0.0, f64::max);
        let round = |v: &[f64]| v.iter().map(|r| r.round()).collect::<Vec<_>>();
        let row = row
            .with_throughput(msgs, bytes, secs, Some(self.reference_of(m)))
            .extra("rounds", self.runs.len() as u64)
            .extra("ratio_min", low)
            .extra("ratio_max", high)
            .extra("runs_bytes_per_s", round(&self.runs))
            .extra("reference_runs_bytes_per_s", round(&self.references));
        match self.moved() {
            Some(m) => row.extra("reference_moved", m),
            None => row,
        }
    }
}

/// How far a reference moved between two measurements of it, as a fraction of the smaller,
/// when that is more than [`MOVED_MAX`]; `None` when it held still.
pub fn moved(a: f64, b: f64) -> Option<f64> {
    let (lo, hi) = (a.min(b), a.max(b));
    (lo > 0.0 && hi / lo - 1.0 > MOVED_MAX).then(|| hi / lo - 1.0)
}

/// A reference that moved more than this between its measurements is flagged in its row.
pub const MOVED_MAX: f64 = 0.20;

pub fn document(scenario: &str, params: Value, rows: &[Row]) -> Value {
    json!({
        "scenario": scenario,
        "commit": commit(),
        "machine": {
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "kernel": read_trimmed("/proc/sys/kernel/osrelease"),
            "memory_bytes": memory_bytes(),
        },
        "params": params,
        "results": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    })
}

pub fn table(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "msgs/s",
        "MB/s",
        "ref MB/s",
        "ratio",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "× floor p50/p99/p99.9",
        "order viol.",
        "lost",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let f = |v: Option<f64>, scale: f64, prec: usize| {
        v.map_or("-".to_string(), |v| format!("{:.*}", prec, v / scale))
    };
    let n = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for r in rows {
        lines.push(vec![
            r.name.clone(),
            f(r.msgs_per_s, 1.0, 0),
            f(r.bytes_per_s, 1e6, 1),
            f(r.reference_bytes_per_s, 1e6, 1),
            ratio_cell(r),
            f(r.p50_us, 1.0, 0),
            f(r.p99_us, 1.0, 0),
            f(r.p999_us, 1.0, 0),
            f(r.max_us, 1.0, 0),
            floor_cell(r),
            // Global violations, and per key where the scenario counts them.
            match (r.order_violations, r.extra.iter().find(|(k, _)| *k == "order_violations_per_key")) {
                (Some(g), Some((_, k))) => format!("{g} / {k} per key"),
                (g, _) => n(g),
            },
            n(r.lost),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for l in &lines {
        for (c, cell) in l.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c == 0 {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str("  ");
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

/// The commit of the working tree the harness runs in, with `-dirty` if it has uncommitted
/// changes (figures from such a run cannot be reproduced from the commit alone).
pub fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(hash)
            if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) =>
        {
            format!("{hash}-dirty")
        }
        Some(hash) => hash,
        None => "unknown".into(),
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

fn memory_bytes() -> u64 {
    read_trimmed("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resident memory of this process, from /proc/self/statm.
pub fn rss_bytes() -> u64 {
    let page = 4096;
    read_trimmed("/proc/self/statm")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |p| p * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_omits_what_does_not_apply_and_table_aligns() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in [10, 20, 30, 1000] {
            h.record(v).unwrap();
        }
        let rows = vec![
            Row::named("a").with_throughput(100, 1000, 1.0, Some(2000.0)),
            Row::named("b").with_latency(&h).extra("fsyncs", 7),
        ];
        let doc = document("produce", json!({"x": 1}), &rows);
        assert_eq!(doc["scenario"], "produce");
        assert_eq!(doc["results"][0]["ratio_to_reference"], 0.5);
        assert!(doc["results"][0].get("p99_us").is_none());
        assert!(doc["results"][1].get("msgs_per_s").is_none());
        assert_eq!(doc["results"][1]["max_us"], 1000.0);
        assert_eq!(doc["results"][1]["fsyncs"], 7);
        let t = table(&rows);
        let widths: Vec<usize> = t.lines().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{t}");
    }

    #[test]
    fn a_throughput_row_whose_reference_moved_says_so_in_the_table() {
        let mut row = Row::named("r").with_throughput(10, 1000, 1.0, Some(2000.0));
        assert!(!table(&[row.clone()]).contains("moved"));
        row = row.extra("reference_moved", 0.35);
        assert!(table(&[row.clone()]).contains("0.500 (ref moved 35%)"));
        let row = row.extra("ratio_min", 0.41).extra("ratio_max", 0.62);
        assert!(table(&[row]).contains("0.500 (0.41–0.62) (ref moved 35%)"));
    }

    #[test]
    fn a_reference_moved_only_beyond_twenty_percent_either_way() {
        assert_eq!(moved(100.0, 110.0), None);
        assert_eq!(moved(110.0, 100.0), None);
        assert!((moved(100.0, 130.0).unwrap() - 0.3).abs() < 1e-9);
        assert!((moved(130.0, 100.0).unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(moved(0.0, 5.0), None, "no measurement, nothing to compare");
    }

    #[test]
    fn alternating_runs_are_compared_with_the_stronger_reference_beside_them() {
        // R E R E R E R: references 100 120 90 100, runs 60 110 45.
        let alt = Alternation { references: vec![100.0, 120.0, 90.0, 100.0], runs: vec![60.0, 110.0, 45.0] };
        let ratios = alt.ratios();
        let want = [0.5, 110.0 / 120.0, 0.45];
        assert!(ratios.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-9), "{ratios:?}");
        assert_eq!(alt.median_run(), 0, "ratios 0.45, 0.5, 0.92: the middle one is the first run");
        // 120 against 90 is a move of a third; 100 → 120 and 90 → 100 are within 20%.
        assert!((alt.moved().unwrap() - 1.0 / 3.0).abs() < 1e-9);
        let row = alt.fill(Row::named("r"), 1_000, 6_000);
        assert_eq!(row.bytes_per_s, Some(60.0));
        assert_eq!(row.reference_bytes_per_s, Some(120.0));
        assert_eq!(row.ratio_to_reference, Some(0.5));
        let get = |k: &str| row.extra.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("rounds"), Some(json!(3)));
        assert_eq!(get("ratio_min"), Some(json!(0.45)));
        assert_eq!(get("runs_bytes_per_s"), Some(json!([60.0, 110.0, 45.0])));
        assert!(get("reference_moved").is_some());
        // Even count: the lower of the two middle ratios.
        let two = Alternation { references: vec![100.0, 100.0, 100.0], runs: vec![80.0, 40.0] };
        assert_eq!(two.median_run(), 1);
        assert_eq!(two.moved(), None);
    }

    #[test]
    fn the_median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
