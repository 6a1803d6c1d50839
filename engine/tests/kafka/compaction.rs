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
