//! SIGKILL of the real server under a real idempotent producer.

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::server::{python, run_python, Options, Spate};

/// 25 rounds: an idempotent confluent-kafka producer (acks=all) sends 300 keyed records to a
/// four-partition topic while the server is SIGKILLed at a random moment and restarted on the
/// same address; the producer retries through the restart. Afterwards every acknowledged
/// record is in the log exactly once, at the offset it was acknowledged with, and no record
/// appears twice. The seed is printed (`SPATE_CRASH_SEED` replays one).
#[test]
fn sigkill_under_an_idempotent_producer_loses_and_duplicates_nothing() {
    let Some(python) = python() else { return };
    let seed = crate::server::seed("SPATE_CRASH_SEED");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // Both I/O backends, alternating (io_uring required where CI says so).
    let uring = if std::env::var_os("SPATE_REQUIRE_URING").is_some() { "uring" } else { "auto" };
    let options = |round: usize| Options {
        listen: Some(listen),
        io_backend: Some(if round % 2 == 0 { uring } else { "fallback" }),
        ..Options::default()
    };
    let spate = Spate::start_with(&data, options(0));
    let created = run_python(&python, "confluent_admin.py", &["create", &listen.to_string(), "crashes", "4"]);
    assert_eq!(created["error"], serde_json::Value::Null, "{created}");
    let mut spate = Some(spate);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kafka/python/confluent_crash_producer.py");
    let mut acked: Vec<(String, i64, i64)> = Vec::new();
    let per_round = 300;
    for round in 0..25usize {
        let mut producer = Command::new(&python)
            .arg(&script)
            .args([&listen.to_string(), "crashes", &(round * per_round).to_string(), &per_round.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(producer.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert_eq!(line.trim(), "started", "seed {seed} round {round}");
        // The producer sends for about 600 ms: the kill lands while records are in flight.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..600)));
        spate.take().unwrap().kill();
        spate = Some(Spate::start_with(&data, options(round + 1)));
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        producer.wait().unwrap();
        let r: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: producer printed {text:?}: {e}"));
        for a in r["acked"].as_array().unwrap() {
            acked.push((a[0].as_str().unwrap().to_string(), a[1].as_i64().unwrap(), a[2].as_i64().unwrap()));
        }
    }
    // Everything in the log, partition by partition.
    let read =
        run_python(&python, "confluent_segments.py", &["consume-all", &listen.to_string(), "crashes", "4"]);
    let mut at: HashMap<(i64, i64), String> = HashMap::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in read["records"].as_array().unwrap() {
        let (p, o, v) = (r[0].as_i64().unwrap(), r[1].as_i64().unwrap(), r[2].as_str().unwrap().to_string());
        *seen.entry(v.clone()).or_default() += 1;
        at.insert((p, o), v);
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(duplicated.is_empty(), "seed {seed}: records written twice: {duplicated:?}");
    let lost: Vec<_> = acked.iter().filter(|(v, p, o)| at.get(&(*p, *o)) != Some(v)).collect();
    assert!(
        lost.is_empty(),
        "seed {seed}: {} of {} acknowledged records lost or moved: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(acked.len() > 25 * per_round / 2, "seed {seed}: only {} acknowledged", acked.len());
    eprintln!(
        "seed {seed}: {} acknowledged over 25 kills, {} stored, none lost or duplicated",
        acked.len(),
        seen.len()
    );
}
