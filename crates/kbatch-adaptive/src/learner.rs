//! Learns the best batch settings (N, T) per level: bootstrap from the budget, explore around
//! the best a share of the time, keep what measured better, notice regressions.
//!
//! ```text
//!  choose(level) ──► Choice { settings, explored }      one epoch runs with it
//!  observe(level, choice, epoch stats) ──► Observation (for the calibration store)
//!                                      └─► Some(Regression) when throughput fell > 10 %
//! ```
//!
//! An epoch's score is its delivered rate, discounted when its p99 delivery latency exceeded
//! the level's budget; between two settings that score alike, the lower p99 wins. Below
//! saturation every setting delivers what is offered, so latency decides; at saturation
//! throughput does. A pure state machine: the caller passes the epoch's measurements in and a
//! seed for the exploration draws.

use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::levels::{BatchSettings, Level, LevelId, LevelTable};

/// How the learner explores and judges.
#[derive(Clone, Debug, PartialEq)]
pub struct LearnerConfig {
    /// Share of epochs that try a setting near the best. Default 0.2.
    pub explore_share: f64,
    /// Weight of the newest epoch in the expected-throughput average. Default 0.2.
    pub ema_alpha: f64,
    /// A drop of more than this fraction below the expected throughput, while the load was
    /// there, is a regression. Default 0.1.
    pub regression_drop: f64,
    /// A setting replaces the best only when it scores this fraction better. Default 0.02.
    pub min_improvement: f64,
    /// The largest N ever chosen. Default 10,000.
    pub max_batch_events: u32,
    /// Start every level with no linger (T = 0) instead of half its budget. The adaptive
    /// producer sets it for per-event delivery without a pipeline bound
    /// (`flushes_in_flight` 0): there the client batches whatever is queued on its own, so
    /// lingering in the intake only adds latency unless it buys throughput — which
    /// exploration finds out (doubling T from 0 tries 1/64 of the budget).
    pub linger_from_zero: bool,
    /// Never choose N below the level's bootstrap N (what the band's top rate brings in
    /// during half the budget). The adaptive producer sets it when a pipeline bound cuts
    /// batches early (`flushes_in_flight` > 0): there a batch is what arrived during a round
    /// trip and N only caps it, so a smaller N buys no latency — it only turns batches into
    /// "full" ones that go past the bound as many small requests (halving N at L7 to 1,250
    /// did that: p99 at 100,000/s rose four-fold in one bench round).
    pub events_floor_at_bootstrap: bool,
}

impl Default for LearnerConfig {
    fn default() -> Self {
        Self {
            explore_share: 0.2,
            ema_alpha: 0.2,
            regression_drop: 0.1,
            min_improvement: 0.02,
            max_batch_events: 10_000,
            linger_from_zero: false,
            events_floor_at_bootstrap: false,
        }
    }
}

/// What one epoch measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EpochStats {
    /// Events handed in during the epoch.
    pub submitted: u64,
    /// Events acknowledged during the epoch.
    pub delivered: u64,
    /// How long the epoch lasted.
    pub elapsed: Duration,
    /// Median time from hand-in to acknowledgement.
    pub p50: Duration,
    /// 99th percentile of the same.
    pub p99: Duration,
    /// Mean batch size ÷ N.
    pub fill: f64,
}

impl EpochStats {
    /// Acknowledged events per second.
    pub fn throughput(&self) -> f64 {
        per_second(self.delivered, self.elapsed)
    }

    /// Handed-in events per second.
    pub fn offered(&self) -> f64 {
        per_second(self.submitted, self.elapsed)
    }
}

fn per_second(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// The settings for an epoch, and whether they are an exploration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// N and T.
    pub settings: BatchSettings,
    /// True when trying something other than the best.
    pub explored: bool,
}

/// What was learned about one level: what is remembered across restarts.
#[derive(Clone, Debug, PartialEq)]
pub struct Learned {
    /// The level.
    pub level: LevelId,
    /// The best settings so far.
    pub best: BatchSettings,
    /// Expected throughput at the best settings (events/s, moving average); 0 when unknown.
    pub expected_throughput: f64,
    /// The p99 the best settings measured last.
    pub p99: Duration,
    /// Epochs observed at this level.
    pub observations: u64,
}

