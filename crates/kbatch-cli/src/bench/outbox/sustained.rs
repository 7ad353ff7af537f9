//! The sustained run: writers enqueue at a fixed rate, each entry in a transaction of its own
//! (as an application would), while a relay runs; lag is `created_at` → the outcome
//! committed (`delivered_at`), read back from the table.

use std::time::{Duration, Instant};

use kbatch_outbox::{
    Destination, KafkaDeliverer, OutboxEntry, OutboxStore, Relay, RelayConfig, TableName, enqueue,
};
use kbatch_producer::Producer;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// What one sustained run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Sustained {
    pub(crate) offered_per_s: f64,
    /// Entries committed by the writers over the run, per second.
    pub(crate) enqueued_per_s: f64,
    pub(crate) enqueued: u64,
    pub(crate) delivered: u64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
}

/// Writers scheduled every 10 ms: each tick a writer enqueues its share of the rate (one
/// transaction per entry), so the offered load does not depend on how fast the relay is.
#[allow(clippy::too_many_arguments, reason = "the run's settings, passed once")]
pub(crate) async fn run(
    pool: &PgPool,
    table: &TableName,
    topic: &str,
    producer: Producer,
    batch: usize,
    rate: f64,
    seconds: f64,
    writers: usize,
    payload: &bytes::Bytes,
) -> anyhow::Result<Sustained> {
    // One record first, so the lag of the first entries is not the producer's connection
    // and the new topic's metadata lookup.
    producer
        .send(kbatch_core::Record::new(topic, "warm-up"))
        .await?
        .await?;
    let relay = Relay::new(
        OutboxStore::Postgres(pool.clone()),
        KafkaDeliverer::new(producer),
        RelayConfig::default()
            .with_table(table.clone())
            .with_batch_size(batch)
            .with_idle_poll(Duration::from_millis(10)),
    )?;
    let cancel = CancellationToken::new();
    let relay_task = tokio::spawn({
        let cancel = cancel.clone();
        async move { relay.run(cancel).await }
    });
    // The writers are the application: a pool of their own, so the relay never waits behind
    // them for a connection (the relay's pool holds its claim, its LISTEN and the status).
    let app = sqlx::postgres::PgPoolOptions::new()
        .max_connections(writers as u32)
        .connect_with(pool.connect_options().as_ref().clone())
        .await?;
    let tick = Duration::from_millis(10);
    let per_tick = rate * tick.as_secs_f64() / writers as f64;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (pool, table, topic, payload) = (
            pool.clone(),
            table.clone(),
            topic.to_owned(),
            payload.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut owed = 0.0f64;
            let mut every = tokio::time::interval(tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while Instant::now() < until {
                every.tick().await;
                owed += per_tick;
                while owed >= 1.0 {
                    owed -= 1.0;
                    let e = OutboxEntry::new(Destination::kafka(&topic), payload.clone())
                        .with_key(format!("writer-{w}-{}", n % 100));
                    let mut tx = pool.begin().await?;
                    enqueue(&mut tx, &table, &e).await?;
                    tx.commit().await?;
                    n += 1;
                }
            }
            anyhow::Ok(n)
        }));
    }
    let mut enqueued = 0;
    for t in tasks {
        enqueued += t.await??;
    }
    let wrote_for = started.elapsed().as_secs_f64();
    app.close().await;
    // Let the relay catch up (bounded), then stop it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let store = OutboxStore::Postgres(pool.clone());
    while store.status(table).await?.pending > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    relay_task.await??;
    let mut lags: Vec<f64> = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
        "SELECT delivered_at - created_at FROM {table} WHERE state = 1"
    )))
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|ms| ms as f64)
    .collect();
    lags.sort_by(f64::total_cmp);
    let q =
        |p: f64| (!lags.is_empty()).then(|| lags[((lags.len() - 1) as f64 * p).round() as usize]);
    Ok(Sustained {
        offered_per_s: rate,
        enqueued_per_s: enqueued as f64 / wrote_for,
        enqueued,
        delivered: lags.len() as u64,
        p50_ms: q(0.50),
        p99_ms: q(0.99),
        max_ms: lags.last().copied(),
    })
}
