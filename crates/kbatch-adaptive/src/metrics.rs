//! The adaptive producer's metrics (through the `metrics` facade).

use crate::levels::{BatchSettings, LevelId};

/// Metric handles labelled with the calibration profile.
pub(crate) struct Metrics {
    profile: String,
}

impl Metrics {
    pub(crate) fn new(profile: &str) -> Self {
        Self {
            profile: profile.to_owned(),
        }
    }

    /// The level and settings in force.
    pub(crate) fn level(&self, level: LevelId, s: BatchSettings) {
        let p = self.profile.clone();
        metrics::gauge!("kbatch_adaptive_level", "profile" => p.clone()).set(f64::from(level.0));
        metrics::gauge!("kbatch_adaptive_batch_max_events", "profile" => p.clone())
            .set(f64::from(s.max_events));
        metrics::gauge!("kbatch_adaptive_linger_seconds", "profile" => p)
            .set(s.linger.as_secs_f64());
    }

    /// An epoch explored.
    pub(crate) fn explored(&self) {
        metrics::counter!("kbatch_adaptive_explorations_total", "profile" => self.profile.clone())
            .increment(1);
    }

    /// An epoch fell below expectation.
    pub(crate) fn regression(&self, level: LevelId) {
        metrics::counter!("kbatch_adaptive_regressions_total", "profile" => self.profile.clone(), "level" => level.to_string())
            .increment(1);
    }
}
