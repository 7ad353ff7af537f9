//! `kbatch bench consumer`: kbatch's parallel consumer beside Confluent's Parallel Consumer
//! (Java, `scripts/pc`) and Kafka's share groups (Java `KafkaShareConsumer`, `scripts/share`) at
//! equal concurrency, and beside a raw `BaseConsumer` for no-op throughput.
//!
//! ```text
//! fill topics once ─┬─ warm-up round (not counted) ─┬─ round 1 … R ─> min / median / max
//!                   │  every case, every contender  │  contenders in a rotated order
//!                   └── each run: fresh group, its own handler-time measure, first → last record
//! ```
//!
//! Each contender measures its mean handler time inside its own process, so its efficiency
//! (ideal ÷ actual, ideal = records × its mean handler time ÷ usable concurrency) does not
//! depend on whose timer overshoots more.

mod contenders;
mod report;

use std::path::PathBuf;

use clap::Args as ClapArgs;
use kbatch_client::{Admin, ClientConfig};
use kbatch_consumer::ProcessingOrder;
use serde::Serialize;

use contenders::{Peers, Run};

/// Options of `kbatch bench consumer`.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Bootstrap servers of the (real) Kafka cluster; share groups must be enabled on it for
    /// the share-group contender (`scripts/kafka up` does).
    #[arg(long, env = "KBATCH_BROKERS")]
    brokers: String,
    /// Records per case of the concurrency sweep (one partition). Twice PC's README scenario,
    /// so that a run at low concurrency lasts several seconds while the whole default run
    /// (6 rounds) stays near 25 minutes on 2 cores; at high concurrency kbatch still finishes
    /// in a fraction of a second, and more records would make the peers' runs there minutes.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    records: u64,
    /// Distinct keys in the sweep's topic (the KEY cases), whatever `--records` is.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Records of the sequential cases (KEY with 1 key, PARTITION): one at a time, so a run
    /// takes records × the mean handler time whoever runs it, 5–8 s for the default.
    #[arg(long, default_value_t = 2_500, value_parser = clap::value_parser!(u64).range(1..))]
    sequential_records: u64,
    /// Handler sleep: a whole number of ms uniform in 0..this (PC's VolumeTests: 0..=4 ms).
    #[arg(long, default_value_t = 5)]
    sleep_max_ms: u64,
    /// Concurrencies of the KEY (10,000 keys) and UNORDERED sweep; every contender runs at
    /// the same one (PC's `maxConcurrency`, the share group's consumers × workers).
    #[arg(long, value_delimiter = ',', default_values_t = [16usize, 64, 256, 1024])]
    concurrency: Vec<usize>,
    /// Concurrency of the sequential cases (KEY with 1 key, PARTITION), where only one record
    /// can run at a time whatever it is: PC's default.
    #[arg(long, default_value_t = 16)]
    sequential_concurrency: usize,
    /// Counted rounds; each runs every case once, its contenders in a rotated order.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// Uncounted warm-up rounds before them (JIT of the JVM peers and of the broker).
    #[arg(long, default_value_t = 1)]
    warmup_rounds: u32,
    /// Records for the no-op throughput case (8 partitions).
    #[arg(long, default_value_t = 2_000_000)]
    noop_records: u64,
    /// `scripts/pc` to run Confluent Parallel Consumer (default: $KBATCH_PC).
    #[arg(long, env = "KBATCH_PC")]
    pc: Option<PathBuf>,
    /// `scripts/share` to run share-group consumers (default: $KBATCH_SHARE).
    #[arg(long, env = "KBATCH_SHARE")]
    share: Option<PathBuf>,
    /// Cases to run (key, unordered, key-1, partition, noop); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also print one JSON object (summary and every raw round) on stdout.
    #[arg(long)]
    json: bool,
}

/// One benchmark case: an ordering over one topic at one concurrency.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    /// `key`, `unordered`, `key-1` or `partition`: what `--only` and the tuned rows group by.
    group: &'static str,
    order: ProcessingOrder,
    /// Records in `topic`: the run reads all of them.
    records: u64,
    keys: u64,
    concurrency: usize,
    topic: String,
    /// Whether this case is part of the concurrency sweep (and so of the tuned rows).
    swept: bool,
}

impl Case {
    /// How many records can run at once under this ordering.
    fn usable_concurrency(&self) -> usize {
        match self.order {
            ProcessingOrder::Partition => 1,
            ProcessingOrder::Key => self.concurrency.min(self.keys as usize).max(1),
            ProcessingOrder::Unordered => self.concurrency,
        }
    }
}

/// Who runs a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Contender {
    Kbatch,
    ParallelConsumer,
    ShareGroup,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Kbatch => "kbatch",
            Contender::ParallelConsumer => "PC",
            Contender::ShareGroup => "share group",
        }
    }
}

/// Every run of one contender in one case.
#[derive(Debug, Serialize)]
struct Rounds {
    contender: Contender,
    runs: Vec<Run>,
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let client = ClientConfig::new(a.brokers.as_str()).with_client_id("kbatch-bench");
    let admin = Admin::new(&client)?;
    let wanted = |c: &str| a.only.is_empty() || a.only.iter().any(|o| o == c);
    let peers = Peers::new(
        &a.brokers,
        a.pc.as_deref(),
        a.share.as_deref(),
        a.sleep_max_ms,
    );

