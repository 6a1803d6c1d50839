//! Kafka RecordBatch v2.
