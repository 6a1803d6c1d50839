//! `kafka-load`: an open-loop Kafka-protocol load against any single broker (`--bootstrap
//! HOST:PORT`; by default a Spate listener started in this process), so that the same workload
//! can be run against Kafka or Redpanda on one's own hardware.
//!
//! A fresh topic of `partitions` partitions is created with CreateTopics. Message `i` is due at
//! `start + i / rate` and carries its due time; the producer sends, at each wake-up, every
//! message due by then as one batch per request (round robin over the partitions, acks -1),
//! keeping at most `in_flight` requests unanswered (five by default, as Kafka clients do)
//! while a reader thread takes the answers. One consumer connection fetches every partition
//! from offset 0 (long polls of 100 ms). Latency runs from each message's due time to the
//! moment the consumer decodes it, so a stall anywhere counts for every message it delays.
//!
//! The reader thread also records each produce request's acknowledgement, from the due time of
//! its first message. Durability is the broker's default unless `--topic-config` says
//! otherwise (Spate's default is `always`, an fdatasync before each acknowledgement; Kafka's
//! leaves flushing to the OS): pass `spate.durability=never` or Kafka's `flush.messages=1` to
//! compare at equal durability.
//!
//! Limits: every partition must be led by the bootstrap broker (a single-node cluster); topics
//! are created with replication factor 1 and left behind on an external broker.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::{ApiKey, CreateTopicsResponse, FetchResponse, ProduceResponse, TopicName};
use kafka_protocol::protocol::{Decodable, StrBytes};
use serde_json::json;
use spate::io::BackendChoice;

use crate::kafka_wire::{
    encode_request, fetch_request, produce_request, read_frame, FETCH_VERSION, PRODUCE_VERSION,
};
use crate::report::{LatencyPlot, Outcome, Row};
use crate::workload::{self, Schedule};

#[derive(Debug, Clone)]
pub struct Params {
    /// The broker to load; `None`: a Spate listener in this process.
    pub bootstrap: Option<String>,
    pub partitions: u32,
    pub rate: f64,
    pub seconds: f64,
    pub message_bytes: usize,
    pub in_flight: usize,
    /// Topic configs for CreateTopics (`spate.durability=never`, or Kafka's `flush.messages=1`
    /// for an fsync per message); none: the broker's defaults (Spate: `always`).
    pub topic_configs: Vec<(String, String)>,
    pub backend: BackendChoice,
}

impl Params {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "bootstrap": self.bootstrap, "partitions": self.partitions, "rate": self.rate,
            "seconds": self.seconds, "message_bytes": self.message_bytes, "in_flight": self.in_flight,
            "topic_configs": self.topic_configs,
        })
    }
}

const CREATE_TOPICS_VERSION: i16 = 4;
/// CreateTopics' TOPIC_ALREADY_EXISTS.
const TOPIC_EXISTS: i16 = 36;

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn create_topic(
    addr: SocketAddr,
    topic: &'static str,
    partitions: u32,
    configs: &[(String, String)],
) -> anyhow::Result<()> {
    let mut s = connect(addr)?;
    let configs = configs
        .iter()
        .map(|(k, v)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(k.clone()))
                .with_value(Some(StrBytes::from_string(v.clone())))
        })
        .collect();
    let request =
        CreateTopicsRequest::default().with_timeout_ms(30_000).with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(topic)))
            .with_num_partitions(partitions as i32)
            .with_replication_factor(1)
            .with_configs(configs)]);
    s.write_all(&encode_request(ApiKey::CreateTopics, CREATE_TOPICS_VERSION, 1, &request))?;
    let mut body = read_frame(&mut s, &mut BytesMut::new())?.slice(4..);
    let response = CreateTopicsResponse::decode(&mut body, CREATE_TOPICS_VERSION)?;
    for t in &response.topics {
        anyhow::ensure!(
            t.error_code == 0 || t.error_code == TOPIC_EXISTS,
            "CreateTopics {topic}: error code {} ({:?})",
            t.error_code,
            t.error_message
        );
    }
    Ok(())
}

/// One batch of `count` messages, each value carrying `due` (ns since the schedule's start).
fn batch(count: usize, message_bytes: usize, due: u64) -> Bytes {
    let mut value = vec![0u8; message_bytes.max(8)];
    value[..8].copy_from_slice(&due.to_be_bytes());
    Bytes::from(workload::batch_of(&value, count))
}

