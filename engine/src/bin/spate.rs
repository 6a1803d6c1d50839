//! The `spate` command: `spate serve` runs the engine with its Kafka listener (and the CDC
//! connector of a `[cdc]` config section); `spate repair`
//! reports damaged partitions of a stopped server and accepts their damage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use spate::io::BackendChoice;
use spate::kafka::{Server, ServerConfig};
use spate::log::Durability;
use spate::{Engine, EngineConfig};

/// Request decoders reserve capacity from counts in the frame; see `spate::alloc`.
#[global_allocator]
static ALLOC: spate::alloc::ReservingAlloc = spate::alloc::ReservingAlloc;

#[derive(Debug, Parser)]
#[command(name = "spate", version, about = "A single-node stream engine speaking the Kafka protocol")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Kafka clients from a data directory until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Open a data directory (the server must be stopped), report every partition whose sealed
    /// segments are damaged, and accept the damage of the partitions named with --accept so
    /// that they take writes again. Exits with status 2 while unaccepted damage remains.
    Repair(RepairArgs),
}

#[derive(Debug, clap::Args)]
struct RepairArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// Accept the damage of this partition as lost (repeatable); its files stay as they are.
    #[arg(long, value_name = "TOPIC:PARTITION")]
    accept: Vec<String>,
    /// I/O backend: auto, uring or fallback [default: auto].
    #[arg(long)]
    io_backend: Option<BackendChoice>,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Where topics live (created if missing). Required here or in the config file.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address for Kafka clients [default: 127.0.0.1:9092].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Host clients are told to connect to [default: the listen address].
    #[arg(long)]
    advertised_host: Option<String>,
    /// Shard threads; 0 means one per core [default: 0].
    #[arg(long)]
    shards: Option<usize>,
    /// Durability of topics created over the protocol: always, never or interval:<ms>
    /// [default: always].
    #[arg(long)]
    durability: Option<Durability>,
    /// I/O backend: auto, uring or fallback [default: auto].
    #[arg(long)]
    io_backend: Option<BackendChoice>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// A TOML file with any of these settings (command-line flags win); see docs/protocol.md.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The config file: the same settings as the flags, plus the limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    advertised_host: Option<String>,
    shards: Option<usize>,
    durability: Option<String>,
    io_backend: Option<String>,
    metrics_listen: Option<SocketAddr>,
    pin_threads: Option<bool>,
    produce_frame_bytes_max: Option<usize>,
    request_frame_bytes_max: Option<usize>,
    connections_max: Option<usize>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<u32>,
    segment_bytes: Option<u64>,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    group_initial_rebalance_delay_ms: Option<u64>,
    group_consumer_session_timeout_ms: Option<u64>,
    group_consumer_heartbeat_interval_ms: Option<u64>,
    connections_max_idle_ms: Option<u64>,
    auto_create_topics_per_sec: Option<u32>,
    frame_bytes_per_sec_min: Option<u64>,
    offsets_retention_ms: Option<u64>,
    retention_check_interval_ms: Option<u64>,
    compaction_check_interval_ms: Option<u64>,
    archive_dir: Option<PathBuf>,
    uncached_writes: Option<bool>,
    /// Change data capture from PostgreSQL (docs/cdc.md).
    cdc: Option<spate::cdc::CdcConfig>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file should hold plain `key=value` lines.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Repair(args) => repair(args),
    }
}

