//! `network`: produce and catch-up consume through the Kafka listener over loopback, each with
//! a same-run reference of what loopback gives without Spate:
//! - produce: the same bytes written to a loopback TCP socket and read on the other side (the
//!   most a broker could ingest through this kernel's TCP stack);
//! - consume: the segment files sent with `sendfile(2)` to a loopback socket and read on the
//!   other side (what a zero-copy broker could serve at best).
//!
//! The clients speak the wire protocol with `kafka-protocol` codecs over blocking sockets:
//! Produce v7 with one batch per request and a window of requests in flight per connection;
//! Fetch v11 from offset 0 to the end, one connection per partition, reading each response
//! into one reused buffer and taking the next offset from the last batch header.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchResponse, ProduceResponse};
use kafka_protocol::protocol::Decodable;
use serde_json::json;
use spate::io::BackendChoice;
use spate::kafka::{Server, ServerConfig};
use spate::log::{Durability, LogConfig};

use crate::kafka_wire::{
    encode_request, fetch_request, next_offset, produce_request, read_frame, FETCH_VERSION, PRODUCE_VERSION,
};
use crate::report::{median, Alternation, Outcome, Row};
use crate::workload;

const TOPIC: &str = "net";
/// Catch-up reads of the whole log. The row is the median run; the fastest stands beside it,
/// labelled (runs vary a lot on two cores: where the scheduler puts each client thread
/// relative to its shard matters).
const CONSUME_RUNS: u64 = 5;

#[derive(Debug, Clone)]
pub struct Params {
    pub total_bytes: u64,
    pub message_bytes: usize,
    pub batch_messages: usize,
    pub partitions: u32,
    /// Produce requests in flight per connection (one connection per partition).
    pub in_flight: usize,
    pub fetch_bytes: u64,
    pub durability: Durability,
    /// Produce runs, each between two runs of the loopback copy.
    pub rounds: usize,
    pub backend: BackendChoice,
}

impl Params {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "total_bytes": self.total_bytes, "message_bytes": self.message_bytes,
            "batch_messages": self.batch_messages, "partitions": self.partitions,
            "in_flight": self.in_flight, "fetch_bytes": self.fetch_bytes,
            "durability": self.durability.to_string(), "rounds": self.rounds,
        })
    }
}

/// Sends `requests` Produce requests on a connected stream with `window` in flight, starting
/// when every connection of the run is ready.
fn produce_connection(
    mut stream: TcpStream,
    partition: u32,
    batch: &Bytes,
    requests: u64,
    window: usize,
    ready: &std::sync::Barrier,
) -> anyhow::Result<()> {
    let frame =
        encode_request(ApiKey::Produce, PRODUCE_VERSION, 0, &produce_request(TOPIC, partition, batch));
    let mut buf = BytesMut::new();
    let (mut sent, mut answered) = (0u64, 0u64);
    ready.wait();
    while answered < requests {
        while sent < requests && sent - answered < window as u64 {
            stream.write_all(&frame)?;
            sent += 1;
        }
        // The correlation id (4 bytes), then the body.
        let mut body = read_frame(&mut stream, &mut buf)?.slice(4..);
        let response = ProduceResponse::decode(&mut body, PRODUCE_VERSION)?;
        let code = response.responses[0].partition_responses[0].error_code;
        anyhow::ensure!(code == 0, "produce failed with error code {code}");
        answered += 1;
    }
    Ok(())
}

/// One whole produce run: a connection per partition, `requests` requests each with `window`
/// in flight. Returns the seconds from the first request sent to the last acknowledgement.
fn produce_run(
    addr: SocketAddr,
    partitions: u32,
    batch: &Bytes,
    requests: u64,
    window: usize,
) -> anyhow::Result<f64> {
    let streams: Vec<TcpStream> = (0..partitions)
        .map(|_| {
            let s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            Ok(s)
        })
        .collect::<std::io::Result<_>>()?;
    let ready = std::sync::Barrier::new(partitions as usize + 1);
    std::thread::scope(|s| -> anyhow::Result<f64> {
        let handles: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(partition, stream)| {
                let ready = &ready;
                s.spawn(move || produce_connection(stream, partition as u32, batch, requests, window, ready))
            })
            .collect();
        ready.wait();
        let start = Instant::now();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("producer panicked"))??;
        }
        Ok(start.elapsed().as_secs_f64())
    })
}

