//! `peers`: the same produce-then-consume workload — same message size, count and durability
//! request — against Spate through its Kafka listener (and embedded, for scale), Redis Streams
//! and NATS JetStream, all on this machine in this run, every system behind a loopback socket
//! but the embedded row. The Kafka listener runs in the harness's process; its client speaks
//! Produce v7 (acks -1) and Fetch v11 over a blocking socket. Each client has `pipeline` messages in flight: a Spate batch and a Redis pipeline
//! are sent and acknowledged in rounds, NATS keeps a window of that many unacknowledged
//! publishes. Every client encodes its messages inside the timed part and decodes every record
//! when reading back. Servers are the Debian packages `redis-server` and
//! `nats-server` (install with `scripts/install-peers.sh`), started here on loopback ports with
//! their data in the benchmark directory, and stopped at the end.
//!
//! Durability, per system:
//! - Spate: the topic's `never` / `always` (group commit, acknowledged after fdatasync);
//! - Redis: `never` = AOF with `appendfsync no`; `always` = AOF with `appendfsync always`;
//! - NATS JetStream 2.9 (Debian's): file storage, flushed on its own schedule either way (it has
//!   no per-message sync setting before 2.10), so its `always` row is not equal durability; the
//!   row says so.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use spate::io::BackendChoice;
use spate::log::{Durability, LogConfig};
use spate::{Backpressure, FetchOptions};

use crate::report::{Outcome, Row};
use crate::workload;

#[derive(Debug, Clone)]
pub struct Params {
    pub messages: u64,
    pub message_bytes: usize,
    pub durability: Durability,
    /// Messages per pipelined round (a Spate batch, a Redis pipeline, a NATS flush).
    pub pipeline: usize,
    /// Produce requests in flight on Spate's Kafka connection (Redis and Iggy: one round at a
    /// time, as their clients send; NATS: `pipeline` publishes).
    pub in_flight: usize,
    pub backend: BackendChoice,
    /// An Apache Iggy server binary to compare with (its Rust SDK is built in with the `iggy`
    /// feature).
    pub iggy_server: Option<std::path::PathBuf>,
}

impl Params {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "messages": self.messages, "message_bytes": self.message_bytes,
            "durability": self.durability.to_string(), "pipeline": self.pipeline,
            "in_flight": self.in_flight,
            "iggy_server": self.iggy_server.as_ref().map(|p| p.display().to_string()),
        })
    }
}

/// A server process, stopped when dropped.
pub(super) struct Server(Child);

impl Server {
    /// Reads the server's stderr from now on (so it never blocks on a full pipe), keeping its
    /// last lines for error messages.
    pub(super) fn drain_stderr(&mut self) -> LogTail {
        let tail = LogTail::default();
        if let Some(stderr) = self.0.stderr.take() {
            let lines = std::sync::Arc::clone(&tail.0);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                    if lines.len() == LOG_TAIL_LINES {
                        lines.pop_front();
                    }
                    lines.push_back(line);
                }
            });
        }
        tail
    }
}

const LOG_TAIL_LINES: usize = 20;

/// The last lines a server wrote to stderr.
#[derive(Default, Clone)]
pub(super) struct LogTail(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>);

