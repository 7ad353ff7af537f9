//! Adaptive microbatching over kbatch's batching producer.
//!
//! ```text
//!  send(event) ──► intake (bounded) ──► batcher: flush at N events, T linger (≤ budget), or
//!  send_many(events)                       │ at once while < 2 flushes await their acks
//!                                          │ per-event: N records     │ packed: one envelope
//!                                          ▼                          ▼ per partition
//!  rate ──► controller ──► level (1..10) ──► learner picks (N, T) ──► Producer
//!                                             ▲ observations            │
//!                                             └── calibration (SQLite) ◄┘ delivery latency
//! ```
//!
//! - **Levels**: ten request-rate bands, each with a latency budget (1 ms .. 30 s). The
//!   [`Controller`] steps up as soon as a burst shows in its short window and down only with
//!   hysteresis, so a rate at a band edge does not flap.
//! - **Learning**: each level starts from (N, T) derived from its budget; a fifth of the
//!   epochs try a neighbour, the rest use the best; what scored better is kept
//!   ([`Learner`]) and remembered in SQLite ([`calibration`]) across restarts.
//! - **Budget**: no event waits in a batch longer than its budget ([`Batcher`]).
//! - **Pipeline**: a batch goes at once while fewer than
//!   [`AdaptiveConfig::flushes_in_flight`] await acknowledgement, so batches hold what
//!   arrives during a round trip: small at low rates, large at high ones.
//! - **Hand-in**: [`AdaptiveProducer::send`] (a future per event; packed, a keyed event of a
//!   known topic is encoded into an envelope piece it shares with other sends of its shard
//!   and partition), [`AdaptiveProducer::send_many`] (one future, an outcome per event;
//!   packed, it encodes keyed events into envelope pieces itself once their topic is known),
//!   [`AdaptiveProducer::send_detached`] (no answer).
//! - **Shapes**: per-event records, or one envelope record per microbatch and partition
//!   ([`Shape::Packed`]); kbatch's consumers unpack envelopes into events.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use kbatch_adaptive::{AdaptiveConfig, AdaptiveProducer, Shape};
//! use kbatch_core::Record;
//! use kbatch_producer::ProducerConfig;
//!
//! let config = AdaptiveConfig::new(ProducerConfig::for_brokers("127.0.0.1:9092"))
//!     .with_shape(Shape::Packed);
//! let producer = AdaptiveProducer::start(config)?;
//! let delivered = producer
//!     .send(Record::new("clicks", "page=/home").with_key("user-7"))
//!     .await?
//!     .await?;
//! println!("in envelope at offset {} as event {:?}", delivered.offset.0, delivered.index);
//! producer.close().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod batcher;
pub mod calibration;
mod config;
pub mod controller;
mod driver;
mod error;
mod fragment;
pub mod intake;
pub mod learner;
pub mod levels;
mod metrics;
mod open;
mod partitioner;
pub mod path;
mod persist;
mod pool;
mod producer;
mod reply;
mod topics;

pub use batcher::{Batcher, FlushCause, Flushed};
pub use config::{AdaptiveConfig, CalibrationSetting, Shape};
pub use controller::{Controller, ControllerConfig, Rates};
pub use error::{AdaptiveError, Result, TrySendError, TrySendManyError};
pub use intake::{Intake, PushError};
pub use learner::{Choice, EpochStats, Judged, Learned, Learner, LearnerConfig, Regression};
pub use levels::{BatchSettings, Level, LevelId, LevelTable};
pub use partitioner::KeyHash;
pub use path::{Path, PathConfig, PathSwitch};
pub use producer::{AdaptiveCloseReport, AdaptiveProducer, AdaptiveStats, SendOptions};
pub use reply::{
    EventDelivered, EventFuture, EventResult, ManyFuture, ManyResults, ManyResultsIter,
};
