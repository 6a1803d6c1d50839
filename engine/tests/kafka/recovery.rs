//! Damaged files under the real server: what recovery keeps, as a client sees it.

use crate::server::{python, run_python, Spate};

/// 400 records acknowledged with acks=all fill many 4 KiB segments; after a clean stop, 100
/// bytes of garbage are appended to the first sealed segment. Recovery cuts only the garbage:
/// every record is read back and the partition takes writes at offset 400.
#[test]
fn garbage_appended_to_a_sealed_segment_loses_no_acknowledged_record() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let spate = Spate::start(&data);
    let b = spate.bootstrap();
    let produced =
        run_python(&python, "confluent_segments.py", &["produce", &b, "small-segments", "400", "4096"]);
    assert_eq!(produced["errors"].as_array().unwrap().len(), 0, "{produced}");
    assert_eq!(produced["offsets"].as_array().unwrap().len(), 400);
    spate.stop();
    let partition = data.join("data/small-segments-0");
    let mut logs: Vec<_> = std::fs::read_dir(&partition)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    assert!(logs.len() > 20, "{} segments", logs.len());
    let garbage: Vec<u8> = (0..100u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut first = std::fs::read(&logs[0]).unwrap();
    let clean_len = first.len();
    first.extend_from_slice(&garbage);
    std::fs::write(&logs[0], first).unwrap();

    let spate = Spate::start(&data);
    let b = spate.bootstrap();
    let read = run_python(&python, "confluent_segments.py", &["consume", &b, "small-segments"]);
    assert_eq!(read["high_watermark"], 400, "{read}");
    let values: Vec<String> =
        read["values"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let expect: Vec<String> = (0..400).map(|i| format!("record-{i:05}-")).collect();
    assert_eq!(values, expect, "every acknowledged record, in order");
    let more = run_python(&python, "confluent_segments.py", &["produce-one", &b, "small-segments", "400"]);
    assert_eq!(
        (more["error"].clone(), more["offset"].clone()),
        (serde_json::Value::Null, 400.into()),
        "{more}"
    );
    for log in &logs {
        assert!(log.exists(), "{} is still there", log.display());
    }
    assert_eq!(std::fs::metadata(&logs[0]).unwrap().len() as usize, clean_len, "only the garbage was cut");
    assert!(spate.server_log().contains("removing bytes after the sealed segment's last batch"));
}

/// A bit flipped inside a sealed segment (whose index files are gone, so recovery scans it):
/// the server serves every other record, and refuses produces with KAFKA_STORAGE_ERROR.
#[test]
fn a_damaged_batch_costs_one_record_and_the_partition_refuses_writes() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let spate = Spate::start(&data);
    let b = spate.bootstrap();
    let produced = run_python(&python, "confluent_segments.py", &["produce", &b, "flipped", "100", "4096"]);
    assert_eq!(produced["offsets"].as_array().unwrap().len(), 100, "{produced}");
    spate.stop();
    let partition = data.join("data/flipped-0");
    let log = partition.join("00000000000000000000.log");
    let mut bytes = std::fs::read(&log).unwrap();
    // The third batch: headers are 61 bytes, so byte 100 of it is inside its record.
    let batch_len = 12 + u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
    bytes[2 * batch_len + 100] ^= 0x20;
    std::fs::write(&log, bytes).unwrap();
    std::fs::remove_file(partition.join("00000000000000000000.index")).unwrap();

    let spate = Spate::start(&data);
    let b = spate.bootstrap();
    let read = run_python(&python, "confluent_segments.py", &["consume", &b, "flipped"]);
    let offsets: Vec<u64> = read["offsets"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
    let expect: Vec<u64> = (0..100).filter(|&o| o != 2).collect();
    assert_eq!(offsets, expect, "{read}");
    let more = run_python(&python, "confluent_segments.py", &["produce-one", &b, "flipped", "100"]);
    assert_eq!(more["error"], "KAFKA_STORAGE_ERROR", "{more}");
    let log_text = spate.server_log();
    assert!(log_text.contains("damaged sealed segment") && log_text.contains("lost_from=2"), "{log_text}");
    spate.stop();

    // `spate repair` reports the damage, and accepting it lets the partition take writes.
    let repair = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate"))
            .arg("repair")
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (status, report) = repair(&[]);
    assert_eq!(status, Some(2), "{report}");
    assert!(report.contains("flipped:0: 1 damaged range(s), refusing writes"), "{report}");
    assert!(report.contains("offsets 2..3 lost"), "{report}");
    let (status, report) = repair(&["--accept", "flipped:0"]);
    assert_eq!(status, Some(0), "{report}");
    assert!(report.contains("flipped:0: 1 damaged range(s), accepted"), "{report}");
    let spate = Spate::start(&data);
    let more =
        run_python(&python, "confluent_segments.py", &["produce-one", &spate.bootstrap(), "flipped", "100"]);
    assert_eq!(
        (more["error"].clone(), more["offset"].clone()),
        (serde_json::Value::Null, 100.into()),
        "{more}"
    );
}