/// Produces until every partition accepts (a new topic may take a moment to get its leaders).
fn warm_up(addr: SocketAddr, topic: &'static str, partitions: u32) -> anyhow::Result<()> {
    let mut s = connect(addr)?;
    let mut buf = BytesMut::new();
    let give_up = Instant::now() + Duration::from_secs(30);
    for partition in 0..partitions {
        loop {
            let frame = encode_request(
                ApiKey::Produce,
                PRODUCE_VERSION,
                0,
                &produce_request(topic, partition, &batch(1, 8, 0)),
            );
            s.write_all(&frame)?;
            let mut body = read_frame(&mut s, &mut buf)?.slice(4..);
            let response = ProduceResponse::decode(&mut body, PRODUCE_VERSION)?;
            let code = response.responses[0].partition_responses[0].error_code;
            if code == 0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < give_up,
                "partition {partition} of {topic} refuses produces: code {code}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

pub fn run(root: &std::path::Path, p: &Params, progress: &dyn Fn(&str)) -> anyhow::Result<Outcome> {
    // A Spate listener here unless told where to go.
    let mut local = None;
    let addr = match &p.bootstrap {
        Some(b) => b.to_socket_addrs()?.next().ok_or_else(|| anyhow::anyhow!("{b}: no address"))?,
        None => {
            let (engine, dir) = workload::engine(root, 0, p.backend)?;
            let server = spate::kafka::Server::start(
                &engine,
                spate::kafka::ServerConfig {
                    listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                    ..Default::default()
                },
            )?;
            let addr = server.local_addr();
            local = Some((server, engine, dir));
            addr
        }
    };
    let name = format!(
        "spate-load-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis()
    );
    let topic: &'static str = Box::leak(name.into_boxed_str());
    progress(&format!("kafka-load: creating {topic} ({} partitions) on {addr}", p.partitions));
    create_topic(addr, topic, p.partitions, &p.topic_configs)?;
    warm_up(addr, topic, p.partitions)?;
    let total = (p.rate * p.seconds).max(1.0) as u64;
    // Every partition holds its warm-up record at offset 0: the consumer skips it.
    let schedule = Schedule::new(Instant::now() + Duration::from_millis(50), p.rate);
    let seen = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    progress(&format!("kafka-load: {:.0} msgs/s for {:.1} s, open loop", p.rate, p.seconds));
    let histogram = std::thread::scope(
        |s| -> anyhow::Result<(hdrhistogram::Histogram<u64>, hdrhistogram::Histogram<u64>)> {
            let consumer = {
                let seen = Arc::clone(&seen);
                s.spawn(move || consume(addr, topic, p, total, schedule, &seen))
            };
            let mut producer = connect(addr)?;
            let mut responses = producer.try_clone()?;
            // The due time of each request's first message, in request order (answers come in
            // that order on a connection).
            let (dues_tx, dues_rx) = crossbeam::channel::unbounded::<u64>();
            let reader = {
                let (answered, errors) = (Arc::clone(&answered), Arc::clone(&errors));
                s.spawn(move || -> anyhow::Result<hdrhistogram::Histogram<u64>> {
                    let mut buf = BytesMut::new();
                    let mut acks = workload::histogram();
                    loop {
                        let frame = match read_frame(&mut responses, &mut buf) {
                            Ok(f) => f,
                            Err(_) => return Ok(acks), // the producer closed its side
                        };
                        let mut body = frame.slice(4..);
                        let response = ProduceResponse::decode(&mut body, PRODUCE_VERSION)?;
                        if response.responses[0].partition_responses[0].error_code != 0 {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Ok(due) = dues_rx.try_recv() {
                            acks.saturating_record(schedule.latency_us(due).max(1));
                        }
                        answered.fetch_add(1, Ordering::Release);
                    }
                })
            };
            let (mut next, mut requests, mut partition) = (0u64, 0u64, 0u32);
            while next < total {
                let due = schedule.wait_for(next);
                // Everything due by now goes in this request.
                let now = schedule.start.elapsed().as_nanos() as u64;
                let mut count = 1u64;
                while next + count < total && schedule.due_ns(next + count) <= now && count < 10_000 {
                    count += 1;
                }
                while requests - answered.load(Ordering::Acquire) >= p.in_flight as u64 {
                    std::thread::yield_now();
                }
                let b = batch(count as usize, p.message_bytes, due);
                let _ = dues_tx.send(due);
                producer.write_all(&encode_request(
                    ApiKey::Produce,
                    PRODUCE_VERSION,
                    0,
                    &produce_request(topic, partition, &b),
                ))?;
                requests += 1;
                partition = (partition + 1) % p.partitions;
                next += count;
            }
            let h = consumer.join().map_err(|_| anyhow::anyhow!("consumer panicked"))??;
            producer.shutdown(std::net::Shutdown::Both)?;
            let acks = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
            Ok((h, acks))
        },
    )?;
    let (histogram, acks) = histogram;
    let seen = seen.load(Ordering::Acquire);
    let mut row = Row::named(format!("kafka-load {:.0}/s produce→consume", p.rate)).with_latency(&histogram);
    row.msgs_per_s = Some(seen as f64 / p.seconds);
    row.lost = Some(total.saturating_sub(seen));
    let row = row
        .extra("target_msgs_per_s", p.rate)
        .extra("produce_errors", errors.load(Ordering::Relaxed))
        .extra("broker", p.bootstrap.clone().unwrap_or_else(|| "spate (in process)".into()));
    if let Some((server, engine, _dir)) = local {
        server.shutdown();
        engine.shutdown()?;
    }
    let ack_row =
        Row::named(format!("  produce acknowledgements ({} requests)", acks.len())).with_latency(&acks);
    Ok(Outcome {
        rows: vec![row, ack_row],
        plots: vec![LatencyPlot {
            name: "kafka-load".into(),
            title: format!("Kafka-protocol load, produce to consume, {:.0} msgs/s, open loop", p.rate),
            series: vec![(format!("{:.0}/s", p.rate), histogram)],
        }],
    })
}

/// Fetches every partition from offset 1 (after the warm-up record) until `total` messages
/// arrived or 10 s passed after the last was due; records each one's latency.
fn consume(
    addr: SocketAddr,
    topic: &'static str,
    p: &Params,
    total: u64,
    schedule: Schedule,
    seen: &AtomicU64,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let mut s = connect(addr)?;
    let mut buf = BytesMut::new();
    let mut offsets = vec![1i64; p.partitions as usize];
    let mut h = workload::histogram();
    let give_up = schedule.start + Duration::from_secs_f64(p.seconds) + Duration::from_secs(10);
    while seen.load(Ordering::Acquire) < total && Instant::now() < give_up {
        let wanted: Vec<(u32, i64)> = offsets.iter().enumerate().map(|(i, &o)| (i as u32, o)).collect();
        let request = fetch_request(topic, &wanted, 1 << 20, 100);
        s.write_all(&encode_request(ApiKey::Fetch, FETCH_VERSION, 0, &request))?;
        let mut body = read_frame(&mut s, &mut buf)?.slice(4..);
        let response = FetchResponse::decode(&mut body, FETCH_VERSION)?;
        for part in response.responses.iter().flat_map(|t| t.partitions.iter()) {
            anyhow::ensure!(part.error_code == 0, "fetch failed with error code {}", part.error_code);
            let Some(records) = part.records.as_ref() else { continue };
            let i = usize::try_from(part.partition_index)?;
            for b in spate::record::batches(records) {
                let Ok(b) = b else { break }; // a partial batch at the end of the response
                let mut last = None;
                for r in b.records() {
                    let r = r.map_err(spate::log::LogError::from)?;
                    if r.offset < offsets[i] {
                        continue;
                    }
                    h.saturating_record(schedule.latency_us(workload::due_ns(r.value)).max(1));
                    seen.fetch_add(1, Ordering::AcqRel);
                    last = Some(r.offset);
                }
                if let Some(o) = last {
                    offsets[i] = o + 1;
                }
            }
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_loop_against_a_spate_listener_delivers_every_message() {
        let root = tempfile::tempdir().unwrap();
        let p = Params {
            bootstrap: None,
            partitions: 2,
            rate: 2_000.0,
            seconds: 1.0,
            message_bytes: 100,
            in_flight: 5,
            topic_configs: vec![("spate.durability".into(), "never".into())],
            backend: BackendChoice::Fallback,
        };
        let out = run(root.path(), &p, &|_| {}).unwrap();
        let row = &out.rows[0];
        assert_eq!(row.lost, Some(0), "{row:?}");
        assert!(out.rows[1].name.contains("acknowledgements") && out.rows[1].p50_us.is_some());
        assert!(row.p50_us.unwrap() >= 1.0 && row.p99_us.unwrap() >= row.p50_us.unwrap());
        assert_eq!(row.extra.iter().find(|(k, _)| *k == "produce_errors").unwrap().1.as_u64(), Some(0));
    }
}
