//! The runs: kbatch in this process, the Java peers as child processes, the no-op pair.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use kbatch_client::bench::base_consumer;
use kbatch_client::{Admin, AutoOffsetReset, ClientConfig, ConsumerConfig, NewTopic};
use kbatch_consumer::{ParallelConfig, ParallelConsumer, ProcessingOrder, ShutdownMode};
use kbatch_core::Record;
use kbatch_producer::{Producer, ProducerConfig};
use serde::Serialize;

use super::Case;

/// One contender's run of one case.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Run {
    /// 0-based, warm-up rounds included.
    pub(super) round: u32,
    /// From the first handler call to the last record's completion.
    pub(super) seconds: f64,
    /// Handler time per record, measured by the contender inside its own process.
    pub(super) mean_handler_ms: f64,
    /// Ideal ÷ seconds, ideal = records × `mean_handler_ms` ÷ usable concurrency.
    pub(super) efficiency: f64,
    /// How the contender was set up, where that is not obvious (the share group's shape).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) detail: Option<String>,
}

impl Run {
    fn new(seconds: f64, mean_handler_ms: f64, detail: Option<String>) -> Self {
        Self {
            round: 0,
            seconds,
            mean_handler_ms,
            efficiency: f64::NAN,
            detail,
        }
    }
}

/// Creates a topic and fills it with `n` records keyed `key-{i % keys}`, like PC's harness.
pub(super) async fn fill(
    admin: &Admin,
    client: &ClientConfig,
    name: &str,
    partitions: i32,
    n: u64,
    keys: u64,
) -> anyhow::Result<String> {
    let topic = format!(
        "kbatch-bench-{name}-{:08x}",
        crate::cluster::random_suffix()
    );
    admin
        .create_topics(&[NewTopic::new(&topic, partitions)])
        .await?;
    let p = Producer::new(ProducerConfig::new(client.clone()))?;
    let value = Bytes::from_static(b"0123456789");
    let mut futures = Vec::with_capacity(n as usize);
    for i in 0..n {
        futures.push(
            p.send(
                Record::new(topic.as_str(), value.clone()).with_key(format!("key-{}", i % keys)),
            )
            .await?,
        );
    }
    for f in futures {
        f.await.context("filling the bench topic")?;
    }
    p.close().await;
    Ok(topic)
}

/// What a kbatch run measured.
pub(super) struct KbatchRun {
    pub(super) first_to_last_s: f64,
    pub(super) mean_handler_s: f64,
    /// Commits sent while records were processed (not the final one at shutdown).
    pub(super) commits_during_run: u64,
}

/// kbatch's parallel consumer on `case`, with a fresh group.
pub(super) async fn run_kbatch(
    client: &ClientConfig,
    case: &Case,
    sleep_max: u64,
) -> anyhow::Result<Run> {
    let k = consume_kbatch(
        client,
        &case.topic,
        case.order,
        case.records,
        sleep_max,
        case.concurrency,
    )
    .await?;
    Ok(Run::new(k.first_to_last_s, k.mean_handler_s * 1e3, None))
}

