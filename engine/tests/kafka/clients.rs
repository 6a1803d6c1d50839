//! Real clients against a real server process.

use std::collections::BTreeSet;

use crate::server::{kcat, python, run_kcat, run_python, Spate};

#[test]
fn kcat_produces_and_consumes_keyed_messages_and_sees_the_topic_in_metadata() {
    let Some(kcat) = kcat() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spate = Spate::start(&dir.path().join("data"));
    let b = spate.bootstrap();
    let input: String = (0..300).map(|i| format!("key{}:value-{i}\n", i % 5)).collect();
    run_kcat(&kcat, &["-b", &b, "-P", "-t", "kcat-rt", "-K:"], &input);
    let out = run_kcat(
        &kcat,
        &["-b", &b, "-C", "-t", "kcat-rt", "-o", "beginning", "-e", "-q", "-f", "%k:%s\n"],
        "",
    );
    assert_eq!(out, input, "every message, in order (one partition), with its key");
    let listing = run_kcat(&kcat, &["-b", &b, "-L", "-t", "kcat-rt"], "");
    assert!(listing.contains("topic \"kcat-rt\" with 1 partitions"), "{listing}");
    // Reading from an offset in the middle and from the end.
    let tail =
        run_kcat(&kcat, &["-b", &b, "-C", "-t", "kcat-rt", "-o", "295", "-e", "-q", "-f", "%o %s\n"], "");
    assert_eq!(
        tail.lines().collect::<Vec<_>>(),
        (295..300).map(|i| format!("{i} value-{i}")).collect::<Vec<_>>()
    );
}

#[test]
fn batches_compressed_by_clients_are_stored_and_served_back() {
    let (Some(kcat), Some(python)) = (kcat(), python()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let spate = Spate::start(&dir.path().join("data"));
    let b = spate.bootstrap();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("kcat-{codec}");
        let input: String =
            (0..2000).map(|i| format!("{codec} record {i} {}\n", "x".repeat(i % 50))).collect();
        run_kcat(&kcat, &["-b", &b, "-P", "-t", &topic, "-z", codec], &input);
        let out = run_kcat(&kcat, &["-b", &b, "-C", "-t", &topic, "-o", "beginning", "-e", "-q"], "");
        assert_eq!(out, input, "kcat with {codec}");
        let r =
            run_python(&python, "confluent_idempotent.py", &[&b, &format!("rdkafka-{codec}"), "3000", codec]);
        assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{codec}: {r}");
        assert_eq!(
            (r["read"].as_u64(), r["distinct"].as_u64(), r["missing"].as_u64()),
            (Some(3000), Some(3000), Some(0)),
            "{codec}: {r}"
        );
    }
}

#[test]
fn librdkafka_with_acks_all_and_idempotence_writes_each_message_once_in_order() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spate = Spate::start(&dir.path().join("data"));
    let r =
        run_python(&python, "confluent_idempotent.py", &[&spate.bootstrap(), "idempotent", "20000", "none"]);
    assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["unflushed"], 0, "{r}");
    assert_eq!(r["acked"], 20000, "{r}");
    assert_eq!(r["acked_distinct"], 20000, "every acknowledgement a distinct offset: {r}");
    assert_eq!((r["read"].as_u64(), r["distinct"].as_u64()), (Some(20000), Some(20000)), "{r}");
    assert_eq!(r["order_breaks"], 0, "{r}");
    let end: f64 =
        spate.metric("spate_appends_total{shard=\"0\"}") + spate.metric("spate_appends_total{shard=\"1\"}");
    assert!(end > 0.0, "appends are counted per shard");
}

fn group_rebalances_when_one_of_three_leaves(strategy: &str) {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spate = Spate::start(&dir.path().join("data"));
    let r = run_python(&python, "confluent_group.py", &[&spate.bootstrap(), "grouped", "6", strategy]);
    // A commit sent while the group changes generation is refused, as Kafka does
    // (REBALANCE_IN_PROGRESS while the new generation syncs, ILLEGAL_GENERATION from a member
    // that has not heard of it yet; cooperative members keep consuming meanwhile): the next
    // commit covers it, and a message read again would show below as a duplicate. Any other
    // error is a failure.
    let rebalancing = ["REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION"];
    let unexpected: Vec<_> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let e = e.as_str().unwrap();
            !(e.starts_with("commit:") && rebalancing.iter().any(|code| e.contains(code)))
        })
        .collect();
    assert!(unexpected.is_empty(), "{r}");
    assert_eq!(r["all_three_assigned"], true, "each of three members had partitions: {r}");
    let during: BTreeSet<u64> = (0..3)
        .flat_map(|i| r["during"][i.to_string()].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()))
        .collect();
    assert_eq!(during.len(), 6, "the three split the six partitions: {r}");
    assert_eq!(r["taken_over"], true, "the two left took over every partition: {r}");
    assert_eq!(r["done"], true, "{r}");
    assert_eq!(r["missing"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "with committed offsets nothing is read twice across the rebalance: {r}");
    assert_eq!(r["fanout_distinct"], 3000, "another group reads everything: {r}");
    let balanced = (0..3).all(|i| r["per_consumer"][i.to_string()].as_u64().unwrap() > 0);
    assert!(balanced, "every member consumed a share: {r}");
}

