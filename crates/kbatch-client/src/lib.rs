//! kbatch's Kafka client layer — the only crate that touches `rdkafka`.
//!
//! ```text
//!   KafkaProducerConfig ─► KafkaProducer ─(token)─► DeliverySink   (per-record reports, no allocation)
//!   ConsumerConfig      ─► KafkaConsumer ─► ConsumedRecord, commits with metadata
//!   ClientConfig        ─► Admin         ─► create / describe / delete topics
//!                          DevBroker     ─► in-memory mock cluster for demos
//! ```
//!
//! `KafkaProducerConfig` holds the librdkafka producer settings only; applications configure
//! kbatch's producer with `kbatch_producer::ProducerConfig`, which wraps it and adds kbatch's
//! bounds.
//!
//! Configs are typed and validated: `build`/`new` fails with an error naming the field, the
//! value and the accepted range. Secrets never appear in `Debug`.
#![forbid(unsafe_code)]

mod admin;
#[cfg(feature = "unstable-bench")]
pub mod bench;
mod code;
pub mod config;
mod consumer;
mod dev_broker;
mod error;
mod producer;
mod stats;
mod tpl;

pub use admin::{Admin, NewTopic, PartitionInfo, TopicDescription};
pub use code::{ErrorCode, classify_code};
pub use config::{
    Acks, AssignmentStrategy, AutoOffsetReset, ClientConfig, Compression, ConsumerConfig,
    GroupProtocol, Isolation, KafkaProducerConfig, Secret, SecurityProtocol,
};
pub use consumer::{GroupMetadata, KafkaConsumer, StartOffset};
pub use dev_broker::{DevBroker, InjectedError};
pub use error::{Error, LibrdkafkaError, Result};
pub use kbatch_core::{
    CommitMode, CommitReason, CommitRequest, CommittedOffset, OffsetCommit, OffsetSink,
    RebalanceListener, RecordSource, SourceError,
};
pub use producer::{Delivered, DeliveryError, DeliverySink, EnqueueError, KafkaProducer, TICK};
pub use stats::ProducerStats;
