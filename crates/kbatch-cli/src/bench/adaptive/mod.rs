//! `kbatch bench adaptive`: kbatch-adaptive's `AdaptiveProducer` against kbatch's plain
//! `Producer` at fixed batch settings, at equal librdkafka settings, on a real broker.
//!
//! ```text
//!  settings check: librdkafka's own dump (debug=conf) of every contender's client; all
//!                  equal but the batching that makes each static contender what it is
//!  warm-up: every contender once at saturation (not counted)
//!  round r = 1..R:
//!    1. latency: for each load (100/s … 100,000/s open loop, then saturation), every
//!       contender once, order rotated by round and load ─► p50/p99/p99.9/max, acked/s
//!    2. packed: at saturation, BULK / adaptive packed / adaptive per-event, rotated
//!       ─► events/s and Kafka records/s
//!  runs ─► min / median / max per contender and load, targets met / missed, where adaptive
//!          is behind, the intake micro-benchmark's figure, a plot
//! ```
//!
//! Every run has a topic of its own, a fresh client, and the same keyed events; latency is
//! measured from each event's scheduled time, so a contender that holds the sender back pays
//! for it (see [`load`]).

mod adapter;
mod contenders;
mod criterion;
mod load;
mod report;
mod settings;
mod verdict;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args as ClapArgs;
use kbatch_client::{Admin, ClientConfig, Compression, KafkaProducerConfig};
use kbatch_producer::{Producer, ProducerConfig};

use contenders::{BatchLimits, Contender, Data, Settings, StaticBatching};
use kbatch_adaptive::Shape;
use load::{Load, Plan};
use report::{LoadAloneRun, Report, Run};

/// Options of `kbatch bench adaptive`.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Bootstrap servers of the (real) Kafka cluster to measure against.
    #[arg(long, env = "KBATCH_BROKERS")]
    brokers: String,
    /// Offered rates of the open-loop points, events/s; saturation (closed loop) always runs
    /// after them.
    #[arg(long, value_delimiter = ',', default_values_t = [100.0, 1_000.0, 10_000.0, 100_000.0])]
    rates: Vec<f64>,
    /// Counted seconds of each point, at least (a rate point also holds ≥ --min-events).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Counted events of each point, at least.
    #[arg(long, default_value_t = 2_000)]
    min_events: u64,
    /// Seconds of each run offered first under the same load and not counted (connections,
    /// metadata, the adaptive controller settling on its level). 0 counts everything. The
    /// default outlasts the adaptive producer's budget up to 100,000 events/s (L7: 1 s), so
    /// each point starts counting in its steady state.
    #[arg(long, default_value_t = 2.0)]
    settle_seconds: f64,
    /// Measured rounds; each runs every contender at every load once, in a rotated order.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// Seconds of the uncounted warm-up run of each contender (saturation) before round 1.
    #[arg(long, default_value_t = 2.0)]
    warmup_seconds: f64,
    /// Smoke-test configuration: 1 round of 0.5 s points (≥ 50 events), 0.2 s settling, no
    /// warm-up. Not a measurement.
    #[arg(long, conflicts_with_all = ["seconds", "min_events", "settle_seconds", "rounds", "warmup_seconds"])]
    quick: bool,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Distinct keys (events are keyed; the default partitioner spreads them).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Partitions of each run's topic.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=1000))]
    partitions: i32,
    /// Most events the bench holds sent and not yet acknowledged, for every contender alike:
    /// a safety bound, set high enough that at saturation each contender's own bound (the
    /// Producer's --max-pending, the adaptive intake) is what holds the sender back, not this.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1_000..=10_000_000))]
    window: u64,
    /// Every client's own bound, the same for all: the Producer's max_pending_records (the
    /// adaptive producer's underlying one too) and librdkafka's queue.buffering.max.messages.
    /// The default is kbatch's and librdkafka's.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_pending: u64,
    /// The static contenders: LINGER_MS:BATCH_RECORDS:BATCH_BYTES each, comma-separated.
    /// Batch limits grow with the linger; batch.size stops at 1 MiB, the most the broker
    /// takes in one batch by default (message.max.bytes caps a MessageSet at 1,000,000 B anyway).
    #[arg(long, value_delimiter = ',',
          default_values = ["0:1000:131072", "5:10000:1048576", "100:100000:1048576"])]
    statics: Vec<StaticBatching>,
    /// Batch limits of the client under the adaptive contenders, and of BULK's, which runs
    /// the same client (BATCH_RECORDS:BATCH_BYTES; kbatch's defaults). Its linger is 0:
    /// AdaptiveProducer::start sets it so, its intake does the lingering.
    #[arg(long, default_value = "10000:1048576")]
    inner_batch: BatchLimits,
    /// Events per envelope of the BULK baseline.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    bulk_events: u32,
    /// Run only these parts (latency, packed).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Run only these contenders (comma-separated names from the table, e.g.
    /// `adaptive_packed,bulk_envelope_1000`), to profile or compare one; a target is judged
    /// only against the contenders that ran, and one whose contenders did not run is not
    /// evaluated.
    #[arg(long, value_delimiter = ',')]
    contenders: Vec<String>,
    /// Where to draw p99 latency and throughput against offered rate
    /// (default: $CARGO_TARGET_DIR or target, then bench/adaptive.png).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// criterion's output directory, for the intake micro-benchmark's figure
    /// (default: $CARGO_TARGET_DIR or target, then criterion).
    #[arg(long)]
    criterion_dir: Option<PathBuf>,
    /// Print one JSON object (configuration, summaries, targets, every run) on stdout as well.
    #[arg(long)]
    json: bool,
}

