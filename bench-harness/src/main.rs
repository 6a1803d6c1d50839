//! `spate-bench`: measures Spate against the physical reference of the same machine, in one run.
//!
//! With no arguments it runs the quick default suite (well under two minutes on 2 cores): every
//! scenario at small sizes, a table on stdout, JSON and latency plots under
//! `target/spate-bench/results/`. Each scenario also runs on its own with its parameters; see
//! `docs/benchmarks.md` for the method and the figures of recorded runs.

mod kafka_wire;
mod plot;
mod postgres;
mod reference;
mod report;
mod scenarios;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use spate::io::BackendChoice;
use spate::log::Durability;

use report::Outcome;
use scenarios::{
    backpressure, cdc, compaction, consume, hol, kafka_load, latency, network, peers, produce, scale,
};

#[derive(Debug, Parser)]
#[command(
    name = "spate-bench",
    about = "Benchmarks for the Spate stream engine, with a same-run physical reference"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Option<Scenario>,
    /// Directory for the data written by the benchmark (default: target/spate-bench).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// Write the results as JSON to this file; plots go next to it.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// I/O backend: auto, uring or fallback.
    #[arg(long, global = true, default_value = "auto")]
    io_backend: BackendChoice,
    /// Engine writes with RWF_DONTCACHE where supported (EngineConfig::uncached_writes).
    #[arg(long, global = true, default_value_t = true, action = clap::ArgAction::Set)]
    uncached_writes: bool,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// The quick default suite: every scenario at small sizes.
    Suite,
    /// Append fixed-size messages in batches from N producers, per durability mode.
    Produce(ProduceArgs),
    /// Catch-up read of a pre-filled log by embedded consumers.
    Consume(ConsumeArgs),
    /// Produce and catch-up consume through the Kafka listener over loopback, against loopback
    /// TCP copy and loopback sendfile references.
    Network(NetworkArgs),
    /// Network produce as requests in flight per connection rise (1 to 16), at batch sizes
    /// from 16 KiB to 1 MiB: whole runs against the same-run loopback copy.
    Sweep(SweepArgs),
    /// Open-loop Kafka-protocol load against one broker (`--bootstrap HOST:PORT`, by default a
    /// Spate listener in this process): produce-to-consume latency from the intended send time.
    KafkaLoad(KafkaLoadArgs),
    /// What idle partitions and parked long polls cost a busy one: produce round trip and
    /// long-poll wake-up with 10 and with 10,000 idle partitions.
    Scale(ScaleArgs),
    /// Open-loop end-to-end latency at fractions of the maximum rate (or fixed rates).
    Latency(LatencyArgs),
    /// Log compaction: bytes compacted per second against a read-and-write reference, space
    /// reclaimed, and produce latency on the same shard with and without compaction running.
    Compaction(CompactionArgs),
    /// Change data capture from a throwaway PostgreSQL 15 (scripts/install-postgres.sh):
    /// snapshot rows/s against COPY TO of the same table, commit-to-fetchable latency at a
    /// fixed rate, and dual writes against a view fed by CDC.
    Cdc(CdcArgs),
    /// Head-of-line blocking: the log with partition-exclusive consumers against a bounded queue.
    Hol(HolArgs),
    /// A producer faster than its consumer under each backpressure policy.
    Backpressure(BackpressureArgs),
    /// The same produce/consume workload against Spate, Redis Streams and NATS JetStream
    /// (install them with scripts/install-peers.sh).
    Peers(PeersArgs),
}