/// Loopback TCP copy of `requests` × `chunk` bytes over `streams` connections, best of three:
/// the most a broker could ingest through this kernel's TCP stack.
fn copy_reference(streams: usize, chunk: &Bytes, requests: u64) -> anyhow::Result<f64> {
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let r = loopback(streams, &|_, s: &mut TcpStream| {
            for _ in 0..requests {
                s.write_all(chunk)?;
            }
            Ok(requests * chunk.len() as u64)
        })?;
        best = best.max(r);
    }
    Ok(best)
}

/// Fetches `partitions` (partition, end) from offset 0 to their ends over one connection, all
/// of them in each request as a Kafka consumer does; returns the record bytes received.
fn consume_connection(addr: SocketAddr, partitions: &[(u32, i64)], fetch_bytes: u64) -> anyhow::Result<u64> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::new();
    let mut offsets: Vec<i64> = vec![0; partitions.len()];
    let mut bytes = 0u64;
    while partitions.iter().zip(&offsets).any(|(&(_, end), &o)| o < end) {
        let wanted: Vec<(u32, i64)> = partitions
            .iter()
            .zip(&offsets)
            .filter(|(&(_, end), &o)| o < end)
            .map(|(&(p, _), &o)| (p, o))
            .collect();
        let request = fetch_request(TOPIC, &wanted, fetch_bytes, 0);
        stream.write_all(&encode_request(ApiKey::Fetch, FETCH_VERSION, 0, &request))?;
        let mut body = read_frame(&mut stream, &mut buf)?.slice(4..);
        let response = FetchResponse::decode(&mut body, FETCH_VERSION)?;
        let mut progressed = false;
        for p in response.responses.iter().flat_map(|t| t.partitions.iter()) {
            anyhow::ensure!(p.error_code == 0, "fetch failed with error code {}", p.error_code);
            let records = p.records.clone().unwrap_or_default();
            if records.is_empty() {
                continue;
            }
            let i = partitions
                .iter()
                .position(|&(q, _)| q as i32 == p.partition_index)
                .ok_or_else(|| anyhow::anyhow!("answer for partition {} not asked for", p.partition_index))?;
            bytes += records.len() as u64;
            offsets[i] = next_offset(&records)?;
            progressed = true;
        }
        anyhow::ensure!(progressed, "an empty fetch before the end");
    }
    Ok(bytes)
}

/// The least a broker that validates and stores what it receives must do, over loopback: the
/// same batches sent as in [`copy_reference`], each read whole into the next free part of a
/// reused 1 MiB buffer and its CRC-32C checked, the buffer written at the end of a file of its
/// stream in `dir` whenever the next batch would not fit (one write per MiB, as a group commit
/// gathers batches; uncached where the file system allows, as the engine writes by default:
/// all but the partial last page with `RWF_DONTCACHE`). No framing, no offsets, no index, no
/// acknowledgement. Bytes per second.
fn ingest_reference(
    dir: &std::path::Path,
    streams: usize,
    chunk: &Bytes,
    requests: u64,
) -> anyhow::Result<f64> {
    anyhow::ensure!(chunk.len() > 21, "a batch is longer than its header");
    let uncached = spate::io::uncached_writes_supported(dir)?;
    let send = |_, s: &mut TcpStream| -> anyhow::Result<u64> {
        for _ in 0..requests {
            s.write_all(chunk)?;
        }
        Ok(requests * chunk.len() as u64)
    };
    let receive = |i: usize, s: &mut TcpStream| -> anyhow::Result<u64> {
        let path = dir.join(format!("reference-ingest-{i}.dat"));
        let file = std::fs::File::options().create(true).truncate(true).write(true).open(&path)?;
        let len = chunk.len();
        let mut buf = vec![0u8; len.max(1 << 20)];
        let (mut at, mut used) = (0u64, 0usize);
        for _ in 0..requests {
            if used + len > buf.len() {
                write_uncached_but_last_page(&file, &buf[..used], at, uncached)?;
                (at, used) = (at + used as u64, 0);
            }
            let batch = &mut buf[used..used + len];
            s.read_exact(batch)?;
            // A RecordBatch's CRC (bytes 17..21) covers everything from its attributes on.
            let stored = u32::from_be_bytes(batch[17..21].try_into().expect("four bytes"));
            anyhow::ensure!(crc32c::crc32c(&batch[21..]) == stored, "batch CRC mismatch");
            used += len;
        }
        write_uncached_but_last_page(&file, &buf[..used], at, uncached)?;
        at += used as u64;
        drop(file);
        std::fs::remove_file(&path)?;
        Ok(at)
    };
    loopback_with(streams, &send, &receive)
}

