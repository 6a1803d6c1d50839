//! Real crash test: a child process embedding the engine and appending with durability `always`
//! from four threads is killed with SIGKILL at random moments; after every kill the partition is
//! reopened and must hold every acknowledged batch, byte for byte, at the offset it was
//! acknowledged with, in order; and the next child must be able to append again. (The same
//! against `spate serve` and a real Kafka client: `engine/tests/kafka/crash.rs`.)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::Rng;
use spate::io::fallback::FallbackIo;
use spate::log::{LogConfig, Partition};
use spate::record::batches;
use spate_tests::crash_record_value;

const ROUNDS: u32 = 24;
const THREADS: u32 = 4;

/// Every record of the partition: offset → value.
fn read_back(dir: &std::path::Path) -> BTreeMap<i64, Vec<u8>> {
    let mut io = FallbackIo::new();
    let config = LogConfig { segment_bytes: 64 * 1024, batch_bytes_max: 16 * 1024, ..LogConfig::default() };
    let p = Partition::open(&dir.join("data/crash-0"), config, &mut io).expect("reopen after kill");
    let mut out = BTreeMap::new();
    let mut offset = p.log_start_offset();
    loop {
        let slice = p.read(offset, 1 << 20).expect("read");
        if slice.len == 0 {
            return out;
        }
        let mut bytes = Vec::new();
        slice.read_into(&mut bytes).expect("read bytes");
        for b in batches(&bytes) {
            for r in b.expect("valid batch").records() {
                let r = r.expect("valid record");
                out.insert(r.offset, r.value.expect("value").to_vec());
            }
        }
        offset = slice.next_offset;
    }
}

#[test]
fn sigkill_during_durable_appends_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_spate-crash-writer");
    let mut rng = rand::rng();
    // offset → (round, thread, seq, index) of every acknowledged record, over all rounds.
    let mut acked: BTreeMap<i64, (u32, u32, u64, u32)> = BTreeMap::new();
    for round in 0..ROUNDS {
        // Alternate backends; `auto` may fall back where io_uring is blocked, unless CI requires it.
        let uring = if std::env::var_os("SPATE_REQUIRE_URING").is_some() { "uring" } else { "auto" };
        let backend = if round % 2 == 0 { uring } else { "fallback" };
        let mut child = Command::new(exe)
            .args([dir.path().to_str().unwrap(), backend, &round.to_string(), &THREADS.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).expect("child ready"), "ready", "round {round}");
        // Wait for the first acknowledgement, so every round proves that appends work after a
        // restart, then let it run for a random time and kill it mid-flight.
        let first = rx.recv_timeout(Duration::from_secs(30)).expect("first ack");
        std::thread::sleep(Duration::from_millis(rng.random_range(1..150)));
        child.kill().expect("SIGKILL");
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed by a signal");
        reader.join().unwrap();
        let lines: Vec<String> = std::iter::once(first).chain(rx.try_iter()).collect();
        let mut this_round = 0;
        for line in &lines {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f[0], "ack", "unexpected output {line:?}");
            let (base, r, t, seq, n): (i64, u32, u32, u64, u32) = (
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
                f[5].parse().unwrap(),
            );
            for i in 0..n {
                let prev = acked.insert(base + i64::from(i), (r, t, seq, i));
                assert!(prev.is_none(), "offset {} acknowledged twice", base + i64::from(i));
            }
            this_round += 1;
        }
        let log = read_back(dir.path());
        // Contiguous offsets from 0: a prefix, no holes.
        assert_eq!(
            log.keys().copied().collect::<Vec<_>>(),
            (0..log.len() as i64).collect::<Vec<_>>(),
            "round {round}"
        );
        // Every acknowledged record, byte-identical, at its acknowledged offset.
        for (offset, &(r, t, seq, i)) in &acked {
            let got =
                log.get(offset).unwrap_or_else(|| panic!("round {round}: acknowledged offset {offset} lost"));
            assert_eq!(got, &crash_record_value(r, t, seq, i), "round {round}: offset {offset} differs");
        }
        // In order: each producer's batches appear in the order it sent them.
        let mut last: BTreeMap<(u32, u32), (u64, u32)> = BTreeMap::new();
        for value in log.values() {
            let head: Vec<u64> =
                String::from_utf8_lossy(value).split('/').take(4).map(|s| s.parse().unwrap()).collect();
            let key = (head[0] as u32, head[1] as u32);
            let pos = (head[2], head[3] as u32);
            if let Some(prev) = last.insert(key, pos) {
                assert!(pos > prev, "round {round}: producer {key:?} out of order: {prev:?} then {pos:?}");
            }
        }
        eprintln!(
            "round {round} ({backend}): {this_round} batches acknowledged, log holds {} records",
            log.len()
        );
    }
    assert!(acked.len() >= ROUNDS as usize);
}
