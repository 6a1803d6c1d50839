//! Compacted topics through real Kafka clients.

use crate::server::{python, run_python, Options, Spate};

/// confluent-kafka creates a topic with `cleanup.policy=compact`, sees the policy in
/// DescribeConfigs, produces 2,000 keyed records (idempotently) and tombstones, is refused a
/// record without a key, and reading from the beginning once compaction ran finds the latest
/// value of every key (tombstones as null values) at increasing offsets, in far fewer records.
/// kafka-python reads the same records. IncrementalAlterConfigs changes a compaction config.
#[test]
fn a_compacted_topic_keeps_the_latest_value_of_each_key_for_confluent_kafka() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = "compaction_check_interval_ms = 100\n".to_string();
    let spate =
        Spate::start_with(&dir.path().join("data"), Options { config: Some(config), ..Options::default() });
    let r = run_python(&python, "confluent_compaction.py", &[&spate.bootstrap(), "table"]);
    assert_eq!(r["policy"], "compact", "{r}");
    assert_eq!(r["keyless"][0], "INVALID_RECORD", "{r}");
    let (produced, read) = (r["produced"].as_u64().unwrap(), r["read"].as_u64().unwrap());
    assert!(read <= produced / 4, "compaction left {read} of {produced} records: {r}");
    assert_eq!(r["offsets_increase"], true, "{r}");
    assert_eq!(r["kafka_python_same"], true, "kafka-python reads the same records: {r}");
    for k in 0..50 {
        let value = &r["latest"][format!("key-{k}")];
        if k % 10 == 0 {
            assert!(value.is_null(), "key-{k} was deleted: {r}");
        } else {
            assert_eq!(value, &format!("value-39-{k}"), "key-{k}: {r}");
        }
    }
    assert_eq!(r["min_lag"], "60000", "{r}");
    assert_eq!(r["policy_after_alter"], "compact", "an incremental alter keeps the rest: {r}");
}

/// confluent-kafka's `delete_records`: the log start moves to the offset asked, the segments
/// wholly below it leave the disk, reads and ListOffsets start there, an offset beyond the end
/// is `OFFSET_OUT_OF_RANGE`, and -1 deletes up to the high watermark.
#[test]
fn delete_records_moves_the_log_start_for_confluent_kafka() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let spate = Spate::start(&data);
    let partition_dir = data.join("data").join("pruned-0");
    let r = run_python(
        &python,
        "confluent_delete_records.py",
        &[&spate.bootstrap(), "pruned", partition_dir.to_str().unwrap()],
    );
    assert_eq!(r["low"], 300, "{r}");
    let (before, after) = (r["segments_before"].as_u64().unwrap(), r["segments_after"].as_u64().unwrap());
    assert!(before >= 3 && after < before, "segments below 300 deleted: {r}");
    let first_base: i64 = r["first_segment_after"].as_str().unwrap()[..20].parse().unwrap();
    assert!(first_base <= 300, "the segment holding 300 stays: {r}");
    assert_eq!(r["watermarks"], serde_json::json!([300, 500]), "{r}");
    assert_eq!(r["first"], serde_json::json!([300, "record-300"]), "{r}");
    assert_eq!(r["beyond_error"], "OFFSET_OUT_OF_RANGE", "{r}");
    assert_eq!(r["everything"], 500, "{r}");
}

/// A topic with `remote.storage.enable=true` on a server with an archive directory: retention
/// moves its old segments to the archive, and confluent-kafka reading from the beginning gets
/// every record, in order, before and after a restart of the server.
#[test]
fn archived_segments_are_read_back_transparently_and_survive_a_restart() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let config =
        format!("archive_dir = {:?}\nretention_check_interval_ms = 100\n", archive.display().to_string());
    let options = || Options { config: Some(config.clone()), ..Options::default() };
    let data = dir.path().join("data");
    let partition_archive = archive.join("kept-0");
    let spate = Spate::start_with(&data, options());
    let args = [spate.bootstrap(), "kept".into(), partition_archive.display().to_string()];
    let r = run_python(&python, "confluent_archive.py", &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(r["archived_segments"].as_u64().unwrap() >= 3, "{r}");
    assert_eq!((r["low"].as_i64(), r["high"].as_i64()), (Some(0), Some(600)), "{r}");
    assert_eq!(r["in_order"], true, "{r}");
    drop(spate);
    let spate = Spate::start_with(&data, options());
    let args =
        [spate.bootstrap(), "kept".into(), partition_archive.display().to_string(), "read-only".into()];
    let r = run_python(&python, "confluent_archive.py", &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        (r["low"].as_i64(), r["high"].as_i64(), r["in_order"].as_bool()),
        (Some(0), Some(600), Some(true)),
        "{r}"
    );
}