#[derive(Debug, Args)]
struct PeersArgs {
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    #[arg(long, default_value_t = 1024)]
    message_bytes: usize,
    /// never or always (interval:<ms> maps to Redis everysec).
    #[arg(long, default_value = "never")]
    durability: Durability,
    /// Messages per pipelined round: a Spate batch, a Redis pipeline, a NATS round.
    #[arg(long, default_value_t = 100)]
    pipeline: usize,
    /// Produce requests in flight on Spate's Kafka connection for its second row (the first
    /// has one, as Redis and Iggy do); 5 is the Kafka clients' default.
    #[arg(long, default_value_t = 5)]
    in_flight: usize,
    /// An Apache Iggy server binary (built from its repository) to run the same workload
    /// against, through Iggy's Rust SDK; needs spate-bench built with `--features iggy`.
    #[arg(long)]
    iggy_server: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CdcArgs {
    /// Rows of the table the snapshot copies.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Snapshots taken (each between two COPY references).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Inserts per second (one transaction each) of the latency run.
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Keys the two dual writers update, and updates per writer and round.
    #[arg(long, default_value_t = 8)]
    dual_keys: u32,
    #[arg(long, default_value_t = 500)]
    dual_updates: u64,
    /// The most a dual writer waits between its two writes (microseconds).
    #[arg(long, default_value_t = 2_000)]
    dual_delay_us: u64,
}

#[derive(Debug, Args)]
struct ProduceArgs {
    #[arg(long, default_value_t = 1024)]
    message_bytes: usize,
    #[arg(long, default_value_t = 64)]
    batch_messages: usize,
    #[arg(long, default_value_t = 512)]
    total_mib: u64,
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Batches each producer keeps in flight.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Measurements per durability mode (engine between two reference runs each); the row is
    /// the median, with the spread.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    /// Shard threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// Comma-separated: always, never, interval:<ms>.
    #[arg(long, default_value = "never,interval:10,always", value_delimiter = ',')]
    durability: Vec<Durability>,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    #[arg(long, default_value_t = 512)]
    total_mib: u64,
    #[arg(long, default_value_t = 1024)]
    message_bytes: usize,
    #[arg(long, default_value_t = 64)]
    batch_messages: usize,
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    #[arg(long, default_value_t = 1 << 20)]
    fetch_bytes: u64,
    /// Embedded reads, each between two reads of the reference; the row is the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Debug, Args)]
struct NetworkArgs {
    #[arg(long, default_value_t = 1024)]
    total_mib: u64,
    #[arg(long, default_value_t = 1024)]
    message_bytes: usize,
    #[arg(long, default_value_t = 64)]
    batch_messages: usize,
    /// Partitions; one producing and one consuming connection each.
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    #[arg(long, default_value_t = 1 << 20)]
    fetch_bytes: u64,
    #[arg(long, default_value = "never")]
    durability: Durability,
    /// Produce runs, each between two runs of the loopback copy; the row is the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Debug, Args)]
struct SweepArgs {
    /// MiB produced at each point.
    #[arg(long, default_value_t = 256)]
    mib_per_point: u64,
    #[arg(long, default_value_t = 1024)]
    message_bytes: usize,
    /// Batch sizes in KiB (one batch per request).
    #[arg(long, default_value = "16,64,256,1024", value_delimiter = ',')]
    batch_kib: Vec<usize>,
    /// Requests in flight per connection.
    #[arg(long, default_value = "1,2,4,8,16", value_delimiter = ',')]
    in_flight: Vec<usize>,
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    #[arg(long, default_value = "never")]
    durability: Durability,
    /// Runs of every point, alternating the order of the windows; a row is their median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Debug, Args)]
struct KafkaLoadArgs {
    /// The broker (a single node: it must lead every partition); default: Spate in this process.
    #[arg(long)]
    bootstrap: Option<String>,
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Messages per second.
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1024)]
    message_bytes: usize,
    /// Produce requests unanswered at most (Kafka clients default to 5).
    #[arg(long, default_value_t = 5)]
    in_flight: usize,
    /// A topic config for CreateTopics, KEY=VALUE (repeatable): `spate.durability=never`, or
    /// Kafka's `flush.messages=1`. None: the broker's defaults (Spate's is `always`).
    #[arg(long = "topic-config", value_parser = parse_key_value)]
    topic_configs: Vec<(String, String)>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s}: expected KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

#[derive(Debug, Args)]
struct ScaleArgs {
    /// Counts of idle partitions; the first is the baseline the others are compared with.
    #[arg(long, default_value = "10,10000", value_delimiter = ',')]
    idle: Vec<u32>,
    /// Round trips and wake-ups measured per configuration.
    #[arg(long, default_value_t = 2000)]
    samples: u64,
}

#[derive(Debug, Args)]
struct CompactionArgs {
    /// MiB of keyed records written to each log compacted.
    #[arg(long, default_value_t = 256)]
    total_mib: u64,
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Fresh logs compacted, each between two reference runs.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Records per second of the latency producer.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds per latency window (two windows each way, alternating).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// MB per second of updates to the compacted topic during the latency windows.
    #[arg(long, default_value_t = 20.0)]
    table_mb_per_s: f64,
}

#[derive(Debug, Args)]
struct LatencyArgs {
    #[arg(long, default_value_t = 100)]
    message_bytes: usize,
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    #[arg(long, default_value = "never,always", value_delimiter = ',')]
    durability: Vec<Durability>,
    /// Fractions of the measured maximum rate.
    #[arg(long, default_value = "0.1,0.5,0.8", value_delimiter = ',')]
    fractions: Vec<f64>,
    /// Fixed rates in messages per second, instead of fractions (comma-separated).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// How the engine and its waiting callers idle: park (the default), or low-latency
    /// (spin 20 µs, yield until 200 µs, then park); the floor's consumer waits the same way.
    #[arg(long, default_value = "park")]
    idle: IdleArg,
    /// Shard threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    shards: usize,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum IdleArg {
    Park,
    LowLatency,
}

impl From<IdleArg> for spate::IdleStrategy {
    fn from(a: IdleArg) -> Self {
        match a {
            IdleArg::Park => spate::IdleStrategy::Park,
            IdleArg::LowLatency => spate::IdleStrategy::LOW_LATENCY,
        }
    }
}

#[derive(Debug, Args)]
struct HolArgs {
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    #[arg(long, default_value_t = 4)]
    workers: u32,
    #[arg(long, default_value_t = 100)]
    keys: u32,
    /// Fraction of messages that are slow.
    #[arg(long, default_value_t = 0.01)]
    slow_fraction: f64,
    #[arg(long, default_value_t = 10_000)]
    slow_us: u64,
    #[arg(long, default_value_t = 20)]
    fast_us: u64,
    #[arg(long, default_value_t = 1024)]
    queue_capacity: usize,
}

#[derive(Debug, Args)]
struct BackpressureArgs {
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1_000.0)]
    consumer_rate: f64,
    /// How many times faster than the consumer the producer is.
    #[arg(long, default_value_t = 10.0)]
    factor: f64,
    #[arg(long, default_value_t = 100)]
    message_bytes: usize,
    #[arg(long, default_value_t = 1_000)]
    max_lag: u64,
}

