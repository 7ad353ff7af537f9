//! The client layer's error type.

use std::fmt;
use std::time::Duration;

use kbatch_core::{Classify, ConfigError, ErrorClass};
use rdkafka::error::KafkaError;

use crate::code::{ErrorCode, classify_code};

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
        /// The error code, when librdkafka's error carries one.
        code: Option<ErrorCode>,
        /// librdkafka's error, for its message and source chain.
        #[source]
        source: LibrdkafkaError,
    },
    /// A topic-level admin operation was refused by the broker.
    #[error("{op} for topic {topic:?} failed: {code}")]
    Topic {
        /// Operation, e.g. `create`.
        op: &'static str,
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: ErrorCode,
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
            code: source.rdkafka_error_code().map(ErrorCode::from_rdkafka),
            source: LibrdkafkaError(Box::new(source)),
        }
    }

    /// The error code, when the error came from librdkafka or the broker.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Kafka { code, .. } => *code,
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
            Error::Kafka { source, .. } => classify_kafka(&source.0),
        }
    }
}

/// librdkafka's own error, kept for its message (`Display`) and its source chain. Opaque, so
/// that kbatch's API does not depend on rdkafka's types: read the code from [`Error::code`]
/// and the class from [`Classify`].
pub struct LibrdkafkaError(Box<KafkaError>);

impl fmt::Display for LibrdkafkaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for LibrdkafkaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::error::Error for LibrdkafkaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
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
            .map_or(ErrorClass::Retriable, |c| {
                classify_code(ErrorCode::from_rdkafka(c))
            }),
    }
}

/// A client error at the seams (`RecordSource`, `OffsetSink`): class and message kept, the
/// error itself as the source.
impl From<Error> for kbatch_core::SourceError {
    fn from(e: Error) -> Self {
        kbatch_core::SourceError::with_source(e.class(), e.to_string(), e)
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::RDKafkaErrorCode;

    use super::*;

    #[test]
    fn librdkafka_errors_keep_code_class_and_message() {
        let fatal = Error::kafka(
            "poll",
            KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::UnknownTopicOrPartition),
        );
        assert_eq!(fatal.class(), ErrorClass::Fatal, "librdkafka said fatal");
        assert_eq!(fatal.code(), Some(ErrorCode::UnknownTopicOrPartition));
        let e = Error::kafka(
            "send",
            KafkaError::MessageProduction(RDKafkaErrorCode::InvalidTopic),
        );
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert!(matches!(
            e,
            Error::Kafka {
                code: Some(ErrorCode::InvalidTopic),
                ..
            }
        ));
        // The message is librdkafka's, with the code's name and description.
        let msg = e.to_string();
        assert!(msg.starts_with("send failed:"), "{msg}");
        assert!(
            msg.contains("InvalidTopic") && msg.contains("Broker: Invalid topic"),
            "{msg}"
        );
        assert!(std::error::Error::source(&e).is_some());
        let t = Error::Topic {
            op: "create",
            topic: "orders".into(),
            code: ErrorCode::TopicAlreadyExists,
        };
        assert_eq!(
            t.to_string(),
            "create for topic \"orders\" failed: TopicAlreadyExists (Broker: Topic already exists)"
        );
        assert_eq!(t.class(), ErrorClass::Permanent);
    }
}
