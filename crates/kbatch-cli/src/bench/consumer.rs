//! `kbatch bench consumer`: kbatch's parallel consumer beside Confluent's Parallel Consumer
//! (Java, run through `scripts/pc`), and beside a raw `BaseConsumer`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args as ClapArgs;
use kbatch_client::bench::base_consumer;
use kbatch_client::{Admin, AutoOffsetReset, ClientConfig, ConsumerConfig, NewTopic};
use kbatch_consumer::{ParallelConfig, ParallelConsumer, ProcessingOrder, ShutdownMode};
use kbatch_core::Record;
use kbatch_producer::{Producer, ProducerConfig};
use serde::Serialize;

/// Options of `kbatch bench consumer`.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Bootstrap servers of the (real) Kafka cluster.
    #[arg(long, env = "KBATCH_BROKERS")]
    brokers: String,
    /// Records per case of the Parallel Consumer README scenario.
    #[arg(long, default_value_t = 10_000)]
    records: u64,
    /// Handler sleep: a whole number of ms uniform in 0..this (PC's VolumeTests: 0..=4 ms).
    #[arg(long, default_value_t = 5)]
    sleep_max_ms: u64,
    /// kbatch concurrency for KEY and UNORDERED cases. 250 keeps per-record overhead within a
    /// tenth of the ideal while running 15× wider than PC's default of 16.
    #[arg(long, default_value_t = 250)]
    concurrency: usize,
    /// Records for the no-op throughput case (8 partitions).
    #[arg(long, default_value_t = 2_000_000)]
    noop_records: u64,
    /// `scripts/pc` to run Confluent Parallel Consumer side by side (default: $KBATCH_PC).
    #[arg(long, env = "KBATCH_PC")]
    pc: Option<PathBuf>,
    /// Cases to run (key-1, key-10, key-100, key-10000, partition, unordered, noop).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Case {
    case: String,
    kbatch_seconds: f64,
    kbatch_first_to_last_seconds: f64,
    kbatch_mean_handler_ms: f64,
    kbatch_concurrency: usize,
    ideal_seconds: f64,
    kbatch_vs_ideal: f64,
    pc_seconds: Option<f64>,
    pc_first_to_last_seconds: Option<f64>,
    pc_vs_kbatch: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Noop {
    records: u64,
    partitions: i32,
    /// Both sides commit asynchronously at this interval while they consume.
    commit_interval_ms: u64,
    kbatch_msgs_per_s: f64,
    /// Commits kbatch sent between its first record and its last.
    kbatch_commits_during_run: u64,
    base_consumer_msgs_per_s: f64,
    kbatch_vs_base_consumer: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    records_per_case: u64,
    handler_sleep_ms: String,
    pc_note: Option<String>,
    cases: Vec<Case>,
    noop: Option<Noop>,
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let client = ClientConfig::new(a.brokers.as_str()).with_client_id("kbatch-bench");
    let admin = Admin::new(&client)?;
    let wanted = |c: &str| a.only.is_empty() || a.only.iter().any(|o| o == c);
    let pc_note = match &a.pc {
        None => Some("not run: set --pc or KBATCH_PC to scripts/pc".to_owned()),
        Some(p) if !p.exists() => Some(format!("not run: {} not found", p.display())),
        Some(_) => None,
    };
    let mut cases = Vec::new();
    let scenario: [(&str, ProcessingOrder, u64); 6] = [
        ("key-1", ProcessingOrder::Key, 1),
        ("key-10", ProcessingOrder::Key, 10),
        ("key-100", ProcessingOrder::Key, 100),
        ("key-10000", ProcessingOrder::Key, 10_000),
        ("partition", ProcessingOrder::Partition, 10_000),
        ("unordered", ProcessingOrder::Unordered, 10_000),
    ];
    for (name, order, keys) in scenario {
        if !wanted(name) {
            continue;
        }
        let topic = fill(&admin, &client, name, 1, a.records, keys).await?;
        let concurrency = if order == ProcessingOrder::Partition || keys == 1 {
            1
        } else {
            a.concurrency
        };
        let k = run_kbatch(
            &client,
            &topic,
            order,
            a.records,
            a.sleep_max_ms,
            a.concurrency,
        )
        .await?;
        let pc = match (&a.pc, &pc_note) {
            (Some(pc), None) => {
                Some(run_pc(pc, &a.brokers, name, order, a.records, keys, a.sleep_max_ms).await?)
            }
            _ => None,
        };
        // Handler time spread over the concurrency that can be used at once.
        let usable = concurrency.min(keys as usize).max(1) as f64;
        let ideal = a.records as f64 * k.mean_handler_s / usable;
        let case = Case {
            case: name.to_owned(),
            kbatch_seconds: k.total_s,
            kbatch_first_to_last_seconds: k.first_to_last_s,
            kbatch_mean_handler_ms: k.mean_handler_s * 1e3,
            kbatch_concurrency: concurrency,
            ideal_seconds: ideal,
            kbatch_vs_ideal: k.first_to_last_s / ideal,
            pc_seconds: pc.map(|p| p.0),
            pc_first_to_last_seconds: pc.map(|p| p.1),
            pc_vs_kbatch: pc.map(|p| p.1 / k.first_to_last_s),
        };
        eprintln!("bench: {case:?}");
        cases.push(case);
        let _ = admin.delete_topics(&[&topic]).await;
    }
    let noop = if wanted("noop") {
        Some(run_noop(&admin, &client, a.noop_records).await?)
    } else {
        None
    };
    let report = Report {
        records_per_case: a.records,
        handler_sleep_ms: format!("uniform whole ms in 0..{}", a.sleep_max_ms),
        pc_note,
        cases,
        noop,
    };
    print_report(&report);
    if a.json {
        #[allow(clippy::print_stdout, reason = "the report is this command's output")]
        {
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}

/// Creates a topic and fills it with `n` records keyed `key-{i % keys}`, like PC's harness.
async fn fill(
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

struct KbatchRun {
    total_s: f64,
    first_to_last_s: f64,
    mean_handler_s: f64,
    /// Commits sent while records were processed (not the final one at shutdown).
    commits_during_run: u64,
}

async fn run_kbatch(
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
    let t0 = Instant::now();
    let running = ParallelConsumer::builder(cfg)
        .handler({
            let (done, busy_ns, first) = (done.clone(), busy_ns.clone(), first.clone());
            move |_r| {
                let (done, busy_ns, first) = (done.clone(), busy_ns.clone(), first.clone());
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
                    busy_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    done.fetch_add(1, Ordering::Release);
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
    let end = Instant::now();
    let commits_during_run = running.stats().commits;
    running.shutdown(ShutdownMode::Quick).await?;
    let first = *first.get().context("no record processed")?;
    Ok(KbatchRun {
        total_s: (end - t0).as_secs_f64(),
        first_to_last_s: (end - first).as_secs_f64(),
        mean_handler_s: busy_ns.load(Ordering::Relaxed) as f64 / 1e9 / n as f64,
        commits_during_run,
    })
}

async fn run_pc(
    pc: &PathBuf,
    brokers: &str,
    name: &str,
    order: ProcessingOrder,
    n: u64,
    keys: u64,
    sleep_max: u64,
) -> anyhow::Result<(f64, f64)> {
    let topic = format!(
        "kbatch-bench-pc-{name}-{:08x}",
        crate::cluster::random_suffix()
    );
    let ordering = match order {
        ProcessingOrder::Key => "KEY",
        ProcessingOrder::Partition => "PARTITION",
        ProcessingOrder::Unordered => "UNORDERED",
    };
    let out = tokio::process::Command::new(pc)
        .args([
            "run",
            "bench",
            "--bootstrap",
            brokers,
            "--topic",
            &topic,
            "--records",
            &n.to_string(),
        ])
        .args([
            "--ordering",
            ordering,
            "--sleep-max-ms",
            &sleep_max.to_string(),
            "--fill",
            "--keys",
            &keys.to_string(),
        ])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "Parallel Consumer run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(out.stdout.trim_ascii()).context("PC output")?;
    Ok((
        v["seconds"].as_f64().unwrap_or(f64::NAN),
        v["seconds_first_to_last"].as_f64().unwrap_or(f64::NAN),
    ))
}

async fn run_noop(admin: &Admin, client: &ClientConfig, n: u64) -> anyhow::Result<Noop> {
    let topic = fill(admin, client, "noop", 8, n, 100_000).await?;
    // Both commit as they go, at kbatch's default interval, as a deployed consumer does.
    let every = ParallelConfig::new(ConsumerConfig::default(), ["t"]).commit_interval;
    let cfg = ConsumerConfig::new(client.clone())
        .with_offset_reset(AutoOffsetReset::Earliest)
        .with_group(format!(
            "kbatch-bench-raw-{:08x}",
            crate::cluster::random_suffix()
        ));
    let raw = {
        let (cfg, topic) = (cfg.clone(), topic.clone());
        tokio::task::spawn_blocking(move || base_consumer(&cfg, &topic, n, Some(every))).await??
    };
    anyhow::ensure!(
        raw.delivered == n,
        "BaseConsumer read {} of {n}",
        raw.delivered
    );
    let k = run_kbatch(client, &topic, ProcessingOrder::Key, n, 0, 1000).await?;
    let _ = admin.delete_topics(&[&topic]).await;
    let (kr, br) = (n as f64 / k.first_to_last_s, n as f64 / raw.seconds);
    anyhow::ensure!(
        k.commits_during_run > 0,
        "kbatch committed nothing while it consumed"
    );
    Ok(Noop {
        records: n,
        partitions: 8,
        commit_interval_ms: every.as_millis() as u64,
        kbatch_msgs_per_s: kr,
        kbatch_commits_during_run: k.commits_during_run,
        base_consumer_msgs_per_s: br,
        kbatch_vs_base_consumer: kr / br,
    })
}

fn print_report(r: &Report) {
    eprintln!(
        "\nconsumer benchmark: {} records per case on 1 partition, handler sleeps {}",
        r.records_per_case, r.handler_sleep_ms
    );
    if let Some(n) = &r.pc_note {
        eprintln!("  Parallel Consumer: {n}");
    }
    eprintln!(
        "  {:<10} {:>9} {:>10} {:>9} {:>8} {:>9} {:>8}",
        "case", "kbatch s", "ideal s", "vs ideal", "PC s", "PC/kbatch", "conc."
    );
    for c in &r.cases {
        let opt = |v: Option<f64>, w: usize| {
            v.map_or_else(|| format!("{:>w$}", "-"), |v| format!("{v:>w$.3}"))
        };
        eprintln!(
            "  {:<10} {:>9.3} {:>10.3} {:>8.2}x {} {}x {:>8}",
            c.case,
            c.kbatch_first_to_last_seconds,
            c.ideal_seconds,
            c.kbatch_vs_ideal,
            opt(c.pc_first_to_last_seconds, 8),
            opt(c.pc_vs_kbatch, 8),
            c.kbatch_concurrency
        );
    }
    if let Some(n) = &r.noop {
        eprintln!(
            "  no-op, {} records on {} partitions, both committing every {} ms: kbatch {:.0} msgs/s ({} commits during the run), BaseConsumer {:.0} msgs/s ({:.2}x)",
            n.records,
            n.partitions,
            n.commit_interval_ms,
            n.kbatch_msgs_per_s,
            n.kbatch_commits_during_run,
            n.base_consumer_msgs_per_s,
            n.kbatch_vs_base_consumer
        );
    }
    eprintln!(
        "  (times from the first record handled to the last; PC likewise, from its own harness)"
    );
}
