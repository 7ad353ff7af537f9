//! What `kbatch bench producer` reports: min / median / max over the measured rounds per
//! contender, BaseProducer's poll-cadence sweep and the best of it, kbatch ÷ each contender
//! within each round, and every raw run (warm-up included, marked apart).

use std::collections::BTreeMap;

use kbatch_client::KafkaProducerConfig;
use serde::Serialize;

use super::contenders::Entrant;
use crate::bench::Spread;

/// One run of one contender.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Run {
    /// 1.. for measured rounds, 0 for the warm-up.
    pub(super) round: u32,
    /// Its place in the round's (rotated) order.
    pub(super) position: usize,
    pub(super) contender: String,
    pub(super) seconds: f64,
    pub(super) msgs_per_s: f64,
    /// Client CPU time per record, microseconds: user + system, all threads of the client's
    /// process, from before the client is made until it is closed (for the Rust contenders
    /// that process is the bench itself, idle runtime and admin threads included).
    pub(super) cpu_us_per_record: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Summary {
    contender: String,
    description: String,
    /// What bounds its in-flight records.
    bound: String,
    msgs_per_s: Spread,
    cpu_us_per_record: Option<Spread>,
}

#[derive(Debug, Serialize)]
struct Ratio {
    /// kbatch's msgs/s divided by this contender's, within each measured round.
    kbatch_vs: String,
    per_round: Vec<f64>,
    spread: Spread,
}

/// Everything the report is made from.
pub(super) struct Setup<'a> {
    pub(super) broker: &'static str,
    pub(super) records: u64,
    pub(super) value_bytes: usize,
    pub(super) partitions: i32,
    pub(super) keys: u64,
    pub(super) rounds: u32,
    pub(super) window: usize,
    pub(super) kafka: &'a KafkaProducerConfig,
    pub(super) librdkafka_settings: BTreeMap<String, String>,
    pub(super) python: Option<String>,
    pub(super) python_note: Option<String>,
    pub(super) entrants: &'a [Entrant],
    pub(super) warmup: Vec<Run>,
    pub(super) runs: Vec<Run>,
}

/// The report, also printed as one JSON object with `--json`.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    broker: &'static str,
    records: u64,
    value_bytes: usize,
    partitions: i32,
    keys: u64,
    rounds: u32,
    warmup_rounds: u32,
    /// The in-flight window every contender is held to (see each contender's `bound`).
    window: usize,
    acks: String,
    idempotence: bool,
    linger_ms: u128,
    batch_records: usize,
    batch_bytes: usize,
    /// librdkafka's own list of the non-default settings, identical for every contender.
    librdkafka_settings: BTreeMap<String, String>,
    rust_client: String,
    python_client: Option<String>,
    python_note: Option<String>,
    /// In table order; the sweep's cadences are all here too.
    contenders: Vec<Summary>,
    /// The sweep point with the highest median: the headline BaseProducer row.
    base_producer_best: Option<String>,
    /// BaseProducer polled every N sends, and its dedicated poll thread (ThreadedProducer).
    poll_sweep: Vec<String>,
    kbatch_ratios: Vec<Ratio>,
    /// Every contender kbatch trails, in throughput (in any measured round) or in CPU per
    /// record (at the median), in words; empty when it trails none.
    kbatch_behind: Vec<String>,
    warmup: Vec<Run>,
    runs: Vec<Run>,
}

impl Report {
    pub(super) fn new(s: Setup<'_>) -> Self {
        let of = |key: &str, f: fn(&Run) -> Option<f64>| {
            Spread::of(
                &s.runs
                    .iter()
                    .filter(|r| r.contender == key)
                    .filter_map(f)
                    .collect::<Vec<_>>(),
            )
        };
        let contenders: Vec<Summary> = s
            .entrants
            .iter()
            .filter_map(|e| {
                Some(Summary {
                    contender: e.key(),
                    description: e.describe(),
                    bound: e.bound(s.window),
                    msgs_per_s: of(&e.key(), |r| Some(r.msgs_per_s))?,
                    cpu_us_per_record: of(&e.key(), |r| r.cpu_us_per_record),
                })
            })
            .collect();
        let poll_sweep: Vec<String> = s
            .entrants
            .iter()
            .filter(|e| matches!(e, Entrant::BaseProducer(_) | Entrant::ThreadedProducer))
            .map(|e| e.key())
            .collect();
        let base_producer_best = contenders
            .iter()
            .filter(|c| poll_sweep.contains(&c.contender))
            .max_by(|a, b| a.msgs_per_s.median.total_cmp(&b.msgs_per_s.median))
            .map(|c| c.contender.clone());
        let kbatch_ratios: Vec<Ratio> = contenders
            .iter()
            .filter(|c| c.contender != "kbatch")
            .filter_map(|c| {
                let per_round: Vec<f64> = (1..=s.rounds)
                    .filter_map(|round| {
                        let at = |key: &str| {
                            s.runs
                                .iter()
                                .find(|r| r.round == round && r.contender == key)
                                .map(|r| r.msgs_per_s)
                        };
                        Some(at("kbatch")? / at(&c.contender)?)
                    })
                    .collect();
                Some(Ratio {
                    kbatch_vs: c.contender.clone(),
                    spread: Spread::of(&per_round)?,
                    per_round,
                })
            })
            .collect();
        let kbatch_behind = behind(&contenders, &kbatch_ratios);
        Self {
            broker: s.broker,
            records: s.records,
            value_bytes: s.value_bytes,
            partitions: s.partitions,
            keys: s.keys,
            rounds: s.rounds,
            warmup_rounds: 1,
            window: s.window,
            acks: format!("{:?}", s.kafka.acks),
            idempotence: s.kafka.idempotence,
            linger_ms: s.kafka.linger.as_millis(),
            batch_records: s.kafka.batch_records,
            batch_bytes: s.kafka.batch_bytes,
            librdkafka_settings: s.librdkafka_settings,
            rust_client: format!(
                "rust-rdkafka 0.39.0, librdkafka {}",
                kbatch_client::bench::librdkafka_version()
            ),
            python_client: s.python,
            python_note: s.python_note,
            contenders,
            base_producer_best,
            poll_sweep,
            kbatch_ratios,
            kbatch_behind,
            warmup: s.warmup,
            runs: s.runs,
        }
    }

