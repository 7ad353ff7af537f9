//! Per-record failures, classified.

use kbatch_client::{DeliveryError, ErrorCode, classify_code};
use kbatch_core::{Classify, ErrorClass, Record};

/// Result alias of this crate.
pub type Result<T, E = ProduceError> = std::result::Result<T, E>;

/// Why one record was not delivered. Every variant that can still own the record hands it
/// back ([`ProduceError::into_record`]) for retry or dead-lettering; messages name the
/// record's topic, partition and key, and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// The client or broker failed the record after the client's own retries.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// The client refused to enqueue the record (too large, unknown partition, …).
    #[error("record for topic {topic:?}, partition {partition}, key {key} could not be enqueued: {code}, {class}",
        topic = record.topic(), partition = record.partition.map_or("any".to_owned(), |p| p.to_string()),
        key = record.key_for_display(), class = classify_code(*code))]
    Enqueue {
        /// librdkafka's error code.
        code: ErrorCode,
        /// The record, untouched.
        record: Box<Record>,
    },
    /// kbatch rejected the record before it reached the client.
    #[error("record for topic {topic:?}, key {key} is invalid: {reason}", topic = record.topic(), key = record.key_for_display())]
    Invalid {
        /// What is wrong and what would be right.
        reason: String,
        /// The record, untouched.
        record: Box<Record>,
    },
    /// The producer was closed before the record was enqueued or delivered.
    #[error("producer closed{}", record.as_ref().map(|r| format!(" before the record for topic {:?}, key {} was delivered", r.topic(), r.key_for_display())).unwrap_or_default())]
    Closed {
        /// The record, when the producer still had it.
        record: Option<Box<Record>>,
    },
}

impl ProduceError {
    /// The record this error is about, when it is still held.
    pub fn record(&self) -> Option<&Record> {
        match self {
            ProduceError::Delivery(d) => Some(&d.record),
            ProduceError::Enqueue { record, .. } | ProduceError::Invalid { record, .. } => {
                Some(record)
            }
            ProduceError::Closed { record } => record.as_deref(),
        }
    }

    /// Takes the record back.
    pub fn into_record(self) -> Option<Record> {
        match self {
            ProduceError::Delivery(d) => Some(*d.record),
            ProduceError::Enqueue { record, .. } | ProduceError::Invalid { record, .. } => {
                Some(*record)
            }
            ProduceError::Closed { record } => record.map(|r| *r),
        }
    }

    /// librdkafka's error code, for client and broker failures.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ProduceError::Delivery(d) => Some(d.code),
            ProduceError::Enqueue { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl Classify for ProduceError {
    fn class(&self) -> ErrorClass {
        match self {
            ProduceError::Delivery(d) => d.class(),
            ProduceError::Enqueue { code, .. } => classify_code(*code),
            ProduceError::Invalid { .. } => ErrorClass::Permanent,
            ProduceError::Closed { .. } => ErrorClass::Fatal,
        }
    }
}

/// Why [`Producer::try_send`](crate::Producer::try_send) did not take a record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendError {
    /// The pending-records or pending-bytes bound is reached: await deliveries, then retry.
    #[error("producer is full (pending records or bytes at their bound); record for topic {:?} handed back", .0.topic())]
    Full(Record),
    /// The record was refused; see the error.
    #[error(transparent)]
    Failed(ProduceError),
}

impl TrySendError {
    /// Takes the record back.
    pub fn into_record(self) -> Option<Record> {
        match self {
            TrySendError::Full(r) => Some(r),
            TrySendError::Failed(e) => e.into_record(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_record_and_classify() {
        let r = Record::new("orders", "v")
            .with_key("order-1")
            .with_partition(9);
        let e = ProduceError::Enqueue {
            code: ErrorCode::UnknownPartition,
            record: Box::new(r.clone()),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("\"orders\"")
                && msg.contains("partition 9")
                && msg.contains("\"order-1\""),
            "{msg}"
        );
        assert!(msg.contains("permanent"), "{msg}");
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert_eq!(e.into_record(), Some(r.clone()));

        let d = ProduceError::from(DeliveryError::new(
            ErrorCode::MessageTimedOut,
            Box::new(r.clone()),
        ));
        assert!(d.is_retriable());
        assert!(d.to_string().contains("\"order-1\""), "{d}");
        let c = ProduceError::Closed { record: None };
        assert!(c.is_fatal());
        assert_eq!(c.to_string(), "producer closed");
    }
}
