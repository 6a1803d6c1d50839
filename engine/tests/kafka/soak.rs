//! A soak: mixed clients killed at random and the server SIGKILLed several times, for about
//! forty seconds, with the server's memory and descriptors watched throughout.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::server::{python, run_python, Options, Spate};

/// Resident memory (bytes) and open descriptors of a process.
fn usage(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 =
        status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss_kb * 1024, fds))
}

/// Bounds stated for this workload (a few clients, a handful of topics): the server's resident
/// memory stays under 256 MiB and its descriptors under 256 (measured: about 14 MiB and 56).
const RSS_MAX: u64 = 256 << 20;
const FDS_MAX: usize = 256;

/// Two idempotent producers, two group members and a topic administrator run against the
/// server; every few seconds one of them is SIGKILLed and replaced, and three times the server
/// is SIGKILLed and restarted on the same address. Every value a producer saw acknowledged is
/// in the topic afterwards, none twice; the server never passes the bounds above.
#[test]
fn a_soak_of_mixed_clients_and_server_kills_loses_nothing_and_stays_bounded() {
    let Some(python) = python() else { return };
    let seed = crate::server::seed("SPATE_SOAK_SEED");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let bootstrap = listen.to_string();
    let options = || Options { listen: Some(listen), ..Options::default() };
    let mut spate = Spate::start_with(&data, options());
    let created = run_python(&python, "confluent_admin.py", &["create", &bootstrap, "soak", "4"]);
    assert_eq!(created["error"], serde_json::Value::Null, "{created}");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/python/confluent_soak.py");
    let acks = dir.path().join("acks");
    let mut incarnation = 0;
    let mut spawn = |role: &str| -> Child {
        incarnation += 1;
        Command::new(&python)
            .arg(&script)
            .args([role, &bootstrap, &format!("{role}{incarnation}"), acks.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let roles = ["produce", "produce", "consume", "consume", "admin"];
    let mut clients: Vec<(usize, Child)> = roles.iter().enumerate().map(|(i, r)| (i, spawn(r))).collect();
    let started = Instant::now();
    let mut peak = (0u64, 0usize);
    let mut server_kills = 0;
    let mut client_kills = 0;
    while started.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_millis(rng.random_range(500..1500)));
        if let Some((rss, fds)) = usage(spate.pid()) {
            peak = (peak.0.max(rss), peak.1.max(fds));
            assert!(rss < RSS_MAX, "seed {seed}: server RSS {rss} bytes");
            assert!(fds < FDS_MAX, "seed {seed}: server holds {fds} descriptors");
        }
        if server_kills < 3 && started.elapsed() > Duration::from_secs(8 + 10 * server_kills) {
            spate.kill();
            spate = Spate::start_with(&data, options());
            server_kills += 1;
        } else {
            let i = rng.random_range(0..clients.len());
            let (role, child) = &mut clients[i];
            child.kill().unwrap();
            child.wait().unwrap();
            clients[i] = (*role, spawn(roles[*role]));
            client_kills += 1;
        }
    }
    for (_, mut c) in clients {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(spate.alive(), "seed {seed}: the server died:\n{}", spate.server_log());
    let acked: Vec<String> =
        std::fs::read_to_string(&acks).unwrap_or_default().lines().map(str::to_string).collect();
    let read = run_python(&python, "confluent_segments.py", &["consume-all", &bootstrap, "soak", "4"]);
    let mut stored = HashSet::new();
    for r in read["records"].as_array().unwrap() {
        let v = r[2].as_str().unwrap().to_string();
        assert!(stored.insert(v.clone()), "seed {seed}: {v} stored twice");
    }
    let lost: Vec<&String> = acked.iter().filter(|v| !stored.contains(*v)).collect();
    assert!(
        lost.is_empty(),
        "seed {seed}: {} of {} acknowledged values lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(acked.len() > 1000, "seed {seed}: only {} acknowledged", acked.len());
    eprintln!(
        "seed {seed}: {} acknowledged, {} stored, {server_kills} server kills, {client_kills} client kills, peak RSS {} MiB, peak {} descriptors",
        acked.len(),
        stored.len(),
        peak.0 >> 20,
        peak.1
    );
}
