//! What one client (or many) may take from the server: descriptors, partitions, connections.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::bad_input::round_trip;
use crate::server::{kcat, python, run_kcat, run_python, Options, Spate};

/// An ApiVersions v0 request frame.
fn api_versions() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&2i16.to_be_bytes());
    body.extend_from_slice(b"fd");
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

/// Under an open-file limit of 400: topics that would need more descriptors than are left are
/// refused with POLICY_VIOLATION, connections beyond the limit are closed at once, and once
/// they go the server serves a new client again. It never runs out of descriptors mid-write.
#[test]
fn the_open_file_limit_refuses_partitions_and_connections_before_it_is_reached() {
    let (Some(python), Some(kcat)) = (python(), kcat()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let spate =
        Spate::start_with(&dir.path().join("data"), Options { open_files: Some(400), ..Options::default() });
    let b = spate.bootstrap();
    let refused = run_python(&python, "confluent_admin.py", &["create", &b, "too-wide", "500"]);
    assert_eq!(refused["error"], "POLICY_VIOLATION", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("open-file limit"), "{refused}");
    let fits = run_python(&python, "confluent_admin.py", &["create", &b, "fits", "20"]);
    assert_eq!(fits["error"], serde_json::Value::Null, "{fits}");

    // Four hundred connections: the ones past the limit are closed without an answer.
    let mut open = Vec::new();
    let mut answered = 0;
    let mut closed = 0;
    for _ in 0..400 {
        let Ok(mut s) = TcpStream::connect(spate.addr) else { break };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        match round_trip(&mut s, &api_versions()) {
            Ok(_) => answered += 1,
            Err(_) => closed += 1,
        }
        open.push(s);
    }
    assert!(answered > 100, "{answered} answered, {closed} closed");
    assert!(closed > 0, "{answered} answered, {closed} closed");
    assert!(spate.metric("spate_connections_refused_total") >= closed as f64);
    drop(open);
    // Back under the limit: a new client is served within a second or two, and data flows.
    let started = Instant::now();
    loop {
        let mut s = TcpStream::connect(spate.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if round_trip(&mut s, &api_versions()).is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "not served again after the connections closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    run_kcat(&kcat, &["-b", &b, "-P", "-t", "fits", "-p", "0"], "after\n");
    let out = run_kcat(&kcat, &["-b", &b, "-C", "-t", "fits", "-p", "0", "-o", "beginning", "-e", "-q"], "");
    assert_eq!(out, "after\n");
    let log = spate.server_log();
    assert!(log.contains("out of file descriptors; refusing connections"), "{log}");
    assert!(!log.contains("partition failed"), "{log}");
}

/// OffsetCommit metadata is kept with the offset and returned by OffsetFetch.
#[test]
fn committed_metadata_round_trips_through_a_real_client() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spate = Spate::start(&dir.path().join("data"));
    let r = run_python(
        &python,
        "confluent_admin.py",
        &["commit-metadata", &spate.bootstrap(), "meta", "job state 3"],
    );
    assert_eq!((r["offset"].as_i64(), r["metadata"].as_str()), (Some(3), Some("job state 3")), "{r}");
}
