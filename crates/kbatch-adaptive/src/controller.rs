//! Picks the pressure level from the observed request rate.
//!
//! ```text
//!  arrivals(n, now) ──► 100 ms buckets ──► long rate (10 s)  ──► step down, with hysteresis
//!                                     └──► short rate (1 s)  ──► step up at once
//!  tick(now) ──► Some(new level) when it changes
//! ```
//!
//! A burst moves the level up as soon as the short window sees it, so a burst never waits a
//! long window out at a low level. Going down needs both windows below the current band by
//! the hysteresis margin and a minimum dwell at the current level, so a steady rate at a band
//! edge stays at one level.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::levels::{LevelId, LevelTable};

/// How the controller measures and moves.
#[derive(Clone, Debug, PartialEq)]
pub struct ControllerConfig {
    /// The rate window for stepping down. Default 10 s.
    pub window: Duration,
    /// The short window that steps up on a burst. Default 1 s.
    pub step_up_window: Duration,
    /// Going down needs the rate this fraction below the current band's floor. Default 0.2.
    pub hysteresis: f64,
    /// Least time at a level before stepping down. Default 2 s.
    pub min_dwell: Duration,
    /// Resolution of the rate windows. Default 100 ms.
    pub bucket: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            step_up_window: Duration::from_secs(1),
            hysteresis: 0.2,
            min_dwell: Duration::from_secs(2),
            bucket: Duration::from_millis(100),
        }
    }
}

/// Rates measured over the two windows, events/s.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// Over the long window (or since start, when younger).
    pub long: f64,
    /// Over the short window (or since start, when younger).
    pub short: f64,
}

/// The level controller: a pure state machine, time passed in.
#[derive(Debug)]
pub struct Controller {
    table: LevelTable,
    config: ControllerConfig,
    /// Counts per bucket, newest last; the front is `start` + `first_bucket` × bucket.
    buckets: VecDeque<u64>,
    first_bucket: u64,
    start: Instant,
    level: LevelId,
    since: Instant,
}

impl Controller {
    /// A controller at `initial` level, its clock starting at `now`.
    pub fn new(
        table: LevelTable,
        config: ControllerConfig,
        initial: LevelId,
        now: Instant,
    ) -> Self {
        let initial = table.get(initial).id;
        Self {
            table,
            config,
            buckets: VecDeque::new(),
            first_bucket: 0,
            start: now,
            level: initial,
            since: now,
        }
    }

    /// The current level.
    pub fn level(&self) -> LevelId {
        self.level
    }

    /// The level table.
    pub fn table(&self) -> &LevelTable {
        &self.table
    }

