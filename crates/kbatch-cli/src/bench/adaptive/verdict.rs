//! The targets, evaluated from the rounds (met / missed), and every place the adaptive
//! producer is behind a static configuration, whether or not a target covers it.
//!
//! A ratio is taken within each round (adaptive ÷ the best static run of that same round), so
//! the spread of the ratios is the spread the machine put on the comparison; the verdict is
//! the median ratio's.

use serde::Serialize;

use super::contenders::Contender;
use super::load::Load;
use super::report::{Run, Spread};
use crate::bench::median;

/// One target and how it came out.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Verdict {
    pub(super) target: String,
    /// `≤ 1.2`, `≥ 0.95`…
    pub(super) bound: String,
    /// The ratio in each round that had both sides.
    pub(super) per_round: Vec<f64>,
    pub(super) ratio: Option<Spread>,
    /// Rounds whose ratio met the bound.
    pub(super) rounds_met: usize,
    /// The median ratio meets the bound; `None` when it could not be evaluated.
    pub(super) met: Option<bool>,
    /// What was compared, with the medians, or why it was not evaluated.
    pub(super) detail: String,
}

impl Verdict {
    /// `MET`, `MISSED` or `NOT EVALUATED`.
    pub(super) fn word(&self) -> &'static str {
        match self.met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "NOT EVALUATED",
        }
    }
}

/// What a comparison reads from a run.
pub(super) type Metric = fn(&Run) -> f64;

/// Higher is better (throughput) or lower is (latency).
#[derive(Clone, Copy)]
pub(super) enum Better {
    Higher,
    Lower,
}

/// What one target compares: `ours` against the best of `theirs` in each round.
pub(super) struct Comparison<'a> {
    pub(super) target: String,
    pub(super) bench: &'a str,
    pub(super) load: &'a str,
    pub(super) ours: &'a str,
    pub(super) theirs: &'a [String],
    pub(super) metric: Metric,
    pub(super) metric_name: &'a str,
    pub(super) better: Better,
    /// The ratio ours ÷ theirs must be at most (Lower) or at least (Higher) this.
    pub(super) bound: f64,
}

impl Comparison<'_> {
    pub(super) fn evaluate(&self, runs: &[Run], rounds: u32) -> Verdict {
        let at = |round: u32, key: &str| {
            runs.iter()
                .find(|r| {
                    r.round == round
                        && r.bench == self.bench
                        && r.load == self.load
                        && r.contender == key
                })
                .map(self.metric)
                .filter(|v| v.is_finite())
        };
        let best = |vals: Vec<f64>| match self.better {
            Better::Lower => vals.into_iter().reduce(f64::min),
            Better::Higher => vals.into_iter().reduce(f64::max),
        };
        let per_round: Vec<f64> = (1..=rounds)
            .filter_map(|round| {
                let ours = at(round, self.ours)?;
                let theirs = best(self.theirs.iter().filter_map(|k| at(round, k)).collect())?;
                (theirs > 0.0).then(|| ours / theirs)
            })
            .collect();
        let ok = |x: f64| match self.better {
            Better::Lower => x <= self.bound,
            Better::Higher => x >= self.bound,
        };
        let bound = match self.better {
            Better::Lower => format!("≤ {}", self.bound),
            Better::Higher => format!("≥ {}", self.bound),
        };
        let med = |key: &str| {
            median(
                &(1..=rounds)
                    .filter_map(|round| at(round, key))
                    .collect::<Vec<_>>(),
            )
        };
        let best_theirs = self
            .theirs
            .iter()
            .filter_map(|k| Some((k, med(k)?)))
            .reduce(|a, b| match self.better {
                Better::Lower if b.1 < a.1 => b,
                Better::Higher if b.1 > a.1 => b,
                _ => a,
            });
        let ratio = Spread::of(&per_round);
        let detail = match (med(self.ours), best_theirs, &ratio) {
            (Some(o), Some((k, t)), Some(r)) => format!(
                "{} {}: {} {o:.3} vs best {k} {t:.3} (medians); ratio per round {:.2} / {:.2} / {:.2}",
                self.load, self.metric_name, self.ours, r.min, r.median, r.max
            ),
            (None, ..) => format!("{} has no run at {}", self.ours, self.load),
            _ if self.theirs.is_empty() => {
                format!(
                    "none of the contenders it compares against ran at {}",
                    self.load
                )
            }
            _ => format!("no run of {} at {}", self.theirs.join(", "), self.load),
        };
        Verdict {
            target: self.target.clone(),
            bound,
            rounds_met: per_round.iter().filter(|x| ok(**x)).count(),
            met: ratio.map(|r| ok(r.median)),
            ratio,
            per_round,
            detail,
        }
    }
}

