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
    use spate::log::Appender;
    use std::io::Write as _;
    for attempt in 0..5 {
        let scratch = tempfile::tempdir().unwrap();
        let Some(_mount) = mount_tmpfs(scratch.path(), 64 * 1024) else {
            eprintln!("skipped: cannot mount a tmpfs here (not root?)");
            return;
        };
        let config = LogConfig { segment_bytes: 1024, ..LogConfig::default() };
        let (app, writer) =
            Appender::spawn(&scratch.path().join("p"), config, BackendChoice::Fallback).unwrap();
        app.append(batch(0).0).unwrap();
        // Fill the file system, so that the next roll's index files (or the writes) fail.
        let mut ballast = std::fs::File::create(scratch.path().join("ballast")).unwrap();
        while ballast.write_all(&[0u8; 4096]).is_ok() {}
        let (tx, rx) = std::sync::mpsc::channel();
        let producers: Vec<_> = (0..32)
            .map(|i| {
                let app = app.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ = tx.send(app.append(batch(i).0).is_ok());
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
        drop(app);
        let _ = writer.join();
    }
}
