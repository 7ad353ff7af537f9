//! What `kbatch bench adaptive` reports: per load and contender the min / median / max over
//! the rounds of p50 / p99 / p99.9 / max latency and acked events/s, the packed comparison in
//! events/s and Kafka records/s, the targets (met / missed), where adaptive is behind, the
//! intake micro-benchmark's figure, and every raw run (`--json`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::contenders::Outcome;
use super::criterion::IntakeFigure;
use super::verdict::Verdict;
pub(super) use crate::bench::Spread;
use crate::bench::plot;

/// One run of one contender under one load.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct Run {
    /// `latency` (latency vs offered rate) or `packed` (events/s, packed, at saturation).
    pub(super) bench: String,
    /// 1.. for measured rounds, 0 for the warm-up.
    pub(super) round: u32,
    /// Its place in the round's rotated order for this load.
    pub(super) position: usize,
    pub(super) contender: String,
    /// `100/s` … or `saturation`.
    pub(super) load: String,
    /// Events/s offered; `None` at saturation (closed loop).
    pub(super) offered_rate: Option<f64>,
    /// Counted events: sent, acknowledged, failed.
    pub(super) sent: u64,
    pub(super) acked: u64,
    pub(super) failed: u64,
    pub(super) first_error: Option<String>,
    /// From the first counted event's due time to the last counted acknowledgement.
    pub(super) seconds: f64,
    /// The throughput the report uses: at a fixed rate, `during_schedule_per_s` (does it keep
    /// up with the offered rate? lateness is the latency columns'); at saturation,
    /// `completion_per_s` (as the producer bench: first send to last acknowledgement).
    pub(super) acked_per_s: f64,
    /// Counted events ÷ `seconds`: includes the tail of the last events a contender holds.
    pub(super) completion_per_s: f64,
    /// Acknowledgements (settle events' too) while the counted schedule ran, ÷ its span.
    pub(super) during_schedule_per_s: f64,
    /// Kafka records the counted events took, and per second.
    pub(super) records: u64,
    pub(super) records_per_s: f64,
    pub(super) partitions_seen: usize,
    /// Latency from the event's due time to its acknowledgement.
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) p999_ms: f64,
    pub(super) max_ms: f64,
    /// How far behind its schedule the sender fell at most (open loop).
    pub(super) sender_lag_max_ms: f64,
    /// At saturation, CPU time of the sending thread per counted event, ns (`None` at a rate
    /// or where the thread's CPU time cannot be read).
    pub(super) sender_cpu_ns_per_event: Option<f64>,
    /// The adaptive producer's level and batch settings when the load ended.
    pub(super) adaptive_end_state: Option<String>,
    /// What the client reported when it closed.
    pub(super) client: String,
}

impl Run {
    pub(super) fn new(
        bench: &str,
        round: u32,
        position: usize,
        contender: String,
        load: super::load::Load,
        o: Outcome,
    ) -> Self {
        let m = &o.measured;
        let q = |q: f64| m.latency_us.value_at_quantile(q) as f64 / 1e3;
        let during_schedule_per_s = if m.schedule_seconds > 0.0 {
            m.acked_during_schedule as f64 / m.schedule_seconds
        } else {
            f64::NAN
        };
        let completion_per_s = m.per_s(m.acked);
        Self {
            bench: bench.to_owned(),
            round,
            position,
            contender,
            load: load.label(),
            offered_rate: load.offered_rate(),
            sent: m.sent,
            acked: m.acked,
            failed: m.failed,
            first_error: m.first_error.clone(),
            seconds: m.seconds,
            acked_per_s: match load {
                super::load::Load::Rate(_) => during_schedule_per_s,
                super::load::Load::Saturation => completion_per_s,
            },
            completion_per_s,
            during_schedule_per_s,
            records: m.records,
            records_per_s: m.per_s(m.records),
            partitions_seen: m.partitions_seen,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: m.latency_us.max() as f64 / 1e3,
            sender_lag_max_ms: m.sender_lag_max_ms,
            sender_cpu_ns_per_event: m.sender_cpu_ns_per_event,
            adaptive_end_state: o.end_state,
            client: o.client_note,
        }
    }
}

