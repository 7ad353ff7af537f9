//! The ten pressure levels: each a request-rate band and the latency budget that goes with it.
//!
//! ```text
//!  rate (events/s) ──► LevelTable::level_for(rate) ──► LevelId (1..=10) ──► budget, bootstrap (N, T)
//! ```
//!
//! A level's budget is how long an event may wait in the batcher at that load; the busier the
//! producer, the longer it may wait and the larger its batches become.

use std::fmt;
use std::time::Duration;

use kbatch_core::ConfigError;

/// A pressure level, 1 (idle) to [`LevelTable::len`] (the heaviest load).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LevelId(pub u8);

impl fmt::Display for LevelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

/// How a microbatch is cut: at `max_events` events or after `linger`, whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BatchSettings {
    /// Flush when the batch holds this many events.
    pub max_events: u32,
    /// Flush when the batch's oldest event has waited this long.
    pub linger: Duration,
}

impl fmt::Display for BatchSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "N={} T={:.1}ms",
            self.max_events,
            self.linger.as_secs_f64() * 1e3
        )
    }
}

/// One pressure level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Level {
    /// Its number.
    pub id: LevelId,
    /// Lowest request rate (events/s) of its band, inclusive.
    pub min_rate: f64,
    /// How long an event may wait in the batcher at this level.
    pub budget: Duration,
}

/// The levels, ordered by rate band. Bands are contiguous: level *i* covers
/// `[min_rate(i), min_rate(i+1))`, the last level everything above its `min_rate`.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelTable {
    levels: Vec<Level>,
}

impl Default for LevelTable {
    /// L1 1 ms (< 10/s), L2 5 ms (10–100), L3 10 ms (100–500), L4 50 ms (500–2K),
    /// L5 100 ms (2K–10K), L6 500 ms (10K–50K), L7 1 s (50K–200K), L8 5 s (200K–1M),
    /// L9 15 s (1M–5M), L10 30 s (> 5M).
    fn default() -> Self {
        const MS: fn(u64) -> Duration = Duration::from_millis;
        let bands: [(f64, Duration); 10] = [
            (0.0, MS(1)),
            (10.0, MS(5)),
            (100.0, MS(10)),
            (500.0, MS(50)),
            (2_000.0, MS(100)),
            (10_000.0, MS(500)),
            (50_000.0, MS(1_000)),
            (200_000.0, MS(5_000)),
            (1_000_000.0, MS(15_000)),
            (5_000_000.0, MS(30_000)),
        ];
        Self::new(bands.to_vec()).unwrap_or_else(|_| unreachable!("the default table is valid"))
    }
}

impl LevelTable {
    /// The default level when nothing has been measured yet: L5.
    pub const DEFAULT_LEVEL: LevelId = LevelId(5);

    /// A table from `(min_rate, budget)` per level, lowest band first. Fails, naming the level,
    /// unless the first band starts at 0, bands rise strictly, budgets do not fall, every
    /// budget is positive, and there are 1 to 255 levels.
    pub fn new(bands: Vec<(f64, Duration)>) -> Result<Self, ConfigError> {
        if bands.is_empty() || bands.len() > 255 {
            return Err(ConfigError::new(
                "levels",
                bands.len(),
                "between 1 and 255 levels",
            ));
        }
        if bands[0].0 != 0.0 {
            return Err(ConfigError::new(
                "levels[1].min_rate",
                bands[0].0,
                "0: the lowest band starts at 0 events/s",
            ));
        }
        for (i, w) in bands.windows(2).enumerate() {
            let (lo, hi) = (w[0], w[1]);
            if hi.0.partial_cmp(&lo.0) != Some(std::cmp::Ordering::Greater) || !hi.0.is_finite() {
                return Err(ConfigError::new(
                    format!("levels[{}].min_rate", i + 2),
                    hi.0,
                    format!("a finite rate above level {}'s {}", i + 1, lo.0),
                ));
            }
            if hi.1 < lo.1 {
                return Err(ConfigError::new(
                    format!("levels[{}].budget", i + 2),
                    format!("{:?}", hi.1),
                    format!("at least level {}'s {:?}", i + 1, lo.1),
                ));
            }
        }
        if let Some(i) = bands.iter().position(|b| b.1.is_zero()) {
            return Err(ConfigError::new(
                format!("levels[{}].budget", i + 1),
                "0s",
                "a positive duration",
            ));
        }
        let levels = bands
            .into_iter()
            .enumerate()
            .map(|(i, (min_rate, budget))| Level {
                id: LevelId(u8::try_from(i + 1).unwrap_or(u8::MAX)),
                min_rate,
                budget,
            })
            .collect();
        Ok(Self { levels })
    }