/// Writes `bytes` at `offset`: up to the last page boundary with `RWF_DONTCACHE` when
/// `uncached`, the rest (or all of it) through the page cache.
fn write_uncached_but_last_page(
    file: &std::fs::File,
    bytes: &[u8],
    offset: u64,
    uncached: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let end = offset + bytes.len() as u64;
    let cut = if uncached { (end - end % 4096).saturating_sub(offset) as usize } else { 0 };
    let mut done = 0;
    while done < cut {
        let iov =
            libc::iovec { iov_base: bytes[done..cut].as_ptr() as *mut libc::c_void, iov_len: cut - done };
        // SAFETY: one iovec over a live slice of `bytes`; the descriptor is open for the call.
        let n = unsafe {
            libc::pwritev2(
                file.as_raw_fd(),
                &iov,
                1,
                (offset + done as u64) as libc::off_t,
                spate::io::RWF_DONTCACHE,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        done += n as usize;
    }
    file.write_all_at(&bytes[cut..], offset + cut as u64)
}

/// Loopback TCP: `streams` connections each carrying `bytes_each`, written by one thread per
/// stream (from a user buffer, or with sendfile from `files`) and read by another.
fn loopback(
    streams: usize,
    send: &(dyn Fn(usize, &mut TcpStream) -> anyhow::Result<u64> + Sync),
) -> anyhow::Result<f64> {
    loopback_with(streams, send, &|_, c: &mut TcpStream| {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = c.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    })
}

/// [`loopback`] with the reading side given: `receive` reads stream `i` to its end and
/// returns the bytes it took.
fn loopback_with(
    streams: usize,
    send: &(dyn Fn(usize, &mut TcpStream) -> anyhow::Result<u64> + Sync),
    receive: &(dyn Fn(usize, &mut TcpStream) -> anyhow::Result<u64> + Sync),
) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    let total = std::thread::scope(|s| -> anyhow::Result<u64> {
        let mut readers = Vec::new();
        let mut senders = Vec::new();
        for i in 0..streams {
            readers.push(s.spawn(move || -> anyhow::Result<u64> {
                let mut c = TcpStream::connect(addr)?;
                receive(i, &mut c)
            }));
            let (mut server, _) = listener.accept()?;
            senders.push(s.spawn(move || -> anyhow::Result<u64> {
                let n = send(i, &mut server)?;
                server.shutdown(std::net::Shutdown::Write)?;
                Ok(n)
            }));
        }
        let sent: Vec<anyhow::Result<u64>> =
            senders.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("sender panicked"))?).collect();
        let mut total = 0;
        // A reader's failure first: a sender then only sees its connection closed.
        for h in readers {
            total += h.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        }
        for r in sent {
            r?;
        }
        Ok(total)
    })?;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Request/response over loopback, as a fetching client does: for each `chunk` of the files of