impl Spread {
    fn show(self, prec: usize) -> String {
        format!(
            "{:.p$}/{:.p$}/{:.p$}",
            self.min,
            self.median,
            self.max,
            p = prec
        )
    }
}

/// One contender under one load, over the measured rounds.
#[derive(Debug, Serialize)]
pub(super) struct Summary {
    pub(super) bench: String,
    pub(super) load: String,
    pub(super) offered_rate: Option<f64>,
    pub(super) contender: String,
    pub(super) rounds: usize,
    pub(super) p50_ms: Option<Spread>,
    pub(super) p99_ms: Option<Spread>,
    pub(super) p999_ms: Option<Spread>,
    pub(super) max_ms: Option<Spread>,
    pub(super) acked_per_s: Option<Spread>,
    pub(super) records_per_s: Option<Spread>,
    pub(super) failed: u64,
}

/// Summaries of every (bench, load, contender) seen in the measured rounds, in run order.
pub(super) fn summarize(runs: &[Run]) -> Vec<Summary> {
    let mut groups: Vec<(String, String, String)> = Vec::new();
    for r in runs.iter().filter(|r| r.round > 0) {
        let g = (r.bench.clone(), r.load.clone(), r.contender.clone());
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    groups
        .into_iter()
        .map(|(bench, load, contender)| {
            let rs: Vec<&Run> = runs
                .iter()
                .filter(|r| {
                    r.round > 0 && r.bench == bench && r.load == load && r.contender == contender
                })
                .collect();
            let of = |f: fn(&Run) -> f64| Spread::of(&rs.iter().map(|r| f(r)).collect::<Vec<_>>());
            Summary {
                offered_rate: rs.first().and_then(|r| r.offered_rate),
                rounds: rs.len(),
                p50_ms: of(|r| r.p50_ms),
                p99_ms: of(|r| r.p99_ms),
                p999_ms: of(|r| r.p999_ms),
                max_ms: of(|r| r.max_ms),
                acked_per_s: of(|r| r.acked_per_s),
                records_per_s: of(|r| r.records_per_s),
                failed: rs.iter().map(|r| r.failed).sum(),
                bench,
                load,
                contender,
            }
        })
        .collect()
}

/// The whole report; printed as tables on stderr, and as one JSON object with `--json`.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    /// Workload, settings of every contender, durations, the machine's load.
    pub(super) config: serde_json::Value,
    pub(super) summaries: Vec<Summary>,
    pub(super) targets: Vec<Verdict>,
    /// Every place adaptive trails another contender at the median, in words.
    pub(super) adaptive_behind: Vec<String>,
    pub(super) intake: Vec<IntakeFigure>,
    /// Said when there is no intake figure.
    pub(super) intake_note: Option<String>,
    /// Where the plot went, or why it was not drawn.
    pub(super) plot: String,
    /// Anything a reader must know to trust (or not) these numbers.
    pub(super) notes: Vec<String>,
    /// The load alone at saturation, once a round of the packed benchmark.
    pub(super) load_alone: Vec<LoadAloneRun>,
    pub(super) warmup: Vec<Run>,
    pub(super) runs: Vec<Run>,
}

