//! kbatch's batching producer: `send(record)` returns a per-record [`DeliveryFuture`] while
//! records travel to Kafka in large batches.
//!
//! ```text
//!  send(record) ──reserve slot + bytes (wait / Full)──► librdkafka partition queues
//!       │                                                 │ batch at N records, B bytes or T linger
//!       ▼                                                 ▼
//!  DeliveryFuture(slot) ◄── slot table ◄── delivery reports (poll thread, no allocation)
//! ```
//!
//! - Memory is bounded in records (completion slots) and payload bytes; when full, `send`
//!   waits and `try_send` hands the record back.
//! - Every outcome is classified (see [`kbatch_core::ErrorClass`]); errors name the record and
//!   hand it back for retry or dead-lettering.
//! - `close()` (and dropping the last handle) flushes within a deadline, then resolves every
//!   remaining future with an error and reports what failed. A drop inside a tokio runtime
//!   does this on a blocking thread: it never blocks an async worker.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use kbatch_core::Record;
//! use kbatch_producer::{ClientConfig, Producer, ProducerConfig};
//!
//! let producer = Producer::new(ProducerConfig::new(ClientConfig::new("127.0.0.1:9092")))?;
//! // Fire all, then await each: no round trip per record.
//! let mut futures = Vec::new();
//! for i in 0..1000 {
//!     futures.push(producer.send(Record::new("events", format!("event {i}")).with_key("k")).await?);
//! }
//! for f in futures {
//!     let delivered = f.await?;
//!     assert!(delivered.offset.0 >= 0);
//! }
//! producer.close().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod close;
mod config;
mod error;
mod metrics;
mod producer;
mod slots;

pub use close::CloseReport;
pub use config::ProducerConfig;
pub use error::{ProduceError, Result, TrySendError};
pub use kbatch_client::{Acks, ClientConfig, Compression, Delivered, KafkaProducerConfig};
pub use metrics::ProducerCounters;
pub use producer::Producer;
pub use slots::DeliveryFuture;