fn repair(args: RepairArgs) -> anyhow::Result<()> {
    let mut accept = Vec::new();
    for a in &args.accept {
        let Some((topic, partition)) = a.rsplit_once(':') else {
            bail!("--accept {a:?}: expected TOPIC:PARTITION");
        };
        let partition: u32 =
            partition.parse().with_context(|| format!("--accept {a:?}: bad partition number"))?;
        accept.push((topic.to_string(), partition));
    }
    let config = EngineConfig {
        shards: 1,
        pin_threads: false,
        io_backend: args.io_backend.unwrap_or_default(),
        ..EngineConfig::default()
    };
    let engine = Engine::open(&args.data_dir, config)
        .with_context(|| format!("opening {} (is a server still running on it?)", args.data_dir.display()))?;
    for (topic, partition) in &accept {
        let ranges = engine
            .accept_damage(topic, *partition)
            .with_context(|| format!("accepting the damage of {topic}:{partition}"))?;
        println!("{topic}:{partition}: accepted {ranges} damaged range(s) as lost; it takes writes again");
    }
    let mut unaccepted = 0;
    for info in engine.list_topics() {
        for partition in 0..info.partitions {
            let report = engine.damage(&info.name, partition)?;
            if report.ranges.is_empty() {
                continue;
            }
            println!(
                "{}:{partition}: {} damaged range(s), {}",
                info.name,
                report.ranges.len(),
                if report.accepted { "accepted" } else { "refusing writes" }
            );
            for d in &report.ranges {
                println!("  {d}");
            }
            if !report.accepted {
                unaccepted += 1;
            }
        }
    }
    engine.shutdown()?;
    if unaccepted > 0 {
        eprintln!(
            "{unaccepted} damaged partition(s) refuse writes: restore their files and restart, or accept the loss with --accept TOPIC:PARTITION"
        );
        std::process::exit(2);
    }
    println!("no unaccepted damage");
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let Some(data_dir) = args.data_dir.or(file.data_dir) else {
        bail!("--data-dir (or data_dir in the config file) is required");
    };
    let io_backend = match (args.io_backend, file.io_backend) {
        (Some(b), _) => b,
        (None, Some(s)) => s.parse().map_err(anyhow::Error::msg)?,
        (None, None) => BackendChoice::Auto,
    };
    let mut engine_config = EngineConfig {
        shards: args.shards.or(file.shards).unwrap_or(0),
        pin_threads: file.pin_threads.unwrap_or(true),
        io_backend,
        uncached_writes: file.uncached_writes.unwrap_or(true),
        archive_dir: file.archive_dir.clone(),
        ..EngineConfig::default()
    };
    if let Some(ms) = file.offsets_retention_ms {
        // 0: committed offsets never expire.
        engine_config.offsets_retention = (ms > 0).then(|| Duration::from_millis(ms));
    }
    if let Some(ms) = file.retention_check_interval_ms {
        if ms == 0 {
            bail!("retention_check_interval_ms must be positive");
        }
        engine_config.retention_check_interval = Duration::from_millis(ms);
    }
    if let Some(ms) = file.compaction_check_interval_ms {
        if ms == 0 {
            bail!("compaction_check_interval_ms must be positive");
        }
        engine_config.compaction.check_interval = Duration::from_millis(ms);
    }
    let mut config = ServerConfig::default();
    if let Some(listen) = args.listen.or(file.listen) {
        config.listen = listen;
    }
    config.advertised_host = args.advertised_host.or(file.advertised_host);
    config.metrics_listen = args.metrics_listen.or(file.metrics_listen);
    if let Some(d) = match (args.durability, file.durability) {
        (Some(d), _) => Some(d),
        (None, Some(s)) => Some(s.parse().map_err(anyhow::Error::msg)?),
        (None, None) => None,
    } {
        config.topic_defaults.durability = d;
    }
    if let Some(v) = file.produce_frame_bytes_max {
        config.produce_frame_bytes_max = v;
        config.request_bytes_in_flight_max = config.request_bytes_in_flight_max.max(v);
    }
    if let Some(v) = file.request_frame_bytes_max {
        config.request_frame_bytes_max = v;
    }
    if let Some(v) = file.connections_max {
        config.connections_max = v;
    }
    if let Some(v) = file.auto_create_topics {
        config.auto_create_topics = v;
    }
    if let Some(v) = file.default_partitions {
        config.default_partitions = v;
    }
    if let Some(v) = file.segment_bytes {
        config.topic_defaults.segment_bytes = v;
    }
    if let Some(v) = file.retention_ms {
        config.topic_defaults.retention_age = Some(Duration::from_millis(v));
    }
    if let Some(v) = file.retention_bytes {
        config.topic_defaults.retention_bytes = Some(v);
    }
    if let Some(v) = file.group_initial_rebalance_delay_ms {
        config.group_initial_rebalance_delay = Duration::from_millis(v);
    }
    if let Some(v) = file.group_consumer_session_timeout_ms {
        config.group_consumer_session_timeout = Duration::from_millis(v);
    }
    if let Some(v) = file.group_consumer_heartbeat_interval_ms {
        config.group_consumer_heartbeat_interval = Duration::from_millis(v);
    }
    if let Some(v) = file.auto_create_topics_per_sec {
        config.auto_create_topics_per_sec = v;
    }
    if let Some(v) = file.connections_max_idle_ms {
        config.connections_max_idle = Duration::from_millis(v);
    }
    if let Some(v) = file.frame_bytes_per_sec_min {
        config.frame_bytes_per_sec_min = v;
    }
    config.validate().map_err(anyhow::Error::msg)?;
    if let Some(cdc) = &file.cdc {
        cdc.validate().map_err(anyhow::Error::msg)?;
    }

    // Every partition keeps a file open and every client a socket: take every descriptor the
    // hard limit allows.
    match spate::fds::raise_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(before, after, "raised the open-file limit (RLIMIT_NOFILE) to the hard limit")
        }
        Ok((_, limit)) => tracing::info!(limit, "open-file limit (RLIMIT_NOFILE)"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    // SIGINT and SIGTERM are taken with sigwait below: blocked here, before any thread starts,
    // so every thread inherits the mask and none is interrupted by them.
    let signals = block_signals()?;
    let engine =
        Engine::open(&data_dir, engine_config).with_context(|| format!("opening {}", data_dir.display()))?;
    let cdc = file.cdc.map(|c| spate::cdc::Cdc::start(&engine, c)).transpose().map_err(anyhow::Error::msg)?;
    let collectors = cdc.iter().map(|c| c.collector()).collect();
    let server =
        Server::start_with_metrics(&engine, config, collectors).context("starting the Kafka listener")?;
    // One line on stdout that scripts can wait for.
    println!("spate listening on {}", server.local_addr());
    if let Some(m) = server.metrics_addr() {
        println!("spate metrics on http://{m}/metrics");
    }
    let signal = wait_for(&signals);
    tracing::info!(signal, "stopping");
    if let Some(cdc) = cdc {
        cdc.stop();
    }
    server.shutdown();
    engine.shutdown().context("flushing at shutdown")?;
    Ok(())
}

fn block_signals() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t; the calls only write to it and to the thread's mask.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        bail!("pthread_sigmask failed: {}", std::io::Error::from_raw_os_error(rc));
    }
    Ok(set)
}

fn wait_for(set: &libc::sigset_t) -> i32 {
    loop {
        let mut signal: libc::c_int = 0;
        // SAFETY: `set` holds blocked signals; `signal` is a live int the call writes.
        if unsafe { libc::sigwait(set, &mut signal) } == 0 {
            return signal;
        }
    }
}
