//! A real full disk: a 512 KiB tmpfs mounted for the test. Appends under `always` run until the
//! file system is full; the failing commit must be a typed ENOSPC error, the partition must then
//! refuse writes, nothing acknowledged may be lost, and the directory must reopen cleanly.
//! Needs root (to mount); elsewhere it says so and skips, unless SPATE_REQUIRE_MOUNT is set.

use std::process::Command;
use std::time::{Instant, SystemTime};

use spate::io::{self, BackendChoice};
use spate::log::{commit, LogConfig, LogError, Partition};
use spate::record::{batches, BatchBuilder, BatchOptions, Record};

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &std::path::Path, bytes: u64) -> Option<Mount> {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("SPATE_REQUIRE_MOUNT").is_some() {
        panic!("SPATE_REQUIRE_MOUNT is set but mounting a tmpfs failed");
    }
    ok.then(|| Mount(dir.to_path_buf()))
}

fn batch(i: usize) -> (Vec<u8>, Vec<u8>) {
    let value: Vec<u8> = format!("record-{i:06}-").bytes().chain((0..1000).map(|j| (i + j) as u8)).collect();
    let mut b = BatchBuilder::new(BatchOptions::default());
    b.push(&Record { timestamp: 1, key: None, value: Some(&value), headers: &[] });
    (b.finish(), value)
}

#[test]
fn filling_the_disk_gives_enospc_and_keeps_every_acknowledged_record() {
    for choice in [BackendChoice::Fallback, BackendChoice::Auto] {
        let scratch = tempfile::tempdir().unwrap();
        let Some(_mount) = mount_tmpfs(scratch.path(), 512 * 1024) else {
            eprintln!("skipped: cannot mount a tmpfs here (not root?)");
            return;
        };
        let dir = scratch.path().join("p");
        let mut io = io::open(choice).unwrap();
        let config = LogConfig { segment_bytes: 128 * 1024, ..LogConfig::default() };
        let mut p = Partition::open(&dir, config.clone(), &mut *io).unwrap();
        let mut acked = Vec::new();
        let err = loop {
            let (bytes, value) = batch(acked.len());
            if let Err(e) = p.append(&mut *io, bytes, SystemTime::now()) {
                break e;
            }
            match commit(&mut *io, &mut [&mut p], Instant::now()) {
                Ok(_) => acked.push(value),
                Err(e) => break e,
            }
            assert!(acked.len() < 10_000, "a 512 KiB file system must fill up");
        };
        let enospc = match &err {
            LogError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            LogError::Fs { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        };
        assert!(enospc, "{choice}: expected ENOSPC, got {err}");
        assert!(acked.len() > 100, "{choice}: {} acknowledged before the disk filled", acked.len());
        let (more, _) = batch(0);
        let refused = p.append(&mut *io, more, SystemTime::now());
        if matches!(err, LogError::Io { .. }) {
            assert!(matches!(refused, Err(LogError::Failed { .. })), "{choice}: {refused:?}");
        }
        drop(p);
        // Reopen on the still-full file system: recovery keeps every acknowledged record.
        let p = Partition::open(&dir, config, &mut *io).unwrap();
        let mut values = Vec::new();
        let mut offset = p.log_start_offset();
        loop {
            let slice = p.read(offset, 1 << 20).unwrap();
            if slice.len == 0 {
                break;
            }
            let mut buf = Vec::new();
            slice.read_into(&mut buf).unwrap();
            for b in batches(&buf) {
                for r in b.unwrap().records() {
                    values.push(r.unwrap().value.unwrap().to_vec());
                }
            }
            offset = slice.next_offset;
        }
        assert!(values.len() >= acked.len(), "{choice}: lost acknowledged records");
        assert_eq!(&values[..acked.len()], &acked[..], "{choice}");
        eprintln!("{choice}: {} records acknowledged before ENOSPC ({err}); all recovered", acked.len());
    }
}

#[test]
fn every_producer_gets_an_answer_when_the_disk_fills_during_a_roll() {
    use spate::{Backpressure, Engine, EngineConfig};
    use std::io::Write as _;
    for attempt in 0..5 {
        let scratch = tempfile::tempdir().unwrap();
        let Some(_mount) = mount_tmpfs(scratch.path(), 256 * 1024) else {
            eprintln!("skipped: cannot mount a tmpfs here (not root?)");
            return;
        };
        let config = LogConfig { segment_bytes: 1024, ..LogConfig::default() };
        let engine_config =
            EngineConfig { shards: 1, io_backend: BackendChoice::Fallback, ..EngineConfig::default() };
        let engine = Engine::open(scratch.path().join("engine"), engine_config).unwrap();
        engine.create_topic("full", 1, config).unwrap();
        engine.produce_batch("full", 0, batch(0).0, &Backpressure::Buffer).unwrap();
        // Fill the file system, so that the next roll's index files (or the writes) fail.
        let mut ballast = std::fs::File::create(scratch.path().join("ballast")).unwrap();
        while ballast.write_all(&[0u8; 4096]).is_ok() {}
        let (tx, rx) = std::sync::mpsc::channel();
        let producers: Vec<_> = (0..32)
            .map(|i| {
                let engine = engine.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ =
                        tx.send(engine.produce_batch("full", 0, batch(i).0, &Backpressure::Buffer).is_ok());
                })
            })
            .collect();
        drop(tx);
        let mut answered = 0;
        while rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok() {
            answered += 1;
        }
        assert_eq!(answered, 32, "attempt {attempt}: {} producers never got an answer", 32 - answered);
        for p in producers {
            p.join().unwrap();
        }
        let _ = engine.shutdown();
    }
}

