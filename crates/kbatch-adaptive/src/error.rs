//! What can go wrong, per event and at start.

use kbatch_core::{Classify, ConfigError, ErrorClass, Record};
use kbatch_producer::ProduceError;

/// `Result` with [`AdaptiveError`].
pub type Result<T, E = AdaptiveError> = std::result::Result<T, E>;

/// An event that was not delivered, or a producer that could not start. Per-event errors hand
/// the event back ([`AdaptiveError::into_record`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdaptiveError {
    /// The settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Kafka client could not start.
    #[error(transparent)]
    Client(#[from] kbatch_client::Error),
    /// The event, sent as its own record, failed.
    #[error(transparent)]
    Produce(#[from] ProduceError),
    /// The envelope holding the event failed as a whole.
    #[error("envelope of {events} events to topic {topic:?}, partition {partition} failed ({class}): {message}; event {index} (key {key}) handed back",
        key = record.key_for_display())]
    Envelope {
        /// Topic.
        topic: String,
        /// Partition the envelope was for.
        partition: i32,
        /// Events in the envelope.
        events: u32,
        /// This event's place in it.
        index: u32,
        /// How the failure is classified.
        class: ErrorClass,
        /// What the client said.
        message: String,
        /// The event.
        record: Box<Record>,
    },
    /// The event's topic is unknown to the cluster or its metadata could not be read, so it
    /// could not be given a partition for packing.
    #[error("no partition for the event to topic {topic:?} (key {key}): {message}", key = record.key_for_display())]
    Metadata {
        /// Topic.
        topic: String,
        /// What went wrong.
        message: String,
        /// Retriable or permanent.
        class: ErrorClass,
        /// The event.
        record: Box<Record>,
    },
    /// The producer was closed before the event was sent.
    #[error("adaptive producer closed{}", record.as_ref().map(|r| format!(" before the event to topic {:?}, key {} was sent", r.topic(), r.key_for_display())).unwrap_or_default())]
    Closed {
        /// The event, when it is still here.
        record: Option<Box<Record>>,
    },
}

impl AdaptiveError {
    /// The event, handed back for a retry or a dead letter.
    pub fn into_record(self) -> Option<Record> {
        match self {
            AdaptiveError::Produce(e) => e.into_record(),
            AdaptiveError::Envelope { record, .. } | AdaptiveError::Metadata { record, .. } => {
                Some(*record)
            }
            AdaptiveError::Closed { record } => record.map(|r| *r),
            AdaptiveError::Config(_) | AdaptiveError::Client(_) => None,
        }
    }

    /// True when sending the event again may succeed.
    pub fn is_retriable(&self) -> bool {
        self.class() == ErrorClass::Retriable
    }
}

impl Classify for AdaptiveError {
    fn class(&self) -> ErrorClass {
        match self {
            AdaptiveError::Config(_) => ErrorClass::Permanent,
            AdaptiveError::Client(e) => e.class(),
            AdaptiveError::Produce(e) => e.class(),
            AdaptiveError::Envelope { class, .. } | AdaptiveError::Metadata { class, .. } => *class,
            AdaptiveError::Closed { .. } => ErrorClass::Fatal,
        }
    }
}

/// Why `try_send` did not take an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendError {
    /// The intake is full; the event is handed back.
    #[error("adaptive producer's intake is full; event for topic {:?} handed back", .0.topic())]
    Full(Record),
    /// The producer is closed; the event is handed back.
    #[error("adaptive producer closed; event for topic {:?} handed back", .0.topic())]
    Closed(Record),
}

/// Why [`AdaptiveProducer::try_send_many_with`](crate::AdaptiveProducer::try_send_many_with)
/// took none of the records; every record is handed back, in order.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendManyError {
    /// The intake has no room for all of them.
    #[error("adaptive producer's intake is full; {} events handed back", .0.len())]
    Full(Vec<Record>),
    /// The producer is closed.
    #[error("adaptive producer closed; {} events handed back", .0.len())]
    Closed(Vec<Record>),
}

impl TrySendManyError {
    /// The records, in the order given.
    pub fn into_records(self) -> Vec<Record> {
        match self {
            TrySendManyError::Full(r) | TrySendManyError::Closed(r) => r,
        }
    }
}

impl TrySendError {
    /// The event.
    pub fn into_record(self) -> Record {
        match self {
            TrySendError::Full(r) | TrySendError::Closed(r) => r,
        }
    }
}
