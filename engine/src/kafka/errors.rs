//! Engine errors as Kafka error codes (the table is in docs/protocol.md).

use kafka_protocol::error::ResponseError;

use crate::engine::EngineError;
use crate::log::LogError;

/// The Kafka error code a client gets for `e`.
pub fn code(e: &EngineError) -> ResponseError {
    match e {
        EngineError::UnknownTopic(_) | EngineError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        EngineError::UnknownTopicId(_) => ResponseError::UnknownTopicId,
        EngineError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        EngineError::InvalidTopicName { .. } => ResponseError::InvalidTopicException,
        EngineError::BadEngineConfig { .. }
        | EngineError::BadTopicConfig(_)
        | EngineError::BadTopicFile { .. }
        | EngineError::BadBackpressure => ResponseError::InvalidConfig,
        EngineError::BadPartitionCount { .. } => ResponseError::InvalidPartitions,
        EngineError::NoSuchShard { .. } | EngineError::System { .. } | EngineError::ReadFetched(_) => {
            ResponseError::UnknownServerError
        }
        EngineError::NegativeOffset(_) => ResponseError::InvalidCommitOffsetSize,
        EngineError::NoRecords => ResponseError::InvalidRecord,
        EngineError::BadTimestamp(_) => ResponseError::InvalidRequest,
        // The engine refuses to take more: the client retries later, as with a quota.
        EngineError::Dropped { .. } | EngineError::TooManyBlocked { .. } | EngineError::Busy { .. } => {
            ResponseError::ThrottlingQuotaExceeded
        }
        EngineError::TooManyWaiters { .. } => ResponseError::ThrottlingQuotaExceeded,
        EngineError::TooManyPartitions { .. } => ResponseError::PolicyViolation,
        EngineError::OffsetMetadataTooLarge { .. } => ResponseError::OffsetMetadataTooLarge,
        EngineError::TooManyPartitionsInRequest { .. } => ResponseError::InvalidRequest,
        EngineError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        EngineError::NotCompacted(_) => ResponseError::InvalidConfig,
        EngineError::Compaction(_) => ResponseError::KafkaStorageError,
        EngineError::Locked { .. } => ResponseError::UnknownServerError,
        EngineError::InvalidConsumerName { .. } => ResponseError::InvalidGroupId,
        EngineError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        EngineError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        EngineError::Log(log) => log_code(log),
        EngineError::Io { .. } => ResponseError::KafkaStorageError,
    }
}

fn log_code(e: &LogError) -> ResponseError {
    match e {
        LogError::Io { .. }
        | LogError::Fs { .. }
        | LogError::Failed { .. }
        | LogError::Damaged { .. }
        | LogError::NoDescriptors { .. }
        | LogError::Corrupt { .. } => ResponseError::KafkaStorageError,
        // A block that would decompress past the limit is too large, not corrupt.
        LogError::InvalidBatch(crate::record::RecordError::DecompressedTooLarge { .. }) => {
            ResponseError::MessageTooLarge
        }
        LogError::InvalidBatch(_) => ResponseError::CorruptMessage,
        LogError::InvalidTimestamp { .. } => ResponseError::InvalidTimestamp,
        LogError::BatchRejected(_) => ResponseError::InvalidRecord,
        LogError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::Config(_) => ResponseError::InvalidConfig,
        LogError::Policy(_) => ResponseError::PolicyViolation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_visible_failures_map_to_their_kafka_codes() {
        let unknown = EngineError::UnknownPartition { topic: "t".into(), partition: 9 };
        assert_eq!(code(&unknown).code(), 3);
        let range = EngineError::Log(LogError::OffsetOutOfRange { requested: 9, start: 0, end: 5 });
        assert_eq!(code(&range).code(), 1);
        let large = EngineError::Log(LogError::BatchTooLarge { size: 9, max: 5 });
        assert_eq!(code(&large).code(), 10);
        assert_eq!(code(&EngineError::TopicExists("t".into())).code(), 36);
    }
}
