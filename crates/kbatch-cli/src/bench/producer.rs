//! `kbatch bench producer`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args as ClapArgs;
use kbatch_client::bench::{RawRun, base_producer, future_producer, librdkafka_properties};
use kbatch_client::{Admin, ClientConfig, KafkaProducerConfig, NewTopic};
use kbatch_core::{Record, Topic};
use kbatch_producer::{Producer, ProducerConfig};
use serde::Serialize;

use super::median;

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
    /// Rounds; each round runs every contender once, in a rotated order.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Most per-record futures outstanding before the oldest is awaited (future-based contenders).
    #[arg(long, default_value_t = 50_000)]
    window: usize,
    /// Python interpreter with confluent-kafka installed (default: $KBATCH_PYTHON, then python3).
    #[arg(long, env = "KBATCH_PYTHON")]
    python: Option<PathBuf>,
    /// Skip the Python peer.
    #[arg(long)]
    no_python: bool,
    /// Run only these contenders (comma-separated: kbatch, future-producer, base-producer,
    /// aio-producer), e.g. for profiling one of them.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Contender>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
enum Contender {
    Kbatch,
    FutureProducer,
    BaseProducer,
    AioProducer,
}

#[derive(Debug, Serialize)]
struct Run {
    round: u32,
    contender: Contender,
    seconds: f64,
    msgs_per_s: f64,
    /// Client CPU time (user + system, all threads) per record, microseconds.
    cpu_us_per_record: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    broker: &'static str,
    records: u64,
    value_bytes: usize,
    partitions: i32,
    rounds: u32,
    acks: &'static str,
    kbatch_msgs_per_s: Option<f64>,
    future_producer_msgs_per_s: Option<f64>,
    base_producer_msgs_per_s: Option<f64>,
    aio_producer_msgs_per_s: Option<f64>,
    kbatch_vs_base_producer: Option<f64>,
    kbatch_vs_future_producer: Option<f64>,
    kbatch_vs_aio_producer: Option<f64>,
    kbatch_cpu_us_per_record: Option<f64>,
    future_producer_cpu_us_per_record: Option<f64>,
    base_producer_cpu_us_per_record: Option<f64>,
    aio_producer_cpu_us_per_record: Option<f64>,
    aio_producer_note: Option<String>,
    runs: Vec<Run>,
}