/// Progress on stderr, with the time since the start, so a long run shows it is alive.
fn progress_printer() -> impl Fn(&str) {
    let start = Instant::now();
    move |what: &str| eprintln!("[spate-bench {:>6.1}s] {what} ...", start.elapsed().as_secs_f64())
}

fn produce_params(a: &ProduceArgs, backend: BackendChoice, label: &str) -> produce::Params {
    produce::Params {
        message_bytes: a.message_bytes,
        batch_messages: a.batch_messages,
        total_bytes: a.total_mib << 20,
        producers: a.producers.max(1),
        partitions: a.partitions.max(1),
        shards: a.shards,
        durabilities: a.durability.clone(),
        backend,
        in_flight: a.in_flight.max(1),
        repeats: a.repeats.max(1),
        label: label.to_string(),
    }
}

/// The default suite: each scenario small enough that the whole runs in well under 2 minutes.
fn suite(root: &Path, backend: BackendChoice, progress: &dyn Fn(&str)) -> anyhow::Result<(Value, Outcome)> {
    let mut out = Outcome::default();
    let mut params = serde_json::Map::new();
    let mut add = |name: &str, p: Value, o: Outcome| {
        params.insert(name.into(), p);
        out.rows.extend(o.rows);
        out.plots.extend(o.plots);
    };
    let p = produce::Params {
        message_bytes: 1024,
        batch_messages: 64,
        total_bytes: 256 << 20,
        producers: 4,
        partitions: 2,
        shards: 0,
        durabilities: vec![
            Durability::Never,
            Durability::Interval(Duration::from_millis(10)),
            Durability::Always,
        ],
        backend,
        in_flight: 8,
        repeats: 3,
        label: "produce 1KiB".into(),
    };
    add("produce", p.to_json(), produce::run(root, &p, progress)?);
    let small = produce::Params {
        message_bytes: 100,
        batch_messages: 1000,
        total_bytes: 128 << 20,
        producers: 2,
        partitions: 1,
        shards: 1,
        durabilities: vec![Durability::Never],
        backend,
        in_flight: 8,
        repeats: 3,
        label: "produce 100B 1 shard".into(),
    };
    add("produce_100b", small.to_json(), produce::run(root, &small, progress)?);
    let c = consume::Params {
        total_bytes: 512 << 20,
        message_bytes: 1024,
        batch_messages: 64,
        partitions: 2,
        fetch_bytes: 1 << 20,
        rounds: 3,
        backend,
    };
    add("consume", c.to_json(), consume::run(root, &c, progress)?);
    let n = network::Params {
        total_bytes: 1024 << 20,
        message_bytes: 1024,
        batch_messages: 64,
        partitions: 2,
        in_flight: 8,
        fetch_bytes: 1 << 20,
        durability: Durability::Never,
        rounds: 3,
        backend,
    };
    add("network", n.to_json(), network::run(root, &n, progress)?);
    let w = network::SweepParams {
        bytes_per_point: 128 << 20,
        message_bytes: 1024,
        batch_bytes: vec![16 << 10, 64 << 10, 256 << 10, 1 << 20],
        windows: vec![1, 2, 4, 8, 16],
        partitions: 2,
        durability: Durability::Never,
        rounds: 2,
        backend,
    };
    add("sweep", w.to_json(), network::sweep(root, &w, progress)?);
    let sc = scale::Params { idle: vec![10, 10_000], samples: 1_000, backend };
    add("scale", sc.to_json(), scale::run(root, &sc, progress)?);
    let l = latency::Params {
        message_bytes: 100,
        partitions: 2,
        shards: 0,
        durabilities: vec![Durability::Never, Durability::Always],
        fractions: vec![0.1, 0.5, 0.8],
        rates: vec![],
        seconds: 2.0,
        backend,
        consumer_stall: None,
        producer_stall: None,
        idle: spate::IdleStrategy::Park,
    };
    add("latency", l.to_json(), latency::run(root, &l, progress)?);
    let h = hol::Params {
        messages: 4_000,
        rate: 2_000.0,
        workers: 4,
        keys: 100,
        slow_fraction: 0.01,
        slow: Duration::from_millis(10),
        fast: Duration::from_micros(20),
        queue_capacity: 1024,
        backend,
    };
    add("hol", h.to_json(), hol::run(root, &h, progress)?);
    let b = backpressure::Params {
        seconds: 2.0,
        consumer_rate: 1_000.0,
        factor: 10.0,
        message_bytes: 100,
        max_lag: 1_000,
        backend,
    };
    add("backpressure", b.to_json(), backpressure::run(root, &b, progress)?);
    let k = compaction::Params {
        total_bytes: 64 << 20,
        value_bytes: 1024,
        keys: 10_000,
        rounds: 3,
        rate: 2_000.0,
        seconds: 1.0,
        table_bytes_per_s: 20e6,
        backend,
    };
    add("compaction", k.to_json(), compaction::run(root, &k, progress)?);
    let c = cdc::Params {
        rows: 200_000,
        rounds: 2,
        rate: 500.0,
        seconds: 4.0,
        dual_keys: 8,
        dual_updates: 300,
        dual_delay: Duration::from_millis(2),
        backend,
    };
    add("cdc", c.to_json(), cdc::run(root, &c, progress)?);
    Ok((Value::Object(params), out))
}

