//! `kbatch bench producer`: kbatch's `Producer` against rdkafka's producers and
//! confluent-kafka-python's, at equal settings.
//!
//! ```text
//!  settings check: librdkafka's own dump (debug=conf) of every contender's client, compared
//!  warm-up round (every contender once, not counted)
//!  round r = 0..R: every contender once, order rotated by r+1 ─► runs
//!  runs ─► min / median / max per contender, BaseProducer's poll-cadence sweep,
//!          kbatch ÷ contender within each round
//! ```
//!
//! Equal settings: one [`KafkaProducerConfig`] for all (acks, idempotence, linger, batch
//! limits, queue), and one in-flight window `W` that is each contender's own bound: librdkafka's
//! `queue.buffering.max.messages` for the callback producers (BaseProducer, ThreadedProducer,
//! Python's `Producer`), the number of outstanding futures for the future-based ones
//! (FutureProducer, AIOProducer, kbatch), and kbatch's `max_pending_records`.

mod contenders;
mod report;

use std::path::PathBuf;

use bytes::Bytes;
use clap::Args as ClapArgs;
use kbatch_client::bench::{client_settings, ignored_setting};
use kbatch_client::{Admin, ClientConfig, KafkaProducerConfig};
use kbatch_producer::ProducerConfig;

use contenders::{Entrant, Python, Workload};
use report::{Report, Run};

/// Options of `kbatch bench producer`.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Bootstrap servers of the (real) Kafka cluster to measure against.
    #[arg(long, env = "KBATCH_BROKERS", required_unless_present = "embedded")]
    brokers: Option<String>,
    /// Measure against the in-process mock cluster instead (supplementary: there the client
    /// path, not the broker, is the bottleneck). Not a substitute for the real-broker run.
    #[arg(long, conflicts_with = "brokers")]
    embedded: bool,
    /// Records per run.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Partitions of each run's topic.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=1000))]
    partitions: i32,
    /// Distinct keys (records are keyed; the default partitioner spreads them).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Measured rounds, after one warm-up round that is not counted; each round runs every
    /// contender once, in a rotated order.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// The in-flight window of every contender: librdkafka's queue.buffering.max.messages
    /// (every librdkafka client here), kbatch's max_pending_records, and the most futures
    /// outstanding before the oldest is awaited (future-based contenders). The default is both
    /// librdkafka's and kbatch's own default.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    window: u64,
    /// BaseProducer's poll cadences to sweep: the sender calls poll(0) every N sends. The
    /// dedicated poll thread is the ThreadedProducer contender.
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 64, 1_000, 10_000],
          value_parser = clap::value_parser!(u64).range(1..))]
    poll_every: Vec<u64>,
    /// Python interpreter with confluent-kafka installed (default: $KBATCH_PYTHON, then python3).
    #[arg(long, env = "KBATCH_PYTHON")]
    python: Option<PathBuf>,
    /// Skip the Python peers.
    #[arg(long)]
    no_python: bool,
    /// Run only these contenders (comma-separated), e.g. for profiling one of them.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Contender>,
    /// Print one JSON object (every run, the sweep, the ratios) on stdout as well.
    #[arg(long)]
    json: bool,
}

