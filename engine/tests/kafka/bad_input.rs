//! Malformed, truncated, oversized and unknown frames: an error response or a clean close,
//! never a crash, and other connections carry on.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::server::{kcat, run_kcat, Spate};

/// An ApiVersions v0 request frame (correlation id `id`).
fn api_versions(id: i32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&4i16.to_be_bytes());
    body.extend_from_slice(b"test");
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

/// Sends a request and reads one response frame: (correlation id, body after it).
pub fn round_trip(s: &mut TcpStream, frame: &[u8]) -> std::io::Result<(i32, Vec<u8>)> {
    s.write_all(frame)?;
    let mut size = [0u8; 4];
    s.read_exact(&mut size)?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body)?;
    Ok((i32::from_be_bytes(body[..4].try_into().unwrap()), body[4..].to_vec()))
}

/// Whether the server closed the connection (EOF) within a few seconds.
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn frame(api_key: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut f = ((8 + body.len()) as i32).to_be_bytes().to_vec();
    f.extend_from_slice(&api_key.to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&7i32.to_be_bytes());
    f.extend_from_slice(body);
    f
}

#[test]
fn bad_frames_get_an_error_or_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut spate = Spate::start(&dir.path().join("data"));
    let addr = spate.addr;
    let connect = || TcpStream::connect(addr).unwrap();

    // ApiVersions at a version beyond ours: UNSUPPORTED_VERSION (35) with our ranges, as v0.
    let mut s = connect();
    let mut f = api_versions(41);
    f[6..8].copy_from_slice(&99i16.to_be_bytes());
    let (id, body) = round_trip(&mut s, &f).unwrap();
    assert_eq!(id, 41);
    assert_eq!(i16::from_be_bytes([body[0], body[1]]), 35);
    assert!(i32::from_be_bytes(body[2..6].try_into().unwrap()) >= 18, "the supported APIs are listed");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown API key", frame(999, 0, &[0, 0])),
        ("unsupported Metadata version", frame(3, 99, &[0, 0])),
        ("malformed Metadata body", frame(3, 9, &[0xff; 3])),
        (
            "array count of 2^31 - 1 in a tiny Produce",
            frame(0, 7, &[0, 0, 0, 0, 0, 1, 0, 0, 0x7f, 0xff, 0xff, 0xff]),
        ),
        ("negative frame size", (-5i32).to_be_bytes().to_vec()),
        ("frame shorter than a request prefix", 3i32.to_be_bytes().to_vec()),
        ("Metadata frame over the 1 MiB limit", {
            let mut f = (2i32 << 20).to_be_bytes().to_vec();
            f.extend_from_slice(&[0, 3, 0, 9, 0, 0, 0, 1]);
            f
        }),
        ("Produce frame over the 100 MiB limit", {
            let mut f = (200i32 << 20).to_be_bytes().to_vec();
            f.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 1]);
            f
        }),
    ];
    for (what, bytes) in cases {
        let mut s = connect();
        s.write_all(&bytes).unwrap();
        assert!(closed(&mut s), "{what}: the connection is closed");
    }
    // A frame cut short, then the client goes away.
    let mut s = connect();
    s.write_all(&api_versions(1)[..9]).unwrap();
    drop(s);
    assert!(spate.alive(), "{}", spate.server_log());
    assert!(spate.metric("spate_bad_frames_total") >= 8.0);
    let (id, _) = round_trip(&mut connect(), &api_versions(5)).unwrap();
    assert_eq!(id, 5);
}

#[test]
fn thousands_of_random_frames_leave_the_server_and_other_clients_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut spate = Spate::start(&dir.path().join("data"));
    // A healthy connection opened before the storm, used during and after it.
    let mut healthy = TcpStream::connect(spate.addr).unwrap();
    assert_eq!(round_trip(&mut healthy, &api_versions(1)).unwrap().0, 1);

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5ba7e);
    let mut sent = 0;
    for round in 0..2000 {
        let mut s = TcpStream::connect(spate.addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        for _ in 0..5 {
            let api_key: i16 = if rng.random_bool(0.8) { rng.random_range(0..20) } else { rng.random() };
            let version: i16 = if rng.random_bool(0.8) { rng.random_range(0..14) } else { rng.random() };
            let len = rng.random_range(0..300);
            let mut body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // Sometimes a plausible start: a client id and small counts.
            if rng.random_bool(0.3) && body.len() > 8 {
                body[..4].copy_from_slice(&[0, 2, b'c', b'x']);
            }
            let mut f = frame(api_key, version, &body);
            if rng.random_bool(0.1) {
                // A lying size.
                let lie: i32 = rng.random();
                f[..4].copy_from_slice(&lie.to_be_bytes());
            }
            if s.write_all(&f).is_err() {
                break; // closed on an earlier frame, as it should be
            }
            sent += 1;
        }
        if round % 100 == 0 {
            let answered = round_trip(&mut healthy, &api_versions(round));
            let log = spate.server_log();
            assert_eq!(answered.unwrap_or_else(|e| panic!("{e}; server log:\n{log}")).0, round);
        }
    }
    assert!(sent >= 2000, "{sent} frames sent");
    assert!(spate.alive(), "{}", spate.server_log());
    assert!(!spate.server_log().contains("panicked"), "{}", spate.server_log());
    assert_eq!(round_trip(&mut healthy, &api_versions(999)).unwrap().0, 999);
    if let Some(kcat) = kcat() {
        let b = spate.bootstrap();
        run_kcat(&kcat, &["-b", &b, "-P", "-t", "after-storm"], "still\nworks\n");
        let out = run_kcat(&kcat, &["-b", &b, "-C", "-t", "after-storm", "-o", "beginning", "-e", "-q"], "");
        assert_eq!(out, "still\nworks\n");
    }
}