/// The engine on a file system that fills up: produces staged before a failed segment roll,
/// and produces parked by `Block` backpressure, all get an answer (an error), none waits forever.
fn record(v: &[u8]) -> [spate::record::Record<'_>; 1] {
    [spate::record::Record { timestamp: 1, key: None, value: Some(v), headers: &[] }]
}

#[test]
fn the_engine_answers_every_waiting_produce_when_the_disk_fills() {
    use spate::{Backpressure, Engine, EngineConfig, EngineError, Target};
    use std::io::Write as _;
    use std::sync::Arc;
    use std::time::Duration;
    let scratch = tempfile::tempdir().unwrap();
    let Some(_mount) = mount_tmpfs(scratch.path(), 256 * 1024) else {
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    };
    let config = EngineConfig { shards: 1, io_backend: BackendChoice::Fallback, ..EngineConfig::default() };
    let engine = Engine::open(scratch.path().join("engine"), config).unwrap();
    let small = LogConfig { segment_bytes: 1024, ..LogConfig::default() };
    engine.create_topic("t", 1, small.clone()).unwrap();
    engine.create_topic("blocked", 1, small).unwrap();
    let value = [7u8; 200];
    // One produce parks behind a consumer that never commits.
    let block =
        engine.producer("blocked", Backpressure::Block { consumer: Arc::from("never"), max_lag: 1 }).unwrap();
    block.send(Target::Partition(0), &record(&value)).unwrap();
    let parked = {
        let block = block.clone();
        std::thread::spawn(move || block.send(Target::Partition(0), &record(&[1u8; 200])))
    };
    // Fill the file system.
    let mut ballast = std::fs::File::create(scratch.path().join("ballast")).unwrap();
    while ballast.write_all(&[0u8; 4096]).is_ok() {}
    // Produces to "t" until its partition fails (a roll cannot write its index files); each must
    // come back, and concurrent ones too.
    let (tx, rx) = std::sync::mpsc::channel();
    let producers: Vec<_> = (0..8)
        .map(|_| {
            let (engine, tx) = (engine.clone(), tx.clone());
            std::thread::spawn(move || {
                let value = [9u8; 200];
                for _ in 0..20 {
                    let r = engine.produce("t", Target::Partition(0), &record(&value));
                    let failed = r.is_err();
                    tx.send(r.map(|_| ())).unwrap();
                    if failed {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut errors = 0;
    while let Ok(r) = rx.recv_timeout(Duration::from_secs(10)) {
        errors += usize::from(r.is_err());
    }
    for p in producers {
        p.join().expect("every producer finished");
    }
    assert!(errors > 0, "a 256 KiB file system must fill up");
    // The parked produce on the other partition is answered once that partition fails too, or
    // at shutdown; it never hangs.
    drop(block);
    engine.shutdown().unwrap_or_else(|e| eprintln!("shutdown reported: {e}"));
    let outcome = parked.join().unwrap();
    assert!(matches!(outcome, Err(EngineError::ShuttingDown) | Err(EngineError::Log(_))), "{outcome:?}");
}