impl LogTail {
    pub(super) fn tail(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) fn wait_for_port(port: u16, what: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(15),
            "{what} did not start listening on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn spawn(program: &str, args: &[String]) -> anyhow::Result<Server> {
    let mut command = Command::new(program);
    command.args(args);
    spawn_command(command, program, "install the peers with scripts/install-peers.sh")
}

/// Starts `command` with its output discarded (stderr piped), as a child that dies with the
/// harness.
pub(super) fn spawn_command(mut command: Command, program: &str, install: &str) -> anyhow::Result<Server> {
    use std::os::unix::process::CommandExt;
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: runs in the child between fork and exec, calling only prctl, which is
    // async-signal-safe. The server then dies with the harness, even if the harness is killed.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| anyhow::anyhow!("cannot start {program} ({e}); {install}"))?;
    Ok(Server(child))
}

/// One row per system and direction.
fn rows(system: &str, durability: &str, p: &Params, produce_secs: f64, consume_secs: f64) -> [Row; 2] {
    let bytes = p.messages * p.message_bytes as u64;
    [
        Row::named(format!("peers {system} produce ({durability})")).with_throughput(
            p.messages,
            bytes,
            produce_secs,
            None,
        ),
        Row::named(format!("peers {system} consume")).with_throughput(p.messages, bytes, consume_secs, None),
    ]
}

/// Decodes every record of the whole batches in `bytes` (as the peers' clients parse every
/// entry), checking each value's size; returns how many there were. A partial batch at the
/// end (a fetch cut at its size limit) is left for the next read.
fn decode_all(bytes: &[u8], message_bytes: usize) -> anyhow::Result<u64> {
    let mut n = 0;
    for b in spate::record::batches(bytes) {
        let Ok(b) = b else { break };
        for r in b.records() {
            let r = r.map_err(spate::log::LogError::from)?;
            anyhow::ensure!(r.value.map_or(0, <[u8]>::len) == message_bytes, "short record");
            n += 1;
        }
    }
    Ok(n)
}

fn run_spate(root: &Path, p: &Params) -> anyhow::Result<(f64, f64)> {
    let (engine, _dir) = workload::engine(root, 0, p.backend)?;
    engine.create_topic("peers", 1, LogConfig { durability: p.durability, ..LogConfig::default() })?;
    let value = vec![7u8; p.message_bytes];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < p.messages {
        // One round: `pipeline` messages encoded into a batch here (the client's work, as the
        // peers' clients encode theirs), sent, and acknowledged before the next round, as the
        // Redis pipeline is.
        let n = (p.messages - sent).min(p.pipeline as u64);
        engine.produce_batch("peers", 0, workload::batch_of(&value, n as usize), &Backpressure::Buffer)?;
        sent += n;
    }
    let produce = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let (mut offset, mut seen) = (0i64, 0u64);
    let mut buf = vec![0u8; 1 << 20];
    while seen < p.messages {
        let f = engine.fetch("peers", 0, offset, FetchOptions::default())?;
        if buf.len() < f.slice.len as usize {
            buf.resize(f.slice.len as usize, 0);
        }
        seen += decode_all(f.slice.read_to(&mut buf)?, p.message_bytes)?;
        offset = f.next_offset();
    }
    let consume = start.elapsed().as_secs_f64();
    engine.shutdown()?;
    Ok((produce, consume))
}

/// Spate through its Kafka listener on loopback: one Produce request of `pipeline` messages
/// per round, each acknowledged before the next (as a Redis pipeline), then Fetch from offset 0
/// to the end, every record decoded.
fn run_spate_kafka(root: &Path, p: &Params) -> anyhow::Result<(f64, f64)> {
    use std::io::Write as _;

    use kafka_protocol::messages::{ApiKey, FetchResponse, ProduceResponse};
    use kafka_protocol::protocol::Decodable;

    use spate::record::{BatchBuilder, BatchOptions, Record};

    use crate::kafka_wire::{
        encode_request, fetch_request, next_offset, read_frame, write_produce, FETCH_VERSION, PRODUCE_VERSION,
    };

    const TOPIC: &str = "peers";
    let (engine, _dir) = workload::engine(root, 0, p.backend)?;
    engine.create_topic(TOPIC, 1, LogConfig { durability: p.durability, ..LogConfig::default() })?;
    let server = spate::kafka::Server::start(
        &engine,
        spate::kafka::ServerConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            ..spate::kafka::ServerConfig::default()
        },
    )?;
    let mut stream = TcpStream::connect(server.local_addr())?;
    stream.set_nodelay(true)?;
    let mut buf = bytes::BytesMut::new();
    let value = vec![7u8; p.message_bytes];
    let mut builder =
        BatchBuilder::with_capacity(BatchOptions::default(), p.pipeline * (p.message_bytes + 12));
    let start = Instant::now();
    let (mut sent, mut outstanding, mut correlation) = (0u64, 0usize, 0i32);
    while sent < p.messages || outstanding > 0 {
        // Up to `in_flight` requests sent before the oldest response is read; responses come
        // in request order. (Responses are small: the server's socket buffer holds them while
        // this thread writes.)
        if sent < p.messages && outstanding < p.in_flight.max(1) {
            let n = (p.messages - sent).min(p.pipeline as u64);
            // Encoded into the client's long-lived buffer and written from it, as Kafka
            // clients do.
            builder.reset(BatchOptions::default());
            for _ in 0..n {
                builder.push(&Record { timestamp: 0, key: None, value: Some(&value), headers: &[] });
            }
            correlation = correlation.wrapping_add(1);
            write_produce(&mut stream, TOPIC, 0, correlation, builder.finish_in_place())?;
            sent += n;
            outstanding += 1;
            continue;
        }
        let mut body = read_frame(&mut stream, &mut buf)?.slice(4..);
        let response = ProduceResponse::decode(&mut body, PRODUCE_VERSION)?;
        let code = response.responses[0].partition_responses[0].error_code;
        anyhow::ensure!(code == 0, "produce failed with error code {code}");
        outstanding -= 1;
    }
    let produce = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let (mut offset, mut seen) = (0i64, 0u64);
    while seen < p.messages {
        let request = fetch_request(TOPIC, &[(0, offset)], 1 << 20, 0);
        stream.write_all(&encode_request(ApiKey::Fetch, FETCH_VERSION, 0, &request))?;
        let mut body = read_frame(&mut stream, &mut buf)?.slice(4..);
        let response = FetchResponse::decode(&mut body, FETCH_VERSION)?;
        let part = &response.responses[0].partitions[0];
        anyhow::ensure!(part.error_code == 0, "fetch failed with error code {}", part.error_code);
        let records = part.records.clone().unwrap_or_default();
        anyhow::ensure!(!records.is_empty(), "an empty fetch before the end");
        seen += decode_all(&records, p.message_bytes)?;
        offset = next_offset(&records)?;
    }
    let consume = start.elapsed().as_secs_f64();
    server.shutdown();
    engine.shutdown()?;
    Ok((produce, consume))
}

