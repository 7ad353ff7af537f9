//! What the adaptive producer learned, per profile and level, kept in a SQLite file so that a
//! restart begins from it instead of from the bootstrap settings.
//!
//! ```text
//!  learner ──save(profile, [LevelRecord])──►┐            ┌──► levels        (one row per profile, level)
//!          ──record(profile, [Observation])─┤ Calibration├──► observations  (newest 1,000 per profile, level)
//!  restart ◄─load(profile)──────────────────┘   Store    │
//!  `kbatch calibration show|reset` ◄─observations/profiles/reset
//! ```
//!
//! The store never stops the producer: a file it cannot use is reported once as a warning
//! ([`Opened::warning`]) and the store goes on without it, remembering nothing. A file another
//! process holds locked makes a call return [`CalibrationError::Locked`] after the busy timeout,
//! never hang; a corrupt file is moved aside (`<name>.corrupt-<unix secs>`) and a fresh one
//! started; a file written by a newer kbatch is left untouched.
//!
//! The API is synchronous (SQLite is): from async code call it through
//! `tokio::task::spawn_blocking`.
//!
//! ```no_run
//! use std::time::{Duration, SystemTime};
//! use kbatch_adaptive::calibration::{CalibrationStore, LevelRecord};
//! use kbatch_adaptive::{BatchSettings, LevelId};
//!
//! let opened = CalibrationStore::open(&CalibrationStore::default_path());
//! if let Some(w) = &opened.warning {
//!     eprintln!("{w}");
//! }
//! let store = opened.store;
//! let learned = store.load("orders")?;
//! store.save(
//!     "orders",
//!     &[LevelRecord {
//!         level: LevelId(5),
//!         best: BatchSettings { max_events: 500, linger: Duration::from_millis(40) },
//!         expected_throughput: 8_200.0,
//!         p99: Duration::from_millis(72),
//!         observations: 31,
//!         updated_at: SystemTime::now(),
//!     }],
//! )?;
//! # Ok::<(), kbatch_adaptive::calibration::CalibrationError>(())
//! ```

mod error;
mod rows;
mod schema;
mod store;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime};

use crate::levels::{BatchSettings, LevelId};

pub use error::CalibrationError;
pub use store::CalibrationStore;

/// How many observations the store keeps per (profile, level): the newest ones; older ones are
/// deleted as new ones are recorded, so the file stays small.
pub const MAX_OBSERVATIONS_PER_LEVEL: usize = 1_000;

/// How long a call waits for another process's lock on the file before it gives up with
/// [`CalibrationError::Locked`] ([`CalibrationStore::open`] uses it).
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_millis(250);

/// What was learned for one level of one profile.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelRecord {
    /// The level, 1 to 255.
    pub level: LevelId,
    /// The best batch settings found for it (`max_events` at least 1).
    pub best: BatchSettings,
    /// Throughput expected with `best`, in events/s (an exponential moving average; ≥ 0).
    pub expected_throughput: f64,
    /// 99th percentile of the delivery latency measured with `best`.
    pub p99: Duration,
    /// How many observations the learner has folded into this record.
    pub observations: u64,
    /// When it was last updated (not before 1970).
    pub updated_at: SystemTime,
}

/// One measurement window of one level: the settings in force and what they achieved.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The level in force, 1 to 255.
    pub level: LevelId,
    /// The batch settings in force (`max_events` at least 1).
    pub settings: BatchSettings,
    /// Whether the learner was trying these settings out rather than using its best ones.
    pub explored: bool,
    /// Achieved throughput in events/s (≥ 0).
    pub throughput: f64,
    /// Median delivery latency.
    pub p50: Duration,
    /// 99th percentile of the delivery latency.
    pub p99: Duration,
    /// How full the batches were on average: events per batch / `max_events`, 0 to 1.
    pub fill: f64,
    /// When the window ended (not before 1970).
    pub at: SystemTime,
}

/// A store and what went wrong opening its file, if anything.
///
/// The store is always usable; with a warning it may be running without the file (see
/// [`CalibrationStore::is_enabled`]) or, for [`CalibrationError::Locked`], it tries the file
/// again on every call.
#[derive(Debug)]
pub struct Opened {
    /// The store.
    pub store: CalibrationStore,
    /// Why the file could not be used as it was: locked, corrupt (and moved aside), newer, or
    /// not openable at all. Log it; it is not fatal.
    pub warning: Option<CalibrationError>,
}