    fn bucket_of(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.start).as_nanos();
        (nanos / self.config.bucket.as_nanos().max(1)) as u64
    }

    fn window_buckets(&self, w: Duration) -> u64 {
        (w.as_nanos() / self.config.bucket.as_nanos().max(1)).max(1) as u64
    }

    /// Drops buckets older than the long window and makes the bucket for `now` the last.
    fn advance(&mut self, now: Instant) {
        let current = self.bucket_of(now);
        let keep = self.window_buckets(self.config.window);
        let last = self.first_bucket + self.buckets.len() as u64;
        if current + 1 > last {
            let missing = current + 1 - last;
            if missing > keep {
                self.buckets.clear();
                self.first_bucket = current + 1 - keep.min(current + 1);
                self.buckets
                    .resize((current + 1 - self.first_bucket) as usize, 0);
            } else {
                self.buckets
                    .extend(std::iter::repeat_n(0, missing as usize));
            }
        }
        while self.buckets.len() as u64 > keep {
            self.buckets.pop_front();
            self.first_bucket += 1;
        }
    }

    /// Records `n` arrivals at `now`.
    pub fn record(&mut self, n: u64, now: Instant) {
        self.advance(now);
        if let Some(b) = self.buckets.back_mut() {
            *b += n;
        }
    }

    /// The rate over the last `w`, or over the time since start when that is shorter. The
    /// current (partial) bucket counts with the part of it that has elapsed.
    fn rate_over(&self, w: Duration, now: Instant) -> f64 {
        let n = self.window_buckets(w) as usize;
        let sum: u64 = self.buckets.iter().rev().take(n).sum();
        let age = now.saturating_duration_since(self.start);
        let bucket = self.config.bucket;
        let partial = Duration::from_nanos(
            (age.as_nanos() % bucket.as_nanos().max(1)).min(u128::from(u64::MAX)) as u64,
        );
        // The window covers n-1 whole buckets plus the elapsed part of the current one.
        let span = (bucket * (n as u32 - 1) + partial)
            .min(age)
            .max(bucket.min(age));
        if span.is_zero() {
            return 0.0;
        }
        sum as f64 / span.as_secs_f64()
    }

    /// The rates at `now`.
    pub fn rates(&mut self, now: Instant) -> Rates {
        self.advance(now);
        Rates {
            long: self.rate_over(self.config.window, now),
            short: self.rate_over(self.config.step_up_window, now),
        }
    }

    /// Re-evaluates the level at `now`; returns the new level when it changed.
    pub fn tick(&mut self, now: Instant) -> Option<LevelId> {
        let rates = self.rates(now);
        let up = self.table.level_for(rates.short.max(rates.long));
        if up > self.level {
            return Some(self.move_to(up, now));
        }
        let floor = self.table.get(self.level).min_rate * (1.0 - self.config.hysteresis);
        let dwelt = now.saturating_duration_since(self.since) >= self.config.min_dwell;
        if dwelt && rates.long < floor && rates.short < floor {
            let down = self.table.level_for(rates.long.max(rates.short));
            if down < self.level {
                return Some(self.move_to(down, now));
            }
        }
        None
    }

    fn move_to(&mut self, level: LevelId, now: Instant) -> LevelId {
        self.level = level;
        self.since = now;
        level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A controller with the default table and settings, starting at `initial`.
    fn defaults(initial: LevelId, t0: Instant) -> Controller {
        Controller::new(
            LevelTable::default(),
            ControllerConfig::default(),
            initial,
            t0,
        )
    }

    /// Feeds `rate` events/s for `secs` in 10 ms steps; returns every level change with the
    /// time it happened (seconds after `t0`).
    fn run(c: &mut Controller, t0: Instant, from: f64, secs: f64, rate: f64) -> Vec<(f64, u8)> {
        let step = Duration::from_millis(10);
        let mut changes = Vec::new();
        let mut owed = 0.0;
        let mut t = from;
        while t < from + secs {
            owed += rate * step.as_secs_f64();
            let n = owed.floor();
            owed -= n;
            let now = t0 + Duration::from_secs_f64(t);
            c.record(n as u64, now);
            if let Some(l) = c.tick(now) {
                changes.push((t, l.0));
            }
            t += step.as_secs_f64();
        }
        changes
    }

    #[test]
    fn a_steady_rate_in_each_band_settles_on_its_level() {
        for (rate, level) in [
            (5.0, 1),
            (50.0, 2),
            (300.0, 3),
            (1_000.0, 4),
            (5_000.0, 5),
            (20_000.0, 6),
            (100_000.0, 7),
            (500_000.0, 8),
            (2_000_000.0, 9),
            (8_000_000.0, 10),
        ] {
            let t0 = Instant::now();
            let mut c = defaults(LevelTable::DEFAULT_LEVEL, t0);
            run(&mut c, t0, 0.0, 30.0, rate);
            assert_eq!(c.level(), LevelId(level), "rate {rate}");
        }
    }

    #[test]
    fn a_burst_steps_up_within_the_short_window() {
        let t0 = Instant::now();
        let mut c = defaults(LevelId(1), t0);
        assert!(run(&mut c, t0, 0.0, 20.0, 5.0).is_empty());
        // 20 s quiet at 5/s, then a burst of 100k/s: L7 within the 1 s short window.
        let changes = run(&mut c, t0, 20.0, 3.0, 100_000.0);
        let reached = changes
            .iter()
            .find(|(_, l)| *l == 7)
            .map(|(t, _)| t - 20.0)
            .expect("reaches L7");
        assert!(
            reached <= 1.0,
            "reached L7 after {reached:.2} s: {changes:?}"
        );
        assert_eq!(c.level(), LevelId(7));
    }

    #[test]
    fn a_steady_rate_at_a_band_edge_does_not_flap() {
        // 10,000/s is L6's floor; arrivals jitter ±10 % around it every 10 ms.
        let t0 = Instant::now();
        let mut c = defaults(LevelTable::DEFAULT_LEVEL, t0);
        let step = Duration::from_millis(10);
        let mut changes = Vec::new();
        for i in 0..6_000u32 {
            let jitter = if i % 2 == 0 { 1.1 } else { 0.9 };
            let now = t0 + step * i;
            c.record((100.0 * jitter) as u64, now);
            if let Some(l) = c.tick(now) {
                changes.push((i, l));
            }
        }
        assert!(changes.len() <= 1, "flapped: {changes:?}");
    }

    #[test]
    fn stepping_down_waits_for_the_hysteresis_margin_and_the_long_window() {
        let t0 = Instant::now();
        let mut c = defaults(LevelTable::DEFAULT_LEVEL, t0);
        run(&mut c, t0, 0.0, 15.0, 20_000.0);
        assert_eq!(c.level(), LevelId(6));
        // 9,000/s is below L6's 10,000 floor but within 20 %: stays.
        assert!(run(&mut c, t0, 15.0, 30.0, 9_000.0).is_empty());
        // 1,000/s: down to L4, and only once the long window has mostly forgotten 9,000/s.
        let changes = run(&mut c, t0, 45.0, 30.0, 1_000.0);
        let first = changes.first().expect("steps down").0 - 45.0;
        assert!(first >= 1.0, "stepped down after {first:.2} s");
        assert_eq!(c.level(), LevelId(4), "{changes:?}");
    }

    #[test]
    fn silence_after_load_goes_back_to_the_lowest_level() {
        let t0 = Instant::now();
        let mut c = defaults(LevelTable::DEFAULT_LEVEL, t0);
        run(&mut c, t0, 0.0, 5.0, 50_000.0);
        assert_eq!(c.level(), LevelId(7));
        run(&mut c, t0, 5.0, 60.0, 0.0);
        assert_eq!(c.level(), LevelId(1));
    }
}