    /// Number of levels.
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    /// Never true: a table has at least one level.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// The levels, lowest first.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// The level with this id; ids outside the table clamp to its ends.
    pub fn get(&self, id: LevelId) -> &Level {
        let i = usize::from(id.0.max(1)) - 1;
        &self.levels[i.min(self.levels.len() - 1)]
    }

    /// The highest level.
    pub fn top(&self) -> LevelId {
        self.levels[self.levels.len() - 1].id
    }

    /// The level whose band holds `rate` events/s.
    pub fn level_for(&self, rate: f64) -> LevelId {
        self.levels
            .iter()
            .rev()
            .find(|l| rate >= l.min_rate)
            .map_or(LevelId(1), |l| l.id)
    }

    /// The lowest rate of the band above `id`, or `None` for the top level.
    pub fn upper_rate(&self, id: LevelId) -> Option<f64> {
        self.levels.get(usize::from(id.0)).map(|l| l.min_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_band_selects_its_level() {
        let t = LevelTable::default();
        let cases = [
            (0.0, 1),
            (9.9, 1),
            (10.0, 2),
            (99.0, 2),
            (100.0, 3),
            (499.0, 3),
            (500.0, 4),
            (1_999.0, 4),
            (2_000.0, 5),
            (9_999.0, 5),
            (10_000.0, 6),
            (49_999.0, 6),
            (50_000.0, 7),
            (199_999.0, 7),
            (200_000.0, 8),
            (999_999.0, 8),
            (1_000_000.0, 9),
            (4_999_999.0, 9),
            (5_000_000.0, 10),
            (1e12, 10),
        ];
        for (rate, level) in cases {
            assert_eq!(t.level_for(rate), LevelId(level), "rate {rate}");
        }
        let budgets: Vec<u64> = t
            .levels()
            .iter()
            .map(|l| l.budget.as_millis() as u64)
            .collect();
        assert_eq!(
            budgets,
            [1, 5, 10, 50, 100, 500, 1_000, 5_000, 15_000, 30_000]
        );
        assert_eq!(t.upper_rate(LevelId(5)), Some(10_000.0));
        assert_eq!(t.upper_rate(LevelId(10)), None);
    }

    #[test]
    fn a_bad_table_is_refused_naming_the_level() {
        let ms = Duration::from_millis;
        let e = LevelTable::new(vec![(0.0, ms(1)), (10.0, ms(5)), (5.0, ms(9))]).unwrap_err();
        assert!(e.to_string().contains("levels[3].min_rate"), "{e}");
        let e = LevelTable::new(vec![(0.0, ms(10)), (10.0, ms(5))]).unwrap_err();
        assert!(e.to_string().contains("levels[2].budget"), "{e}");
        let e = LevelTable::new(vec![(1.0, ms(10))]).unwrap_err();
        assert!(e.to_string().contains("levels[1].min_rate"), "{e}");
        let e = LevelTable::new(vec![(0.0, Duration::ZERO)]).unwrap_err();
        assert!(e.to_string().contains("levels[1].budget"), "{e}");
        assert!(LevelTable::new(vec![]).is_err());
    }
}
