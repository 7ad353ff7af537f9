//! Shared vocabulary of kbatch: [`Record`]s to produce, [`ConsumedRecord`]s read back,
//! [`TopicPartition`], [`Offset`], the error taxonomy ([`ErrorClass`]) every crate
//! classifies its failures into, and the seams engines are built around: a [`RecordSource`]
//! and an [`OffsetSink`] that takes [`CommitRequest`]s; and the [`envelope`] codec that packs
//! many small events into one record.
//!
//! This crate has no runtime dependencies: it is what the producer, consumer, stream and
//! outbox crates agree on without knowing about rdkafka.
//!
//! ```
//! use kbatch_core::{Record, TopicPartition};
//!
//! let r = Record::new("orders", "order-7 created").with_key("order-7").with_header("source", "web");
//! assert_eq!(r.topic(), "orders");
//! assert_eq!(r.size_hint(), 7 + 15 + 6 + 3);
//! assert_eq!(TopicPartition::new("orders", 3).to_string(), "orders-3");
//! ```
#![forbid(unsafe_code)]

mod config;
pub mod envelope;
mod error;
mod offset;
mod record;
mod source;
mod topic;

pub use config::ConfigError;
pub use error::{Classify, ErrorClass};
pub use offset::Offset;
pub use record::{ConsumedRecord, EnvelopePosition, Header, Headers, Record, Timestamp};
pub use source::{
    CommitMode, CommitReason, CommitRequest, CommittedOffset, OffsetCommit, OffsetSink,
    RebalanceListener, RecordSource, SourceError,
};
pub use topic::{Topic, TopicPartition};
