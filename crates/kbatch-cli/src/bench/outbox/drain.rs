//! One drain: load N pending entries (untimed), then time a relay delivering them all.

use std::time::Instant;

use kbatch_outbox::{
    Destination, KafkaDeliverer, OutboxEntry, OutboxStore, Relay, RelayConfig, TableName,
    enqueue_batch,
};
use kbatch_producer::Producer;

/// What one drain measured.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Drained {
    pub(crate) entries: u64,
    /// First claim to the last batch's outcomes committed.
    pub(crate) seconds: f64,
    pub(crate) msg_per_s: f64,
    pub(crate) batches: u64,
    /// From the table afterwards: the proof nothing was lost.
    pub(crate) delivered: u64,
    pub(crate) pending_after: u64,
    pub(crate) dead_after: u64,
}

/// Entries to load: one payload shared by all (its bytes are what matters), keys spread
/// over `keys` aggregates as an application's would be.
pub(crate) fn entries(n: u64, topic: &str, payload: &bytes::Bytes, keys: u64) -> Vec<OutboxEntry> {
    (0..n)
        .map(|i| {
            OutboxEntry::new(Destination::kafka(topic), payload.clone())
                .with_key(format!("aggregate-{}", i % keys.max(1)))
        })
        .collect()
}

/// Writes `entries` with the crate's multi-row enqueue, in transactions of 10,000 (a single
/// 200,000-row transaction would only measure the database's big-transaction path).
pub(crate) async fn load(
    store: &OutboxStore,
    table: &TableName,
    entries: &[OutboxEntry],
) -> anyhow::Result<()> {
    for chunk in entries.chunks(10_000) {
        match store {
            OutboxStore::Postgres(p) => {
                let mut tx = p.begin().await?;
                enqueue_batch(&mut tx, table, chunk).await?;
                tx.commit().await?;
            }
            OutboxStore::MySql(p) => {
                let mut tx = p.begin().await?;
                enqueue_batch(&mut tx, table, chunk).await?;
                tx.commit().await?;
            }
            OutboxStore::Sqlite(p) => {
                let mut tx = p.begin().await?;
                enqueue_batch(&mut tx, table, chunk).await?;
                tx.commit().await?;
            }
            _ => anyhow::bail!("unsupported store"),
        }
    }
    Ok(())
}

/// Drains the table with [`Relay::drain`] at `in_flight` batches in flight; the clock runs
/// from the first claim to the end of the drain (the last batch's outcomes committed, and
/// the one empty claim that shows nothing is left).
pub(crate) async fn drain(
    store: &OutboxStore,
    table: &TableName,
    producer: Producer,
    batch: usize,
    in_flight: usize,
    entries: u64,
) -> anyhow::Result<Drained> {
    let relay = Relay::new(
        store.clone(),
        KafkaDeliverer::new(producer),
        RelayConfig::default()
            .with_table(table.clone())
            .with_batch_size(batch)
            .with_batches_in_flight(in_flight),
    )?;
    let started = Instant::now();
    let report = relay.drain().await?;
    let seconds = started.elapsed().as_secs_f64();
    let status = store.status(table).await?;
    Ok(Drained {
        entries,
        seconds,
        msg_per_s: if seconds > 0.0 {
            report.claimed as f64 / seconds
        } else {
            0.0
        },
        batches: report.batches as u64,
        delivered: status.delivered,
        pending_after: status.pending,
        dead_after: status.dead,
    })
}