    fn summary(&self, key: &str) -> Option<&Summary> {
        self.contenders.iter().find(|c| c.contender == key)
    }

    /// The tables, on stderr.
    pub(super) fn print(&self) {
        let spread = |s: &Spread, prec: usize| {
            format!("{:.p$} / {:.p$} / {:.p$}", s.min, s.median, s.max, p = prec)
        };
        let cpu = |c: &Summary| {
            c.cpu_us_per_record
                .as_ref()
                .map_or_else(|| "-".to_owned(), |s| spread(s, 2))
        };
        eprintln!(
            "\nproducer benchmark: {} records × {} B, {} partitions, {} keys, acks={}, \
             idempotence={}, linger {} ms, window {} for every contender; \
             {} measured rounds after 1 warm-up round",
            self.records,
            self.value_bytes,
            self.partitions,
            self.keys,
            self.acks,
            self.idempotence,
            self.linger_ms,
            self.window,
            self.rounds
        );
        eprintln!(
            "  broker: {}; {}{}",
            self.broker,
            self.rust_client,
            self.python_client
                .as_ref()
                .map_or_else(String::new, |p| format!("; Python: {p}"))
        );
        eprintln!(
            "  librdkafka settings, checked equal for every contender (callbacks and client \
             identity aside): {}",
            self.librdkafka_settings
                .iter()
                .filter(|(k, _)| !k.contains("broker.list") && !k.starts_with("bootstrap"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        if let Some(note) = self.python_note.as_deref() {
            eprintln!("  Python peers not run: {note}");
        }
        if let Some(py) = self.python_client.as_deref()
            && !py.ends_with(&format!("librdkafka {}", self.rust_librdkafka()))
        {
            eprintln!(
                "  note: the Python peers bundle another librdkafka than the Rust contenders; \
                 the check covers every property set, not the defaults of those left unset"
            );
        }
        eprintln!(
            "  {:<64} {:>30}  {:>22}",
            "contender", "msgs/s min / median / max", "CPU µs/record min / median / max"
        );
        let best = self.base_producer_best.as_deref();
        let mut headline: Vec<(String, &Summary)> = Vec::new();
        for c in &self.contenders {
            let is_sweep = self.poll_sweep.contains(&c.contender);
            // The sweep shows every cadence; the table, the best one and the poll thread.
            let is_best = Some(c.contender.as_str()) == best;
            if is_sweep && !is_best && c.contender != "threaded_producer" {
                continue;
            }
            let name = if is_sweep && is_best {
                format!(
                    "rdkafka BaseProducer, best poll cadence ({})",
                    cadence(&c.contender)
                )
            } else {
                c.description.clone()
            };
            headline.push((name, c));
        }
        for (name, c) in &headline {
            eprintln!(
                "  {name:<64} {:>30}  {:>22}",
                spread(&c.msgs_per_s, 0),
                cpu(c)
            );
        }
        if !self.poll_sweep.is_empty() {
            eprintln!("  BaseProducer poll-cadence sweep:");
            for key in &self.poll_sweep {
                if let Some(c) = self.summary(key) {
                    eprintln!(
                        "    {:<62} {:>30}  {:>22}{}",
                        cadence(key),
                        spread(&c.msgs_per_s, 0),
                        cpu(c),
                        if Some(key.as_str()) == best {
                            "  (best)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        for r in &self.kbatch_ratios {
            let shown = !self.poll_sweep.contains(&r.kbatch_vs)
                || Some(r.kbatch_vs.as_str()) == best
                || r.kbatch_vs == "threaded_producer";
            if shown {
                eprintln!(
                    "  kbatch ÷ {:<55} per round {}  (min / median / max)",
                    r.kbatch_vs,
                    spread(&r.spread, 2)
                );
            }
        }
        if self.kbatch_behind.is_empty() {
            if self.summary("kbatch").is_some() && !self.kbatch_ratios.is_empty() {
                eprintln!(
                    "  kbatch is behind no contender: ahead in throughput in every round, and no \
                     more CPU per record at the median"
                );
            }
        } else {
            eprintln!("  WHERE KBATCH IS BEHIND:");
            for b in &self.kbatch_behind {
                eprintln!("    - {b}");
            }
        }
    }

    /// The librdkafka version of the Rust contenders, from `rust_client`.
    fn rust_librdkafka(&self) -> &str {
        self.rust_client.rsplit(' ').next().unwrap_or("")
    }
}

/// Where kbatch trails: a contender it is slower than in some measured round (named with the
/// rounds' ratios), or that spends less CPU per record at the median.
fn behind(contenders: &[Summary], ratios: &[Ratio]) -> Vec<String> {
    let mut out = Vec::new();
    for r in ratios {
        let slower = r.per_round.iter().filter(|x| **x < 1.0).count();
        if slower == 0 {
            continue;
        }
        let how = if slower == r.per_round.len() {
            "in every round".to_owned()
        } else if r.spread.median < 1.0 {
            format!("at the median, in {slower} of {} rounds", r.per_round.len())
        } else {
            format!(
                "in {slower} of {} rounds (ahead at the median)",
                r.per_round.len()
            )
        };
        out.push(format!(
            "throughput vs {}: kbatch ÷ it = {:.2} / {:.2} / {:.2}, behind {how}",
            r.kbatch_vs, r.spread.min, r.spread.median, r.spread.max
        ));
    }
    let cpu = |key: &str| {
        contenders
            .iter()
            .find(|c| c.contender == key)
            .and_then(|c| c.cpu_us_per_record)
            .map(|s| s.median)
    };
    if let Some(ours) = cpu("kbatch") {
        for c in contenders.iter().filter(|c| c.contender != "kbatch") {
            if let Some(theirs) = cpu(&c.contender)
                && ours > theirs
            {
                out.push(format!(
                    "CPU vs {}: kbatch {ours:.2} µs/record, it {theirs:.2} (medians)",
                    c.contender
                ));
            }
        }
    }
    out
}

/// A sweep point's cadence in words.
fn cadence(key: &str) -> String {
    match key.strip_prefix("base_producer_poll_every_") {
        Some(n) => format!("poll every {n} sends"),
        None => "dedicated poll thread (ThreadedProducer)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_ignores_what_is_not_finite() {
        let s = Spread::of(&[3.0, f64::NAN, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert!(Spread::of(&[f64::NAN]).is_none());
    }

    fn summary(key: &str, median: f64, cpu: f64) -> Summary {
        let s = |v| Spread {
            min: v,
            median: v,
            max: v,
        };
        Summary {
            contender: key.to_owned(),
            description: String::new(),
            bound: String::new(),
            msgs_per_s: s(median),
            cpu_us_per_record: Some(s(cpu)),
        }
    }

    fn ratio(key: &str, per_round: &[f64]) -> Ratio {
        Ratio {
            kbatch_vs: key.to_owned(),
            per_round: per_round.to_vec(),
            spread: Spread::of(per_round).unwrap(),
        }
    }

    #[test]
    fn every_contender_kbatch_trails_is_named() {
        let contenders = [
            summary("kbatch", 100.0, 2.0),
            summary("threaded_producer", 90.0, 1.5),
            summary("future_producer", 50.0, 3.0),
            summary("python_producer", 110.0, 2.5),
        ];
        let ratios = [
            ratio("threaded_producer", &[1.2, 0.9, 1.1]),
            ratio("future_producer", &[2.0, 2.1, 1.9]),
            ratio("python_producer", &[0.9, 0.8, 0.95]),
        ];
        let b = behind(&contenders, &ratios);
        assert_eq!(b.len(), 3, "{b:?}");
        assert!(b[0].contains("threaded_producer") && b[0].contains("1 of 3 rounds (ahead"));
        assert!(b[1].contains("python_producer") && b[1].contains("in every round"));
        assert!(b[2].starts_with("CPU vs threaded_producer"));
        assert!(
            behind(&contenders[..3], &ratios[1..2]).len() == 1,
            "only the CPU row"
        );
    }

    #[test]
    fn cadence_names_the_sweep_point() {
        assert_eq!(
            cadence("base_producer_poll_every_64"),
            "poll every 64 sends"
        );
        assert!(cadence("threaded_producer").contains("poll thread"));
    }
}
