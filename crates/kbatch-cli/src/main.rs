//! `kbatch`: high-throughput, batch-oriented Kafka pipelines from the command line.
#![forbid(unsafe_code)]

mod bench;
mod bridge;
mod broker;
mod calibration;
mod cluster;
mod consume;
mod demo;
mod gateway;
mod outbox;
mod produce;
mod stats;

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// High-throughput, batch-oriented Kafka pipelines.
#[derive(Parser, Debug)]
#[command(name = "kbatch", version, about, propagate_version = true)]
struct Cli {
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9898), path /metrics.
    #[arg(long, global = true, env = "KBATCH_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the embedded in-memory DEV broker (librdkafka's mock cluster) until Ctrl-C.
    Broker(broker::Args),
    /// Produce lines from stdin, or generated records, to a topic.
    Produce(produce::Args),
    /// Print records of a topic.
    Consume(consume::Args),
    /// Push records through produce and consume on embedded defaults and verify nothing is lost.
    Demo(demo::Args),
    /// Serve the HTTP ingest gateway: records over HTTP into Kafka, answered once acknowledged.
    Gateway(gateway::Args),
    /// The transactional outbox: create its table, show its state, relay it to Kafka.
    #[command(subcommand)]
    Outbox(outbox::Outbox),
    /// End-to-end benchmarks against a real broker, peers side by side.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// What the adaptive producer learned per profile and level: show it, or reset it.
    #[command(subcommand)]
    Calibration(calibration::Calibration),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        if let Some(addr) = cli.metrics_addr {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            eprintln!("metrics: http://{addr}/metrics");
        }
        match cli.command {
            Command::Broker(a) => broker::run(a).await,
            Command::Produce(a) => produce::run(a).await,
            Command::Consume(a) => consume::run(a).await,
            Command::Demo(a) => demo::run(a).await,
            Command::Gateway(a) => gateway::run(a).await,
            Command::Outbox(o) => outbox::run(o).await,
            Command::Bench(b) => bench::run(b).await,
            // SQLite is synchronous: off the runtime's workers.
            Command::Calibration(c) => tokio::task::spawn_blocking(move || calibration::run(c))
                .await
                .context("the calibration command panicked")?,
        }
    });
    // Clients dropped by the command close on the blocking pool: let them finish (bounded),
    // then stop the embedded broker they may still be talking to.
    rt.shutdown_timeout(std::time::Duration::from_secs(30));
    cluster::stop_dev_brokers();
    result
}