struct Workload {
    kafka: KafkaProducerConfig,
    kbatch: ProducerConfig,
    value: Bytes,
    keys: Vec<Bytes>,
    records: u64,
    window: usize,
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.window >= 1, "--window must be at least 1");
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
        k
    };
    // One in-flight window for all: librdkafka's queue (the raw contenders' bound) equals
    // kbatch's pending-records bound.
    let kbatch = ProducerConfig::default()
        .with_kafka(kafka.clone())
        .with_pending_limits(kafka.queue_records, kafka.queue_bytes);
    anyhow::ensure!(
        librdkafka_properties(&kafka) == librdkafka_properties(&kbatch.effective_kafka_for_bench()),
        "contenders would run with different librdkafka settings"
    );
    // The raw contenders borrow one buffer; kbatch's records share it as static Bytes, so no
    // contender pays a per-record reference count the others do not.
    let leak = |v: Vec<u8>| Bytes::from_static(Box::leak(v.into_boxed_slice()));
    let w = Workload {
        value: leak(vec![b'x'; a.size]),
        keys: (0..a.keys)
            .map(|k| leak(format!("key-{k}").into_bytes()))
            .collect(),
        records: a.records,
        window: a.window,
        kbatch,
        kafka,
    };
    let wanted = |c: Contender| a.only.is_empty() || a.only.contains(&c);
    let python = if a.no_python || !wanted(Contender::AioProducer) {
        Err("skipped (--no-python)".to_owned())
    } else {
        find_python(a.python.clone())
    };
    if let Err(why) = &python {
        eprintln!("bench: AIOProducer not run: {why}");
    }
    let admin = Admin::new(&w.kafka.client)?;
    let mut contenders = vec![
        Contender::Kbatch,
        Contender::FutureProducer,
        Contender::BaseProducer,
    ];
    if python.is_ok() {
        contenders.push(Contender::AioProducer);
    }
    contenders.retain(|c| wanted(*c));
    // Warm the broker (JIT, page cache, log segments) before anything is measured.
    {
        let topic = format!(
            "kbatch-bench-warmup-{:08x}",
            crate::cluster::random_suffix()
        );
        create_topic(dev.as_ref(), &admin, &topic, a.partitions).await?;
        let (kafka, value, keys, n) = (
            w.kafka.clone(),
            w.value.clone(),
            raw_keys(&w),
            w.records.min(300_000),
        );
        let t = topic.clone();
        let r = tokio::task::spawn_blocking(move || base_producer(&kafka, &t, n, &value, &keys))
            .await??;
        eprintln!(
            "bench: warm-up, {n} records, not measured ({:.0} msgs/s)",
            n as f64 / r.seconds
        );
        if dev.is_none() {
            admin.delete_topics(&[&topic]).await?;
        }
    }
    let mut runs = Vec::new();
    for round in 0..a.rounds {
        for k in 0..contenders.len() {
            let c = contenders[(k + round as usize) % contenders.len()];
            let topic = format!(
                "kbatch-bench-{round}-{k}-{:08x}",
                crate::cluster::random_suffix()
            );
            create_topic(dev.as_ref(), &admin, &topic, a.partitions).await?;
            let cpu_before = process_cpu_seconds();
            let r: Measured = match c {
                Contender::Kbatch => run_kbatch(&w, &topic).await?.into(),
                Contender::FutureProducer => future_producer(
                    &w.kafka,
                    &topic,
                    w.records,
                    &w.value,
                    &raw_keys(&w),
                    w.window,
                )
                .await?
                .into(),
                Contender::BaseProducer => {
                    let (kafka, value, keys, n) =
                        (w.kafka.clone(), w.value.clone(), raw_keys(&w), w.records);
                    let topic = topic.clone();
                    tokio::task::spawn_blocking(move || {
                        base_producer(&kafka, &topic, n, &value, &keys)
                    })
                    .await??
                    .into()
                }
                Contender::AioProducer => {
                    run_python(
                        python.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?,
                        &w,
                        &topic,
                        &a,
                    )
                    .await?
                }
            };
            anyhow::ensure!(
                r.delivered == w.records && r.failed == 0,
                "{c:?} round {round}: delivered {} of {}, failed {}",
                r.delivered,
                w.records,
                r.failed
            );
            let cpu = match c {
                // The child reports its own CPU time; ours would miss it.
                Contender::AioProducer => r.cpu_seconds,
                _ => Some(process_cpu_seconds() - cpu_before).filter(|_| dev.is_none()),
            };
            let run = Run {
                round,
                contender: c,
                seconds: r.seconds,
                msgs_per_s: w.records as f64 / r.seconds,
                cpu_us_per_record: cpu
                    .filter(|_| dev.is_none())
                    .map(|s| s * 1e6 / w.records as f64),
            };
            eprintln!(
                "bench: round {round} {c:?}: {:.0} msgs/s ({:.2} s, {} µs CPU/record)",
                run.msgs_per_s,
                run.seconds,
                run.cpu_us_per_record
                    .map_or("-".into(), |c| format!("{c:.2}"))
            );
            runs.push(run);
            if dev.is_none() {
                admin.delete_topics(&[&topic]).await?;
            }
        }
    }
    let med = |c: Contender| {
        median(
            &runs
                .iter()
                .filter(|r| r.contender == c)
                .map(|r| r.msgs_per_s)
                .collect::<Vec<_>>(),
        )
    };
    let cpu = |c: Contender| {
        median(
            &runs
                .iter()
                .filter(|r| r.contender == c)
                .filter_map(|r| r.cpu_us_per_record)
                .collect::<Vec<_>>(),
        )
    };
    let (k, f, b, py) = (
        med(Contender::Kbatch),
        med(Contender::FutureProducer),
        med(Contender::BaseProducer),
        med(Contender::AioProducer),
    );
    let ratio = |x: Option<f64>, y: Option<f64>| Some(x? / y?);
    let report = Report {
        broker: if dev.is_some() {
            "embedded mock cluster (supplementary)"
        } else {
            "real Apache Kafka"
        },
        records: a.records,
        value_bytes: a.size,
        partitions: a.partitions,
        rounds: a.rounds,
        acks: "all",
        kbatch_msgs_per_s: k,
        future_producer_msgs_per_s: f,
        base_producer_msgs_per_s: b,
        aio_producer_msgs_per_s: py,
        kbatch_vs_base_producer: ratio(k, b),
        kbatch_vs_future_producer: ratio(k, f),
        kbatch_vs_aio_producer: ratio(k, py),
        kbatch_cpu_us_per_record: cpu(Contender::Kbatch),
        future_producer_cpu_us_per_record: cpu(Contender::FutureProducer),
        base_producer_cpu_us_per_record: cpu(Contender::BaseProducer),
        aio_producer_cpu_us_per_record: cpu(Contender::AioProducer),
        aio_producer_note: python.err(),
        runs,
    };
    print_report(&report)?;
    if a.json {
        #[allow(clippy::print_stdout, reason = "the report is this command's output")]
        {
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}

/// A run's outcome, with the CPU time a child process reported for itself.
struct Measured {
    delivered: u64,
    failed: u64,
    seconds: f64,
    cpu_seconds: Option<f64>,
}

impl From<RawRun> for Measured {
    fn from(r: RawRun) -> Self {
        Self {
            delivered: r.delivered,
            failed: r.failed,
            seconds: r.seconds,
            cpu_seconds: None,
        }
    }
}

/// CPU time (user + system) of this process so far, from /proc/self/stat; NaN elsewhere.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // Linux reports in USER_HZ, 100 on every mainstream configuration.
    (ticks(11) + ticks(12)) / 100.0
}

