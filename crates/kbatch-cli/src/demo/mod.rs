//! `kbatch demo`: the main job on embedded defaults.
//!
//! ```text
//!  generator ─► KafkaProducer ─► topic (P partitions) ─► KafkaConsumer ─► Ledger
//!      │ seq + send time in every value        delivery latency      end-to-end latency
//! ```
//! Then a second act: the adaptive producer (packed) under a trickle, a burst and a trickle,
//! printing the level as it moves, read back by the parallel consumer, which unpacks the
//! envelopes into events and counts each once, in key order.
//!
//! A third act: a transactional outbox on SQLite, some transactions rolled back, relayed to
//! the same broker and read back: every committed entry once, no rolled-back one.
//!
//! The consumer joins its group first; once it is assigned its partitions, produce and consume
//! run at the same time, so end-to-end latency is the pipeline's, not the group join's. The
//! ledger proves nothing was lost, duplicated or reordered within a partition, by counting
//! every sequence number.

mod adaptive;
mod gateway;
mod ledger;
mod outbox;
mod run;

use clap::Args as ClapArgs;

pub(crate) use run::run;

/// Options of `kbatch demo`.
#[derive(ClapArgs, Debug, Clone)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) target: crate::cluster::Target,
    /// Records to push through.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub(crate) records: u64,
    /// Value size in bytes (at least 16: sequence number and send time).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub(crate) size: u64,
    /// Partitions of the demo topic.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub(crate) partitions: i32,
    /// Distinct record keys.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) keys: u64,
    /// Topic to use (default: a new `kbatch-demo-<random>` topic).
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Skip the second act (adaptive microbatching under a changing load, ~10 s).
    #[arg(long)]
    pub(crate) no_adaptive: bool,
    /// Skip the third act (a transactional outbox on SQLite relayed to the broker, ~2 s).
    #[arg(long)]
    pub(crate) no_outbox: bool,
    /// Send the records through the HTTP ingest gateway (started in this process on
    /// 127.0.0.1, with an API key) instead of straight to the producer: NDJSON requests over
    /// 8 connections, each record counted once the gateway's answer gives its offset.
    #[arg(long)]
    pub(crate) via_gateway: bool,
}

/// The embedded dev broker keeps about 5 MiB per partition and silently drops older data;
/// the demo refuses a workload that would not fit rather than report a false loss.
const DEV_BROKER_BYTES_PER_PARTITION: u64 = 4 << 20;
