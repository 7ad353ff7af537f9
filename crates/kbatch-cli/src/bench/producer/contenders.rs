//! The contenders and how one run of each is made: its own topic, the clock from the first
//! send to the last acknowledgement, the client's CPU time.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use bytes::Bytes;
use kbatch_client::bench::{
    RawRun, base_producer, future_producer, librdkafka_properties, parse_conf_dump,
    threaded_producer,
};
use kbatch_client::{Admin, DevBroker, KafkaProducerConfig, NewTopic};
use kbatch_core::{Record, Topic};
use kbatch_producer::{Producer, ProducerConfig};

/// One measured configuration of one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Entrant {
    /// kbatch's `Producer`, awaiting every future.
    Kbatch,
    /// rdkafka's `BaseProducer`, polled by the sender every N sends.
    BaseProducer(u64),
    /// rdkafka's `ThreadedProducer`: a BaseProducer with its own poll thread.
    ThreadedProducer,
    /// rdkafka's `FutureProducer::send_result`, awaiting every future.
    FutureProducer,
    /// confluent-kafka-python's `Producer`, `poll(0)` after every `produce`.
    PythonProducer,
    /// confluent-kafka-python's `AIOProducer`, awaiting every future.
    AioProducer,
}

impl Entrant {
    /// Its name in the report and the JSON.
    pub(super) fn key(self) -> String {
        match self {
            Entrant::Kbatch => "kbatch".into(),
            Entrant::BaseProducer(n) => format!("base_producer_poll_every_{n}"),
            Entrant::ThreadedProducer => "threaded_producer".into(),
            Entrant::FutureProducer => "future_producer".into(),
            Entrant::PythonProducer => "python_producer".into(),
            Entrant::AioProducer => "aio_producer".into(),
        }
    }

    /// What it is, for the table.
    pub(super) fn describe(self) -> String {
        match self {
            Entrant::Kbatch => "kbatch Producer, awaiting every future".into(),
            Entrant::BaseProducer(n) => format!("rdkafka BaseProducer, poll every {n} sends"),
            Entrant::ThreadedProducer => "rdkafka ThreadedProducer (its poll thread)".into(),
            Entrant::FutureProducer => "rdkafka FutureProducer, awaiting every future".into(),
            Entrant::PythonProducer => "confluent-kafka-python Producer + poll".into(),
            Entrant::AioProducer => "confluent-kafka-python AIOProducer".into(),
        }
    }

    /// What bounds its in-flight records, for the report.
    pub(super) fn bound(self, window: usize) -> String {
        match self {
            Entrant::Kbatch => format!(
                "at most {window} outstanding futures, oldest awaited first; \
                 max_pending_records = {window}"
            ),
            Entrant::FutureProducer | Entrant::AioProducer => {
                format!("at most {window} outstanding futures, oldest awaited first")
            }
            Entrant::BaseProducer(_) | Entrant::ThreadedProducer | Entrant::PythonProducer => {
                format!(
                    "librdkafka queue.buffering.max.messages = {window} \
                     (a record counts until its delivery report is served)"
                )
            }
        }
    }

    pub(super) fn is_python(self) -> bool {
        matches!(self, Entrant::PythonProducer | Entrant::AioProducer)
    }

    fn python_client(self) -> &'static str {
        match self {
            Entrant::AioProducer => "aio",
            _ => "producer",
        }
    }
}

/// What every contender sends.
pub(super) struct Workload {
    pub(super) kafka: KafkaProducerConfig,
    pub(super) kbatch: ProducerConfig,
    pub(super) value: Bytes,
    pub(super) keys: Vec<Bytes>,
    pub(super) records: u64,
    pub(super) size: usize,
    pub(super) partitions: i32,
    pub(super) window: usize,
}

/// A run's outcome and the client CPU time it took.
pub(super) struct Measured {
    pub(super) seconds: f64,
    pub(super) cpu_seconds: Option<f64>,
}

/// Runs `e` once on a topic of its own, checks every record was delivered.
pub(super) async fn run_one(
    e: Entrant,
    w: &Workload,
    dev: Option<&DevBroker>,
    admin: &Admin,
    python: Option<&Python>,
    round: u32,
    position: usize,
) -> anyhow::Result<Measured> {
    let topic = format!(
        "kbatch-bench-{round}-{position}-{:08x}",
        crate::cluster::random_suffix()
    );
    match dev {
        Some(d) => d.create_topic(&topic, w.partitions)?,
        None => {
            admin
                .create_topics(&[NewTopic::new(&topic, w.partitions)])
                .await?
        }
    }
    let cpu_before = process_cpu_seconds();
    let (r, child_cpu) = match e {
        Entrant::Kbatch => (run_kbatch(w, &topic).await?, None),
        Entrant::FutureProducer => (
            future_producer(
                &w.kafka,
                &topic,
                w.records,
                &w.value,
                &raw_keys(w),
                w.window,
            )
            .await?,
            None,
        ),
        Entrant::BaseProducer(every) => (
            blocking(w, &topic, move |k, t, n, v, keys| {
                base_producer(k, t, n, v, keys, every)
            })
            .await?,
            None,
        ),
        Entrant::ThreadedProducer => (blocking(w, &topic, threaded_producer).await?, None),
        Entrant::PythonProducer | Entrant::AioProducer => {
            let py = python.context("the Python peers are not available")?;
            py.run(e, w, &topic).await?
        }
    };
    anyhow::ensure!(
        r.delivered == w.records && r.failed == 0,
        "{} round {round}: delivered {} of {}, failed {}",
        e.key(),
        r.delivered,
        w.records,
        r.failed
    );
    // A child process reports its own CPU time; ours would miss it.
    let cpu = child_cpu.or_else(|| Some(process_cpu_seconds() - cpu_before));
    if dev.is_none() {
        admin.delete_topics(&[&topic]).await?;
    }
    Ok(Measured {
        seconds: r.seconds,
        cpu_seconds: cpu.filter(|c| c.is_finite()),
    })
}