/// One judged epoch, for the calibration store.
#[derive(Clone, Debug, PartialEq)]
pub struct Judged {
    /// The level.
    pub level: LevelId,
    /// The settings used.
    pub choice: Choice,
    /// Its measurements.
    pub stats: EpochStats,
    /// When it ended.
    pub at: SystemTime,
    /// Set when the epoch fell more than the allowed drop below the expected throughput.
    pub regression: Option<Regression>,
    /// True when this epoch's settings became the level's best.
    pub promoted: bool,
}

/// Throughput fell below what this level's best settings have delivered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Regression {
    /// Expected events/s.
    pub expected: f64,
    /// Measured events/s.
    pub measured: f64,
}

#[derive(Clone, Debug)]
struct LevelState {
    best: BatchSettings,
    best_score: Option<f64>,
    best_p99: Duration,
    expected: Option<f64>,
    observations: u64,
}

/// The learner.
#[derive(Debug)]
pub struct Learner {
    table: LevelTable,
    config: LearnerConfig,
    levels: Vec<LevelState>,
    rng: StdRng,
}

impl Learner {
    /// A learner with every level at its bootstrap settings.
    pub fn new(table: LevelTable, config: LearnerConfig, seed: u64) -> Self {
        let levels = table
            .levels()
            .iter()
            .map(|l| LevelState {
                best: {
                    let b = bootstrap(l, table.upper_rate(l.id), config.max_batch_events);
                    if config.linger_from_zero {
                        BatchSettings {
                            linger: Duration::ZERO,
                            ..b
                        }
                    } else {
                        b
                    }
                },
                best_score: None,
                best_p99: Duration::ZERO,
                expected: None,
                observations: 0,
            })
            .collect();
        Self {
            table,
            config,
            levels,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn state(&mut self, level: LevelId) -> &mut LevelState {
        let i = usize::from(self.table.get(level).id.0) - 1;
        &mut self.levels[i]
    }

    /// Starts from what a previous run learned. Settings that no longer fit (a budget that
    /// shrank, a smaller N cap) are clamped; unknown levels are ignored.
    pub fn restore(&mut self, learned: &[Learned]) {
        for l in learned {
            if l.level.0 == 0 || usize::from(l.level.0) > self.table.len() {
                continue;
            }
            let best = self.clamp(l.level, l.best);
            let s = self.state(l.level);
            s.best = best;
            s.expected = (l.expected_throughput > 0.0).then_some(l.expected_throughput);
            s.best_score = s.expected;
            s.best_p99 = l.p99;
            s.observations = l.observations;
        }
    }

    /// What has been learned, every level.
    pub fn learned(&self) -> Vec<Learned> {
        self.table
            .levels()
            .iter()
            .zip(&self.levels)
            .map(|(l, s)| Learned {
                level: l.id,
                best: s.best,
                expected_throughput: s.expected.unwrap_or(0.0),
                p99: s.best_p99,
                observations: s.observations,
            })
            .collect()
    }

    /// The best settings known for `level`.
    pub fn best(&self, level: LevelId) -> BatchSettings {
        self.levels[usize::from(self.table.get(level).id.0) - 1].best
    }

    /// Settings for the next epoch at `level`: the best, or with probability `explore_share`
    /// a neighbour of it (N or T halved or doubled), never beyond the budget or the N cap.
    pub fn choose(&mut self, level: LevelId) -> Choice {
        let best = self.best(level);
        if !self
            .rng
            .random_bool(self.config.explore_share.clamp(0.0, 1.0))
        {
            return Choice {
                settings: best,
                explored: false,
            };
        }
        let up = grow(best.linger, self.table.get(level).budget);
        let candidate = loop {
            let (n, t) = (best.max_events, best.linger);
            let c = match self.rng.random_range(0..6u8) {
                0 => BatchSettings {
                    max_events: n.saturating_mul(2),
                    linger: t,
                },
                1 => BatchSettings {
                    max_events: n / 2,
                    linger: t,
                },
                2 => BatchSettings {
                    max_events: n,
                    linger: up,
                },
                3 => BatchSettings {
                    max_events: n,
                    linger: t / 2,
                },
                4 => BatchSettings {
                    max_events: n.saturating_mul(2),
                    linger: up,
                },
                _ => BatchSettings {
                    max_events: n / 2,
                    linger: t / 2,
                },
            };
            let c = self.clamp(level, c);
            // Where every neighbour clamps back to the best (N = 1, T = 0 at L1), that is the
            // only choice; otherwise draw until something differs.
            if c != best || self.neighbours_all_clamp(level, best) {
                break c;
            }
        };
        Choice {
            settings: candidate,
            explored: candidate != best,
        }
    }

    fn neighbours_all_clamp(&self, level: LevelId, best: BatchSettings) -> bool {
        let (n, t) = (best.max_events, best.linger);
        let up = grow(t, self.table.get(level).budget);
        [(n.saturating_mul(2), t), (n / 2, t), (n, up), (n, t / 2)]
            .into_iter()
            .all(|(max_events, linger)| {
                self.clamp(level, BatchSettings { max_events, linger }) == best
            })
    }

    /// Keeps settings within the level's budget and the N cap (and above the bootstrap N,
    /// with [`LearnerConfig::events_floor_at_bootstrap`]).
    pub fn clamp(&self, level: LevelId, s: BatchSettings) -> BatchSettings {
        let lv = self.table.get(level);
        let cap = self.config.max_batch_events.max(1);
        let floor = if self.config.events_floor_at_bootstrap {
            bootstrap(lv, self.table.upper_rate(lv.id), cap).max_events
        } else {
            1
        };
        BatchSettings {
            max_events: s.max_events.clamp(floor, cap),
            linger: s.linger.min(lv.budget),
        }
    }

    /// Judges an epoch run at `level` with `choice`. Epochs without load teach nothing and
    /// return `None`.
    pub fn observe(
        &mut self,
        level: LevelId,
        choice: Choice,
        stats: EpochStats,
        at: SystemTime,
    ) -> Option<Judged> {
        if stats.submitted == 0 && stats.delivered == 0 {
            return None;
        }
        let budget = self.table.get(level).budget;
        let config = self.config.clone();
        let score = score(&stats, budget);
        let s = self.state(level);
        s.observations += 1;
        let mut regression = None;
        let mut promoted = false;
        if choice.settings == s.best {
            // Below demand by more than the allowed drop while the demand was there.
            if let Some(expected) = s.expected
                && stats.throughput() < expected * (1.0 - config.regression_drop)
                && stats.offered() >= expected
            {
                regression = Some(Regression {
                    expected,
                    measured: stats.throughput(),
                });
            }
            let a = config.ema_alpha;
            s.expected = Some(s.expected.map_or(stats.throughput(), |e| {
                e * (1.0 - a) + stats.throughput() * a
            }));
            s.best_score = Some(s.best_score.map_or(score, |b| b * (1.0 - a) + score * a));
            s.best_p99 = stats.p99;
        } else {
            let better = match s.best_score {
                None => true,
                Some(b) => {
                    score > b * (1.0 + config.min_improvement)
                        || (score >= b * (1.0 - config.min_improvement)
                            && stats.p99.as_secs_f64() < s.best_p99.as_secs_f64() * 0.9)
                }
            };
            if better {
                s.best = choice.settings;
                s.best_score = Some(score);
                s.best_p99 = stats.p99;
                s.expected = Some(stats.throughput());
                promoted = true;
            }
        }
        Some(Judged {
            level,
            choice,
            stats,
            at,
            regression,
            promoted,
        })
    }
}

/// Delivered events/s, discounted by how far the p99 overshot the budget.
fn score(stats: &EpochStats, budget: Duration) -> f64 {
    let t = stats.throughput();
    if stats.p99 <= budget || stats.p99.is_zero() {
        t
    } else {
        t * budget.as_secs_f64() / stats.p99.as_secs_f64()
    }
}

/// T doubled; from zero, the smallest step worth trying: 1/64 of the budget.
fn grow(t: Duration, budget: Duration) -> Duration {
    if t.is_zero() { budget / 64 } else { t * 2 }
}

/// The starting point for a level: linger half its budget (the other half is for the trip
/// to the broker), N what the band's top rate brings in during that linger.
pub fn bootstrap(level: &Level, upper_rate: Option<f64>, cap: u32) -> BatchSettings {
    let linger = level.budget / 2;
    let rate = upper_rate.unwrap_or(level.min_rate * 2.0);
    let n = (rate * linger.as_secs_f64()).ceil();
    BatchSettings {
        max_events: (n.min(f64::from(u32::MAX)) as u32).clamp(1, cap.max(1)),
        linger,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn stats(delivered: u64, p99_ms: u64) -> EpochStats {
        EpochStats {
            submitted: delivered,
            delivered,
            elapsed: Duration::from_secs(1),
            p50: Duration::from_millis(p99_ms / 2),
            p99: Duration::from_millis(p99_ms),
            fill: 1.0,
        }
    }

    #[test]
    fn bootstrap_follows_the_budget_and_the_band() {
        let t = LevelTable::default();
        let l = Learner::new(t.clone(), LearnerConfig::default(), 1);
        let got: Vec<(u32, u64)> = t
            .levels()
            .iter()
            .map(|lv| {
                let b = l.best(lv.id);
                (b.max_events, b.linger.as_micros() as u64)
            })
            .collect();
        assert_eq!(got[0], (1, 500)); // L1: 1 ms budget
        assert_eq!(got[4], (500, 50_000)); // L5: 10k/s × 50 ms
        assert_eq!(got[9], (10_000, 15_000_000)); // L10: capped
        for (lv, (_, t_us)) in t.levels().iter().zip(&got) {
            assert!(Duration::from_micros(*t_us) <= lv.budget);
        }
    }

    #[test]
    fn from_zero_linger_exploration_tries_a_positive_one_within_the_budget() {
        let config = LearnerConfig {
            linger_from_zero: true,
            explore_share: 1.0,
            ..LearnerConfig::default()
        };
        let mut l = Learner::new(LevelTable::default(), config, 5);
        let lv = LevelId(6);
        assert_eq!(l.best(lv).linger, Duration::ZERO);
        assert_eq!(l.best(lv).max_events, 10_000, "N still from the band");
        let tried: Vec<Duration> = (0..50).map(|_| l.choose(lv).settings.linger).collect();
        assert!(
            tried.contains(&(Duration::from_millis(500) / 64)),
            "{tried:?}"
        );
        assert!(tried.iter().all(|t| *t <= Duration::from_millis(500)));
    }

    #[test]
    fn a_better_setting_is_kept_and_a_worse_one_is_not() {
        let mut l = Learner::new(LevelTable::default(), LearnerConfig::default(), 7);
        let lv = LevelId(7);
        let best = l.best(lv);
        let exploit = Choice {
            settings: best,
            explored: false,
        };
        l.observe(lv, exploit, stats(100_000, 400), SystemTime::now());
        let worse = Choice {
            settings: BatchSettings {
                max_events: best.max_events / 2,
                ..best
            },
            explored: true,
        };
        let j = l
            .observe(lv, worse, stats(80_000, 400), SystemTime::now())
            .unwrap();
        assert!(!j.promoted);
        assert_eq!(l.best(lv), best);
        // Same throughput, much lower latency: kept.
        let faster = Choice {
            settings: BatchSettings {
                linger: best.linger / 2,
                ..best
            },
            explored: true,
        };
        let j = l
            .observe(lv, faster, stats(100_000, 200), SystemTime::now())
            .unwrap();
        assert!(j.promoted);
        assert_eq!(l.best(lv), faster.settings);
    }

    #[test]
    fn a_drop_below_expectation_under_load_is_a_regression_and_a_quiet_epoch_is_not() {
        let mut l = Learner::new(LevelTable::default(), LearnerConfig::default(), 7);
        let lv = LevelId(6);
        let c = Choice {
            settings: l.best(lv),
            explored: false,
        };
        for _ in 0..5 {
            assert!(
                l.observe(lv, c, stats(40_000, 100), SystemTime::now())
                    .unwrap()
                    .regression
                    .is_none()
            );
        }
        // Less offered: less delivered, but kept up: not a regression.
        let quiet = stats(20_000, 100);
        assert!(
            l.observe(lv, c, quiet, SystemTime::now())
                .unwrap()
                .regression
                .is_none()
        );
        // Offered 40k, delivered 30k: a regression.
        let mut behind = stats(30_000, 100);
        behind.submitted = 45_000;
        let r = l
            .observe(lv, c, behind, SystemTime::now())
            .unwrap()
            .regression;
        assert!(r.is_some_and(|r| r.measured < r.expected * 0.9), "{r:?}");
        assert!(
            l.observe(lv, c, EpochStats::default(), SystemTime::now())
                .is_none()
        );
    }

    #[test]
    fn restore_starts_from_what_was_learned_and_clamps_to_the_budget() {
        let mut l = Learner::new(LevelTable::default(), LearnerConfig::default(), 1);
        let kept = BatchSettings {
            max_events: 777,
            linger: Duration::from_millis(30),
        };
        let too_long = BatchSettings {
            max_events: 50_000,
            linger: Duration::from_secs(9),
        };
        l.restore(&[
            Learned {
                level: LevelId(5),
                best: kept,
                expected_throughput: 9_000.0,
                p99: Duration::from_millis(40),
                observations: 12,
            },
            Learned {
                level: LevelId(2),
                best: too_long,
                expected_throughput: 0.0,
                p99: Duration::ZERO,
                observations: 1,
            },
            Learned {
                level: LevelId(42),
                best: kept,
                expected_throughput: 1.0,
                p99: Duration::ZERO,
                observations: 1,
            },
        ]);
        assert_eq!(l.best(LevelId(5)), kept);
        assert_eq!(
            l.best(LevelId(2)),
            BatchSettings {
                max_events: 10_000,
                linger: Duration::from_millis(5)
            }
        );
        let back = l.learned();
        assert_eq!(back[4].observations, 12);
        assert_eq!(back[4].expected_throughput, 9_000.0);
    }

    #[test]
    fn about_a_fifth_of_the_epochs_explore() {
        let mut l = Learner::new(LevelTable::default(), LearnerConfig::default(), 3);
        let explored = (0..10_000)
            .filter(|_| l.choose(LevelId(6)).explored)
            .count();
        assert!((1_700..2_300).contains(&explored), "{explored}");
    }

    proptest! {
        /// Whatever was learned and whatever the draws, a chosen setting never lingers longer
        /// than its level's budget and N stays within 1..=cap (and, with the floor, never
        /// below the level's bootstrap N).
        #[test]
        fn exploration_never_breaks_the_budget(
            seed in any::<u64>(),
            budgets_ms in prop::collection::vec(1u64..60_000, 1..12),
            epochs in prop::collection::vec((0usize..12, 0u64..1_000_000, 0u64..100_000, any::<bool>()), 0..200),
            cap in 1u32..50_000,
            floor in any::<bool>(),
        ) {
            let mut budgets = budgets_ms.clone();
            budgets.sort_unstable();
            let bands: Vec<(f64, Duration)> = budgets
                .iter()
                .enumerate()
                .map(|(i, b)| (i as f64 * 1_000.0, Duration::from_millis(*b)))
                .collect();
            let table = LevelTable::new(bands).unwrap();
            let config = LearnerConfig {
                max_batch_events: cap,
                explore_share: 0.5,
                events_floor_at_bootstrap: floor,
                ..LearnerConfig::default()
            };
            let mut l = Learner::new(table.clone(), config, seed);
            for (lv, delivered, p99_us, _) in epochs {
                let level = LevelId((lv % table.len()) as u8 + 1);
                let c = l.choose(level);
                let budget = table.get(level).budget;
                prop_assert!(c.settings.linger <= budget, "{:?} > {:?}", c.settings.linger, budget);
                prop_assert!((1..=cap).contains(&c.settings.max_events));
                if floor {
                    let lowest = bootstrap(table.get(level), table.upper_rate(level), cap).max_events;
                    prop_assert!(c.settings.max_events >= lowest, "N {} < {lowest}", c.settings.max_events);
                }
                let st = EpochStats {
                    submitted: delivered, delivered, elapsed: Duration::from_secs(1),
                    p50: Duration::from_micros(p99_us / 2), p99: Duration::from_micros(p99_us), fill: 0.5,
                };
                l.observe(level, c, st, SystemTime::now());
                let best = l.best(level);
                prop_assert!(best.linger <= budget && (1..=cap).contains(&best.max_events));
            }
        }
    }
}
