//! The adaptive producer's settings.

use std::path::PathBuf;
use std::time::Duration;

use kbatch_core::ConfigError;
use kbatch_producer::ProducerConfig;

use crate::controller::ControllerConfig;
use crate::learner::LearnerConfig;
use crate::levels::{LevelId, LevelTable};
use crate::path::PathConfig;

/// How events travel to Kafka.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shape {
    /// Every event is its own Kafka record; a flushed microbatch is handed to the client at
    /// once, so the intake's linger is the batching delay.
    #[default]
    PerEvent,
    /// A flushed microbatch (per partition) is one Kafka record holding an envelope
    /// ([`kbatch_core::envelope`]); kbatch's consumers unpack it.
    Packed,
}

/// Where learned settings are remembered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CalibrationSetting {
    /// The file under the user's data directory
    /// ([`CalibrationStore::default_path`](crate::calibration::CalibrationStore::default_path)).
    #[default]
    Default,
    /// This SQLite file.
    Path(PathBuf),
    /// Remember nothing; every start bootstraps.
    Disabled,
}

/// The adaptive producer's settings. Builders set fields; [`AdaptiveConfig::validate`]
/// (called by [`AdaptiveProducer::start`](crate::AdaptiveProducer::start)) checks them.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AdaptiveConfig {
    /// The underlying producer. Its linger is set to 0: the intake does the lingering.
    pub producer: ProducerConfig,
    /// Per-event records or packed envelopes. Default per-event.
    pub shape: Shape,
    /// Pressure levels: rate bands and budgets. Default: the ten levels, 1 ms .. 30 s.
    pub levels: LevelTable,
    /// The level to start at before any rate is measured. Default L5.
    pub initial_level: LevelId,
    /// Rate windows and hysteresis.
    pub controller: ControllerConfig,
    /// Exploration and judging.
    pub learner: LearnerConfig,
    /// How long one learning epoch runs with one setting. Default 1 s.
    pub epoch: Duration,
    /// The most any event may wait in a batch, whatever the level (`send_with_budget` can
    /// shorten it per event). Default: none beyond the level's budget.
    pub budget: Option<Duration>,
    /// Most bytes in one microbatch; packed, the envelope stays under the client's record
    /// limit. Default 900 KiB.
    pub max_batch_bytes: usize,
    /// Most events waiting in the intake; beyond it `send` waits and `try_send` hands the
    /// event back. Default 65,536.
    pub intake_capacity: usize,
    /// Where learned settings are remembered. Default: the user's data directory.
    pub calibration: CalibrationSetting,
    /// Name under which settings are remembered, so different workloads learn apart.
    /// Default "default".
    pub profile: String,
    /// Seed for exploration draws; `None` draws one.
    pub seed: Option<u64>,
    /// How many flushed microbatches (packed: envelopes) may await their acknowledgements
    /// before the next waits (up to its N and T) for one to come back. Batches go at once
    /// while fewer are out, so at low rates events are not held and the last events of a
    /// burst do not wait out the linger; at high rates each batch holds what arrived during a
    /// round trip. 0 turns this off: batches go at N or T only. Default 2: one batch on the
    /// wire while the next gathers. A batch that reached N (or the byte cap) goes at once and
    /// is not counted: at saturation full batches stream to the client as fast as it takes
    /// them. With a bound, N is never explored below the level's bootstrap N (see
    /// [`LearnerConfig::events_floor_at_bootstrap`](crate::learner::LearnerConfig)).
    pub flushes_in_flight: usize,
    /// Per-event shape: when single-event sends skip the intake and go straight to the client
    /// (while the intake is the slowest stage; see [`crate::path`]). Packed ignores it.
    pub path: PathConfig,
}

impl AdaptiveConfig {
    /// Defaults around `producer`.
    pub fn new(producer: ProducerConfig) -> Self {
        Self {
            producer,
            shape: Shape::PerEvent,
            levels: LevelTable::default(),
            initial_level: LevelTable::DEFAULT_LEVEL,
            controller: ControllerConfig::default(),
            learner: LearnerConfig::default(),
            epoch: Duration::from_secs(1),
            budget: None,
            max_batch_bytes: 900 << 10,
            intake_capacity: 65_536,
            calibration: CalibrationSetting::Default,
            profile: "default".to_owned(),
            seed: None,
            flushes_in_flight: 2,
            path: PathConfig::default(),
        }
    }

    /// Sets the delivery shape.
    #[must_use]
    pub fn with_shape(mut self, shape: Shape) -> Self {
        self.shape = shape;
        self
    }

    /// Sets the level table.
    #[must_use]
    pub fn with_levels(mut self, levels: LevelTable) -> Self {
        self.levels = levels;
        self
    }