#[test]
fn clients_announcing_huge_frames_and_sending_nothing_do_not_hold_up_others() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Spate::start(&dir.path().join("data"));
    // Six Produce frames of 100 MiB announced (600 MiB, over the 512 MiB budget), none sent.
    let stalled: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(spate.addr).unwrap();
            let mut f = (100i32 << 20).to_be_bytes().to_vec();
            f.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 1]);
            s.write_all(&f).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut s = TcpStream::connect(spate.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (id, _) = round_trip(&mut s, &api_versions(77)).expect("answered while others stall");
    assert_eq!(id, 77);
    drop(stalled);
}

/// Six clients announce 100 MiB Produce frames and send one byte of each (so their frames take
/// their room in the budget), and a thousand more sit idle: a new client is still answered
/// within a second, and the stalled senders are cut off long before the 30 s frame timeout.
#[test]
fn stalled_large_frames_and_idle_sockets_leave_room_for_a_new_client() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Spate::start(&dir.path().join("data"));
    let mut stalled: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(spate.addr).unwrap();
            let mut f = (100i32 << 20).to_be_bytes().to_vec();
            f.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 1, 0]);
            s.write_all(&f).unwrap();
            s
        })
        .collect();
    let idle: Vec<TcpStream> = (0..1000).map(|_| TcpStream::connect(spate.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(spate.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (id, _) = round_trip(&mut s, &api_versions(78)).expect("answered while others stall");
    assert_eq!(id, 78);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "a new client waited {took:?}");
    // A sender below the minimum rate is closed within seconds.
    let cut = std::time::Instant::now();
    assert!(stalled.iter_mut().all(closed), "every stalled sender was closed");
    assert!(cut.elapsed() < Duration::from_secs(10), "{:?}", cut.elapsed());
    drop(idle);
}

/// A connection that sends nothing for `connections_max_idle_ms` is closed.
#[test]
fn idle_connections_are_closed_after_connections_max_idle() {
    let dir = tempfile::tempdir().unwrap();
    let options = crate::server::Options {
        config: Some("connections_max_idle_ms = 500\n".into()),
        ..Default::default()
    };
    let spate = Spate::start_with(&dir.path().join("data"), options);
    let mut busy = TcpStream::connect(spate.addr).unwrap();
    let mut quiet = TcpStream::connect(spate.addr).unwrap();
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(round_trip(&mut busy, &api_versions(i)).unwrap().0, i, "an active connection stays open");
    }
    assert!(closed(&mut quiet), "the quiet one was closed");
    assert!(spate.metric("spate_connections_idle_closed_total") >= 1.0);
}

#[test]
fn a_topic_of_absurdly_many_partitions_is_refused() {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
    use kafka_protocol::messages::{ApiKey, CreateTopicsResponse, TopicName};
    use kafka_protocol::protocol::{Decodable, StrBytes};

    let dir = tempfile::tempdir().unwrap();
    let mut spate = Spate::start(&dir.path().join("data"));
    let create =
        CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("huge")))
            .with_num_partitions(i32::MAX)
            .with_replication_factor(1)]);
    let mut s = TcpStream::connect(spate.addr).unwrap();
    let (_, body) = round_trip(&mut s, &crate::placement::request(ApiKey::CreateTopics, 4, &create)).unwrap();
    let r = CreateTopicsResponse::decode(&mut bytes::Bytes::from(body), 4).unwrap();
    assert_eq!(r.topics[0].error_code, 37, "INVALID_PARTITIONS");
    assert!(spate.alive());
    assert_eq!(round_trip(&mut s, &api_versions(8)).unwrap().0, 8);
}
