//! The client layer's error type and the classification of librdkafka error codes.

use std::time::Duration;

use kbatch_core::{Classify, ConfigError, ErrorClass};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure of the Kafka client layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A config was rejected before any client was built.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// librdkafka reported an error during `op`.
    #[error("{op} failed: {source}")]
    Kafka {
        /// What kbatch was doing, e.g. `create topic "orders"`.
        op: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// A topic-level admin operation was refused by the broker.
    #[error("{op} for topic {topic:?} failed: {code} ({code:?})")]
    Topic {
        /// Operation, e.g. `create`.
        op: &'static str,
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
    /// A topic does not exist.
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    /// An operation did not finish in time.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The operation.
        op: String,
        /// How long it was given.
        after: Duration,
    },
    /// Invalid input that kbatch rejected itself.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// What was invalid.
        what: String,
        /// Why.
        why: String,
    },
}

impl Error {
    pub(crate) fn kafka(op: impl Into<String>, source: KafkaError) -> Self {
        Error::Kafka {
            op: op.into(),
            source,
        }
    }

    /// librdkafka's error code, when the error came from librdkafka.
    pub fn code(&self) -> Option<RDKafkaErrorCode> {
        match self {
            Error::Kafka { source, .. } => source.rdkafka_error_code(),
            Error::Topic { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl Classify for Error {
    fn class(&self) -> ErrorClass {
        match self {
            Error::Config(_) | Error::Invalid { .. } | Error::UnknownTopic(_) => {
                ErrorClass::Permanent
            }
            Error::Timeout { .. } => ErrorClass::Retriable,
            Error::Topic { code, .. } => classify_code(*code),
            Error::Kafka { source, .. } => classify_kafka(source),
        }
    }
}

/// A client error at the seams (`RecordSource`, `OffsetSink`): class and message kept, the
/// error itself as the source.
impl From<Error> for kbatch_core::SourceError {
    fn from(e: Error) -> Self {
        kbatch_core::SourceError::with_source(e.class(), e.to_string(), e)
    }
}

/// Classifies a librdkafka error as a whole.
pub(crate) fn classify_kafka(e: &KafkaError) -> ErrorClass {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => ErrorClass::Fatal,
        KafkaError::Transaction(t) if t.is_retriable() => ErrorClass::Retriable,
        KafkaError::Transaction(t) if t.txn_requires_abort() => ErrorClass::Permanent,
        KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => ErrorClass::Fatal,
        KafkaError::Nul(_) | KafkaError::Subscription(_) | KafkaError::SetPartitionOffset(_) => {
            ErrorClass::Permanent
        }
        // librdkafka raised a fatal error (fenced or unreleased instance id, ...): whatever
        // the code, this client instance can do nothing more.
        KafkaError::Canceled | KafkaError::MessageConsumptionFatal(_) => ErrorClass::Fatal,
        other => other
            .rdkafka_error_code()
            .map_or(ErrorClass::Retriable, classify_code),
    }
}

/// Classifies a librdkafka error code, as seen after the client's own retries are exhausted.
///
/// Permanent: the same record or request fails again (too large, unknown or invalid topic
/// and partition, authorization, bad record). Fatal: the client instance is unusable
/// (fenced, fatal idempotence state, destroyed). Everything else — timeouts, transport,
/// leadership changes, full queues, not enough replicas — is retriable.
pub fn classify_code(code: RDKafkaErrorCode) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match code {
        C::Fatal
        | C::Fenced
        | C::InvalidProducerEpoch
        | C::ProducerFenced
        | C::OutOfOrderSequenceNumber
        | C::UnknownProducerId
        | C::InvalidProducerIdMapping
        | C::TransactionalIdAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::BrokerDestroy
        | C::InvalidTransactionTimeout
        | C::UnsupportedFeature
        | C::UnsupportedVersion
        // Another member took this static member's instance id, or still holds it.
        | C::FencedInstanceId
        | C::UnreleasedInstanceId => ErrorClass::Fatal,
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::UnknownTopic
        | C::UnknownPartition
        // Retried by the client until `topic.metadata.propagation.max.ms`; once it reaches
        // the caller, the topic or partition does not exist.
        | C::UnknownTopicOrPartition
        | C::InvalidTopic
        | C::InvalidPartitions
        | C::InvalidRecord
        | C::InvalidMessage
        | C::BadMessage
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication
        | C::TopicAlreadyExists
        | C::PolicyViolation
        | C::InvalidConfig
        | C::InvalidReplicationFactor
        | C::InvalidRequiredAcks
        | C::InvalidArgument
        | C::InvalidTimestamp
        | C::OffsetMetadataTooLarge
        | C::KeySerialization
        | C::ValueSerialization
        | C::TopicDeletionDisabled
        | C::InvalidRequest => ErrorClass::Permanent,
        _ => ErrorClass::Retriable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_fall_in_the_documented_classes() {
        assert_eq!(
            classify_code(RDKafkaErrorCode::MessageSizeTooLarge),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::TopicAuthorizationFailed),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::UnknownPartition),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::MessageTimedOut),
            ErrorClass::Retriable
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::QueueFull),
            ErrorClass::Retriable
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::NotLeaderForPartition),
            ErrorClass::Retriable
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::NotEnoughReplicasAfterAppend),
            ErrorClass::Retriable
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::BrokerTransportFailure),
            ErrorClass::Retriable
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::ProducerFenced),
            ErrorClass::Fatal
        );
        let fatal = Error::kafka(
            "poll",
            KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::UnknownTopicOrPartition),
        );
        assert_eq!(fatal.class(), ErrorClass::Fatal, "librdkafka said fatal");
        let e = Error::kafka(
            "send",
            KafkaError::MessageProduction(RDKafkaErrorCode::InvalidTopic),
        );
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert!(e.to_string().starts_with("send failed:"), "{e}");
    }
}
