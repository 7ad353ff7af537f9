//! `kbatch bench gateway`: the HTTP ingest gateway against kbatch's `Producer` sending the same
//! records directly, in one run, on a real broker.
//!
//! ```text
//!  gateways: kbatch_gateway::Gateway on 127.0.0.1:0, each on its own tokio runtime, an API
//!            key (authentication on, as deployed):
//!            plain    = producer "plain", the same ProducerConfig as the direct contender
//!                       (equal settings: the targets' rows)
//!            adaptive = the gateway's default (AdaptiveProducer, per-event): its own rows
//!  round r = 1..R, order rotated:
//!    direct   Producer::send for S s, every future awaited            ─► records/s
//!    ndjson   W connections posting NDJSON bodies of B records         ─► records/s, p50/p99
//!    single   C connections posting one JSON record each, back to back ─► req/s, p50/p99
//!    open     one-record requests at RATE/s, latency from schedule     ─► p50/p99/max
//!    (ndjson, single and open once per gateway)
//!  ─► min / median / max per load; targets: ndjson ≥ 0.8 × direct, open p99 < 10 ms
//! ```
//!
//! Every load writes to a topic of its own; a load generator in this process (reqwest over
//! keep-alive HTTP/1.1 connections) shares the machine with the gateway and the broker.

mod load;

use std::sync::Arc;
use std::time::Duration;

use clap::Args as ClapArgs;
use kbatch_client::{Admin, ClientConfig, NewTopic};
use kbatch_core::Topic;
use kbatch_gateway::{ApiKey, Gateway, GatewayConfig, ProducerKind};
use kbatch_producer::{Producer, ProducerConfig};
use rand::Rng as _;
use tokio_util::sync::CancellationToken;

use super::{Spread, Target};
use load::{Data, Endpoint, Measured};

/// Options of `kbatch bench gateway`.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Bootstrap servers of the (real) Kafka cluster to measure against.
    #[arg(long, env = "KBATCH_BROKERS")]
    brokers: String,
    /// Measured rounds; each runs every load once, in a rotated order.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// Seconds of each load.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Connections of the single-record closed loop.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Offered single-record requests per second of the open loop.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Records per NDJSON request.
    #[arg(long, default_value_t = 1_000)]
    batch: u64,
    /// Connections posting NDJSON batches.
    #[arg(long, default_value_t = 8)]
    batch_concurrency: usize,
    /// Value size in bytes (a JSON string, quotes included).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Partitions of each load's topic.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Run only these loads (comma-separated names from the table, e.g. `ndjson,direct_matched`),
    /// to profile or compare one; a target whose loads did not run is not evaluated.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(LOADS))]
    only: Vec<String>,
    /// Smoke test: 1 round of 0.5 s loads at 500 req/s. Not a measurement.
    #[arg(long, conflicts_with_all = ["rounds", "seconds", "rate"])]
    quick: bool,
    /// Print one JSON object (configuration, every run, summaries, targets) on stdout as well.
    #[arg(long)]
    json: bool,
}

impl Args {
    /// Records the NDJSON load has in flight at most: connections × records per request.
    fn in_flight(&self) -> usize {
        self.batch_concurrency
            .saturating_mul(usize::try_from(self.batch).unwrap_or(usize::MAX))
    }
}

/// Seconds of each warm-up load before the first round (at most `--seconds`).
const WARM_UP_SECONDS: f64 = 3.0;

/// The loads, in their base order (rotated by round). `*_adaptive` loads go to the gateway
/// with its default (adaptive) producer, the others to the one with the plain producer.
/// `direct_matched` is the direct `Producer` with as many records in flight as the NDJSON
/// load gives the gateway (connections × records per request): what NDJSON is judged
/// against. `direct` lets the producer's own bound (100,000 pending) hold it back instead,
/// for information. `direct_open` is the open loop's schedule straight through the plain
/// gateway's `Producer` settings, no HTTP: the latency floor the broker and client give at
/// that rate.
const LOADS: [&str; 9] = [
    "direct",
    "direct_matched",
    "ndjson",
    "single",
    "open",
    "direct_open",
    "ndjson_adaptive",
    "single_adaptive",
    "open_adaptive",
];