fn run_redis(root: &Path, p: &Params) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir_in(root)?;
    let port = free_port()?;
    let mut args: Vec<String> =
        ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--protected-mode", "no"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(["--dir".to_string(), dir.path().display().to_string()]);
    match p.durability {
        Durability::Always => {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from))
        }
        Durability::Interval(_) => {
            args.extend(["--appendonly", "yes", "--appendfsync", "everysec"].map(String::from))
        }
        // Writes to its log file, unsynced, as Spate's `never` does.
        Durability::Never => args.extend(["--appendonly", "yes", "--appendfsync", "no"].map(String::from)),
    }
    let _server = spawn("redis-server", &args)?;
    wait_for_port(port, "redis-server")?;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut con = client.get_connection()?;
    let value = vec![7u8; p.message_bytes];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < p.messages {
        let n = (p.messages - sent).min(p.pipeline as u64);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            pipe.cmd("XADD").arg("bench").arg("*").arg("v").arg(&value[..]).ignore();
        }
        pipe.query::<()>(&mut con)?;
        sent += n;
    }
    let produce = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let (mut from, mut seen) = ("-".to_string(), 0u64);
    while seen < p.messages {
        let reply: redis::streams::StreamRangeReply =
            redis::cmd("XRANGE").arg("bench").arg(&from).arg("+").arg("COUNT").arg(1000).query(&mut con)?;
        let Some(last) = reply.ids.last() else { break };
        from = format!("({}", last.id);
        seen += reply.ids.len() as u64;
    }
    anyhow::ensure!(seen == p.messages, "redis returned {seen} of {} entries", p.messages);
    let consume = start.elapsed().as_secs_f64();
    Ok((produce, consume))
}