/// a stream, the reader asks with one byte and reads the chunk, which the sender sends with
/// sendfile. Returns bytes per second.
fn request_response_sendfile(streams: &[Vec<std::path::PathBuf>], chunk: u64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    let total = std::thread::scope(|s| -> anyhow::Result<u64> {
        let mut handles = Vec::new();
        for files in streams {
            let sizes: Vec<u64> =
                files.iter().map(|f| std::fs::metadata(f).map(|m| m.len())).collect::<Result<_, _>>()?;
            let reader_sizes = sizes.clone();
            handles.push(s.spawn(move || -> anyhow::Result<u64> {
                let mut c = TcpStream::connect(addr)?;
                c.set_nodelay(true)?;
                let mut buf = vec![0u8; chunk as usize];
                let mut total = 0;
                for size in reader_sizes {
                    let mut at = 0;
                    while at < size {
                        let n = (size - at).min(chunk) as usize;
                        c.write_all(&[1])?;
                        c.read_exact(&mut buf[..n])?;
                        at += n as u64;
                        total += n as u64;
                    }
                }
                Ok(total)
            }));
            let (mut server, _) = listener.accept()?;
            server.set_nodelay(true)?;
            handles.push(s.spawn(move || -> anyhow::Result<u64> {
                let mut ask = [0u8; 1];
                for (path, size) in files.iter().zip(sizes) {
                    let file = std::fs::File::open(path)?;
                    let mut offset: libc::off_t = 0;
                    while (offset as u64) < size {
                        server.read_exact(&mut ask)?;
                        let end = (offset as u64 + chunk).min(size);
                        while (offset as u64) < end {
                            let count = (end - offset as u64) as usize;
                            // SAFETY: both descriptors are open; `offset` is a live local.
                            let n = unsafe {
                                libc::sendfile(server.as_raw_fd(), file.as_raw_fd(), &mut offset, count)
                            };
                            anyhow::ensure!(n > 0, "sendfile: {}", std::io::Error::last_os_error());
                        }
                    }
                }
                Ok(0)
            }));
        }
        let mut total = 0;
        for h in handles {
            total += h.join().map_err(|_| anyhow::anyhow!("reference thread panicked"))??;
        }
        Ok(total)
    })?;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Sends a whole file with sendfile calls of at most `chunk` bytes (the fetch size, as the
/// server sends one fetch's slice per call).
fn sendfile_all(stream: &TcpStream, path: &std::path::Path, chunk: u64) -> anyhow::Result<u64> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut offset: libc::off_t = 0;
    while (offset as u64) < len {
        let count = (len - offset as u64).min(chunk) as usize;
        // SAFETY: both descriptors are open for the call; `offset` is a live local.
        let n = unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut offset, count) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        anyhow::ensure!(n > 0, "{} ended early", path.display());
    }
    Ok(len)
}