/// The Kafka listener runs in this process; see `spate::alloc`.
#[global_allocator]
static ALLOC: spate::alloc::ReservingAlloc = spate::alloc::ReservingAlloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let root = cli.dir.clone().unwrap_or_else(|| PathBuf::from("target/spate-bench"));
    std::fs::create_dir_all(&root)?;
    // Scratch directories of an earlier run that was interrupted (Ctrl-C) are ours to remove.
    for entry in std::fs::read_dir(&root)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".tmp") && entry.path().is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    let backend = cli.io_backend;
    workload::UNCACHED_WRITES.store(cli.uncached_writes, std::sync::atomic::Ordering::Relaxed);
    let progress = progress_printer();
    let started = Instant::now();
    let scenario = cli.scenario.unwrap_or(Scenario::Suite);
    let (name, params, outcome): (&str, Value, Outcome) = match &scenario {
        Scenario::Suite => {
            let (params, outcome) = suite(&root, backend, &progress)?;
            ("suite", params, outcome)
        }
        Scenario::Produce(a) => {
            let p = produce_params(a, backend, &format!("produce {}B", a.message_bytes));
            ("produce", p.to_json(), produce::run(&root, &p, &progress)?)
        }
        Scenario::Consume(a) => {
            let p = consume::Params {
                total_bytes: a.total_mib << 20,
                message_bytes: a.message_bytes,
                batch_messages: a.batch_messages,
                partitions: a.partitions.max(1),
                fetch_bytes: a.fetch_bytes,
                rounds: a.rounds.max(1),
                backend,
            };
            ("consume", p.to_json(), consume::run(&root, &p, &progress)?)
        }
        Scenario::Network(a) => {
            let p = network::Params {
                total_bytes: a.total_mib << 20,
                message_bytes: a.message_bytes,
                batch_messages: a.batch_messages,
                partitions: a.partitions.max(1),
                in_flight: a.in_flight.max(1),
                fetch_bytes: a.fetch_bytes,
                durability: a.durability,
                rounds: a.rounds.max(1),
                backend,
            };
            ("network", p.to_json(), network::run(&root, &p, &progress)?)
        }
        Scenario::Sweep(a) => {
            let p = network::SweepParams {
                bytes_per_point: a.mib_per_point.max(1) << 20,
                message_bytes: a.message_bytes.max(1),
                batch_bytes: a.batch_kib.iter().map(|k| k.max(&1) << 10).collect(),
                windows: a.in_flight.iter().map(|w| *w.max(&1)).collect(),
                partitions: a.partitions.max(1),
                durability: a.durability,
                rounds: a.rounds.max(1),
                backend,
            };
            ("sweep", p.to_json(), network::sweep(&root, &p, &progress)?)
        }
        Scenario::KafkaLoad(a) => {
            let p = kafka_load::Params {
                bootstrap: a.bootstrap.clone(),
                partitions: a.partitions.max(1),
                rate: a.rate.max(1.0),
                seconds: a.seconds,
                message_bytes: a.message_bytes.max(8),
                in_flight: a.in_flight.max(1),
                topic_configs: a.topic_configs.clone(),
                backend,
            };
            ("kafka-load", p.to_json(), kafka_load::run(&root, &p, &progress)?)
        }
        Scenario::Scale(a) => {
            let p = scale::Params {
                idle: a.idle.iter().map(|n| (*n).max(1)).collect(),
                samples: a.samples.max(1),
                backend,
            };
            ("scale", p.to_json(), scale::run(&root, &p, &progress)?)
        }
        Scenario::Compaction(a) => {
            let p = compaction::Params {
                total_bytes: a.total_mib.max(1) << 20,
                value_bytes: a.value_bytes.max(1),
                keys: a.keys.max(1),
                rounds: a.rounds.max(1),
                rate: a.rate.max(1.0),
                seconds: a.seconds.max(0.1),
                table_bytes_per_s: a.table_mb_per_s.max(0.001) * 1e6,
                backend,
            };
            ("compaction", p.to_json(), compaction::run(&root, &p, &progress)?)
        }
        Scenario::Cdc(a) => {
            let p = cdc::Params {
                rows: a.rows.max(1),
                rounds: a.rounds.max(1),
                rate: a.rate.max(1.0),
                seconds: a.seconds.max(0.1),
                dual_keys: a.dual_keys.max(1),
                dual_updates: a.dual_updates.max(1),
                dual_delay: Duration::from_micros(a.dual_delay_us),
                backend,
            };
            ("cdc", p.to_json(), cdc::run(&root, &p, &progress)?)
        }
        Scenario::Latency(a) => {
            let p = latency::Params {
                message_bytes: a.message_bytes,
                partitions: a.partitions.max(1),
                shards: a.shards,
                durabilities: a.durability.clone(),
                fractions: if a.rates.is_empty() { a.fractions.clone() } else { Vec::new() },
                rates: a.rates.clone(),
                seconds: a.seconds,
                backend,
                consumer_stall: None,
                producer_stall: None,
                idle: a.idle.into(),
            };
            ("latency", p.to_json(), latency::run(&root, &p, &progress)?)
        }
        Scenario::Hol(a) => {
            let p = hol::Params {
                messages: a.messages,
                rate: a.rate,
                workers: a.workers.max(1),
                keys: a.keys.max(1),
                slow_fraction: a.slow_fraction,
                slow: Duration::from_micros(a.slow_us),
                fast: Duration::from_micros(a.fast_us),
                queue_capacity: a.queue_capacity.max(1),
                backend,
            };
            ("hol", p.to_json(), hol::run(&root, &p, &progress)?)
        }
        Scenario::Backpressure(a) => {
            let p = backpressure::Params {
                seconds: a.seconds,
                consumer_rate: a.consumer_rate,
                factor: a.factor,
                message_bytes: a.message_bytes,
                max_lag: a.max_lag.max(1),
                backend,
            };
            ("backpressure", p.to_json(), backpressure::run(&root, &p, &progress)?)
        }
        Scenario::Peers(a) => {
            let p = peers::Params {
                messages: a.messages.max(1),
                message_bytes: a.message_bytes.max(1),
                durability: a.durability,
                pipeline: a.pipeline.max(1),
                in_flight: a.in_flight.max(1),
                backend,
                iggy_server: a.iggy_server.clone(),
            };
            ("peers", p.to_json(), peers::run(&root, &p, &progress)?)
        }
    };
    let mut params = params;
    if let Value::Object(m) = &mut params {
        m.insert("io_backend".into(), json!(spate::io::probe(backend)?.to_string()));
    }
    print!("{}", report::table(&outcome.rows));
    let json_path = cli.json.clone().unwrap_or_else(|| root.join("results").join(format!("{name}.json")));
    if let Some(parent) = json_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&report::document(name, params, &outcome.rows))?,
    )?;
    let stem = json_path.file_stem().and_then(|s| s.to_str()).unwrap_or(name).to_string();
    let plot_dir = json_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    eprintln!("[spate-bench] results: {}", json_path.display());
    for p in &outcome.plots {
        eprintln!("[spate-bench] plot: {}", plot::write(plot_dir, &stem, p)?.display());
    }
    if let Some(path) = plot::write_throughput(plot_dir, &stem, &outcome.rows)? {
        eprintln!("[spate-bench] plot: {}", path.display());
    }
    eprintln!("[spate-bench] done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