fn run_nats(root: &Path, p: &Params) -> anyhow::Result<(f64, f64)> {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir_in(root)?;
    let port = free_port()?;
    let args: Vec<String> =
        ["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd", &dir.path().display().to_string()]
            .map(String::from)
            .to_vec();
    let mut server = spawn("nats-server", &args)?;
    let log = server.drain_stderr();
    if let Err(e) = wait_for_port(port, "nats-server") {
        anyhow::bail!("{e}; its log ends with:\n{}", log.tail());
    }
    // The client is async (async-nats, the maintained one); one current-thread runtime drives it.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = async_nats::connect(format!("127.0.0.1:{port}")).await?;
        let js = async_nats::jetstream::new(client);
        let mut stream = js
            .create_stream(async_nats::jetstream::stream::Config {
                name: "bench".into(),
                subjects: vec!["bench".into()],
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        let payload = bytes::Bytes::from(vec![7u8; p.message_bytes]);
        let start = Instant::now();
        // Up to `pipeline` publishes awaiting their JetStream acknowledgement.
        let mut acks = std::collections::VecDeque::with_capacity(p.pipeline);
        for _ in 0..p.messages {
            if acks.len() >= p.pipeline {
                let ack: async_nats::jetstream::context::PublishAckFuture =
                    acks.pop_front().expect("non-empty");
                ack.await?;
            }
            acks.push_back(js.publish("bench", payload.clone()).await?);
        }
        for ack in acks {
            ack.await?;
        }
        let produce = start.elapsed().as_secs_f64();
        let stored = stream.info().await?.state.messages;
        anyhow::ensure!(stored == p.messages, "JetStream stored {stored} of {} messages", p.messages);
        let start = Instant::now();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: "bench".into(),
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let mut seen = 0u64;
        while seen < p.messages {
            match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                Ok(Some(m)) => {
                    m?;
                    seen += 1;
                }
                Ok(None) | Err(_) => anyhow::bail!("JetStream delivered {seen} of {} messages", p.messages),
            }
        }
        Ok((produce, start.elapsed().as_secs_f64()))
    })
}

pub fn run(root: &Path, p: &Params, progress: &dyn Fn(&str)) -> anyhow::Result<Outcome> {
    let d = p.durability.to_string();
    progress(&format!("peers: Spate, {} messages of {} B, durability {d}", p.messages, p.message_bytes));
    let (ep, ec) = run_spate(root, p)?;
    let mut out = Outcome::default();
    out.rows.extend(rows("spate embedded", &d, p, ep, ec));
    // One request in flight, as Redis (one pipeline at a time) and Iggy's client send; then
    // the requested window (by default 5, the Kafka clients' default).
    progress("peers: Spate through its Kafka listener, 1 request in flight");
    let (sp, sc) = run_spate_kafka(root, &Params { in_flight: 1, ..p.clone() })?;
    out.rows.extend(rows("spate", &format!("{d}, Kafka listener, 1 in flight"), p, sp, sc));
    let windowed = if p.in_flight > 1 {
        progress(&format!("peers: Spate through its Kafka listener, {} requests in flight", p.in_flight));
        let (wp, _) = run_spate_kafka(root, p)?;
        let [produce, _] =
            rows("spate", &format!("{d}, Kafka listener, {} in flight", p.in_flight), p, wp, sc);
        out.rows.push(produce);
        Some(wp)
    } else {
        None
    };
    progress("peers: Redis Streams");
    let (rp, rc) = run_redis(root, p)?;
    let redis_rows = rows(
        "redis",
        &format!(
            "{d}: appendfsync {}",
            match p.durability {
                Durability::Always => "always",
                Durability::Interval(_) => "everysec",
                Durability::Never => "no (AOF, unsynced)",
            }
        ),
        p,
        rp,
        rc,
    );
    progress("peers: NATS JetStream");
    let (np, nc) = run_nats(root, p)?;
    let nats_rows = rows("nats", "file storage, server-scheduled sync", p, np, nc);
    let mut peer_rows: Vec<Row> = redis_rows.into_iter().chain(nats_rows).collect();
    if let Some(server) = &p.iggy_server {
        progress(&format!("peers: Apache Iggy ({})", server.display()));
        peer_rows.extend(run_iggy(root, p, server)?);
    }
    for row in peer_rows {
        out.rows.push(with_speedups(row, p, (sp, sc), windowed));
    }
    Ok(out)
}

/// How many times faster Spate (through its Kafka listener) was on the same work: at one
/// request in flight, and for produce at the requested window too.
fn with_speedups(row: Row, p: &Params, (sp, sc): (f64, f64), windowed: Option<f64>) -> Row {
    let peer_secs = p.messages as f64 / row.msgs_per_s.unwrap_or(f64::NAN);
    let produce = row.name.contains(" produce");
    let row = row.extra("spate_speedup", peer_secs / if produce { sp } else { sc });
    match windowed.filter(|_| produce) {
        Some(wp) => row.extra("spate_speedup_at_window", peer_secs / wp).extra("window", p.in_flight as u64),
        None => row,
    }
}

