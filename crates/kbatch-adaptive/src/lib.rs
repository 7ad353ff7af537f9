//! Adaptive microbatching over kbatch's batching producer.
//!
//! ```text
//!  send(event) ──► intake (bounded) ──► batcher: flush at N events or T linger (≤ budget)
//!                                          │ per-event: N records     │ packed: one envelope
//!                                          ▼                          ▼ per partition
//!  rate ──► controller ──► level (1..10) ──► learner picks (N, T) ──► Producer
//!                                             ▲ observations            │
//!                                             └── calibration (SQLite) ◄┘ delivery latency
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod calibration;
pub mod levels;

pub use levels::{BatchSettings, Level, LevelId, LevelTable};
pub mod controller;

pub use controller::{Controller, ControllerConfig, Rates};
pub mod batcher;

pub use batcher::{Batcher, FlushCause, Flushed};
pub mod learner;

pub use learner::{Choice, EpochStats, Judged, Learned, Learner, LearnerConfig, Regression};
pub mod intake;

pub use intake::{Intake, PushError};
