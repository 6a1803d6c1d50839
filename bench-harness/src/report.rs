//! Results: the JSON document of `docs/benchmarks.md`'s contract and a table for people.
//! Fields that do not apply to a row are omitted, never filled with zeros.

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Default)]
pub struct Row {
    pub name: String,
    pub msgs_per_s: Option<f64>,
    pub bytes_per_s: Option<f64>,
    pub reference_bytes_per_s: Option<f64>,
    pub ratio_to_reference: Option<f64>,
    pub fsyncs: Option<u64>,
}

impl Row {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        let mut put = |k: &str, v: Option<f64>| {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        };
        put("msgs_per_s", self.msgs_per_s);
        put("bytes_per_s", self.bytes_per_s);
        put("reference_bytes_per_s", self.reference_bytes_per_s);
        put("ratio_to_reference", self.ratio_to_reference);
        if let Some(f) = self.fsyncs {
            m.insert("fsyncs".into(), json!(f));
        }
        Value::Object(m)
    }
}

pub fn document(scenario: &str, params: Value, rows: &[Row]) -> Value {
    json!({
        "scenario": scenario,
        "commit": commit(),
        "machine": {
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "kernel": kernel(),
        },
        "params": params,
        "results": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    })
}

pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<24} {:>14} {:>12} {:>14} {:>8} {:>8}\n",
        "scenario", "msgs/s", "MB/s", "reference MB/s", "ratio", "fsyncs"
    );
    let f = |v: Option<f64>, scale: f64, prec: usize| {
        v.map_or("-".to_string(), |v| format!("{:.*}", prec, v / scale))
    };
    for r in rows {
        out.push_str(&format!(
            "{:<24} {:>14} {:>12} {:>14} {:>8} {:>8}\n",
            r.name,
            f(r.msgs_per_s, 1.0, 0),
            f(r.bytes_per_s, 1e6, 1),
            f(r.reference_bytes_per_s, 1e6, 1),
            f(r.ratio_to_reference, 1.0, 3),
            r.fsyncs.map_or("-".to_string(), |v| v.to_string()),
        ));
    }
    out
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".into(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}