pub fn run(root: &std::path::Path, p: &Params, progress: &dyn Fn(&str)) -> anyhow::Result<Outcome> {
    let (engine, dir) = workload::engine(root, 2, p.backend)?;
    let topic_config = LogConfig { durability: p.durability, ..LogConfig::default() };
    engine.create_topic(TOPIC, p.partitions, topic_config.clone())?;
    let server = Server::start(
        &engine,
        ServerConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..ServerConfig::default() },
    )?;
    let addr = server.local_addr();
    let batch = Bytes::from(workload::batch(p.message_bytes, p.batch_messages));
    let per_partition = (p.total_bytes / batch.len() as u64 / u64::from(p.partitions)).max(1);
    let produced_bytes = per_partition * u64::from(p.partitions) * batch.len() as u64;

    // What any broker that checks and stores these batches must spend at least, before and
    // after the runs (the stronger counts): a second yardstick beside the bare copy.
    workload::settle();
    progress("network: loopback ingest reference, CRC checked and written (before)");
    let ingest_before = ingest_reference(root, p.partitions as usize, &batch, per_partition)?;
    // Produce runs alternate with the loopback copy (R E R E … R). Each run starts on an empty
    // topic; the last run's records stay for the consume below.
    let produce_rounds = p.rounds.max(1);
    let mut alt = Alternation::default();
    for round in 0..produce_rounds {
        if round > 0 {
            // The previous run's topic goes first, so its removal costs no run anything.
            engine.delete_topic(TOPIC)?;
        }
        // Dirty pages of earlier work would be written back during the next runs otherwise.
        workload::settle();
        progress(&format!("network: loopback copy reference ({} of {})", round + 1, produce_rounds + 1));
        alt.references.push(copy_reference(p.partitions as usize, &batch, per_partition)?);
        if round > 0 {
            engine.create_topic(TOPIC, p.partitions, topic_config.clone())?;
        }
        progress(&format!(
            "network: producing {} MiB over {} connections, {} requests in flight each ({} of {})",
            produced_bytes >> 20,
            p.partitions,
            p.in_flight,
            round + 1,
            produce_rounds
        ));
        let secs = produce_run(addr, p.partitions, &batch, per_partition, p.in_flight)?;
        alt.runs.push(produced_bytes as f64 / secs);
    }
    progress(&format!("network: loopback copy reference ({} of {})", produce_rounds + 1, produce_rounds + 1));
    alt.references.push(copy_reference(p.partitions as usize, &batch, per_partition)?);
    workload::settle();
    progress("network: loopback ingest reference, CRC checked and written (after)");
    let ingest_after = ingest_reference(root, p.partitions as usize, &batch, per_partition)?;
    let ingest = ingest_before.max(ingest_after);
    let messages = per_partition * u64::from(p.partitions) * p.batch_messages as u64;
    let produce_row = alt
        .fill(Row::named(format!("network produce {}", p.durability)), messages, produced_bytes)
        .extra("reference", "loopback TCP copy")
        .extra("in_flight", p.in_flight as u64);
    let produced_rate = produce_row.bytes_per_s.unwrap_or(0.0);
    let produce_row = produce_row
        .extra("ingest_reference_bytes_per_s", ingest)
        .extra("ingest_reference_runs_bytes_per_s", vec![ingest_before.round(), ingest_after.round()])
        .extra("ratio_to_ingest", produced_rate / ingest);

    // Catch-up consume from the page cache; the reference sends the same files with sendfile.
    let files: Vec<Vec<std::path::PathBuf>> = (0..p.partitions)
        .map(|partition| {
            let mut files: Vec<_> =
                std::fs::read_dir(dir.path().join("data").join(format!("{TOPIC}-{partition}")))?
                    .map(|e| e.map(|e| e.path()))
                    .collect::<Result<_, _>>()?;
            files.retain(|f| f.extension().is_some_and(|x| x == "log"));
            files.sort();
            Ok(files)
        })
        .collect::<std::io::Result<_>>()?;
    // The best of several ways to move these bytes with sendfile over loopback: streamed over
    // one connection and over one per partition, and request/response in fetch-sized chunks
    // (what a fetching client does, without Kafka's framing), each three times: runs are
    // short, the machine is noisy, and which way is fastest depends on the machine.
    let sendfile_reference = |label: &str| -> anyhow::Result<f64> {
        progress(label);
        let mut best: f64 = 0.0;
        for _ in 0..3 {
            best = best.max(request_response_sendfile(&files, p.fetch_bytes)?);
        }
        for streams in [1, files.len(), 1, files.len(), 1, files.len()] {
            let all: Vec<&std::path::PathBuf> = files.iter().flatten().collect();
            let r = loopback(streams, &|i, s: &mut TcpStream| {
                let mut n = 0;
                for f in all.iter().skip(i).step_by(streams) {
                    n += sendfile_all(s, f, p.fetch_bytes)?;
                }
                Ok(n)
            })?;
            best = best.max(r);
        }
        Ok(best)
    };
    sendfile_reference("network: warming the page cache")?;
    let consume_before = sendfile_reference("network: loopback sendfile reference (before)")?;
    progress(&format!("network: catch-up consume ({CONSUME_RUNS} runs, the median counts)"));
    let ends: Vec<i64> = (0..p.partitions)
        .map(|partition| {
            engine.list_offset(TOPIC, partition, spate::OffsetSpec::Latest).map(|o| o.unwrap_or(0))
        })
        .collect::<Result<_, _>>()?;
    let zero_copy_before = zero_copy(&server);
    let remote_before = metric(&server, "spate_partition_reads_total{hop=\"remote\"}");
    let mut consumed = 0;
    let mut rounds: Vec<f64> = Vec::new();
    for _ in 0..CONSUME_RUNS {
        let start = Instant::now();
        consumed = std::thread::scope(|s| -> anyhow::Result<u64> {
            let handles: Vec<_> = ends
                .iter()
                .enumerate()
                .map(|(partition, &end)| {
                    s.spawn(move || consume_connection(addr, &[(partition as u32, end)], p.fetch_bytes))
                })
                .collect();
            let mut total = 0;
            for h in handles {
                total += h.join().map_err(|_| anyhow::anyhow!("consumer panicked"))??;
            }
            Ok(total)
        })?;
        rounds.push(consumed as f64 / start.elapsed().as_secs_f64());
    }
    let zero_copy_bytes = (zero_copy(&server) - zero_copy_before) / CONSUME_RUNS;
    let remote_reads = metric(&server, "spate_partition_reads_total{hop=\"remote\"}") - remote_before;
    // A Kafka consumer reads all its partitions over one connection, so some of them live on
    // another shard than the connection: this row pays those hops.
    progress(&format!(
        "network: catch-up consume over one connection ({CONSUME_RUNS} runs, the median counts)"
    ));
    let all: Vec<(u32, i64)> =
        ends.iter().enumerate().map(|(partition, &end)| (partition as u32, end)).collect();
    let mut one_rounds: Vec<f64> = Vec::new();
    let mut one_bytes = 0;
    let remote_before_one = metric(&server, "spate_partition_reads_total{hop=\"remote\"}");
    for _ in 0..CONSUME_RUNS {
        let start = Instant::now();
        one_bytes = consume_connection(addr, &all, p.fetch_bytes)?;
        one_rounds.push(one_bytes as f64 / start.elapsed().as_secs_f64());
    }
    let one_remote = metric(&server, "spate_partition_reads_total{hop=\"remote\"}") - remote_before_one;
    let consume_after = sendfile_reference("network: loopback sendfile reference (after)")?;
    // The same shape as the one-connection consumer: one stream, one reading thread.
    progress("network: loopback sendfile over one connection");
    let one_stream: Vec<Vec<std::path::PathBuf>> = vec![files.iter().flatten().cloned().collect()];
    let mut one_reference: f64 = 0.0;
    for _ in 0..3 {
        one_reference = one_reference.max(request_response_sendfile(&one_stream, p.fetch_bytes)?);
        let streamed = loopback(1, &|_, s: &mut TcpStream| {
            let mut n = 0;
            for f in &one_stream[0] {
                n += sendfile_all(s, f, p.fetch_bytes)?;
            }
            Ok(n)
        })?;
        one_reference = one_reference.max(streamed);
    }
    server.shutdown();
    engine.shutdown()?;
    let consumed_messages = ends.iter().map(|&e| e as u64).sum();
    let consume_row = Row::named("network consume catch-up")
        .with_throughput(
            consumed_messages,
            consumed,
            consumed as f64 / median(&rounds),
            Some(consume_before.max(consume_after)),
        )
        .extra("reference", "loopback sendfile")
        .extra("best_run_bytes_per_s", rounds.iter().copied().fold(0.0, f64::max))
        .extra("zero_copy_bytes", zero_copy_bytes)
        .extra("remote_partition_reads", remote_reads)
        .extra("runs_bytes_per_s", rounds.iter().map(|r| r.round()).collect::<Vec<_>>());
    let consume_row = consume_row.with_reference_pair(consume_before, consume_after);
    let one_row = Row::named("network consume, one connection")
        .with_throughput(
            consumed_messages,
            one_bytes,
            one_bytes as f64 / median(&one_rounds),
            Some(one_reference),
        )
        .extra("best_run_bytes_per_s", one_rounds.iter().copied().fold(0.0, f64::max))
        .extra("reference", "loopback sendfile over one connection")
        .extra("bytes_read", one_bytes)
        .extra("remote_partition_reads", one_remote);
    Ok(Outcome { rows: vec![produce_row, consume_row, one_row], plots: Vec::new() })
}

