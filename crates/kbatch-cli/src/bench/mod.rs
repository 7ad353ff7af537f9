//! `kbatch bench`: end-to-end benchmarks against a real broker, with the peers run side by
//! side in one process run.

mod adaptive;
mod consumer;
mod gateway;
mod outbox;
mod plot;
mod producer;
mod recovery;

use clap::Subcommand;

/// Which benchmark.
#[derive(Subcommand, Debug)]
pub(crate) enum Bench {
    /// kbatch Producer vs rdkafka's BaseProducer (poll cadences swept), ThreadedProducer and
    /// FutureProducer and confluent-kafka-python's Producer and AIOProducer, at equal settings
    /// and one in-flight window: a warm-up round, then R rotated rounds.
    Producer(producer::Args),
    /// kbatch's parallel consumer vs Confluent Parallel Consumer and Kafka share groups at equal
    /// concurrency (PC's README scenario, swept), and a no-op run vs rdkafka's BaseConsumer.
    Consumer(consumer::Args),
    /// Restart-to-first-record of a parallel consumer killed with SIGKILL, for the classic
    /// protocol, static membership and KIP-848's consumer protocol.
    Recovery(recovery::Args),
    /// kbatch-adaptive's AdaptiveProducer vs kbatch's Producer at fixed lingers: latency
    /// (p50/p99/p99.9/max from each event's scheduled time) and throughput against offered
    /// rate, and packed events/s against a BULK envelope baseline; rotated rounds.
    Adaptive(adaptive::Args),
    /// The HTTP ingest gateway against the direct Producer in one run: NDJSON batches
    /// (records/s), single-record requests at a concurrency (req/s, p50/p99) and at an offered
    /// rate (latency from the schedule).
    Gateway(gateway::Args),
    /// The transactional outbox relay draining 200,000 pending entries to Kafka from
    /// PostgreSQL, MariaDB and SQLite (batch 1,000 and 100), a sustained run with writers
    /// (end-to-end lag), and Debezium's outbox event router on the same PostgreSQL rows.
    Outbox(outbox::Args),
}

pub(crate) async fn run(b: Bench) -> anyhow::Result<()> {
    match b {
        Bench::Producer(a) => producer::run(a).await,
        Bench::Consumer(a) => consumer::run(a).await,
        Bench::Recovery(a) => recovery::run(a).await,
        Bench::Adaptive(a) => adaptive::run(a).await,
        Bench::Gateway(a) => gateway::run(a).await,
        Bench::Outbox(a) => outbox::run(a).await,
    }
}

/// Least, median and most of a set of values: what every bench reports per contender over
/// its rounds.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(crate) struct Spread {
    pub(crate) min: f64,
    pub(crate) median: f64,
    pub(crate) max: f64,
}

impl Spread {
    /// Of the finite values in `v`; `None` when there are none.
    pub(crate) fn of(v: &[f64]) -> Option<Self> {
        let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        Some(Self {
            min: finite.iter().copied().reduce(f64::min)?,
            median: median(&finite)?,
            max: finite.iter().copied().reduce(f64::max)?,
        })
    }
}

/// A speed target judged over rounds: the value of each round and whether their median meets
/// it. What the gateway and outbox benches end with.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Target {
    pub(crate) target: String,
    /// Per round, in round order.
    pub(crate) values: Vec<f64>,
    pub(crate) median: Option<f64>,
    /// `None`: not evaluated (no values).
    pub(crate) met: Option<bool>,
    /// Why it could not be evaluated, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
}

impl Target {
    /// `target`, met when `ok` holds for the median of `values`.
    pub(crate) fn judge(target: String, values: Vec<f64>, ok: impl Fn(f64) -> bool) -> Self {
        let median = median(&values);
        Self {
            met: median.map(ok),
            target,
            values,
            median,
            note: None,
        }
    }

    /// Says why the target was not evaluated (kept only when it was not).
    pub(crate) fn unless_evaluated(mut self, note: impl FnOnce() -> String) -> Self {
        if self.met.is_none() {
            self.note = Some(note());
        }
        self
    }

    /// Prints `targets`, one verdict line each with its per-round values.
    pub(crate) fn print_all(targets: &[Target]) {
        eprintln!("  targets (median over rounds; per round):");
        for t in targets {
            let verdict = match t.met {
                Some(true) => "[MET]",
                Some(false) => "[MISSED]",
                None => "[NOT EVALUATED]",
            };
            eprintln!(
                "    {verdict} {}: {}{}",
                t.target,
                t.values
                    .iter()
                    .map(|v| format!("{v:.2}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                t.note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            );
        }
    }
}

/// The median of `v` (mean of the middle two for an even count).
pub(crate) fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len().is_multiple_of(2) {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(super::median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(super::median(&[]), None);
    }
}