    /// Caps every event's wait in a batch.
    #[must_use]
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Remembers learned settings in this SQLite file.
    #[must_use]
    pub fn with_calibration_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.calibration = CalibrationSetting::Path(path.into());
        self
    }

    /// Remembers nothing.
    #[must_use]
    pub fn without_calibration(mut self) -> Self {
        self.calibration = CalibrationSetting::Disabled;
        self
    }

    /// Sets the calibration profile name.
    #[must_use]
    pub fn with_profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = profile.into();
        self
    }

    /// Sets the epoch length.
    #[must_use]
    pub fn with_epoch(mut self, epoch: Duration) -> Self {
        self.epoch = epoch;
        self
    }

    /// Sets the share of epochs that explore (0 ..= 1).
    #[must_use]
    pub fn with_explore_share(mut self, share: f64) -> Self {
        self.learner.explore_share = share;
        self
    }

    /// Sets the starting level.
    #[must_use]
    pub fn with_initial_level(mut self, level: LevelId) -> Self {
        self.initial_level = level;
        self
    }

    /// Sets the intake capacity.
    #[must_use]
    pub fn with_intake_capacity(mut self, events: usize) -> Self {
        self.intake_capacity = events;
        self
    }

    /// Sets how many microbatches may await acknowledgement at once (0: off).
    #[must_use]
    pub fn with_flushes_in_flight(mut self, flushes: usize) -> Self {
        self.flushes_in_flight = flushes;
        self
    }

    /// Sets when per-event sends skip the intake (see [`crate::path`]).
    #[must_use]
    pub fn with_path(mut self, path: PathConfig) -> Self {
        self.path = path;
        self
    }

    /// Sets the exploration seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks every field, naming the first that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.producer.validate()?;
        let max_record = self.producer.kafka.max_record_bytes;
        ConfigError::check_range("max_batch_bytes", self.max_batch_bytes, 1_024, max_record)?;
        ConfigError::check_range("intake_capacity", self.intake_capacity, 1, 10_000_000)?;
        ConfigError::check_range("flushes_in_flight", self.flushes_in_flight, 0, 1_000)?;
        ConfigError::check_range(
            "path.after",
            self.path.after,
            Duration::from_millis(10),
            Duration::from_secs(600),
        )?;
        ConfigError::check_range("path.back_below", self.path.back_below, 0.01, 0.99)?;
        ConfigError::check_range(
            "path.linger",
            self.path.linger,
            Duration::ZERO,
            Duration::from_secs(10),
        )?;
        ConfigError::check_range(
            "epoch",
            self.epoch,
            Duration::from_millis(10),
            Duration::from_secs(3_600),
        )?;
        ConfigError::check_range(
            "learner.explore_share",
            self.learner.explore_share,
            0.0,
            1.0,
        )?;
        ConfigError::check_range("learner.ema_alpha", self.learner.ema_alpha, 0.001, 1.0)?;
        ConfigError::check_range(
            "learner.regression_drop",
            self.learner.regression_drop,
            0.0,
            1.0,
        )?;
        ConfigError::check_range(
            "learner.max_batch_events",
            self.learner.max_batch_events,
            1,
            1_000_000,
        )?;
        ConfigError::check_range(
            "controller.hysteresis",
            self.controller.hysteresis,
            0.0,
            0.9,
        )?;
        if self.controller.step_up_window > self.controller.window {
            return Err(ConfigError::new(
                "controller.step_up_window",
                format!("{:?}", self.controller.step_up_window),
                format!("at most controller.window ({:?})", self.controller.window),
            ));
        }
        ConfigError::check_range(
            "controller.bucket",
            self.controller.bucket,
            Duration::from_millis(1),
            self.controller.step_up_window,
        )?;
        if let Some(b) = self.budget {
            ConfigError::check_range("budget", b, Duration::ZERO, Duration::from_secs(24 * 3_600))?;
        }
        if self.profile.is_empty() || self.profile.len() > 200 {
            return Err(ConfigError::new(
                "profile",
                &self.profile,
                "a name of 1 to 200 characters",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_fields_are_named() {
        let ok = AdaptiveConfig::new(ProducerConfig::for_brokers("127.0.0.1:9092"));
        ok.validate().unwrap();
        let e = ok.clone().with_explore_share(1.5).validate().unwrap_err();
        assert!(e.to_string().contains("learner.explore_share"), "{e}");
        let mut c = ok.clone();
        c.max_batch_bytes = 50 << 20;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_batch_bytes")
        );
        let e = ok.clone().with_intake_capacity(0).validate().unwrap_err();
        assert!(e.to_string().contains("intake_capacity"), "{e}");
        let e = ok.with_profile("").validate().unwrap_err();
        assert!(e.to_string().contains("profile"), "{e}");
    }
}