impl Report {
    /// The tables, on stderr.
    pub(super) fn print(&self, descriptions: &BTreeMap<String, String>) {
        let c = &self.config;
        // Strings without their JSON quotes.
        let v = |k: &str| match &c[k] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        eprintln!(
            "\nadaptive benchmark: {} B values, {} keys, {} partitions, acks={}, idempotence={}, \
             compression={}; every client holds at most {} pending records; the bench at most {} \
             unacknowledged events; {} round(s){}",
            v("value_bytes"),
            v("keys"),
            v("partitions"),
            v("acks"),
            v("idempotence"),
            v("compression"),
            v("max_pending_records"),
            v("window_events"),
            v("rounds"),
            if c["warmup_seconds"].as_f64().unwrap_or(0.0) > 0.0 {
                format!(
                    " after a {} s warm-up run of each contender",
                    v("warmup_seconds")
                )
            } else {
                String::new()
            }
        );
        eprintln!(
            "  each rate point: {} s settling (not counted), then ≥ {} s and ≥ {} events; \
             saturation: {} s settling, then {} s closed loop; every run: a fresh topic, a fresh \
             client, 16 start-up events awaited first",
            v("settle_seconds"),
            v("seconds"),
            v("min_events"),
            v("settle_seconds"),
            v("seconds")
        );
        if let Some(s) = c["librdkafka_shared"].as_object() {
            eprintln!(
                "  librdkafka settings checked equal for every contender (batching aside): {}",
                s.iter()
                    .filter(|(k, _)| !k.contains("broker.list") && !k.starts_with("bootstrap"))
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        if let Some(a) = c["adaptive"]["summary"].as_str() {
            eprintln!("  adaptive: {a}");
        }
        eprintln!("  contenders:");
        for (k, d) in descriptions {
            eprintln!("    {k:<22} {d}");
        }
        self.print_latency();
        self.print_packed();
        eprintln!("\n  targets:");
        for v in &self.targets {
            eprintln!(
                "    [{}] {} ({}{}): {}",
                v.word(),
                v.target,
                v.bound,
                if v.per_round.is_empty() {
                    String::new()
                } else {
                    format!(", met in {} of {} rounds", v.rounds_met, v.per_round.len())
                },
                v.detail
            );
        }
        if self.adaptive_behind.is_empty() {
            eprintln!("  adaptive is behind no static contender at the median of any load");
        } else {
            eprintln!("  WHERE ADAPTIVE IS BEHIND (medians over the rounds):");
            for b in &self.adaptive_behind {
                eprintln!("    - {b}");
            }
        }
        eprintln!("  intake micro-benchmark (criterion, kbatch-adaptive):");
        for f in &self.intake {
            eprintln!("    {}", f.describe());
        }
        if let Some(n) = &self.intake_note {
            eprintln!("    {n}");
        }
        eprintln!("  plot: {}", self.plot);
        for n in &self.notes {
            eprintln!("  NOTE: {n}");
        }
    }

    fn print_latency(&self) {
        eprintln!(
            "\n  1. latency (ms, from each event's scheduled send time to its acknowledgement) vs \
             offered rate; min/median/max over rounds"
        );
        eprintln!(
            "  {:<11} {:<22} {:>22} {:>22} {:>22} {:>22} {:>26}",
            "offered", "contender", "p50", "p99", "p99.9", "max", "acked events/s *"
        );
        let show = |s: Option<Spread>, p| s.map_or_else(|| "-".to_owned(), |s| s.show(p));
        for s in self.summaries.iter().filter(|s| s.bench == "latency") {
            eprintln!(
                "  {:<11} {:<22} {:>22} {:>22} {:>22} {:>22} {:>26}{}",
                s.load,
                s.contender,
                show(s.p50_ms, 2),
                show(s.p99_ms, 2),
                show(s.p999_ms, 2),
                show(s.max_ms, 1),
                show(s.acked_per_s, 0),
                if s.failed > 0 {
                    format!("  FAILED {}", s.failed)
                } else {
                    String::new()
                }
            );
        }
        eprintln!(
            "  * at a fixed rate: acknowledgements while the counted schedule ran ÷ its span \
             (does it keep up? how late is the latency columns'); at saturation: counted events ÷ \
             (first send → last acknowledgement). Both are in --json (during_schedule_per_s, \
             completion_per_s). At saturation every contender's sends reach the collector in chunks \
             of up to 1,024 events (or 1 ms) and are collected in the order made (a send settled \
             behind an older one is stamped with it: latency there is an upper bound, for \
             information); at the rates each is stamped as it settles."
        );
        self.print_adaptive_states("latency");
        self.print_sender_cpu("latency");
    }

    /// What each send cost the thread that made it, at saturation, per round: the sender is
    /// the one thread all of a contender's sends run on, so where it is the bottleneck, a
    /// contender whose sends cost more is slower by as much.
    fn print_sender_cpu(&self, bench: &str) {
        print_per_round(
            "sending thread's CPU per event at saturation, ns, per round",
            self.runs
                .iter()
                .filter(|r| r.bench == bench && r.round > 0)
                .filter_map(|r| {
                    Some((
                        r.contender.clone(),
                        format!("{:.0}", r.sender_cpu_ns_per_event?),
                    ))
                }),
        );
    }

    /// Where the adaptive producer stood when each run's load ended, per load and round.
    fn print_adaptive_states(&self, bench: &str) {
        print_per_round(
            "level and batch settings when each round's load ended",
            self.runs
                .iter()
                .filter(|r| r.bench == bench)
                .filter_map(|r| {
                    let state = r.adaptive_end_state.clone()?;
                    Some((format!("{} at {}", r.contender, r.load), state))
                }),
        );
    }

    fn print_packed(&self) {
        let packed: Vec<&Summary> = self
            .summaries
            .iter()
            .filter(|s| s.bench == "packed")
            .collect();
        if packed.is_empty() {
            return;
        }
        eprintln!(
            "\n  2. events per second at saturation, packed vs BULK vs per-event; min/median/max over rounds"
        );
        eprintln!(
            "  {:<22} {:>30} {:>30} {:>14} {:>22}",
            "contender", "acked events/s", "Kafka records/s", "events/record", "p99 ms (info)"
        );
        let show = |s: Option<Spread>, p| s.map_or_else(|| "-".to_owned(), |s| s.show(p));
        for s in packed {
            let per_record = match (s.acked_per_s, s.records_per_s) {
                (Some(e), Some(r)) if r.median > 0.0 => format!("{:.1}", e.median / r.median),
                _ => "-".into(),
            };
            eprintln!(
                "  {:<22} {:>30} {:>30} {:>14} {:>22}{}",
                s.contender,
                show(s.acked_per_s, 0),
                show(s.records_per_s, 0),
                per_record,
                show(s.p99_ms, 1),
                if s.failed > 0 {
                    format!("  FAILED {}", s.failed)
                } else {
                    String::new()
                }
            );
        }
        self.print_adaptive_states("packed");
        self.print_sender_cpu("packed");
        if !self.load_alone.is_empty() {
            let sends: Vec<f64> = self.load_alone.iter().map(|l| l.sends_per_s).collect();
            let cpu: Vec<f64> = self
                .load_alone
                .iter()
                .filter_map(|l| l.sender_cpu_ns_per_send)
                .collect();
            let (sends, cpu) = (Spread::of(&sends), Spread::of(&cpu));
            eprintln!(
                "  the load alone (each send builds its record and settles at once; no producer): \
                 {} sends/s, sending thread's CPU {} ns per send (min/median/max over rounds) — \
                 the bench's own share of every per-event contender's figures, paid by BULK once \
                 per envelope",
                sends.map_or_else(|| "-".to_owned(), |s| s.show(0)),
                cpu.map_or_else(|| "-".to_owned(), |s| s.show(0)),
            );
        }
    }
}

/// One round's run of the load alone (see `contenders::LoadAlone`).
#[derive(Clone, Debug, Serialize)]
pub(super) struct LoadAloneRun {
    pub(super) round: u32,
    /// Sends made and collected, per second of the counted phase.
    pub(super) sends_per_s: f64,
    /// The sending thread's CPU per counted send, ns.
    pub(super) sender_cpu_ns_per_send: Option<f64>,
}

/// One line of the plot: a latency contender's medians per load.
#[derive(Debug, PartialEq)]
pub(super) struct PlotSeries {
    pub(super) name: String,
    pub(super) points: Vec<PlotPoint>,
}

/// One load's medians over the rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct PlotPoint {
    /// Events/s offered; `f64::INFINITY` for saturation.
    pub(super) offered_rate: f64,
    pub(super) p99_ms: f64,
    /// Acked events/s.
    pub(super) throughput: f64,
}

/// The plot's data: per latency contender, its median p99 and acked events/s per load,
/// saturation last.
pub(super) fn plot_points(summaries: &[Summary]) -> Vec<PlotSeries> {
    let mut out: Vec<PlotSeries> = Vec::new();
    for s in summaries.iter().filter(|s| s.bench == "latency") {
        let (Some(p99), Some(thr)) = (s.p99_ms, s.acked_per_s) else {
            continue;
        };
        let point = PlotPoint {
            offered_rate: s.offered_rate.unwrap_or(f64::INFINITY),
            p99_ms: p99.median,
            throughput: thr.median,
        };
        match out.iter_mut().find(|l| l.name == s.contender) {
            Some(l) => l.points.push(point),
            None => out.push(PlotSeries {
                name: s.contender.clone(),
                points: vec![point],
            }),
        }
    }
    for l in &mut out {
        l.points
            .sort_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
    }
    out
}

/// Draws p99 and throughput against offered rate; returns where, or why not.
pub(super) fn draw_plot(path: &std::path::Path, summaries: &[Summary]) -> String {
    let series = plot_points(summaries);
    if series.is_empty() {
        return "not drawn: no latency runs".into();
    }
    let series: Vec<plot::Series> = series
        .into_iter()
        .map(|s| plot::Series {
            name: s.name,
            points: s
                .points
                .into_iter()
                .map(|p| plot::Point {
                    offered_rate: p.offered_rate,
                    p99_ms: p.p99_ms,
                    throughput: p.throughput,
                })
                .collect(),
        })
        .collect();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return format!("not drawn: cannot create {}: {e}", dir.display());
    }
    let title = "kbatch bench adaptive: p99 latency and acked events/s vs offered rate (medians)";
    match plot::latency_and_throughput_png(path, title, &series) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("not drawn to {}: {e:#}", path.display()),
    }
}