/// The two benchmarks, as `--only` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Latency,
    Packed,
}

pub(crate) async fn run(mut a: Args) -> anyhow::Result<()> {
    if a.quick {
        (
            a.seconds,
            a.min_events,
            a.settle_seconds,
            a.rounds,
            a.warmup_seconds,
        ) = (0.5, 50, 0.2, 1, 0.0);
    }
    for r in &a.rates {
        anyhow::ensure!(
            r.is_finite() && *r > 0.0,
            "--rates: {r} is not a positive rate"
        );
    }
    for (name, v) in [
        ("seconds", a.seconds),
        ("settle-seconds", a.settle_seconds),
        ("warmup-seconds", a.warmup_seconds),
    ] {
        anyhow::ensure!(
            v.is_finite() && v >= 0.0,
            "--{name}: {v} is not a duration in seconds"
        );
    }
    anyhow::ensure!(
        a.window >= u64::from(a.bulk_events),
        "--window {} is smaller than one BULK envelope ({} events)",
        a.window,
        a.bulk_events
    );
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned));

    let window = usize::try_from(a.window)?;
    let mut base = KafkaProducerConfig::new(
        ClientConfig::new(a.brokers.as_str()).with_client_id("kbatch-bench-adaptive"),
    )
    .with_compression(Compression::Lz4);
    base.statistics_interval = None;
    let max_pending = usize::try_from(a.max_pending)?;
    base.queue_records = max_pending;
    let settings = Settings {
        pending: (max_pending, base.queue_bytes),
        base,
        inner: a.inner_batch,
    };
    let data = Data::new(a.keys, a.size, a.partitions);

    let wanted = |p: Part| a.only.is_empty() || a.only.contains(&p);
    let mut notes = Vec::new();
    let statics: Vec<Contender> = a.statics.iter().copied().map(Contender::Static).collect();
    let mut latency: Vec<Contender> = if wanted(Part::Latency) {
        std::iter::once(Contender::Adaptive(Shape::PerEvent))
            .chain(statics.iter().copied())
            .collect()
    } else {
        Vec::new()
    };
    let mut packed: Vec<Contender> = if wanted(Part::Packed) {
        vec![
            Contender::Bulk(a.bulk_events),
            Contender::Adaptive(Shape::Packed),
            Contender::PackedMany(a.bulk_events),
            Contender::Adaptive(Shape::PerEvent),
        ]
    } else {
        Vec::new()
    };
    if !a.contenders.is_empty() {
        retain_named(&mut latency, &mut packed, &a.contenders)?;
        notes.push(format!(
            "--contenders {}: only these ran; each target is judged against those of them it compares",
            a.contenders.join(",")
        ));
    }
    let everyone = distinct(&latency, &packed);
    anyhow::ensure!(!everyone.is_empty(), "no contender selected");
    let (shared, batching) = settings::check_settings(&settings, &everyone)?;
    eprintln!(
        "bench: every contender runs with the same {} librdkafka settings, batching aside",
        shared.len()
    );

    let loads: Vec<Load> = a
        .rates
        .iter()
        .copied()
        .map(Load::Rate)
        .chain([Load::Saturation])
        .collect();
    let plan = |load| Plan {
        load,
        settle: Duration::from_secs_f64(a.settle_seconds),
        measure: Duration::from_secs_f64(a.seconds),
        min_events: a.min_events,
        window,
    };
    let admin = Admin::new(&settings.base.client)?;
    let probe = Producer::new(
        ProducerConfig::default().with_kafka(settings.base.clone().with_linger(Duration::ZERO)),
    )?;
    let env = contenders::Bench {
        admin: &admin,
        probe: &probe,
    };
    let run = |bench: &'static str, round: u32, position: usize, c: Contender, plan: Plan| {
        let (settings, data, env) = (&settings, &data, &env);
        async move {
            let tag = format!("{bench}-{round}-{position}");
            let o = contenders::run_one(c, settings, data, env, &plan, &tag)
                .await
                .with_context(|| {
                    format!(
                        "{bench} round {round}, {} at {}",
                        c.key(),
                        plan.load.label()
                    )
                })?;
            let r = Run::new(bench, round, position, c.key(), plan.load, o);
            eprintln!(
                "bench: {} {bench} {} {}: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {:.0} acked/s, {} records{}{}",
                if round == 0 {
                    "warm-up".to_owned()
                } else {
                    format!("round {round}")
                },
                r.load,
                r.contender,
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                r.acked_per_s,
                r.records,
                r.sender_cpu_ns_per_event
                    .map(|ns| format!(", sender CPU {ns:.0} ns/event"))
                    .unwrap_or_default(),
                if r.failed > 0 {
                    format!(
                        ", {} FAILED: {}",
                        r.failed,
                        r.first_error.as_deref().unwrap_or("")
                    )
                } else {
                    String::new()
                }
            );
            anyhow::Ok(r)
        }
    };

    let mut warmup = Vec::new();
    if a.warmup_seconds > 0.0 {
        for (k, c) in everyone.iter().enumerate() {
            let p = Plan {
                settle: Duration::ZERO,
                measure: Duration::from_secs_f64(a.warmup_seconds),
                min_events: 0,
                ..plan(Load::Saturation)
            };
            warmup.push(run("warmup", 0, k, *c, p).await?);
        }
    }
    let mut runs = Vec::new();
    let mut load_alone = Vec::new();
    for round in 1..=a.rounds {
        for (li, load) in loads.iter().enumerate() {
            for k in 0..latency.len() {
                let c = latency[(k + round as usize + li) % latency.len()];
                runs.push(run("latency", round, k, c, plan(*load)).await?);
            }
        }
        for k in 0..packed.len() {
            let c = packed[(k + round as usize) % packed.len()];
            runs.push(run("packed", round, k, c, plan(Load::Saturation)).await?);
        }
        if !packed.is_empty() {
            load_alone.push(run_load_alone(&data, round, &plan(Load::Saturation)).await?);
        }
    }

    let static_keys: Vec<String> = statics
        .iter()
        .filter(|c| latency.contains(c))
        .map(|c| c.key())
        .collect();
    let load_labels: Vec<String> = loads.iter().map(|l| l.label()).collect();
    let targets = verdict::targets(
        &runs,
        &verdict::Field {
            rounds: a.rounds,
            loads: &loads,
            latency: &latency,
            packed: &packed,
            statics: &static_keys,
            bulk_events: a.bulk_events,
        },
    );
    let mut adaptive_behind = verdict::behind(
        &runs,
        "latency",
        &load_labels,
        &Contender::Adaptive(Shape::PerEvent).key(),
        &static_keys,
        false,
    );
    for packed in [
        Contender::Adaptive(Shape::Packed),
        Contender::PackedMany(a.bulk_events),
    ] {
        adaptive_behind.extend(verdict::behind(
            &runs,
            "packed",
            &["saturation".to_owned()],
            &packed.key(),
            &[Contender::Bulk(a.bulk_events).key()],
            true,
        ));
    }

    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let criterion_dir = a
        .criterion_dir
        .clone()
        .unwrap_or_else(|| target_dir.join("criterion"));
    let intake = criterion::find(&criterion_dir);
    let intake_note = intake.is_empty().then(|| {
        format!(
            "no intake estimates under {}: {}",
            criterion_dir.display(),
            criterion::HOW_TO_RUN
        )
    });
    let summaries = report::summarize(&runs);
    let plot_path = a
        .plot
        .clone()
        .unwrap_or_else(|| target_dir.join("bench").join("adaptive.png"));
    let plot = report::draw_plot(&plot_path, &summaries);

    if a.rounds < 3 {
        notes.push(format!(
            "{} round(s) only: no meaningful spread{}",
            a.rounds,
            if a.quick {
                " (--quick: a smoke test, not a measurement)"
            } else {
                ""
            }
        ));
    }
    if let Some(l) = load_average
        .as_deref()
        .and_then(|l| l.parse::<f64>().ok())
        .filter(|l| *l > 1.5)
    {
        notes.push(format!("the machine was busy when the bench started (load average {l:.2} on {} cores): take these numbers as a smoke run", std::thread::available_parallelism().map_or(0, |n| n.get())));
    }
    let failed: u64 = runs.iter().map(|r| r.failed).sum();
    if failed > 0 {
        notes.push(format!("{failed} events FAILED across the runs (see each run's first_error); latency counts acknowledged events only"));
    }
    for r in runs
        .iter()
        .filter(|r| r.bench == "latency" && r.acked > 0 && r.records != r.acked)
    {
        notes.push(format!(
            "{} at {} round {}: {} events took {} Kafka records (per-event shape: expected equal)",
            r.contender, r.load, r.round, r.acked, r.records
        ));
    }

    let descriptions: BTreeMap<String, String> =
        everyone.iter().map(|c| (c.key(), c.describe())).collect();
    let report = Report {
        config: serde_json::json!({
            "broker": "real Apache Kafka",
            "quick": a.quick,
            "load_average_at_start": load_average,
            "value_bytes": a.size,
            "values": "1,024 distinct random alphanumeric values, cycled; key-0 … key-N in turn",
            "keys": a.keys,
            "partitions": a.partitions,
            "acks": format!("{:?}", settings.base.acks),
            "idempotence": settings.base.idempotence,
            "compression": settings.base.compression.as_str(),
            "window_events": window,
            "max_pending_records": max_pending,
            "rounds": a.rounds,
            "warmup_seconds": a.warmup_seconds,
            "settle_seconds": a.settle_seconds,
            "seconds": a.seconds,
            "min_events": a.min_events,
            "rates": a.rates,
            "loads": load_labels,
            "latency_contenders": latency.iter().map(|c| c.key()).collect::<Vec<_>>(),
            "packed_contenders": packed.iter().map(|c| c.key()).collect::<Vec<_>>(),
            "contenders": everyone.iter().map(|c| serde_json::json!({
                "key": c.key(),
                "description": c.describe(),
                "producer_batching": settings.batching(*c),
                "librdkafka_batching": batching.get(&c.key()),
            })).collect::<Vec<_>>(),
            "adaptive": settings::adaptive_facts(&settings),
            "librdkafka_shared": shared,
            "rust_client": format!("rust-rdkafka 0.39.0, librdkafka {}", kbatch_client::bench::librdkafka_version()),
            "sender": "one task sends; a second awaits every future as it completes (FuturesUnordered) and stamps it; \
                       open loop: tokio's 1 ms timer, a late send counts its lateness",
        }),
        summaries,
        targets,
        adaptive_behind,
        intake,
        intake_note,
        plot,
        notes,
        load_alone,
        warmup,
        runs,
    };
    report.print(&descriptions);
    if a.json {
        #[allow(clippy::print_stdout, reason = "the report is this command's output")]
        {
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}

/// Runs the load alone (no producer) once at saturation under `plan`; prints and returns
/// what it made.
async fn run_load_alone(data: &Data, round: u32, plan: &Plan) -> anyhow::Result<LoadAloneRun> {
    let alone = contenders::LoadAlone {
        topic: "kbatch-bench-load-alone".into(),
        data,
    };
    let m = load::drive(&alone, plan)
        .await
        .with_context(|| format!("packed round {round}, the load alone"))?;
    let r = LoadAloneRun {
        round,
        sends_per_s: m.per_s(m.acked),
        sender_cpu_ns_per_send: m.sender_cpu_ns_per_event,
    };
    eprintln!(
        "bench: round {round} packed the load alone: {:.0} sends/s{}",
        r.sends_per_s,
        r.sender_cpu_ns_per_send
            .map(|ns| format!(", sender CPU {ns:.0} ns/send"))
            .unwrap_or_default()
    );
    Ok(r)
}

/// The contenders of both benchmarks, each once, in the order they first appear.
fn distinct(latency: &[Contender], packed: &[Contender]) -> Vec<Contender> {
    let mut all: Vec<Contender> = Vec::new();
    for c in latency.iter().chain(packed) {
        if !all.contains(c) {
            all.push(*c);
        }
    }
    all
}

/// Keeps only the contenders named in `names` (their table names) in both benchmarks; a name
/// that is none of them is an error that lists the names there are.
fn retain_named(
    latency: &mut Vec<Contender>,
    packed: &mut Vec<Contender>,
    names: &[String],
) -> anyhow::Result<()> {
    let known: Vec<String> = distinct(latency, packed).iter().map(|c| c.key()).collect();
    if let Some(unknown) = names.iter().find(|n| !known.contains(n)) {
        anyhow::bail!(
            "--contenders: {unknown:?} is not a contender of this run; its contenders are {}",
            known.join(", ")
        );
    }
    let named = |c: &Contender| names.contains(&c.key());
    latency.retain(named);
    packed.retain(named);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contenders_are_kept_by_their_table_names_and_a_wrong_name_lists_the_right_ones() {
        let s5 = Contender::Static(StaticBatching {
            linger_ms: 5,
            batch_records: 10_000,
            batch_bytes: 1 << 20,
        });
        let per_event = Contender::Adaptive(Shape::PerEvent);
        let (mut latency, mut packed) = (
            vec![per_event, s5],
            vec![
                Contender::Bulk(1_000),
                Contender::Adaptive(Shape::Packed),
                per_event,
            ],
        );
        let names = [
            "adaptive_per_event".to_owned(),
            "bulk_envelope_1000".to_owned(),
        ];
        retain_named(&mut latency, &mut packed, &names).expect("both are contenders");
        assert_eq!(latency, [per_event]);
        assert_eq!(packed, [Contender::Bulk(1_000), per_event]);

        let e = retain_named(&mut latency, &mut packed, &["static_linger_7ms".to_owned()])
            .expect_err("no such contender")
            .to_string();
        assert!(
            e.contains("static_linger_7ms") && e.contains("bulk_envelope_1000"),
            "{e}"
        );
    }
}