#[derive(serde::Serialize)]
struct Run {
    round: u32,
    load: &'static str,
    #[serde(flatten)]
    measured: Measured,
}

pub(crate) async fn run(mut a: Args) -> anyhow::Result<()> {
    if a.quick {
        (a.rounds, a.seconds, a.rate) = (1, 0.5, 500.0);
    }
    let client = ClientConfig::new(a.brokers.as_str()).with_client_id("kbatch-bench-gateway");
    let producer_config = ProducerConfig::new(client.clone());
    let admin = Admin::new(&client)?;
    let token: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let config = GatewayConfig::default()
        .with_bind("127.0.0.1:0".parse()?)
        .with_limits(64 << 20, a.batch.max(1) as usize)
        .with_api_key(ApiKey::from_token(
            "bench",
            &token,
            ["kbatch-bench-gateway-*"],
        ));
    let shutdown = CancellationToken::new();
    // The same ProducerConfig as the direct Producer it is compared with: equal settings.
    let (plain_addr, plain_server) = start_gateway(
        config.clone().with_producer(ProducerKind::Plain),
        producer_config.clone(),
        shutdown.clone(),
    )?;
    // The gateway as deployed by default; its adaptive producer learns nothing across runs.
    let scratch = tempfile_dir()?;
    let (adaptive_addr, adaptive_server) = start_gateway(
        config
            .with_producer(ProducerKind::Adaptive)
            .with_calibration_path(scratch.join("bench-gateway-calibration.sqlite")),
        producer_config.clone(),
        shutdown.clone(),
    )?;
    let direct = Producer::new(producer_config)?;
    let data = Arc::new(Data::new(a.keys, a.size, a.batch));
    // Every connection opened stays open (reqwest's default: no idle bound). With a bound
    // (it was 128), the open loop's connections beyond it were closed after each answer and
    // opened again for the next request after any stall, so the bench measured TCP set-up
    // and connection churn on top of the gateway (5 % of the profile in reqwest's connect).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;

    let endpoint = |addr: std::net::SocketAddr, topic: &str| Endpoint {
        client: http.clone(),
        url: format!("http://{addr}/topics/{topic}/records"),
        token: token.as_str().into(),
    };
    // Warm-up, not counted: on a broker just started (its JIT, new log segments) the first
    // round's first load ran at under half the speed of the same load later (409,182 against
    // 1,051,051 records/s direct), which made the first round's ratios say nothing.
    {
        let warm = a.seconds.min(WARM_UP_SECONDS);
        let topic = format!(
            "kbatch-bench-gateway-warm-up-{:08x}",
            crate::cluster::random_suffix()
        );
        admin
            .create_topics(&[NewTopic::new(&topic, a.partitions)])
            .await?;
        let t: Topic = topic.as_str().into();
        for addr in [plain_addr, adaptive_addr] {
            let endpoint = endpoint(addr, &topic);
            load::probe(&direct, &endpoint, &t, &data).await?;
            load::closed_loop(&endpoint, &data, a.batch_concurrency, a.batch, warm).await;
            load::closed_loop(&endpoint, &data, a.concurrency, 1, warm).await;
        }
        load::direct(&direct, &t, &data, warm, load::DIRECT_WINDOW).await;
        admin.delete_topics(&[&topic]).await?;
        eprintln!("bench: warmed up ({warm} s per load, not counted)");
    }

    let mut runs = Vec::new();
    for round in 1..=a.rounds {
        for k in 0..LOADS.len() {
            let load = LOADS[(k + round as usize - 1) % LOADS.len()];
            if !a.only.is_empty() && !a.only.iter().any(|o| o == load) {
                continue;
            }
            let topic = format!(
                "kbatch-bench-gateway-{load}-{:08x}",
                crate::cluster::random_suffix()
            );
            admin
                .create_topics(&[NewTopic::new(&topic, a.partitions)])
                .await?;
            let addr = if load.ends_with("_adaptive") {
                adaptive_addr
            } else {
                plain_addr
            };
            let endpoint = endpoint(addr, &topic);
            let t: Topic = topic.as_str().into();
            // The topic answers, through the gateway and the direct producer alike, before
            // it is counted against anyone (leaders, metadata, the gateway's topic lookup).
            load::probe(&direct, &endpoint, &t, &data).await?;
            let m = match load.trim_end_matches("_adaptive") {
                "direct" => load::direct(&direct, &t, &data, a.seconds, load::DIRECT_WINDOW).await,
                "direct_matched" => {
                    load::direct(&direct, &t, &data, a.seconds, a.in_flight()).await
                }
                "direct_open" => {
                    load::direct_open(&direct, &t, &data, a.rate, a.seconds, 4_096).await
                }
                "ndjson" => {
                    load::closed_loop(&endpoint, &data, a.batch_concurrency, a.batch, a.seconds)
                        .await
                }
                "single" => load::closed_loop(&endpoint, &data, a.concurrency, 1, a.seconds).await,
                _ => load::open_loop(&endpoint, &data, a.rate, a.seconds, 4_096).await,
            };
            let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
            eprintln!(
                "bench: round {round} {load}: {:.0} records/s, {:.0} req/s, p50 {} ms, p99 {} ms, max {} ms, {} failed{}",
                m.records_per_s,
                m.requests_per_s,
                ms(m.p50_ms),
                ms(m.p99_ms),
                ms(m.max_ms),
                m.failed,
                m.first_failure
                    .as_deref()
                    .map(|f| format!(" (first: {f})"))
                    .unwrap_or_default()
            );
            admin.delete_topics(&[&topic]).await?;
            runs.push(Run {
                round,
                load,
                measured: m,
            });
        }
    }
    direct.close().await;
    shutdown.cancel();
    let _ = plain_server.join();
    let _ = adaptive_server.join();
    let _ = std::fs::remove_dir_all(&scratch);

    let report = Report::new(&a, &runs);
    report.print(&a);
    if a.json {
        let out = serde_json::json!({
            "config": {
                "rounds": a.rounds, "seconds": a.seconds, "concurrency": a.concurrency,
                "rate": a.rate, "batch": a.batch, "batch_concurrency": a.batch_concurrency,
                "size": a.size, "keys": a.keys, "partitions": a.partitions,
            },
            "runs": runs,
            "summaries": report.summaries,
            "targets": report.targets,
        });
        #[allow(clippy::print_stdout, reason = "the report is this command's output")]
        {
            println!("{out}");
        }
    }
    Ok(())
}