async fn consume_kbatch(
    client: &ClientConfig,
    topic: &str,
    order: ProcessingOrder,
    n: u64,
    sleep_max: u64,
    concurrency: usize,
) -> anyhow::Result<KbatchRun> {
    let kafka = ConsumerConfig::new(client.clone())
        .with_group(format!(
            "kbatch-bench-{:08x}",
            crate::cluster::random_suffix()
        ))
        .with_offset_reset(AutoOffsetReset::Earliest);
    let cfg = ParallelConfig::new(kafka, [topic])
        .with_ordering(order)
        .with_concurrency(concurrency);
    let done = Arc::new(AtomicU64::new(0));
    let busy_ns = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::OnceLock::<Instant>::new());
    let last = Arc::new(std::sync::OnceLock::<Instant>::new());
    let t0 = Instant::now();
    let running = ParallelConsumer::builder(cfg)
        .handler({
            let (done, busy_ns, first, last) =
                (done.clone(), busy_ns.clone(), first.clone(), last.clone());
            move |_r| {
                let (done, busy_ns, first, last) =
                    (done.clone(), busy_ns.clone(), first.clone(), last.clone());
                async move {
                    let t = Instant::now();
                    first.get_or_init(|| t);
                    let ms = if sleep_max == 0 {
                        0
                    } else {
                        rand::random_range(0..sleep_max)
                    };
                    if ms > 0 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let end = Instant::now();
                    busy_ns.fetch_add((end - t).as_nanos() as u64, Ordering::Relaxed);
                    // The n-th completion's own time, as the Java harnesses take it, rather than
                    // when the loop below notices.
                    if done.fetch_add(1, Ordering::AcqRel) + 1 == n {
                        let _ = last.set(end);
                    }
                    Ok(())
                }
            }
        })
        .build()?
        .start()?;
    while done.load(Ordering::Acquire) < n {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(600),
            "kbatch did not finish"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let commits_during_run = running.stats().commits;
    running.shutdown(ShutdownMode::Quick).await?;
    let first = *first.get().context("no record processed")?;
    let end = *last
        .get()
        .context("the n-th record's completion was not recorded")?;
    // The topic holds exactly n records, so every handler call is one of them.
    let handled = done.load(Ordering::Acquire).max(1);
    Ok(KbatchRun {
        first_to_last_s: (end - first).as_secs_f64(),
        mean_handler_s: busy_ns.load(Ordering::Relaxed) as f64 / 1e9 / handled as f64,
        commits_during_run,
    })
}

/// The Java contenders, run through their scripts.
pub(super) struct Peers {
    brokers: String,
    pc: Result<PathBuf, String>,
    share: Result<PathBuf, String>,
    sleep_max: u64,
}

impl Peers {
    pub(super) fn new(
        brokers: &str,
        pc: Option<&Path>,
        share: Option<&Path>,
        sleep_max: u64,
    ) -> Self {
        let find = |p: Option<&Path>, flag: &str, env: &str, script: &str| match p {
            None => Err(format!("not run: set --{flag} or {env} to {script}")),
            Some(p) if !p.exists() => Err(format!("not run: {} not found", p.display())),
            Some(p) => Ok(p.to_path_buf()),
        };
        Self {
            brokers: brokers.to_owned(),
            pc: find(pc, "pc", "KBATCH_PC", "scripts/pc"),
            share: find(share, "share", "KBATCH_SHARE", "scripts/share"),
            sleep_max,
        }
    }

    pub(super) fn pc_available(&self) -> bool {
        self.pc.is_ok()
    }

    pub(super) fn share_available(&self) -> bool {
        self.share.is_ok()
    }

    /// Why a peer did not run where it did not, and how the share group's runs differ.
    pub(super) fn notes(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Err(e) = &self.pc {
            v.push(format!("Parallel Consumer {e}"));
        }
        match &self.share {
            Err(e) => v.push(format!("share group {e}")),
            Ok(_) => v.push(
                "share group: UNORDERED cases only, since share groups give no ordering by key \
                 or partition. Each run reads its own topic of the same shape (records, one \
                 partition, 10-byte values), produced in one transaction once all its members \
                 were assigned, because a member is assigned only about 5 s after it starts"
                    .to_owned(),
            ),
        }
        v
    }

    /// Confluent Parallel Consumer on `case`'s topic, fresh group, `maxConcurrency` equal to
    /// kbatch's concurrency.
    pub(super) async fn run_pc(&self, case: &Case) -> anyhow::Result<Run> {
        let pc = self.pc.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        let ordering = match case.order {
            ProcessingOrder::Key => "KEY",
            ProcessingOrder::Partition => "PARTITION",
            ProcessingOrder::Unordered => "UNORDERED",
        };
        let v = run_json(
            tokio::process::Command::new(pc).args([
                "run",
                "bench",
                "--bootstrap",
                &self.brokers,
                "--topic",
                &case.topic,
                "--records",
                &case.records.to_string(),
                "--ordering",
                ordering,
                "--sleep-max-ms",
                &self.sleep_max.to_string(),
                "--max-concurrency",
                &case.concurrency.to_string(),
            ]),
            "Parallel Consumer",
        )
        .await?;
        Ok(Run::new(
            field(&v, "seconds_first_to_last")?,
            field(&v, "mean_handler_ms")?,
            None,
        ))
    }