/// A verdict that could not be evaluated, and why.
pub(super) fn not_evaluated(target: String, why: &str) -> Verdict {
    Verdict {
        target,
        bound: String::new(),
        per_round: Vec::new(),
        ratio: None,
        rounds_met: 0,
        met: None,
        detail: why.to_owned(),
    }
}

/// Where `ours` trails another contender at the median of the rounds, in words: per load,
/// every metric in which some contender was better, by how much. `throughput_only` where the
/// latencies do not measure the same thing (BULK's count from the envelope's send).
pub(super) fn behind(
    runs: &[Run],
    bench: &str,
    loads: &[String],
    ours: &str,
    others: &[String],
    throughput_only: bool,
) -> Vec<String> {
    let metrics: [(&str, Metric, Better); 5] = [
        ("p50", |r| r.p50_ms, Better::Lower),
        ("p99", |r| r.p99_ms, Better::Lower),
        ("p99.9", |r| r.p999_ms, Better::Lower),
        ("max", |r| r.max_ms, Better::Lower),
        ("acked events/s", |r| r.acked_per_s, Better::Higher),
    ];
    let med = |load: &str, key: &str, f: Metric| {
        median(
            &runs
                .iter()
                .filter(|r| r.round > 0 && r.bench == bench && r.load == load && r.contender == key)
                .map(f)
                .collect::<Vec<_>>(),
        )
    };
    let mut out = Vec::new();
    for load in loads {
        let mut parts = Vec::new();
        for (name, f, better) in metrics {
            if throughput_only && !name.starts_with("acked") {
                continue;
            }
            let Some(o) = med(load, ours, f) else {
                continue;
            };
            // At a fixed offered rate every contender's throughput is that rate: only a
            // shortfall of more than 1 % is a difference there.
            let slack = if name.starts_with("acked") && load != "saturation" {
                0.99
            } else {
                1.0
            };
            let ahead: Vec<String> = others
                .iter()
                .filter_map(|other| {
                    let t = med(load, other, f)?;
                    let trails = match better {
                        Better::Lower => o > t,
                        Better::Higher => o < t * slack,
                    };
                    trails.then(|| match better {
                        Better::Lower => format!("{other} {t:.2} (×{:.2})", o / t),
                        Better::Higher => format!("{other} {t:.0} (×{:.2})", o / t),
                    })
                })
                .collect();
            if !ahead.is_empty() {
                let ours_value = match better {
                    Better::Lower => format!("{o:.2} ms"),
                    Better::Higher => format!("{o:.0}"),
                };
                parts.push(format!("{name} {ours_value}, behind {}", ahead.join(", ")));
            }
        }
        if !parts.is_empty() {
            out.push(format!("{bench} at {load}: {}", parts.join("; ")));
        }
    }
    out
}

/// Who ran where, for the targets.
pub(super) struct Field<'a> {
    pub(super) rounds: u32,
    pub(super) loads: &'a [Load],
    pub(super) latency: &'a [Contender],
    pub(super) packed: &'a [Contender],
    pub(super) statics: &'a [String],
    pub(super) bulk_events: u32,
}

const ADAPTIVE: &str = "adaptive_per_event";
const PACKED: &str = "adaptive_packed";

