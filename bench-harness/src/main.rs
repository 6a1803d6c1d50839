//! `spate-bench`: measures Spate against the physical reference of the same machine, in one run.
//!
//! Run with no arguments for the quick default suite (about a minute on 2 cores); see
//! `docs/benchmarks.md` for the method and for the figures of recorded runs.

mod produce;
mod reference;
mod report;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::json;
use spate::io::BackendChoice;
use spate::log::Durability;

#[derive(Debug, Parser)]
#[command(name = "spate-bench", about = "Benchmarks for the Spate stream engine")]
struct Cli {
    #[command(subcommand)]
    scenario: Option<Scenario>,
    /// Directory to write data in (default: a temporary directory under ./target).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// Write the results as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// I/O backend: auto, uring or fallback.
    #[arg(long, global = true, default_value = "auto")]
    io_backend: BackendChoice,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Appends fixed-size messages in batches through group commit, per durability mode.
    Produce {
        #[arg(long, default_value_t = 1024)]
        message_bytes: usize,
        #[arg(long, default_value_t = 64)]
        batch_messages: usize,
        #[arg(long, default_value_t = 512)]
        total_mib: u64,
        #[arg(long, default_value_t = 4)]
        producers: usize,
        /// Comma-separated: always, never, interval:<ms>.
        #[arg(long, default_value = "never,interval:10,always", value_delimiter = ',')]
        durability: Vec<Durability>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let root = match &cli.dir {
        Some(d) => d.clone(),
        None => PathBuf::from("target/spate-bench"),
    };
    std::fs::create_dir_all(&root)?;
    let scenario = cli.scenario.unwrap_or(Scenario::Produce {
        message_bytes: 1024,
        batch_messages: 64,
        total_mib: 512,
        producers: 4,
        durability: vec![
            Durability::Never,
            "interval:10".parse().map_err(anyhow::Error::msg)?,
            Durability::Always,
        ],
    });
    let progress = |what: &str| eprintln!("[spate-bench] {what} ...");
    let (name, params, rows) = match scenario {
        Scenario::Produce { message_bytes, batch_messages, total_mib, producers, durability } => {
            anyhow::ensure!(
                producers > 0 && batch_messages > 0 && message_bytes > 0,
                "sizes and counts must be positive"
            );
            let p = produce::ProduceParams {
                message_bytes,
                batch_messages,
                total_bytes: total_mib << 20,
                producers,
                durabilities: durability,
                backend: cli.io_backend,
            };
            let params = json!({
                "message_bytes": message_bytes, "batch_messages": batch_messages, "total_mib": total_mib,
                "producers": producers, "partitions": 1,
                "durability": p.durabilities.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                "io_backend": spate::io::probe(cli.io_backend)?.to_string(),
            });
            ("produce", params, produce::run(&root, &p, &progress)?)
        }
    };
    print!("{}", report::table(&rows));
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report::document(name, params, &rows))?)?;
        eprintln!("[spate-bench] wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_reports_rows_with_reference_ratios_in_the_json_shape() {
        let root = tempfile::tempdir().unwrap();
        let p = produce::ProduceParams {
            message_bytes: 1024,
            batch_messages: 16,
            total_bytes: 4 << 20,
            producers: 2,
            durabilities: vec![Durability::Never, Durability::Always],
            backend: BackendChoice::Fallback,
        };
        let rows = produce::run(root.path(), &p, &|_| {}).unwrap();
        assert_eq!(rows.len(), 2);
        for r in &rows {
            let ratio = r.ratio_to_reference.unwrap();
            assert!(ratio.is_finite() && ratio > 0.0, "{r:?}");
            assert!(r.msgs_per_s.unwrap() > 0.0);
        }
        assert_eq!(rows[0].fsyncs, Some(0), "never syncs only at shutdown, outside the commit loop");
        assert!(rows[1].fsyncs.unwrap() >= 1);
        let doc = report::document("produce", json!({"x": 1}), &rows);
        assert_eq!(doc["scenario"], "produce");
        assert_eq!(doc["results"].as_array().unwrap().len(), 2);
        assert!(doc["results"][0]["ratio_to_reference"].is_number());
        assert!(doc["results"][0].get("p99_us").is_none(), "fields that do not apply are omitted");
        let table = report::table(&rows);
        assert!(table.contains("produce never") && table.contains("produce always"));
    }
}
