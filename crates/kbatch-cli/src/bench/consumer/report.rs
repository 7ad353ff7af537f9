//! Summaries over rounds (min / median / max), the tuned rows, and the printed table.

use serde::Serialize;

use super::contenders::{NoopRun, Peers, Run, noop_commit_interval};
use super::{Args, Case, Contender, Rounds};
use crate::bench::median;

/// Min, median and max over the counted rounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Spread {
    min: f64,
    median: f64,
    max: f64,
}

impl Spread {
    fn of(v: impl IntoIterator<Item = f64>) -> Option<Self> {
        let v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
        Some(Self {
            min: v.iter().copied().reduce(f64::min)?,
            median: median(&v)?,
            max: v.iter().copied().reduce(f64::max)?,
        })
    }

    fn show(s: Option<Self>, precision: usize) -> String {
        s.map_or_else(
            || "-".to_owned(),
            |s| {
                format!(
                    "{:.p$} ({:.p$}–{:.p$})",
                    s.median,
                    s.min,
                    s.max,
                    p = precision
                )
            },
        )
    }
}

#[derive(Debug, Serialize)]
struct ContenderReport {
    contender: Contender,
    seconds: Option<Spread>,
    mean_handler_ms: Option<Spread>,
    efficiency: Option<Spread>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// Every counted round, raw.
    rounds: Vec<Run>,
}

#[derive(Debug, Serialize)]
struct CaseReport {
    case: String,
    ordering: String,
    keys: u64,
    concurrency: usize,
    usable_concurrency: usize,
    contenders: Vec<ContenderReport>,
    /// PC seconds ÷ kbatch seconds, per round (above 1: kbatch is faster).
    pc_vs_kbatch: Option<Spread>,
    /// Share-group seconds ÷ kbatch seconds, per round.
    share_vs_kbatch: Option<Spread>,
}

/// A contender's fastest concurrency in the sweep of one ordering: its own, labelled row.
#[derive(Debug, Serialize)]
struct Tuned {
    ordering: &'static str,
    contender: Contender,
    concurrency: usize,
    seconds: Option<Spread>,
    efficiency: Option<Spread>,
}

#[derive(Debug, Serialize)]
struct NoopReport {
    records: u64,
    partitions: i32,
    /// Both sides commit asynchronously at this interval while they consume.
    commit_interval_ms: u64,
    kbatch_msgs_per_s: Option<Spread>,
    base_consumer_msgs_per_s: Option<Spread>,
    /// Per round.
    kbatch_vs_base_consumer: Option<Spread>,
    rounds: Vec<NoopRun>,
}

/// Everything `kbatch bench consumer` measured.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    records_per_case: u64,
    sequential_records: u64,
    keys: u64,
    handler_sleep_ms: String,
    rounds: u32,
    warmup_rounds: u32,
    /// Why a contender is missing from a case, and what differs in how one runs.
    notes: Vec<String>,
    cases: Vec<CaseReport>,
    tuned: Vec<Tuned>,
    noop: Option<NoopReport>,
}

fn ratio(of: Option<&Rounds>, to: Option<&Rounds>) -> Option<Spread> {
    let (of, to) = (of?, to?);
    Spread::of(
        of.runs
            .iter()
            .zip(&to.runs)
            .map(|(a, b)| a.seconds / b.seconds),
    )
}

impl Report {
    pub(super) fn new(
        a: &Args,
        peers: &Peers,
        cases: &[Case],
        results: Vec<Vec<Rounds>>,
        noop: Vec<NoopRun>,
    ) -> Self {
        let mut reports = Vec::new();
        for (case, rounds) in cases.iter().zip(results) {
            let find = |c: Contender| rounds.iter().find(|r| r.contender == c);
            let kbatch = find(Contender::Kbatch);
            let pc_vs_kbatch = ratio(find(Contender::ParallelConsumer), kbatch);
            let share_vs_kbatch = ratio(find(Contender::ShareGroup), kbatch);
            let contenders = rounds
                .into_iter()
                .map(|r| ContenderReport {
                    contender: r.contender,
                    seconds: Spread::of(r.runs.iter().map(|x| x.seconds)),
                    mean_handler_ms: Spread::of(r.runs.iter().map(|x| x.mean_handler_ms)),
                    efficiency: Spread::of(r.runs.iter().map(|x| x.efficiency)),
                    detail: r.runs.first().and_then(|x| x.detail.clone()),
                    rounds: r.runs,
                })
                .collect();
            reports.push(CaseReport {
                case: case.name.clone(),
                ordering: format!("{:?}", case.order),
                keys: case.keys,
                concurrency: case.concurrency,
                usable_concurrency: case.usable_concurrency(),
                contenders,
                pc_vs_kbatch,
                share_vs_kbatch,
            });
        }
        let tuned = tuned_rows(cases, &reports);
        let noop = (!noop.is_empty()).then(|| NoopReport {
            records: a.noop_records,
            partitions: 8,
            commit_interval_ms: noop_commit_interval().as_millis() as u64,
            kbatch_msgs_per_s: Spread::of(noop.iter().map(|r| r.kbatch_msgs_per_s)),
            base_consumer_msgs_per_s: Spread::of(noop.iter().map(|r| r.base_consumer_msgs_per_s)),
            kbatch_vs_base_consumer: Spread::of(
                noop.iter()
                    .map(|r| r.kbatch_msgs_per_s / r.base_consumer_msgs_per_s),
            ),
            rounds: noop,
        });
        Self {
            records_per_case: a.records,
            sequential_records: a.sequential_records,
            keys: a.keys.min(a.records),
            handler_sleep_ms: format!("uniform whole ms in 0..{}", a.sleep_max_ms),
            rounds: a.rounds,
            warmup_rounds: a.warmup_rounds,
            notes: peers.notes(),
            cases: reports,
            tuned,
            noop,
        }
    }