    // One topic per data shape, filled once; every run reads it with a fresh group.
    let mut topics = Vec::new();
    let mut cases = Vec::new();
    if ["key", "unordered"].iter().any(|c| wanted(c)) {
        let keys = a.keys.min(a.records);
        let spread = contenders::fill(&admin, &client, "spread", 1, a.records, keys).await?;
        topics.push(spread.clone());
        for (group, order) in [
            ("key", ProcessingOrder::Key),
            ("unordered", ProcessingOrder::Unordered),
        ] {
            if !wanted(group) {
                continue;
            }
            for &c in &a.concurrency {
                cases.push(Case {
                    name: format!("{group}-c{c}"),
                    group,
                    order,
                    records: a.records,
                    keys,
                    concurrency: c,
                    topic: spread.clone(),
                    swept: true,
                });
            }
        }
    }
    if ["key-1", "partition"].iter().any(|c| wanted(c)) {
        // One key: KEY then runs one record at a time, as PARTITION always does on one partition.
        let n = a.sequential_records;
        let one = contenders::fill(&admin, &client, "one-key", 1, n, 1).await?;
        topics.push(one.clone());
        for (group, order) in [
            ("key-1", ProcessingOrder::Key),
            ("partition", ProcessingOrder::Partition),
        ] {
            if wanted(group) {
                cases.push(Case {
                    name: group.into(),
                    group,
                    order,
                    records: n,
                    keys: 1,
                    concurrency: a.sequential_concurrency,
                    topic: one.clone(),
                    swept: false,
                });
            }
        }
    }
    let noop_topic = if wanted("noop") {
        let t = contenders::fill(&admin, &client, "noop", 8, a.noop_records, 100_000).await?;
        topics.push(t.clone());
        Some(t)
    } else {
        None
    };

    let mut results: Vec<Vec<Rounds>> = cases
        .iter()
        .map(|c| {
            contenders_of(c, &peers)
                .into_iter()
                .map(|contender| Rounds {
                    contender,
                    runs: Vec::new(),
                })
                .collect()
        })
        .collect();
    let mut noop_runs = Vec::new();
    let total = a.warmup_rounds + a.rounds;
    for round in 0..total {
        let counted = round >= a.warmup_rounds;
        eprintln!(
            "bench: round {} of {total}{}",
            round + 1,
            if counted {
                ""
            } else {
                " (warm-up, not counted)"
            }
        );
        for (case, rounds) in cases.iter().zip(results.iter_mut()) {
            // Rotate who goes first, so no contender always meets a broker the previous one
            // left busy (compaction, page cache, GC).
            let n = rounds.len();
            for i in 0..n {
                let slot = &mut rounds[(i + round as usize) % n];
                let mut run = match slot.contender {
                    Contender::Kbatch => {
                        contenders::run_kbatch(&client, case, a.sleep_max_ms).await?
                    }
                    Contender::ParallelConsumer => peers.run_pc(case).await?,
                    Contender::ShareGroup => peers.run_share(&admin, case).await?,
                };
                run.round = round;
                run.efficiency = case.records as f64 * run.mean_handler_ms
                    / 1e3
                    / case.usable_concurrency() as f64
                    / run.seconds;
                eprintln!(
                    "bench:   {:<16} {:<11} {:>8.3} s  handler {:.3} ms  efficiency {:.2}{}",
                    case.name,
                    slot.contender.label(),
                    run.seconds,
                    run.mean_handler_ms,
                    run.efficiency,
                    run.detail
                        .as_deref()
                        .map_or(String::new(), |d| format!("  ({d})"))
                );
                if counted {
                    slot.runs.push(run);
                }
            }
        }
        if let Some(topic) = &noop_topic {
            let r = contenders::run_noop(&client, topic, a.noop_records, round).await?;
            eprintln!(
                "bench:   noop             kbatch {:.0} msgs/s, BaseConsumer {:.0} msgs/s",
                r.kbatch_msgs_per_s, r.base_consumer_msgs_per_s
            );
            if counted {
                noop_runs.push(r);
            }
        }
    }
    let _ = admin
        .delete_topics(&topics.iter().map(String::as_str).collect::<Vec<_>>())
        .await;

    let report = report::Report::new(&a, &peers, &cases, results, noop_runs);
    report.print();
    if a.json {
        #[allow(
            clippy::print_stdout,
            reason = "the JSON report is this command's output"
        )]
        {
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}

/// Who runs `case`: PC wherever it is available, share groups only where the order does not
/// matter (they give no ordering at all).
fn contenders_of(case: &Case, peers: &Peers) -> Vec<Contender> {
    let mut v = vec![Contender::Kbatch];
    if peers.pc_available() {
        v.push(Contender::ParallelConsumer);
    }
    if peers.share_available() && case.order == ProcessingOrder::Unordered {
        v.push(Contender::ShareGroup);
    }
    v
}