    /// Share-group consumers on a fresh topic of the same shape (the harness makes and fills
    /// it once all its consumers have joined), total concurrency equal to kbatch's.
    pub(super) async fn run_share(&self, admin: &Admin, case: &Case) -> anyhow::Result<Run> {
        let share = self.share.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        let topic = format!(
            "kbatch-bench-share-{}-{:08x}",
            case.name,
            crate::cluster::random_suffix()
        );
        let v = run_json(
            tokio::process::Command::new(share).args([
                "run",
                "bench",
                "--bootstrap",
                &self.brokers,
                "--topic",
                &topic,
                "--records",
                &case.records.to_string(),
                "--sleep-max-ms",
                &self.sleep_max.to_string(),
                "--concurrency",
                &case.concurrency.to_string(),
            ]),
            "share-group harness",
        )
        .await;
        let _ = admin.delete_topics(&[&topic]).await;
        let v = v?;
        let detail = format!(
            "{} consumers x {} workers, max.poll.records {}",
            v["consumers"], v["workers_per_consumer"], v["max_poll_records"]
        );
        Ok(Run::new(
            field(&v, "seconds_first_to_last")?,
            field(&v, "mean_handler_ms")?,
            Some(detail),
        ))
    }
}

/// Runs a harness that prints one JSON line with `"ok": true` on success.
async fn run_json(
    cmd: &mut tokio::process::Command,
    what: &str,
) -> anyhow::Result<serde_json::Value> {
    let out = cmd
        .output()
        .await
        .with_context(|| format!("starting {what}"))?;
    let v: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii())
        .with_context(|| format!("{what}: no JSON result; stderr: {}", tail(&out.stderr)))?;
    anyhow::ensure!(
        out.status.success() && v["ok"] == serde_json::Value::Bool(true),
        "{what} failed: {}; stderr: {}",
        v["error"],
        tail(&out.stderr)
    );
    Ok(v)
}

fn field(v: &serde_json::Value, name: &str) -> anyhow::Result<f64> {
    v[name]
        .as_f64()
        .with_context(|| format!("result has no number {name:?}: {v}"))
}

fn tail(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// One round of the no-op case.
#[derive(Debug, Serialize)]
pub(super) struct NoopRun {
    pub(super) round: u32,
    pub(super) kbatch_msgs_per_s: f64,
    /// Commits kbatch sent between its first record and its last.
    pub(super) kbatch_commits_during_run: u64,
    pub(super) base_consumer_msgs_per_s: f64,
}

/// The commit interval both sides of the no-op case use: kbatch's default.
pub(super) fn noop_commit_interval() -> Duration {
    ParallelConfig::new(ConsumerConfig::default(), ["t"]).commit_interval
}

/// No-op handler over `topic`: kbatch (concurrency 1,000, KEY) and rdkafka's `BaseConsumer`,
/// both committing as they go; which one goes first alternates with the round.
pub(super) async fn run_noop(
    client: &ClientConfig,
    topic: &str,
    n: u64,
    round: u32,
) -> anyhow::Result<NoopRun> {
    let every = noop_commit_interval();
    let raw = async {
        let cfg = ConsumerConfig::new(client.clone())
            .with_offset_reset(AutoOffsetReset::Earliest)
            .with_group(format!(
                "kbatch-bench-raw-{:08x}",
                crate::cluster::random_suffix()
            ));
        let topic = topic.to_owned();
        let raw = tokio::task::spawn_blocking(move || base_consumer(&cfg, &topic, n, Some(every)))
            .await??;
        anyhow::ensure!(
            raw.delivered == n,
            "BaseConsumer read {} of {n}",
            raw.delivered
        );
        Ok(n as f64 / raw.seconds)
    };
    let kbatch = async {
        let k = consume_kbatch(client, topic, ProcessingOrder::Key, n, 0, 1000).await?;
        anyhow::ensure!(
            k.commits_during_run > 0,
            "kbatch committed nothing while it consumed"
        );
        Ok(k)
    };
    let (k, base) = if round.is_multiple_of(2) {
        let k = kbatch.await?;
        (k, raw.await?)
    } else {
        let base = raw.await?;
        (kbatch.await?, base)
    };
    Ok(NoopRun {
        round,
        kbatch_msgs_per_s: n as f64 / k.first_to_last_s,
        kbatch_commits_during_run: k.commits_during_run,
        base_consumer_msgs_per_s: base,
    })
}