    pub(super) fn print(&self) {
        eprintln!(
            "\nconsumer benchmark: {} records per sweep case ({} keys for KEY), {} per sequential \
             case, on 1 partition, handler sleeps {}; {} rounds after {} warm-up, contenders in \
             a rotated order; median (min–max) over the rounds",
            self.records_per_case,
            self.keys,
            self.sequential_records,
            self.handler_sleep_ms,
            self.rounds,
            self.warmup_rounds
        );
        eprintln!(
            "  s: first record handled to the last; handler: the contender's own mean handler \
             time per record; eff = records × handler ÷ usable concurrency ÷ s (1.00 = ideal); \
             s ÷ kbatch s: per round, above 1 kbatch was faster (it reflects the handler times \
             too, eff does not)"
        );
        for n in &self.notes {
            eprintln!("  note: {n}");
        }
        eprintln!("\n  equal settings: every contender at the concurrency shown");
        eprintln!(
            "  {:<16} {:>5} {:<12} {:>26} {:>8} {:>20} {:>20}",
            "case", "conc.", "contender", "s", "handler", "eff", "s ÷ kbatch s"
        );
        for c in &self.cases {
            for x in &c.contenders {
                let vs = match x.contender {
                    Contender::Kbatch => None,
                    Contender::ParallelConsumer => c.pc_vs_kbatch,
                    Contender::ShareGroup => c.share_vs_kbatch,
                };
                eprintln!(
                    "  {:<16} {:>5} {:<12} {:>26} {:>8} {:>20} {:>20}",
                    c.case,
                    c.concurrency,
                    x.contender.label(),
                    Spread::show(x.seconds, 3),
                    x.mean_handler_ms
                        .map_or("-".to_owned(), |h| format!("{:.2} ms", h.median)),
                    Spread::show(x.efficiency, 2),
                    if x.contender == Contender::Kbatch {
                        String::new()
                    } else {
                        Spread::show(vs, 2)
                    },
                );
                if let Some(d) = &x.detail {
                    eprintln!("  {:<16} {:>5} {:<12} {d}", "", "", "");
                }
            }
        }
        if !self.tuned.is_empty() {
            eprintln!(
                "\n  tuned (not equal settings): each contender at its own fastest concurrency of \
                 the sweep, by median s"
            );
            eprintln!(
                "  {:<16} {:>5} {:<12} {:>26} {:>8} {:>20}",
                "ordering", "conc.", "contender", "s", "", "eff"
            );
        }
        for t in &self.tuned {
            eprintln!(
                "  {:<16} {:>5} {:<12} {:>26} {:>8} {:>20}",
                t.ordering,
                t.concurrency,
                t.contender.label(),
                Spread::show(t.seconds, 3),
                "",
                Spread::show(t.efficiency, 2),
            );
        }
        if let Some(n) = &self.noop {
            eprintln!(
                "\n  no-op, {} records on {} partitions, both committing every {} ms: \
                 kbatch {} msgs/s, BaseConsumer {} msgs/s, kbatch/BaseConsumer {}",
                n.records,
                n.partitions,
                n.commit_interval_ms,
                Spread::show(n.kbatch_msgs_per_s, 0),
                Spread::show(n.base_consumer_msgs_per_s, 0),
                Spread::show(n.kbatch_vs_base_consumer, 2),
            );
        }
    }
}

/// For each swept ordering and contender, the concurrency with the lowest median time.
fn tuned_rows(cases: &[Case], reports: &[CaseReport]) -> Vec<Tuned> {
    let mut rows = Vec::new();
    for ordering in ["key", "unordered"] {
        for who in [
            Contender::Kbatch,
            Contender::ParallelConsumer,
            Contender::ShareGroup,
        ] {
            let best = cases
                .iter()
                .zip(reports)
                .filter(|(case, _)| case.swept && case.group == ordering)
                .filter_map(|(case, r)| {
                    let c = r.contenders.iter().find(|x| x.contender == who)?;
                    Some((case.concurrency, c.seconds?, c.efficiency))
                })
                .min_by(|a, b| a.1.median.total_cmp(&b.1.median));
            if let Some((concurrency, seconds, efficiency)) = best {
                rows.push(Tuned {
                    ordering,
                    contender: who,
                    concurrency,
                    seconds: Some(seconds),
                    efficiency,
                });
            }
        }
    }
    rows
}