/// A topic on the embedded dev broker (which lacks CreateTopics) or through the admin client.
async fn create_topic(
    dev: Option<&kbatch_client::DevBroker>,
    admin: &Admin,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    match dev {
        Some(d) => d.create_topic(topic, partitions)?,
        None => {
            admin
                .create_topics(&[NewTopic::new(topic, partitions)])
                .await?
        }
    }
    Ok(())
}

fn raw_keys(w: &Workload) -> Vec<Vec<u8>> {
    w.keys.iter().map(|k| k.to_vec()).collect()
}

/// kbatch's Producer, awaiting every per-record future (at most `window` outstanding).
async fn run_kbatch(w: &Workload, topic: &str) -> anyhow::Result<RawRun> {
    let p = Producer::new(w.kbatch.clone())?;
    let topic: Topic = topic.into();
    let (mut delivered, mut failed) = (0u64, 0u64);
    let mut tally = |r: Result<_, _>| {
        if r.is_ok() {
            delivered += 1
        } else {
            failed += 1
        }
    };
    let mut pending = VecDeque::with_capacity(w.window + 1);
    let start = Instant::now();
    for i in 0..w.records {
        let r = Record {
            key: Some(w.keys[(i % w.keys.len() as u64) as usize].clone()),
            ..Record::new(topic.clone(), w.value.clone())
        };
        pending.push_back(p.send(r).await?);
        while pending.len() > w.window {
            if let Some(f) = pending.pop_front() {
                tally(f.await);
            }
        }
    }
    for f in pending {
        tally(f.await);
    }
    let seconds = start.elapsed().as_secs_f64();
    p.close().await;
    Ok(RawRun {
        delivered,
        failed,
        seconds,
    })
}

fn find_python(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    let py = explicit.unwrap_or_else(|| PathBuf::from("python3"));
    let ok = std::process::Command::new(&py)
        .args(["-c", "import confluent_kafka.aio"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", py.display()))?;
    if ok.status.success() {
        Ok(py)
    } else {
        Err(format!(
            "{} cannot import confluent_kafka.aio (pip install confluent-kafka)",
            py.display()
        ))
    }
}

async fn run_python(py: &PathBuf, w: &Workload, topic: &str, a: &Args) -> anyhow::Result<Measured> {
    let script =
        std::env::temp_dir().join(format!("kbatch-aio-producer-{}.py", std::process::id()));
    std::fs::write(&script, include_str!("aio_producer.py"))
        .context("writing the AIOProducer script")?;
    let args = serde_json::json!({
        "config": librdkafka_properties(&w.kafka).into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "topic": topic, "records": w.records, "size": a.size, "keys": a.keys, "window": w.window,
    });
    let out = tokio::process::Command::new(py)
        .arg(&script)
        .arg(args.to_string())
        .output()
        .await?;
    let _ = std::fs::remove_file(&script);
    anyhow::ensure!(
        out.status.success(),
        "AIOProducer run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("AIOProducer output")?;
    Ok(Measured {
        delivered: v["delivered"].as_u64().unwrap_or(0),
        failed: v["failed"].as_u64().unwrap_or(0),
        seconds: v["seconds"].as_f64().unwrap_or(f64::NAN),
        cpu_seconds: v["cpu_seconds"].as_f64(),
    })
}

fn print_report(r: &Report) -> anyhow::Result<()> {
    let fmt = |v: Option<f64>| v.map_or_else(|| "not run".to_owned(), |v| format!("{v:>12.0}"));
    let rat = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"));
    eprintln!(
        "\nproducer benchmark: {} records × {} B, {} partitions, acks=all, median of {} rounds",
        r.records, r.value_bytes, r.partitions, r.rounds
    );
    let cpu = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    eprintln!("  broker: {}", r.broker);
    eprintln!(
        "  {:<38} {:>12}  {:>14}",
        "contender", "msgs/s", "CPU µs/record"
    );
    for (name, m, c) in [
        (
            "kbatch Producer (await every future)",
            r.kbatch_msgs_per_s,
            r.kbatch_cpu_us_per_record,
        ),
        (
            "rdkafka FutureProducer (await every)",
            r.future_producer_msgs_per_s,
            r.future_producer_cpu_us_per_record,
        ),
        (
            "rdkafka BaseProducer (callbacks)",
            r.base_producer_msgs_per_s,
            r.base_producer_cpu_us_per_record,
        ),
        (
            "confluent-kafka-python AIOProducer",
            r.aio_producer_msgs_per_s,
            r.aio_producer_cpu_us_per_record,
        ),
    ] {
        eprintln!("  {name:<38} {}  {:>14}", fmt(m), cpu(c));
    }
    eprintln!(
        "  kbatch vs BaseProducer {}   vs FutureProducer {}   vs AIOProducer {}",
        rat(r.kbatch_vs_base_producer),
        rat(r.kbatch_vs_future_producer),
        rat(r.kbatch_vs_aio_producer)
    );
    Ok(())
}