/// Contenders as `--only` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Contender {
    Kbatch,
    FutureProducer,
    /// Every cadence of `--poll-every`.
    BaseProducer,
    ThreadedProducer,
    AioProducer,
    PythonProducer,
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let window = usize::try_from(a.window)?;
    let dev = if a.embedded {
        Some(kbatch_client::DevBroker::start(1)?)
    } else {
        None
    };
    let bootstrap = match (&dev, &a.brokers) {
        (Some(d), _) => d.bootstrap_servers(),
        (None, Some(b)) => b.clone(),
        (None, None) => anyhow::bail!("--brokers (or KBATCH_BROKERS) or --embedded is required"),
    };
    let kafka = {
        let mut k = KafkaProducerConfig::new(
            ClientConfig::new(bootstrap.as_str()).with_client_id("kbatch-bench"),
        );
        k.statistics_interval = None;
        k.queue_records = window;
        k
    };
    // kbatch's bounds are librdkafka's: W records, and the same bytes (never reached here).
    let kbatch = ProducerConfig::default()
        .with_kafka(kafka.clone())
        .with_pending_limits(window, kafka.queue_bytes);
    // The raw contenders borrow one buffer; kbatch's records share it as static Bytes, so no
    // contender pays a per-record reference count the others do not.
    let leak = |v: Vec<u8>| Bytes::from_static(Box::leak(v.into_boxed_slice()));
    let w = Workload {
        value: leak(vec![b'x'; a.size]),
        keys: (0..a.keys)
            .map(|k| leak(format!("key-{k}").into_bytes()))
            .collect(),
        records: a.records,
        window,
        size: a.size,
        partitions: a.partitions,
        kbatch,
        kafka,
    };

    let wanted = |c: Contender| a.only.is_empty() || a.only.contains(&c);
    let python = if a.no_python {
        Err("skipped (--no-python)".to_owned())
    } else if !wanted(Contender::AioProducer) && !wanted(Contender::PythonProducer) {
        Err("not selected (--only)".to_owned())
    } else {
        Python::find(a.python.clone())
    };
    if let Err(why) = &python {
        eprintln!("bench: Python peers not run: {why}");
    }
    let mut entrants = Vec::new();
    if wanted(Contender::Kbatch) {
        entrants.push(Entrant::Kbatch);
    }
    if wanted(Contender::BaseProducer) {
        let mut cadences = a.poll_every.clone();
        cadences.sort_unstable();
        cadences.dedup();
        entrants.extend(cadences.into_iter().map(Entrant::BaseProducer));
    }
    if wanted(Contender::ThreadedProducer) {
        entrants.push(Entrant::ThreadedProducer);
    }
    if wanted(Contender::FutureProducer) {
        entrants.push(Entrant::FutureProducer);
    }
    if python.is_ok() {
        if wanted(Contender::PythonProducer) {
            entrants.push(Entrant::PythonProducer);
        }
        if wanted(Contender::AioProducer) {
            entrants.push(Entrant::AioProducer);
        }
    }
    anyhow::ensure!(!entrants.is_empty(), "no contender selected");

    let settings = check_settings(&w, &entrants, python.as_ref().ok()).await?;
    eprintln!(
        "bench: every contender runs with the same {} librdkafka settings and a window of {window}",
        settings.len()
    );

    let admin = Admin::new(&w.kafka.client)?;
    let py = python.as_ref().ok();
    let mut warmup = Vec::new();
    let mut runs = Vec::new();
    // Round 0 is the warm-up (broker JIT, page cache, log segments, the Python imports);
    // rotation r puts a different contender first in every round.
    for round in 0..=a.rounds {
        for k in 0..entrants.len() {
            let e = entrants[(k + round as usize) % entrants.len()];
            let m = contenders::run_one(e, &w, dev.as_ref(), &admin, py, round, k).await?;
            let run = Run {
                round,
                position: k,
                contender: e.key(),
                seconds: m.seconds,
                msgs_per_s: w.records as f64 / m.seconds,
                cpu_us_per_record: m
                    .cpu_seconds
                    .filter(|_| dev.is_none())
                    .map(|s| s * 1e6 / w.records as f64),
            };
            eprintln!(
                "bench: {} {}: {:.0} msgs/s ({:.2} s, {} µs CPU/record)",
                if round == 0 {
                    "warm-up".to_owned()
                } else {
                    format!("round {round}")
                },
                e.key(),
                run.msgs_per_s,
                run.seconds,
                run.cpu_us_per_record
                    .map_or("-".into(), |c| format!("{c:.2}"))
            );
            if round == 0 {
                warmup.push(run);
            } else {
                runs.push(run);
            }
        }
    }

    let report = Report::new(report::Setup {
        broker: if dev.is_some() {
            "embedded mock cluster (supplementary)"
        } else {
            "real Apache Kafka"
        },
        records: a.records,
        value_bytes: a.size,
        partitions: a.partitions,
        keys: a.keys,
        rounds: a.rounds,
        window,
        kafka: &w.kafka,
        librdkafka_settings: settings,
        python: python.as_ref().ok().map(|p| p.version.clone()),
        python_note: python.err(),
        entrants: &entrants,
        warmup,
        runs,
    });
    report.print();
    if a.json {
        #[allow(clippy::print_stdout, reason = "the report is this command's output")]
        {
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}

type Settings = std::collections::BTreeMap<String, String>;

/// Every setting in which one of `others` differs from `reference` (rdkafka's), named with
/// both values, sorted.
fn setting_differences(reference: &Settings, others: &[(String, Settings)]) -> Vec<String> {
    let mut diffs = Vec::new();
    for (who, s) in others {
        for k in reference.keys().chain(s.keys()) {
            if reference.get(k) != s.get(k) {
                diffs.push(format!(
                    "{k}: rdkafka {:?}, {who} {:?}",
                    reference.get(k),
                    s.get(k)
                ));
            }
        }
    }
    diffs.sort();
    diffs.dedup();
    diffs
}

/// librdkafka's own list of each contender's non-default settings (`debug=conf`), compared:
/// the Rust contenders' clients (kbatch's from its effective config), and each Python client as
/// its binding makes it. Also checks the window each contender bounds itself by. Returns the
/// settings they share, callbacks and client identity left out.
async fn check_settings(
    w: &Workload,
    entrants: &[Entrant],
    python: Option<&Python>,
) -> anyhow::Result<Settings> {
    let relevant = |s: Settings| {
        s.into_iter()
            .filter(|(k, _)| !ignored_setting(k))
            .collect::<Settings>()
    };
    let raw = relevant(client_settings(&w.kafka)?);
    let queue = raw.get("queue.buffering.max.messages").cloned();
    anyhow::ensure!(
        queue.as_deref() == Some(w.window.to_string().as_str())
            || (queue.is_none() && w.window == 100_000),
        "librdkafka's queue.buffering.max.messages is {queue:?}, not the window {}",
        w.window
    );
    anyhow::ensure!(
        w.kbatch.max_pending_records == w.window,
        "kbatch's max_pending_records is {}, not the window {}",
        w.kbatch.max_pending_records,
        w.window
    );
    let mut others = vec![(
        "kbatch".to_owned(),
        relevant(client_settings(&w.kbatch.effective_kafka_for_bench())?),
    )];
    if let Some(py) = python {
        for e in entrants.iter().filter(|e| e.is_python()) {
            let (settings, window) = py.settings(*e, w).await?;
            anyhow::ensure!(
                window == w.window as u64,
                "{} would run with a window of {window}, not {}",
                e.key(),
                w.window
            );
            others.push((e.key(), relevant(settings)));
        }
    }
    let diffs = setting_differences(&raw, &others);
    anyhow::ensure!(
        diffs.is_empty(),
        "contenders would run with different librdkafka settings:\n  {}",
        diffs.join("\n  ")
    );
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_that_differs_or_is_missing_is_named_with_both_values() {
        let s = |kv: &[(&str, &str)]| -> Settings {
            kv.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let reference = s(&[
            ("queue.buffering.max.ms", "5"),
            ("batch.num.messages", "10000"),
        ]);
        let same = ("kbatch".to_owned(), reference.clone());
        assert!(setting_differences(&reference, std::slice::from_ref(&same)).is_empty());
        let py = (
            "python_producer".to_owned(),
            s(&[("queue.buffering.max.ms", "1"), ("linger.extra", "x")]),
        );
        let d = setting_differences(&reference, &[same, py]);
        assert_eq!(
            d,
            [
                "batch.num.messages: rdkafka Some(\"10000\"), python_producer None",
                "linger.extra: rdkafka None, python_producer Some(\"x\")",
                "queue.buffering.max.ms: rdkafka Some(\"5\"), python_producer Some(\"1\")",
            ]
        );
    }
}