/// What the in-flight sweep covers.
#[derive(Debug, Clone)]
pub struct SweepParams {
    /// Bytes produced at each point.
    pub bytes_per_point: u64,
    pub message_bytes: usize,
    /// Batch sizes in bytes (one batch per request); messages per batch follow from them.
    pub batch_bytes: Vec<usize>,
    pub windows: Vec<usize>,
    pub partitions: u32,
    pub durability: Durability,
    /// Runs of every point, in alternating order (fewest in flight first, then most first).
    pub rounds: usize,
    pub backend: BackendChoice,
}

impl SweepParams {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "bytes_per_point": self.bytes_per_point, "message_bytes": self.message_bytes,
            "batch_bytes": self.batch_bytes, "in_flight": self.windows, "partitions": self.partitions,
            "rounds": self.rounds,
            "durability": self.durability.to_string(),
        })
    }
}

/// Network produce as requests in flight rise, at several batch sizes: whole runs against the
/// loopback copy of the same bytes in the same chunks, measured before and after each batch
/// size. A point slower than 90% of the best at fewer requests in flight (same batch size) is
/// marked `falls`: more in flight must never cost throughput.
pub fn sweep(root: &std::path::Path, p: &SweepParams, progress: &dyn Fn(&str)) -> anyhow::Result<Outcome> {
    let (engine, _dir) = workload::engine(root, 2, p.backend)?;
    let server = Server::start(
        &engine,
        ServerConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..ServerConfig::default() },
    )?;
    let addr = server.local_addr();
    let mut rows = Vec::new();
    for &batch_bytes in &p.batch_bytes {
        // As many messages as fit in the size (61 bytes of batch header, about 12 per record).
        let count = (batch_bytes.saturating_sub(61) / (p.message_bytes + 12)).max(1);
        let batch = Bytes::from(workload::batch(p.message_bytes, count));
        let requests = (p.bytes_per_point / batch.len() as u64 / u64::from(p.partitions)).max(1);
        let bytes = requests * u64::from(p.partitions) * batch.len() as u64;
        let label = kib(batch_bytes);
        workload::settle();
        progress(&format!("sweep {label}: loopback copy reference (before)"));
        let before = copy_reference(p.partitions as usize, &batch, requests)?;
        // Every point runs once per round; the order alternates, so that no window always
        // runs first (on a fresh machine state) or last.
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); p.windows.len()];
        for round in 0..p.rounds.max(1) {
            let mut order: Vec<usize> = (0..p.windows.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let window = p.windows[i];
                // A topic per point, deleted after it, so the disk holds one point at a time.
                let topic_config = LogConfig { durability: p.durability, ..LogConfig::default() };
                engine.create_topic(TOPIC, p.partitions, topic_config)?;
                progress(&format!(
                    "sweep {label}: {window} in flight, {} MiB, round {}",
                    bytes >> 20,
                    round + 1
                ));
                runs[i].push(produce_run(addr, p.partitions, &batch, requests, window)?);
                engine.delete_topic(TOPIC)?;
            }
        }
        progress(&format!("sweep {label}: loopback copy reference (after)"));
        let after = copy_reference(p.partitions as usize, &batch, requests)?;
        let rates: Vec<Vec<f64>> =
            runs.iter().map(|r| r.iter().map(|s| bytes as f64 / s).collect()).collect();
        let medians: Vec<f64> = rates.iter().map(|r| median(r)).collect();
        let falls = falling(&medians);
        for (((&window, rate), falls), rates) in p.windows.iter().zip(medians).zip(falls).zip(rates) {
            let name =
                format!("sweep produce {label} × {window} in flight{}", if falls { " (falls)" } else { "" });
            let messages = requests * u64::from(p.partitions) * count as u64;
            // The row's rate is the median run's (the time that gives it).
            let row = Row::named(name)
                .with_throughput(messages, bytes, bytes as f64 / rate, Some(before.max(after)))
                .extra("reference", "loopback TCP copy")
                .extra("batch_bytes", batch.len() as u64)
                .extra("in_flight", window as u64)
                .extra("falls", falls)
                .extra("runs_bytes_per_s", rates);
            rows.push(row.with_reference_pair(before, after));
        }
    }
    server.shutdown();
    engine.shutdown()?;
    Ok(Outcome { rows, plots: Vec::new() })
}

