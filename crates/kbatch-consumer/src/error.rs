//! The parallel consumer's error type.

use kbatch_core::{Classify, ConfigError, ErrorClass, TopicPartition};

use crate::codec::DecodeError;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure of the parallel consumer as a whole (per-record failures are retried or
/// dead-lettered, never surfaced here).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Kafka client failed.
    #[error(transparent)]
    Client(#[from] kbatch_client::Error),
    /// The record source or the offset sink failed for good (e.g. fenced by another member
    /// with the same instance id).
    #[error(transparent)]
    Source(kbatch_core::SourceError),
    /// The dead-letter producer could not be built.
    #[error("dead-letter producer: {0}")]
    DeadLetter(String),
    /// Commit metadata of an assigned partition is unreadable (policy: fail fast).
    #[error(
        "commit metadata of {tp} cannot be used: {source} (set metadata_policy = Ignore to reprocess from the committed offset instead)"
    )]
    Metadata {
        /// The partition.
        tp: TopicPartition,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// No handler was set on the builder.
    #[error("no handler: call handler(), blocking_handler() or batch_handler() before build()")]
    NoHandler,
    /// The consumer's internal task ended unexpectedly.
    #[error("consumer stopped unexpectedly: {0}")]
    Stopped(String),
}

impl Classify for Error {
    fn class(&self) -> ErrorClass {
        match self {
            Error::Client(e) => e.class(),
            Error::Source(e) => e.class(),
            Error::Config(_) | Error::NoHandler => ErrorClass::Permanent,
            _ => ErrorClass::Fatal,
        }
    }
}
