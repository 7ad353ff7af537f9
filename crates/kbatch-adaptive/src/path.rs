//! Which way per-event sends take: through the intake, or straight to a second client that
//! lingers, while the intake is what holds them back.
//!
//! ```text
//!  Intake ──intake saturated at every tick for `after`──► Direct (remembers the rate then)
//!  Direct ──short rate below `back_below` × that rate for `after`──► Intake
//!  each switch: the driver stops taking events, the sender finishes, the client left behind
//!  has every record acknowledged; only then does the other one send (the driver does this)
//! ```
//!
//! The intake exists to make batches larger than the client would alone, within the budget,
//! and its client does not linger (the intake does). When callers find the intake full, it is
//! the slowest stage: every event then waits behind it and the client's queue, far longer than
//! any linger, and each event's hop through the intake, the batcher and the sender task costs a
//! third of the throughput on two cores. Then single-event sends go straight to a second client
//! with a linger of its own (5 ms: batches fill by themselves at that rate, as a static
//! producer's do; a linger-0 client straight from the callers was measured slower than the
//! intake) and come back when the rate has fallen to where the intake kept up with room to
//! spare — half the rate at which it saturated, so a rate between the two capacities does not
//! flap. Two idempotent producers do not order records between them, hence the drain at each
//! switch: no key's record leaves the new client before the old one's are acknowledged.
//!
//! A pure state machine, time passed in; the driver feeds it at each tick.

use std::time::{Duration, Instant};

/// How the path is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PathConfig {
    /// Whether per-event sends may skip the intake at all. Default true.
    pub enabled: bool,
    /// How long the intake must stay saturated (and, to come back, the rate stay low).
    /// Default 200 ms.
    pub after: Duration,
    /// Back to the intake below this fraction of the rate at which it saturated. Default 0.5.
    pub back_below: f64,
    /// The linger of the client the sends go to while they skip the intake. Default 5 ms.
    pub linger: Duration,
}

impl Default for PathConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            after: Duration::from_millis(200),
            back_below: 0.5,
            linger: Duration::from_millis(5),
        }
    }
}

/// The way per-event sends take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Through the intake and the batcher (the default).
    Intake,
    /// Straight to the client.
    Direct,
}

/// The path chooser. See the [module docs](self).
#[derive(Debug)]
pub struct PathSwitch {
    config: PathConfig,
    path: Path,
    /// Since when the condition for leaving the current path has held.
    since: Option<Instant>,
    /// The rate (events/s) at which the intake last saturated.
    saturated_at: f64,
}

impl PathSwitch {
    /// Starts on the intake.
    pub fn new(config: PathConfig) -> Self {
        Self {
            config,
            path: Path::Intake,
            since: None,
            saturated_at: 0.0,
        }
    }

    /// The path in force.
    pub fn path(&self) -> Path {
        self.path
    }

    /// One tick at `now`: whether the intake is saturated (callers wait for room, or it is
    /// at least half full) and the short-window rate. Returns the new path when it changes.
    pub fn tick(&mut self, now: Instant, intake_saturated: bool, rate: f64) -> Option<Path> {
        if !self.config.enabled {
            return None;
        }
        let leaving = match self.path {
            Path::Intake => intake_saturated,
            Path::Direct => rate < self.config.back_below * self.saturated_at,
        };
        if !leaving {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.config.after {
            return None;
        }
        self.since = None;
        self.path = match self.path {
            Path::Intake => {
                self.saturated_at = rate;
                Path::Direct
            }
            Path::Direct => Path::Intake,
        };
        Some(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    /// Runs `secs` of ticks from `from` with `saturated` and `rate`; returns the changes and
    /// when they happened (seconds after `t0`).
    fn run(
        s: &mut PathSwitch,
        t0: Instant,
        from: f64,
        secs: f64,
        saturated: bool,
        rate: f64,
    ) -> Vec<(f64, Path)> {
        let mut out = Vec::new();
        let mut t = from;
        while t < from + secs - 1e-9 {
            if let Some(p) = s.tick(t0 + Duration::from_secs_f64(t), saturated, rate) {
                out.push((t, p));
            }
            t += TICK.as_secs_f64();
        }
        out
    }

    #[test]
    fn a_saturated_intake_sends_direct_after_the_delay_and_a_short_one_does_not() {
        let t0 = Instant::now();
        let mut s = PathSwitch::new(PathConfig::default());
        // 150 ms saturated, then not: nothing changes.
        assert!(run(&mut s, t0, 0.0, 0.15, true, 600_000.0).is_empty());
        assert!(run(&mut s, t0, 0.15, 0.1, false, 600_000.0).is_empty());
        assert_eq!(s.path(), Path::Intake);
        // Saturated from 0.25 s: direct 200 ms later, not before.
        let changes = run(&mut s, t0, 0.25, 1.0, true, 600_000.0);
        assert_eq!(changes.len(), 1);
        let (at, p) = changes[0];
        assert_eq!(p, Path::Direct);
        assert!((0.449..0.461).contains(&at), "switched at {at} s");
    }

    #[test]
    fn back_to_the_intake_only_below_half_the_saturated_rate_and_no_flapping_between() {
        let t0 = Instant::now();
        let mut s = PathSwitch::new(PathConfig::default());
        run(&mut s, t0, 0.0, 0.5, true, 600_000.0);
        assert_eq!(s.path(), Path::Direct);
        // Direct runs faster than the intake did, then settles between the two capacities.
        for (i, rate) in [900_000.0, 310_000.0, 590_000.0, 301_000.0, 450_000.0]
            .into_iter()
            .enumerate()
        {
            let from = 0.5 + i as f64;
            assert!(
                run(&mut s, t0, from, 1.0, false, rate).is_empty(),
                "switched at {rate}/s"
            );
        }
        // A dip below half shorter than the delay changes nothing; a longer one does.
        assert!(run(&mut s, t0, 5.5, 0.15, false, 100_000.0).is_empty());
        assert!(run(&mut s, t0, 5.65, 0.1, false, 400_000.0).is_empty());
        let changes = run(&mut s, t0, 5.75, 1.0, false, 100_000.0);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].1, Path::Intake);
        assert!((0.199..0.211).contains(&(changes[0].0 - 5.75)));
    }

    #[test]
    fn it_saturates_again_at_the_new_rate_and_disabled_never_moves() {
        let t0 = Instant::now();
        let mut s = PathSwitch::new(PathConfig::default());
        run(&mut s, t0, 0.0, 0.5, true, 600_000.0);
        run(&mut s, t0, 0.5, 0.5, false, 100_000.0);
        assert_eq!(s.path(), Path::Intake);
        // Saturated again at a lower rate (a slower broker): the way back is judged from it.
        run(&mut s, t0, 1.0, 0.5, true, 200_000.0);
        assert_eq!(s.path(), Path::Direct);
        assert!(run(&mut s, t0, 1.5, 1.0, false, 150_000.0).is_empty());
        let mut off = PathSwitch::new(PathConfig {
            enabled: false,
            ..PathConfig::default()
        });
        assert!(run(&mut off, t0, 0.0, 2.0, true, 600_000.0).is_empty());
        assert_eq!(off.path(), Path::Intake);
    }
}