/// For throughputs at rising windows, which fall below 90% of the best at a smaller window.
fn falling(rates: &[f64]) -> Vec<bool> {
    let mut best: f64 = 0.0;
    rates
        .iter()
        .map(|&r| {
            let falls = r < 0.9 * best;
            best = best.max(r);
            falls
        })
        .collect()
}

fn kib(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.0}MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.0}KiB", bytes as f64 / 1024.0)
    }
}

fn zero_copy(server: &Server) -> u64 {
    metric(server, "spate_zero_copy_bytes_total")
}

fn metric(server: &Server, name_and_labels: &str) -> u64 {
    spate::kafka::metrics::sample(&server.metrics_text(), name_and_labels).unwrap_or(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ingest_reference_checks_every_crc_and_stores_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let batch = Bytes::from(workload::batch(1024, 16));
        assert!(ingest_reference(dir.path(), 2, &batch, 50).unwrap() > 0.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "its files are removed");
        let mut bad = batch.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let err = ingest_reference(dir.path(), 1, &Bytes::from(bad), 3).unwrap_err();
        assert!(err.to_string().contains("CRC"), "{err}");
        // Both ways of writing put the bytes where they belong.
        let data: Vec<u8> = (0..10_000).map(|i| (i % 253) as u8).collect();
        for uncached in [false, spate::io::uncached_writes_supported(dir.path()).unwrap()] {
            let path = dir.path().join("w");
            let file = std::fs::File::create(&path).unwrap();
            write_uncached_but_last_page(&file, &data[..5_000], 0, uncached).unwrap();
            write_uncached_but_last_page(&file, &data[5_000..], 5_000, uncached).unwrap();
            assert!(std::fs::read(&path).unwrap() == data, "uncached: {uncached}");
        }
    }

    #[test]
    fn produces_and_consumes_everything_over_the_wire_with_both_references() {
        let root = tempfile::tempdir().unwrap();
        let p = Params {
            total_bytes: 4 << 20,
            message_bytes: 1024,
            batch_messages: 16,
            partitions: 2,
            in_flight: 4,
            fetch_bytes: 1 << 20,
            durability: Durability::Never,
            rounds: 2,
            backend: BackendChoice::Fallback,
        };
        let out = run(root.path(), &p, &|_| {}).unwrap();
        let [produce, consume, one] = &out.rows[..] else { panic!("three rows") };
        let runs = |k: &str| produce.extra.iter().find(|(n, _)| *n == k).unwrap().1.as_array().unwrap().len();
        assert_eq!((runs("runs_bytes_per_s"), runs("reference_runs_bytes_per_s")), (2, 3), "R E R E R");
        let ingest = produce.extra.iter().find(|(n, _)| *n == "ratio_to_ingest").unwrap().1.as_f64().unwrap();
        assert!(ingest > 0.0);
        assert!(one.ratio_to_reference.unwrap() > 0.0);
        let one_read = one.extra.iter().find(|(k, _)| *k == "bytes_read").unwrap().1.as_u64().unwrap();
        assert!(produce.ratio_to_reference.unwrap() > 0.0);
        assert!(consume.ratio_to_reference.unwrap() > 0.0);
        let batch_len = workload::batch(1024, 16).len() as u64;
        let per_partition = (4u64 << 20) / batch_len / 2;
        let stored = per_partition * 2 * batch_len;
        let zero_copy =
            consume.extra.iter().find(|(k, _)| *k == "zero_copy_bytes").unwrap().1.as_u64().unwrap();
        assert_eq!(zero_copy, stored, "every stored byte went out once, with sendfile");
        assert_eq!(
            one_read, stored,
            "one connection reading both partitions (one read ahead) gets every byte"
        );
        // A consuming connection on the wrong shard moves after its first fetch.
        let remote =
            consume.extra.iter().find(|(k, _)| *k == "remote_partition_reads").unwrap().1.as_u64().unwrap();
        assert!(remote <= 2 * CONSUME_RUNS, "{remote} partition reads crossed shards");
    }

    #[test]
    fn the_sweep_runs_every_point_whole_and_marks_what_falls() {
        let root = tempfile::tempdir().unwrap();
        let p = SweepParams {
            bytes_per_point: 2 << 20,
            message_bytes: 1024,
            batch_bytes: vec![16 << 10, 256 << 10],
            windows: vec![1, 4],
            partitions: 2,
            durability: Durability::Never,
            rounds: 2,
            backend: BackendChoice::Fallback,
        };
        let out = sweep(root.path(), &p, &|_| {}).unwrap();
        assert_eq!(out.rows.len(), 4, "one row per batch size and window");
        for row in &out.rows {
            assert!(row.ratio_to_reference.unwrap() > 0.0, "{}", row.name);
            let rate = row.bytes_per_s.unwrap();
            // The row is the median of its rounds.
            let (_, runs) = row.extra.iter().find(|(k, _)| *k == "runs_bytes_per_s").unwrap();
            let runs: Vec<f64> = runs.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(runs.len(), 2, "{}", row.name);
            assert!((rate - median(&runs)).abs() <= 1e-6 * rate, "{}: {rate} against {runs:?}", row.name);
        }
        assert_eq!(falling(&[100.0, 95.0, 80.0, 120.0, 107.0]), vec![false, false, true, false, true]);
    }
}