/// Prints `header`, then a line per key with its values in the order given (a round each),
/// keys in the order first met; nothing when there are none.
fn print_per_round(header: &str, entries: impl IntoIterator<Item = (String, String)>) {
    let mut lines: Vec<(String, Vec<String>)> = Vec::new();
    for (key, value) in entries {
        match lines.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(value),
            None => lines.push((key, vec![value])),
        }
    }
    if !lines.is_empty() {
        eprintln!("  {header}:");
        for (k, v) in lines {
            eprintln!("    {k:<34} {}", v.join(" | "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(round: u32, contender: &str, load: &str, rate: Option<f64>, p99: f64) -> Run {
        Run {
            bench: "latency".into(),
            round,
            contender: contender.into(),
            load: load.into(),
            offered_rate: rate,
            p99_ms: p99,
            acked_per_s: 10.0 * p99,
            ..Run::default()
        }
    }

    #[test]
    fn summaries_leave_the_warmup_out_and_spread_over_rounds() {
        let runs = vec![
            run(0, "a", "100/s", Some(100.0), 1_000.0),
            run(1, "a", "100/s", Some(100.0), 3.0),
            run(2, "a", "100/s", Some(100.0), 1.0),
            run(3, "a", "100/s", Some(100.0), 2.0),
            run(1, "a", "saturation", None, 9.0),
        ];
        let s = summarize(&runs);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].rounds, 3);
        let p = s[0].p99_ms.unwrap();
        assert_eq!((p.min, p.median, p.max), (1.0, 2.0, 3.0));
        let pts = plot_points(&s);
        assert_eq!(pts.len(), 1);
        assert_eq!(
            pts[0].points[0],
            PlotPoint {
                offered_rate: 100.0,
                p99_ms: 2.0,
                throughput: 20.0
            }
        );
        assert_eq!(
            pts[0].points[1].offered_rate,
            f64::INFINITY,
            "saturation last"
        );
    }
}