/// The targets: at every offered rate adaptive per-event's p99 ≤ 1.2 × the best static's, at
/// saturation its throughput ≥ 0.95 × the best static's; packed ≥ 0.8 × BULK and ≥ 10 ×
/// per-event, handed in per event and by `send_many`. Each evaluated per round against that
/// round's best.
pub(super) fn targets(runs: &[Run], f: &Field<'_>) -> Vec<Verdict> {
    let has = |cs: &[Contender], key: &str| cs.iter().any(|c| c.key() == key);
    let (latency, packed, statics) = (f.latency, f.packed, f.statics);
    let mut out = Vec::new();
    for load in f.loads {
        let label = load.label();
        let (target, metric, metric_name, better, bound): (String, Metric, &str, Better, f64) =
            match load {
                Load::Rate(_) => (
                    format!("p99 at {label}: adaptive per-event ≤ 1.2 × the best static"),
                    |r| r.p99_ms,
                    "p99 ms",
                    Better::Lower,
                    1.2,
                ),
                Load::Saturation => (
                    "saturation throughput: adaptive per-event ≥ 0.95 × the best static".into(),
                    |r| r.acked_per_s,
                    "acked events/s",
                    Better::Higher,
                    0.95,
                ),
            };
        if !has(latency, ADAPTIVE) {
            out.push(not_evaluated(target, "adaptive per-event did not run"));
            continue;
        }
        out.push(
            Comparison {
                target,
                bench: "latency",
                load: &label,
                ours: ADAPTIVE,
                theirs: statics,
                metric,
                metric_name,
                better,
                bound,
            }
            .evaluate(runs, f.rounds),
        );
    }
    let bulk = [Contender::Bulk(f.bulk_events).key()];
    let per_event = [ADAPTIVE.to_owned()];
    // Packed is judged in both hand-ins: a `send` per event, and `send_many` with as many
    // events per call as BULK's sender packs per send.
    let many = Contender::PackedMany(f.bulk_events).key();
    for (ours, how) in [
        (PACKED, "send per event".to_owned()),
        (many.as_str(), format!("send_many of {}", f.bulk_events)),
    ] {
        for (target, theirs, bound) in [
            (
                format!(
                    "packed ({how}) events/s ≥ 0.8 × BULK ({} events per envelope)",
                    f.bulk_events
                ),
                &bulk[..],
                0.8,
            ),
            (
                format!("packed ({how}) events/s ≥ 10 × adaptive per-event"),
                &per_event[..],
                10.0,
            ),
        ] {
            if !has(packed, ours) || !has(packed, &theirs[0]) {
                out.push(not_evaluated(
                    target,
                    &format!("{ours} or {} did not run", theirs[0]),
                ));
                continue;
            }
            out.push(
                Comparison {
                    target,
                    bench: "packed",
                    load: "saturation",
                    ours,
                    theirs,
                    metric: |r| r.acked_per_s,
                    metric_name: "acked events/s",
                    better: Better::Higher,
                    bound,
                }
                .evaluate(runs, f.rounds),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(round: u32, contender: &str, load: &str, p99: f64, thr: f64) -> Run {
        Run {
            bench: "latency".into(),
            round,
            contender: contender.into(),
            load: load.into(),
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            p999_ms: p99,
            max_ms: p99,
            acked_per_s: thr,
            ..Run::default()
        }
    }

    #[test]
    fn the_ratio_is_taken_against_each_rounds_best_static() {
        let runs = vec![
            run(1, "a", "100/s", 12.0, 100.0),
            run(1, "s0", "100/s", 10.0, 100.0),
            run(1, "s5", "100/s", 20.0, 100.0),
            run(2, "a", "100/s", 30.0, 100.0),
            run(2, "s0", "100/s", 40.0, 100.0),
            run(2, "s5", "100/s", 15.0, 100.0),
            run(3, "a", "100/s", 9.0, 100.0),
            run(3, "s0", "100/s", 10.0, 100.0),
        ];
        let theirs = ["s0".to_owned(), "s5".to_owned()];
        let c = Comparison {
            target: "p99".into(),
            bench: "latency",
            load: "100/s",
            ours: "a",
            theirs: &theirs,
            metric: |r| r.p99_ms,
            metric_name: "p99 ms",
            better: Better::Lower,
            bound: 1.2,
        };
        let v = c.evaluate(&runs, 3);
        assert_eq!(v.per_round, [1.2, 2.0, 0.9]);
        assert_eq!(v.rounds_met, 2);
        assert_eq!(v.met, Some(true), "median ratio 1.2 meets ≤ 1.2");
        assert_eq!(v.word(), "MET");
        let missing = Comparison { ours: "x", ..c }.evaluate(&runs, 3);
        assert_eq!(missing.met, None);
        assert!(
            missing.detail.contains("x has no run"),
            "{}",
            missing.detail
        );
    }

    #[test]
    fn behind_names_every_metric_and_contender_ahead_and_ignores_rate_noise() {
        let runs = vec![
            run(1, "a", "100/s", 12.0, 99.5),
            run(1, "s0", "100/s", 10.0, 100.0),
            run(1, "a", "saturation", 50.0, 900.0),
            run(1, "s0", "saturation", 60.0, 1_000.0),
        ];
        let loads = ["100/s".to_owned(), "saturation".to_owned()];
        let b = behind(&runs, "latency", &loads, "a", &["s0".to_owned()], false);
        assert_eq!(b.len(), 2, "{b:?}");
        assert!(
            b[0].contains("p99 12.00 ms, behind s0 10.00 (×1.20)"),
            "{}",
            b[0]
        );
        assert!(
            !b[0].contains("acked"),
            "0.5 % below the offered rate is noise: {}",
            b[0]
        );
        assert!(
            b[1].contains("acked events/s 900, behind s0 1000 (×0.90)"),
            "{}",
            b[1]
        );
        assert!(!b[1].contains("p99"), "ahead in latency there: {}", b[1]);
    }
}