#[cfg(feature = "iggy")]
fn run_iggy(root: &Path, p: &Params, server: &Path) -> anyhow::Result<[Row; 2]> {
    let (produce, consume) = super::iggy::run(root, p, server)?;
    Ok(rows("iggy", super::iggy::durability_label(p.durability), p, produce, consume))
}

#[cfg(not(feature = "iggy"))]
fn run_iggy(_: &Path, _: &Params, _: &Path) -> anyhow::Result<[Row; 2]> {
    anyhow::bail!(
        "this spate-bench was built without Iggy's SDK: build it with \
         `cargo run --release -p spate-bench --features iggy -- peers --iggy-server PATH`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed(program: &str) -> bool {
        Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    }

    fn params(iggy_server: Option<std::path::PathBuf>) -> Params {
        Params {
            messages: 2_000,
            message_bytes: 256,
            durability: Durability::Always,
            pipeline: 100,
            in_flight: 5,
            backend: BackendChoice::Fallback,
            iggy_server,
        }
    }

    fn extra(r: &Row, key: &str) -> Option<f64> {
        r.extra.iter().find(|(k, _)| *k == key).and_then(|(_, v)| v.as_f64())
    }

    /// Runs the scenario and checks every system's rows; returns them.
    fn run_and_check(p: &Params, systems: &[&str]) -> Vec<Row> {
        let root = tempfile::tempdir().unwrap();
        let out = run(root.path(), p, &|_| {}).unwrap();
        let names: Vec<&str> = out.rows.iter().map(|r| r.name.as_str()).collect();
        // Two rows a system, and Spate's produce at the window.
        assert_eq!(names.len(), 2 * systems.len() + 1, "{names:?}");
        for system in systems {
            assert!(names.iter().any(|n| n.starts_with(&format!("peers {system} produce"))), "{names:?}");
            assert!(names.contains(&format!("peers {system} consume").as_str()), "{names:?}");
        }
        assert!(names.contains(&"peers spate produce (always, Kafka listener, 5 in flight)"), "{names:?}");
        for r in &out.rows {
            assert!(r.msgs_per_s.unwrap() > 0.0, "{}", r.name);
            if !r.name.contains("spate") {
                assert!(extra(r, "spate_speedup").is_some_and(|v| v > 0.0), "{}", r.name);
                // Produce rows compare with the windowed run too.
                let windowed = extra(r, "spate_speedup_at_window");
                assert_eq!(windowed.is_some_and(|v| v > 0.0), r.name.contains(" produce"), "{}", r.name);
            }
        }
        out.rows
    }

    #[test]
    fn spate_redis_and_nats_run_the_same_workload() {
        if !(installed("redis-server") && installed("nats-server")) {
            assert!(
                std::env::var_os("SPATE_REQUIRE_PEERS").is_none(),
                "SPATE_REQUIRE_PEERS is set but redis-server or nats-server is missing"
            );
            eprintln!("skipped: install the peers with scripts/install-peers.sh");
            return;
        }
        run_and_check(&params(None), &["spate embedded", "spate", "redis", "nats"]);
    }

    /// With `SPATE_IGGY_SERVER` naming an Iggy server binary (and the `iggy` feature), the same
    /// workload runs against it too.
    #[test]
    fn iggy_runs_the_same_workload_when_a_server_is_given() {
        let Some(server) = std::env::var_os("SPATE_IGGY_SERVER").map(std::path::PathBuf::from) else {
            eprintln!("skipped: SPATE_IGGY_SERVER names no Iggy server binary");
            return;
        };
        if !(installed("redis-server") && installed("nats-server")) {
            eprintln!("skipped: install the peers with scripts/install-peers.sh");
            return;
        }
        if !cfg!(feature = "iggy") {
            eprintln!("skipped: built without the iggy feature");
            return;
        }
        run_and_check(&params(Some(server)), &["spate embedded", "spate", "redis", "nats", "iggy"]);
    }

    #[test]
    fn an_iggy_server_that_cannot_run_is_a_clear_error() {
        let root = tempfile::tempdir().unwrap();
        let missing = std::path::Path::new("/nonexistent/iggy-server");
        let err = run_iggy(root.path(), &params(Some(missing.into())), missing).unwrap_err().to_string();
        if cfg!(feature = "iggy") {
            assert!(err.contains("cannot start /nonexistent/iggy-server"), "{err}");
        } else {
            assert!(err.contains("--features iggy"), "{err}");
        }
    }
}
