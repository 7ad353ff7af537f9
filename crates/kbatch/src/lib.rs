//! # kbatch
//!
//! High-throughput, batch-oriented Apache Kafka pipelines in Rust, over librdkafka.
//!
//! ```text
//!  Producer::send(record) ──► DeliveryFuture        records travel in librdkafka's large
//!          │                                         batches; memory bounded in records and
//!          ▼                                         bytes; every failure classified
//!       Kafka ──► ParallelConsumer ──► your Handler  one partition's records processed
//!                    │  KEY / PARTITION / UNORDERED   concurrently, each acknowledged; what
//!                    ▼  per-record acks               completed beyond the commit travels in
//!                 CommitRequest ──► OffsetSink        its metadata, so a restart redoes only
//!                                  (the group)        what was not done
//! ```
//!
//! `use kbatch::prelude::*;` is all an application needs:
//!
//! ```no_run
//! use kbatch::prelude::*;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Produce: a future per record, records sent in large batches.
//!     let producer = Producer::new(ProducerConfig::for_brokers("127.0.0.1:9092"))?;
//!     for i in 0..1_000 {
//!         let fix = Record::new("positions", format!("fix {i}")).with_key(format!("car-{}", i % 50));
//!         producer.send(fix).await?; // enqueued; await the returned future for the ack
//!     }
//!     producer.close().await;
//!
//!     // Consume: each car's fixes in order, 50 cars at once, every record acknowledged.
//!     let config = ParallelConfig::for_brokers("127.0.0.1:9092", "router", ["positions"]);
//!     let running = ParallelConsumer::builder(config.with_concurrency(200))
//!         .handler(|fix: ConsumedRecord| async move {
//!             let _ = fix.value.ok_or_else(|| HandlerError::permanent("empty fix"))?;
//!             Ok(()) // call the slow service here; Err(HandlerError::retriable(e)) retries
//!         })
//!         .start()?;
//!     running.until_idle().await;
//!     running.shutdown(ShutdownMode::Drain).await?;
//!     Ok(())
//! }
//! ```
//!
//! The crates behind it, re-exported here by area: [`producer`] (the batching producer),
//! [`adaptive`] (adaptive microbatching over it: levels, budgets, packed envelopes),
//! [`consumer`] (the parallel consumer, its engine's seams), [`client`] (typed, validated
//! librdkafka settings, admin, the in-memory development broker), and the shared vocabulary
//! at the top level (records, offsets, error classes).
#![forbid(unsafe_code)]

pub use kbatch_core::{
    Classify, CommitMode, CommitReason, CommitRequest, CommittedOffset, ConfigError,
    ConsumedRecord, EnvelopePosition, ErrorClass, Header, Headers, Offset, OffsetCommit,
    OffsetSink, RebalanceListener, Record, RecordSource, SourceError, Timestamp, Topic,
    TopicPartition, envelope,
};

/// The batching producer: [`Producer::send`](producer::Producer::send) returns a per-record
/// [`DeliveryFuture`].
pub mod producer {
    pub use kbatch_producer::*;
}

/// The parallel consumer: [`ParallelConsumer`], handlers, retries,
/// dead letters.
pub mod consumer {
    pub use kbatch_consumer::*;
}

/// Adaptive microbatching: [`AdaptiveProducer`] picks batch
/// size and linger from the load and a latency budget, learns them, remembers them in SQLite,
/// and can pack a microbatch into one Kafka record.
pub mod adaptive {
    pub use kbatch_adaptive::*;
}

/// The HTTP ingest gateway: records over HTTP into Kafka, answered only once the broker
/// acknowledged them ([`Gateway`](gateway::Gateway)).
pub mod gateway {
    pub use kbatch_gateway::*;
}

/// The transactional outbox: [`enqueue`](outbox::enqueue) inside your own sqlx transaction
/// (PostgreSQL, MariaDB/MySQL, SQLite), and a [`Relay`](outbox::Relay) that delivers the
/// committed entries to Kafka in batches.
pub mod outbox {
    pub use kbatch_outbox::*;
}

/// Kafka client settings, admin operations and the in-memory development broker.
pub mod client {
    pub use kbatch_client::{
        Acks, Admin, AssignmentStrategy, AutoOffsetReset, ClientConfig, Compression,
        ConsumerConfig, DevBroker, GroupProtocol, Isolation, NewTopic, Secret, SecurityProtocol,
    };
}

pub use adaptive::{AdaptiveConfig, AdaptiveProducer, Shape};
pub use client::{ClientConfig, ConsumerConfig};
pub use consumer::{
    BatchHandler, Handler, HandlerError, HandlerResult, ParallelConfig, ParallelConsumer,
    ProcessingOrder, Running, ShutdownMode, ShutdownReport,
};
pub use producer::{DeliveryFuture, ProduceError, Producer, ProducerConfig};

/// What an application needs, in one `use`.
pub mod prelude {
    pub use crate::{
        AdaptiveConfig, AdaptiveProducer, BatchHandler, ClientConfig, ConsumedRecord,
        ConsumerConfig, Handler, HandlerError, HandlerResult, Offset, ParallelConfig,
        ParallelConsumer, ProcessingOrder, Producer, ProducerConfig, Record, Shape, ShutdownMode,
        TopicPartition,
    };
}

/// The README's Rust examples, compiled with the doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
