//! The demo's outbox act: a transactional outbox on SQLite (a file in a scratch directory),
//! relayed to the demo's broker and read back.
//!
//! ```text
//!  T transactions of E entries each; every 4th rolled back ──► kbatch_outbox_entries (SQLite)
//!  Relay (batch 500) ──► KafkaDeliverer ──► topic ──► ParallelConsumer (UNORDERED)
//!  verify by entry id: every committed entry exactly once, no rolled-back entry at all
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kbatch_client::{AutoOffsetReset, ConsumerConfig};
use kbatch_consumer::{ParallelConfig, ParallelConsumer, ProcessingOrder, ShutdownMode};
use kbatch_outbox::{
    Destination, ID_HEADER, KafkaDeliverer, OutboxEntry, OutboxStore, Relay, RelayConfig,
    TableName, enqueue,
};
use kbatch_producer::{Producer, ProducerConfig};
use serde::Serialize;

use crate::cluster::Cluster;

/// Transactions and entries per transaction: 1,600 entries, a few hundred rolled back.
const TRANSACTIONS: u64 = 80;
const PER_TRANSACTION: u64 = 20;

/// What the outbox act verified.
#[derive(Debug, Serialize)]
pub(crate) struct OutboxSummary {
    pub(crate) topic: String,
    pub(crate) committed: u64,
    pub(crate) rolled_back: u64,
    pub(crate) relay_seconds: f64,
    pub(crate) batches: u64,
    /// Distinct committed entries read back.
    pub(crate) received: u64,
    /// Committed entries never read back.
    pub(crate) lost: u64,
    /// Records of an entry already read.
    pub(crate) duplicates: u64,
    /// Records of rolled-back entries (must never exist).
    pub(crate) rolled_back_seen: u64,
}

impl OutboxSummary {
    pub(crate) fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.rolled_back_seen == 0
    }
}

pub(crate) async fn run(
    cluster: &Cluster,
    partitions: i32,
    quiet: bool,
) -> anyhow::Result<OutboxSummary> {
    let suffix = crate::cluster::random_suffix();
    let topic = format!("kbatch-demo-outbox-{suffix:08x}");
    cluster.ensure_topic(&topic, partitions).await?;
    let dir = std::env::temp_dir().join(format!("kbatch-demo-outbox-{suffix:08x}"));
    std::fs::create_dir_all(&dir)?;
    let result = act(cluster, &topic, &dir, quiet).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn act(
    cluster: &Cluster,
    topic: &str,
    dir: &std::path::Path,
    quiet: bool,
) -> anyhow::Result<OutboxSummary> {
    let say = |line: String| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    let store = OutboxStore::connect(&dir.join("outbox.sqlite").display().to_string()).await?;
    let OutboxStore::Sqlite(pool) = &store else {
        anyhow::bail!("a SQLite file opened as another store");
    };
    let table = TableName::default();
    store.migrate(&table).await?;
    say(format!(
        "demo: outbox on SQLite → {topic}: {TRANSACTIONS} transactions of {PER_TRANSACTION} entries, every 4th rolled back"
    ));
    let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
    for t in 0..TRANSACTIONS {
        let mut tx = pool.begin().await?;
        let mut ids = Vec::new();
        for i in 0..PER_TRANSACTION {
            let e = OutboxEntry::new(Destination::kafka(topic), format!("tx {t} entry {i}"))
                .with_key(format!("order-{}", (t * PER_TRANSACTION + i) % 50));
            enqueue(&mut tx, &table, &e).await?;
            ids.push(e.id.to_string());
        }
        // The business transaction fails: its entries must vanish with it.
        if t % 4 == 3 {
            tx.rollback().await?;
            rolled_back.extend(ids);
        } else {
            tx.commit().await?;
            committed.extend(ids);
        }
    }

    let producer = Producer::new(ProducerConfig::new(cluster.client()))?;
    let relay = Relay::new(
        store.clone(),
        KafkaDeliverer::new(producer.clone()),
        RelayConfig::default()
            .with_table(table.clone())
            .with_batch_size(500),
    )?;
    let started = Instant::now();
    let mut batches = 0;
    while relay.run_once().await?.claimed > 0 {
        batches += 1;
    }
    let relay_seconds = started.elapsed().as_secs_f64();
    producer.close().await;
    let status = store.status(&table).await?;
    say(format!(
        "  relay: {batches} batches in {relay_seconds:.2} s; table: {} delivered, {} pending, {} dead",
        status.delivered, status.pending, status.dead
    ));

    // Read back by entry id (the header every delivered record carries).
    let seen: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let kafka = ConsumerConfig::new(cluster.client())
        .with_group(format!("{topic}-readback"))
        .with_offset_reset(AutoOffsetReset::Earliest);
    let cfg = ParallelConfig::new(kafka, [topic])
        .with_ordering(ProcessingOrder::Unordered)
        .with_concurrency(64);
    let running = {
        let seen = Arc::clone(&seen);
        ParallelConsumer::builder(cfg)
            .handler(move |r: kbatch_core::ConsumedRecord| {
                let seen = Arc::clone(&seen);
                async move {
                    let id = r
                        .headers
                        .iter()
                        .find(|h| h.key == ID_HEADER)
                        .and_then(|h| h.value.as_deref())
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default();
                    *seen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .entry(id)
                        .or_default() += 1;
                    Ok(())
                }
            })
            .start()?
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !running.is_finished() {
        let n: u64 = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .sum();
        if n >= committed.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown(ShutdownMode::Drain).await?;
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let received = committed.iter().filter(|id| seen.contains_key(*id)).count() as u64;
    Ok(OutboxSummary {
        topic: topic.to_owned(),
        committed: committed.len() as u64,
        rolled_back: rolled_back.len() as u64,
        relay_seconds,
        batches,
        received,
        lost: committed.len() as u64 - received,
        duplicates: seen.values().map(|n| n.saturating_sub(1)).sum(),
        rolled_back_seen: rolled_back.iter().filter_map(|id| seen.get(id)).sum(),
    })
}
