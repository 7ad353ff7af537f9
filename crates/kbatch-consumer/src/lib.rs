//! kbatch's parallel consumer: process one partition's records concurrently — far beyond the
//! partition count — in KEY, PARTITION or UNORDERED order, acknowledging each record.
//!
//! ```text
//!  poll thread ──► coordinator ──► handler tasks (≤ max_concurrency, async / blocking / batch)
//!                      │  commits the contiguous completed prefix per partition, and the
//!                      │  completed offsets beyond it in the commit metadata, so a restart
//!                      ▼  reprocesses only what was not done
//!                   Kafka group
//! ```
//!
//! - Retries with a delay policy (exponential backoff with jitter by default); a failing
//!   record blocks only its key (KEY), its partition (PARTITION) or itself (UNORDERED).
//! - Records failing for good go to a dead-letter topic (origin and error in headers) or a
//!   callback.
//! - One budget (records and bytes) covers buffered, running and retrying work; partitions
//!   over it — or whose metadata nears the broker's 4 KiB limit — are paused at the client.
//! - Reads Confluent Parallel Consumer's commit metadata, so a group moves over without
//!   reprocessing what PC had completed.
//!
//! ```no_run
//! # async fn f() -> Result<(), kbatch_consumer::Error> {
//! use kbatch_client::ConsumerConfig;
//! use kbatch_consumer::{HandlerError, ParallelConfig, ParallelConsumer, ProcessingOrder, ShutdownMode};
//!
//! let kafka = ConsumerConfig::new(kbatch_client::ClientConfig::new("127.0.0.1:9092")).with_group("gps");
//! let config = ParallelConfig::new(kafka, ["positions"]).with_ordering(ProcessingOrder::Key).with_concurrency(1000);
//! let running = ParallelConsumer::builder(config)
//!     .handler(|record| async move {
//!         // call a slow service; a timeout is worth a retry
//!         if record.value.is_none() { return Err(HandlerError::permanent("empty position")) }
//!         Ok(())
//!     })
//!     .build()?
//!     .start()?;
//! // ...
//! running.shutdown(ShutdownMode::Drain).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "unstable-codec")]
pub mod codec;
#[cfg(not(feature = "unstable-codec"))]
pub(crate) mod codec;
mod config;
mod consumer;
mod driver;
mod engine;
mod error;
mod handler;
mod metrics;
mod scheduler;
mod tracker;

pub use codec::DecodeError;
pub use config::{CommitMode, MetadataPolicy, ParallelConfig, ProcessingOrder, ShutdownMode};
pub use consumer::{Builder, ParallelConsumer, Running};
pub use driver::{Progress, ShutdownReport};
pub use error::{Error, Result};
pub use handler::{
    BatchHandler, ExponentialBackoff, FailureKind, Handler, HandlerError, HandlerResult,
    RetryPolicy,
};
pub use metrics::ConsumerStats;