/// Runs a blocking raw producer on the blocking pool (it never yields to the runtime).
async fn blocking(
    w: &Workload,
    topic: &str,
    f: impl FnOnce(&KafkaProducerConfig, &str, u64, &[u8], &[Vec<u8>]) -> kbatch_client::Result<RawRun>
    + Send
    + 'static,
) -> anyhow::Result<RawRun> {
    let (kafka, value, keys, n, t) = (
        w.kafka.clone(),
        w.value.clone(),
        raw_keys(w),
        w.records,
        topic.to_owned(),
    );
    Ok(tokio::task::spawn_blocking(move || f(&kafka, &t, n, &value, &keys)).await??)
}

fn raw_keys(w: &Workload) -> Vec<Vec<u8>> {
    w.keys.iter().map(|k| k.to_vec()).collect()
}

/// kbatch's Producer, awaiting every per-record future, oldest first, with at most `window`
/// outstanding (the oldest is awaited before a send that would exceed it).
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
    let mut pending = VecDeque::with_capacity(w.window);
    let start = Instant::now();
    for i in 0..w.records {
        while pending.len() >= w.window {
            if let Some(f) = pending.pop_front() {
                tally(f.await);
            }
        }
        let r = Record {
            key: Some(w.keys[(i % w.keys.len() as u64) as usize].clone()),
            ..Record::new(topic.clone(), w.value.clone())
        };
        pending.push_back(p.send(r).await?);
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

/// CPU time (user + system, all threads) of this process so far, from /proc/self/stat; NaN
/// elsewhere.
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

/// A Python interpreter that can import confluent-kafka (and its asyncio producer).
pub(super) struct Python {
    exe: PathBuf,
    /// confluent-kafka's version and the librdkafka it bundles.
    pub(super) version: String,
}

impl Python {
    pub(super) fn find(explicit: Option<PathBuf>) -> Result<Self, String> {
        let exe = explicit.unwrap_or_else(|| PathBuf::from("python3"));
        let out = std::process::Command::new(&exe)
            .args([
                "-c",
                "import importlib.metadata, confluent_kafka, confluent_kafka.aio; \
                 print('confluent-kafka', importlib.metadata.version('confluent-kafka') + ',', \
                 'librdkafka', confluent_kafka.libversion()[0])",
            ])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        if out.status.success() {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            Ok(Self { exe, version })
        } else {
            Err(format!(
                "{} cannot import confluent_kafka.aio (pip install confluent-kafka)",
                exe.display()
            ))
        }
    }

    async fn call(&self, args: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let script =
            std::env::temp_dir().join(format!("kbatch-python-producer-{}.py", std::process::id()));
        std::fs::write(&script, include_str!("python_producer.py"))
            .context("writing the Python peers' script")?;
        let out = tokio::process::Command::new(&self.exe)
            .arg(&script)
            .arg(args.to_string())
            .output()
            .await?;
        let _ = std::fs::remove_file(&script);
        anyhow::ensure!(
            out.status.success(),
            "Python peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("Python peer output")
    }

    fn args(e: Entrant, w: &Workload, mode: &str, topic: &str) -> serde_json::Value {
        serde_json::json!({
            "client": e.python_client(), "mode": mode,
            "config": librdkafka_properties(&w.kafka).into_iter().collect::<BTreeMap<_, _>>(),
            "topic": topic, "records": w.records, "size": w.size, "keys": w.keys.len(),
            "window": w.window,
        })
    }

    /// The client's settings as its librdkafka lists them, and the window it would use.
    pub(super) async fn settings(
        &self,
        e: Entrant,
        w: &Workload,
    ) -> anyhow::Result<(BTreeMap<String, String>, u64)> {
        let v = self.call(Self::args(e, w, "settings", "")).await?;
        let lines: Vec<&str> = v["lines"]
            .as_array()
            .map(|a| a.iter().filter_map(|l| l.as_str()).collect())
            .unwrap_or_default();
        Ok((parse_conf_dump(lines), v["window"].as_u64().unwrap_or(0)))
    }

    async fn run(
        &self,
        e: Entrant,
        w: &Workload,
        topic: &str,
    ) -> anyhow::Result<(RawRun, Option<f64>)> {
        let v = self.call(Self::args(e, w, "run", topic)).await?;
        anyhow::ensure!(
            v["window"].as_u64() == Some(w.window as u64),
            "the Python peer ran with a window of {}, not {}",
            v["window"],
            w.window
        );
        Ok((
            RawRun {
                delivered: v["delivered"].as_u64().unwrap_or(0),
                failed: v["failed"].as_u64().unwrap_or(0),
                seconds: v["seconds"].as_f64().unwrap_or(f64::NAN),
            },
            v["cpu_seconds"].as_f64(),
        ))
    }
}