/// A scratch directory for the adaptive gateway's calibration file.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "kbatch-bench-gateway-{:08x}",
        crate::cluster::random_suffix()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Binds the gateway and serves it on a runtime of its own, so the load generator's tasks
/// do not queue behind the server's (or the reverse) on shared workers.
fn start_gateway(
    config: GatewayConfig,
    producer: ProducerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<(std::net::SocketAddr, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name("bench-gateway".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let bound = async {
                    let p = Producer::new(producer)?;
                    anyhow::Ok(Gateway::bind(config, p).await?)
                }
                .await;
                match bound {
                    Ok(g) => {
                        let _ = tx.send(Ok(g.local_addr()));
                        if let Err(e) = g.run(shutdown).await {
                            eprintln!("bench: the gateway stopped with an error: {e}");
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    let addr = rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the gateway thread ended before binding"))??;
    Ok((addr, handle))
}

#[derive(serde::Serialize)]
struct Summary {
    load: &'static str,
    records_per_s: Option<Spread>,
    requests_per_s: Option<Spread>,
    p50_ms: Option<Spread>,
    p99_ms: Option<Spread>,
    max_ms: Option<Spread>,
    failed: u64,
}

struct Report {
    summaries: Vec<Summary>,
    targets: Vec<Target>,
}

impl Report {
    fn new(a: &Args, runs: &[Run]) -> Self {
        let of = |load: &str, f: fn(&Measured) -> Option<f64>| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.load == load)
                .filter_map(|r| f(&r.measured))
                .collect()
        };
        let summaries = LOADS
            .iter()
            .map(|&load| Summary {
                load,
                records_per_s: Spread::of(&of(load, |m| Some(m.records_per_s))),
                requests_per_s: Spread::of(&of(load, |m| {
                    (m.requests > 0).then_some(m.requests_per_s)
                })),
                p50_ms: Spread::of(&of(load, |m| m.p50_ms)),
                p99_ms: Spread::of(&of(load, |m| m.p99_ms)),
                max_ms: Spread::of(&of(load, |m| m.max_ms)),
                failed: runs
                    .iter()
                    .filter(|r| r.load == load)
                    .map(|r| r.measured.failed)
                    .sum(),
            })
            .collect();
        let ratios = |ndjson: &str| -> Vec<f64> {
            (1..=a.rounds)
                .filter_map(|round| {
                    let get = |load: &str| {
                        runs.iter()
                            .find(|r| r.round == round && r.load == load)
                            .map(|r| r.measured.records_per_s)
                    };
                    Some(get(ndjson)? / get("direct_matched")?.max(1e-9))
                })
                .collect()
        };
        let mut targets = Vec::new();
        for (suffix, which) in [
            ("", "plain producer, equal settings"),
            ("_adaptive", "adaptive producer, the gateway's default"),
        ] {
            targets.push(Target::judge(
                format!(
                    "NDJSON ({} records per request) records/s ≥ 0.8 × the direct Producer's with as many records in flight ({}) [{which}]",
                    a.batch,
                    a.in_flight()
                ),
                ratios(&format!("ndjson{suffix}")),
                |r| r >= 0.8,
            ));
            targets.push(Target::judge(
                format!(
                    "single-record p99 < 10 ms at {} req/s offered [{which}]",
                    a.rate
                ),
                of(&format!("open{suffix}"), |m| m.p99_ms),
                |p| p < 10.0,
            ));
        }
        Self { summaries, targets }
    }

    fn print(&self, a: &Args) {
        eprintln!(
            "gateway benchmark: {} round(s) of {} s per load; {}-byte JSON values, {} keys, {} partitions; \
             the plain gateway and the direct Producer use the same ProducerConfig (kbatch's defaults: acks=all, idempotent, linger 5 ms); \
             *_adaptive rows: the gateway's default adaptive producer (same client settings, its own batching); \
             authentication on (one API key, SHA-256, constant-time); HTTP/1.1 keep-alive from this process",
            a.rounds, a.seconds, a.size, a.keys, a.partitions
        );
        eprintln!(
            "  loads: direct = Producer::send, futures awaited, up to the producer's own bound (100,000) outstanding; \
             direct_matched = the same with at most {} outstanding, the records the NDJSON load has in flight (the NDJSON target's baseline); \
             ndjson = {} connections × {} records per request; \
             single = {} connections, one record per request, back to back; open = {} one-record requests/s, latency from the schedule; \
             direct_open = the same schedule through Producer::send, no HTTP, latency from the schedule to the acknowledgement",
            a.in_flight(),
            a.batch_concurrency,
            a.batch,
            a.concurrency,
            a.rate
        );
        eprintln!(
            "  {:<16} {:>30} {:>26} {:>22} {:>22} {:>22} {:>7}",
            "load", "records/s", "requests/s", "p50 ms", "p99 ms", "max ms", "failed"
        );
        let f = |s: &Option<Spread>, prec: usize| {
            s.map_or_else(
                || "-".to_owned(),
                |s| format!("{:.p$}/{:.p$}/{:.p$}", s.min, s.median, s.max, p = prec),
            )
        };
        for s in &self.summaries {
            eprintln!(
                "  {:<16} {:>30} {:>26} {:>22} {:>22} {:>22} {:>7}",
                s.load,
                f(&s.records_per_s, 0),
                f(&s.requests_per_s, 0),
                f(&s.p50_ms, 2),
                f(&s.p99_ms, 2),
                f(&s.max_ms, 1),
                s.failed
            );
        }
        Target::print_all(&self.targets);
        if a.rounds < 3 {
            eprintln!("  NOTE: {} round(s) only: no meaningful spread", a.rounds);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn only_takes_the_tables_load_names_and_names_a_wrong_one() {
        let a = Cli::try_parse_from(["x", "--brokers", "b", "--only", "ndjson,direct_matched"])
            .expect("known loads parse")
            .args;
        assert_eq!(a.only, ["ndjson", "direct_matched"]);
        let e = Cli::try_parse_from(["x", "--brokers", "b", "--only", "ndjson,nope"])
            .err()
            .expect("an unknown load is refused")
            .to_string();
        assert!(e.contains("nope") && e.contains("direct_matched"), "{e}");
    }
}
