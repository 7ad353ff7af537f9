//! Test fixtures for kbatch, against real services.
//!
//! - [`brokers`]: the Kafka cluster in `KBATCH_BROKERS`, or else one real Apache Kafka broker
//!   started by `scripts/kafka` on first use and shared by every test of this `cargo test`
//!   run (keyed by the parent process, reaped when it exits).
//! - [`cluster`]: a real three-node cluster (replication factor 3, `min.insync.replicas=2`)
//!   from `KBATCH_CLUSTER_BROKERS`, or started by `scripts/kafka up --brokers 3` on first use
//!   and shared likewise; [`Cluster::faults`] kills and restarts its nodes, one fault test at
//!   a time, and it names partition leaders and group coordinators.
//! - [`pg_url`] / [`mysql_url`]: likewise with `KBATCH_PG_URL` / `KBATCH_MYSQL_URL` and
//!   `scripts/postgres` / `scripts/mariadb`.
//! - [`unique_name`], [`create_topic`], [`produce`], [`consume_all`]: per-test topics and
//!   groups, and helpers that check what really reached the broker.
//! - [`memory`]: in-memory `RecordSource` and `OffsetSink`, to test engines and drivers
//!   without a broker.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "test support code: panics are test failures"
)]

mod cluster;
mod kafka;
pub mod memory;
mod services;

pub use cluster::{CLUSTER_NODES, Cluster, Faults, cluster};
pub use kafka::{
    PartitionedRecords, admin, admin_delete_group, client_config, consume_all, consume_all_from,
    consumer_config, create_topic, produce, producer_config,
};
pub use services::{brokers, mysql_url, pg_url, repo_root};

/// A name unique to this test: `prefix-<16 random hex digits>`. Use it for topics, groups
/// and transactional ids so tests can run in parallel against one broker.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// Polls `check` every 100 ms until it holds; panics after `limit` with `what` — the thing
/// that did not happen — in the message. For waits on a real cluster, whose timing no test
/// should assert: make `limit` generous.
pub async fn wait_until<F, Fut>(
    limit: std::time::Duration,
    what: impl std::fmt::Display,
    mut check: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