#[test]
fn a_group_of_three_range_consumers_rebalances_when_one_leaves() {
    group_rebalances_when_one_of_three_leaves("range");
}

#[test]
fn a_group_of_three_cooperative_sticky_consumers_rebalances_when_one_leaves() {
    group_rebalances_when_one_of_three_leaves("cooperative-sticky");
}

#[test]
fn kafka_python_round_trip_and_committed_offsets_survive_a_crash() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let spate = Spate::start(&data);
    let b = spate.bootstrap();
    let produced = run_python(&python, "kafka_python_commit.py", &["produce", &b, "kp", "100"]);
    let offsets: Vec<u64> =
        produced["offsets"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
    assert_eq!(offsets, (0..100).collect::<Vec<_>>());
    let first = run_python(&python, "kafka_python_commit.py", &["consume", &b, "kp", "readers", "60"]);
    let values: Vec<u64> = first["values"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(values, (0..60).collect::<Vec<_>>());
    assert_eq!(first["committed"], 60);
    // Commits are durable when acknowledged: a SIGKILL loses none of them.
    spate.kill();
    let spate = Spate::start(&data);
    let b = spate.bootstrap();
    let rest = run_python(&python, "kafka_python_commit.py", &["consume", &b, "kp", "readers", "1000"]);
    let values: Vec<u64> = rest["values"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(values, (60..100).collect::<Vec<_>>(), "the group resumes where it committed");
    assert_eq!(rest["committed"], 100);
}

#[test]
fn fetched_record_bytes_leave_through_sendfile_and_are_counted() {
    let Some(kcat) = kcat() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let spate = Spate::start(&data);
    let b = spate.bootstrap();
    let input: String = (0..5000).map(|i| format!("zero-copy record {i:06}\n")).collect();
    run_kcat(&kcat, &["-b", &b, "-P", "-t", "zc"], &input);
    let log_bytes: u64 = std::fs::read_dir(data.join("data/zc-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(log_bytes > 100_000, "{log_bytes}");
    let before = spate.metric("spate_zero_copy_bytes_total");
    let out = run_kcat(&kcat, &["-b", &b, "-C", "-t", "zc", "-o", "beginning", "-e", "-q"], "");
    assert_eq!(out, input);
    let grown = spate.metric("spate_zero_copy_bytes_total") - before;
    // Every stored byte was sent once with sendfile (a client may fetch a batch again, never
    // less than once).
    assert!(grown >= log_bytes as f64, "zero-copy bytes grew by {grown}, the log holds {log_bytes}");
    assert!(grown <= 2.0 * log_bytes as f64, "zero-copy bytes grew by {grown}, the log holds {log_bytes}");
}

/// A script of tests/kafka/python run with `args`, its stdout lines arriving on a channel.
fn spawn_script(
    python: &std::path::Path,
    script: &str,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/python").join(script);
    let mut child = std::process::Command::new(python)
        .arg(path)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, lines)
}

/// A consumer process whose assignment changes arrive as lines.
struct Member {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Member {
    fn spawn(python: &std::path::Path, args: &[&str]) -> Member {
        let (child, lines) = spawn_script(python, "confluent_member.py", args);
        Member { child, lines }
    }

    /// Waits until the member reports `partitions` assigned; panics after `within`.
    fn wait_for(&self, partitions: usize, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no assignment of {partitions} in time"));
            let now: Vec<u32> = serde_json::from_str(&line).unwrap();
            if now.len() == partitions {
                return;
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_member_killed_without_leaving_is_expired_after_its_session_and_the_rest_take_over() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spate = Spate::start(&dir.path().join("data"));
    let b = spate.bootstrap();
    let long = std::time::Duration::from_secs(30);
    let a = Member::spawn(&python, &[&b, "sessions", "watchers", "4"]);
    a.wait_for(4, long);
    let mut killed = Member::spawn(&python, &[&b, "sessions", "watchers"]);
    killed.wait_for(2, long);
    a.wait_for(2, long);
    // SIGKILL: no LeaveGroup; only the 6 s session timeout tells the coordinator.
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let started = std::time::Instant::now();
    a.wait_for(4, long);
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(3),
        "taken over after {took:?}: sooner than a session timeout"
    );
}

/// A member of a KIP-848 group (confluent_consumer_protocol.py), its output lines parsed.
struct ProtocolMember {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    assigned: Vec<u64>,
    values: Vec<u64>,
    errors: Vec<String>,
}

impl ProtocolMember {
    fn spawn(python: &std::path::Path, bootstrap: &str, topic: &str, group: &str) -> ProtocolMember {
        let (child, lines) =
            spawn_script(python, "confluent_consumer_protocol.py", &[bootstrap, topic, group]);
        ProtocolMember { child, lines, assigned: Vec::new(), values: Vec::new(), errors: Vec::new() }
    }

    /// Takes in what the member printed so far.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if let Some(a) = v["assigned"].as_array() {
                self.assigned = a.iter().map(|p| p.as_u64().unwrap()).collect();
            } else if let Some(n) = v["v"].as_u64() {
                self.values.push(n);
            } else if let Some(e) = v["error"].as_str() {
                self.errors.push(e.to_string());
            }
        }
    }
}

impl Drop for ProtocolMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// KIP-848: three confluent-kafka consumers with `group.protocol=consumer` share six
/// partitions (the server assigns them); one is SIGKILLed, one leaves; the last takes every
/// partition over (the killed one's after its session) and, with offsets committed, every
/// record is consumed exactly once.
#[test]
fn three_consumer_protocol_members_share_partitions_and_survive_a_kill_and_a_leave() {
    let Some(python) = python() else { return };
    let Some(kcat) = kcat() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = "group_consumer_session_timeout_ms = 6000\ngroup_consumer_heartbeat_interval_ms = 500\n";
    let spate = Spate::start_with(
        &dir.path().join("data"),
        crate::server::Options { config: Some(config.into()), ..Default::default() },
    );
    let b = spate.bootstrap();
    let created = std::process::Command::new(&python)
        .args(["-c", &format!(
            "from confluent_kafka.admin import AdminClient, NewTopic\n\
             a = AdminClient({{'bootstrap.servers': '{b}'}})\n\
             [f.result(timeout=10) for f in a.create_topics([NewTopic('kip848', num_partitions=6, replication_factor=1)]).values()]"
        )])
        .status()
        .unwrap();
    assert!(created.success());
    let produce = |from: u64, to: u64| {
        let input: String = (from..to).map(|i| format!("{i}:{i}\n")).collect();
        run_kcat(&kcat, &["-b", &b, "-P", "-t", "kip848", "-K", ":"], &input);
    };
    produce(0, 600);
    let mut members: Vec<ProtocolMember> =
        (0..3).map(|_| ProtocolMember::spawn(&python, &b, "kip848", "modern")).collect();
    let wait = |members: &mut Vec<ProtocolMember>, what: &str, done: &dyn Fn(&[ProtocolMember]) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            members.iter_mut().for_each(ProtocolMember::drain);
            if done(members) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {:?}",
                members.iter().map(|m| (&m.assigned, m.values.len(), &m.errors)).collect::<Vec<_>>()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait(&mut members, "three members with two partitions each, round one consumed", &|ms| {
        ms.iter().all(|m| m.assigned.len() == 2) && ms.iter().map(|m| m.values.len()).sum::<usize>() == 600
    });
    let during: BTreeSet<u64> = members.iter().flat_map(|m| m.assigned.iter().copied()).collect();
    assert_eq!(during.len(), 6, "the three split the six partitions");
    // SIGKILL one while it is idle (everything it read is committed and reported); another
    // leaves (SIGTERM: the client leaves the group).
    let mut killed = members.remove(0);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    killed.drain();
    let mut leaving = members.remove(0);
    // SAFETY: signals our own child, which has not been reaped.
    unsafe { libc::kill(leaving.child.id() as i32, libc::SIGTERM) };
    leaving.child.wait().unwrap();
    leaving.drain();
    produce(600, 1200);
    wait(&mut members, "the last member to take over all six partitions and consume round two", &|ms| {
        ms[0].assigned.len() == 6 && ms[0].values.iter().filter(|&&v| v >= 600).count() >= 600
    });
    let last = &members[0];
    let mut all: Vec<u64> =
        [&killed.values, &leaving.values, &last.values].into_iter().flatten().copied().collect();
    all.sort_unstable();
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 1200, "every record consumed");
    assert_eq!(all.len(), 1200, "with committed offsets, none twice");
    let errors: Vec<&String> =
        [&killed.errors, &leaving.errors, &last.errors].into_iter().flatten().collect();
    assert!(errors.is_empty(), "{errors:?}");
}
