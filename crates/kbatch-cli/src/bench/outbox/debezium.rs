//! The Debezium peer (scripts/debezium): the embedded engine's PostgreSQL connector with the
//! outbox event router, fed the same rows in Debezium's outbox shape.
//!
//! ```text
//!  CREATE TABLE kbatch_dbz_bench_… (id uuid, aggregatetype, aggregateid, type, payload bytea)
//!  scripts/debezium run … ──► {"event":"ready"}   its slot exists: later commits stream
//!  INSERT N rows, one transaction (untimed; decoding sees them at COMMIT)
//!  ◄── {"event":"done","delivered":N,"elapsed_s":…}  first record seen → last broker ack
//! ```

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kbatch_outbox::OutboxEntry;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// What the peer reported.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct DebeziumRun {
    pub(crate) entries: u64,
    pub(crate) delivered: u64,
    pub(crate) seconds: f64,
    pub(crate) msg_per_s: f64,
}

/// Runs the peer once over `entries` (their ids, keys and payloads, in Debezium's columns).
#[allow(clippy::too_many_arguments, reason = "the run's settings, passed once")]
pub(crate) async fn run(
    script: &Path,
    pool: &PgPool,
    pg_url: &str,
    brokers: &str,
    topic: &str,
    batch: usize,
    entries: &[OutboxEntry],
    suffix: u32,
) -> anyhow::Result<DebeziumRun> {
    let table = format!("kbatch_dbz_bench_{suffix:08x}");
    let slot = format!("kbatch_dbz_{suffix:08x}");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id UUID PRIMARY KEY, aggregatetype VARCHAR(255) NOT NULL, \
         aggregateid VARCHAR(255) NOT NULL, type VARCHAR(255) NOT NULL, payload BYTEA)"
    )))
    .execute(pool)
    .await?;
    let result = run_peer(
        script, pool, pg_url, brokers, topic, batch, entries, &table, &slot,
    )
    .await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(pool)
        .await;
    // slot.drop.on.stop drops it on a clean stop; a killed peer would leave it holding WAL.
    let _ = sqlx::query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active")
        .bind(&slot)
        .execute(pool)
        .await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP PUBLICATION IF EXISTS {slot}_pub"
    )))
    .execute(pool)
    .await;
    result
}

#[allow(clippy::too_many_arguments, reason = "the run's settings, passed once")]
async fn run_peer(
    script: &Path,
    pool: &PgPool,
    pg_url: &str,
    brokers: &str,
    topic: &str,
    batch: usize,
    entries: &[OutboxEntry],
    table: &str,
    slot: &str,
) -> anyhow::Result<DebeziumRun> {
    let url = reqwest::Url::parse(pg_url)?;
    let n = entries.len().to_string();
    let batch = batch.to_string();
    let port = url.port().unwrap_or(5432).to_string();
    let mut child = tokio::process::Command::new(script)
        .arg("run")
        .args(["--bootstrap", brokers, "--topic", topic, "--table", table])
        .args(["--rows", &n, "--slot", slot, "--max-batch-size", &batch])
        .args([
            "--pg-host",
            url.host_str().unwrap_or("127.0.0.1"),
            "--pg-port",
            &port,
        ])
        .args([
            "--pg-user",
            url.username(),
            "--pg-password",
            url.password().unwrap_or(""),
        ])
        .args(["--pg-db", url.path().trim_start_matches('/')])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", script.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut next = async || -> anyhow::Result<serde_json::Value> {
        let line = tokio::time::timeout(Duration::from_secs(600), lines.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("the Debezium peer said nothing for 600 s"))??
            .ok_or_else(|| {
                anyhow::anyhow!("the Debezium peer exited early (see its stderr above)")
            })?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("the Debezium peer printed {line:?}: {e}"))?;
        if v["event"] == "error" {
            anyhow::bail!("the Debezium peer failed: {}", v["message"]);
        }
        Ok(v)
    };
    let ready = next().await?;
    anyhow::ensure!(ready["event"] == "ready", "expected ready, got {ready}");
    let mut tx = pool.begin().await?;
    for chunk in entries.chunks(1_000) {
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
            "INSERT INTO {table} (id, aggregatetype, aggregateid, type, payload) "
        ));
        q.push_values(chunk, |mut row, e| {
            row.push_bind(e.id)
                .push_bind("bench")
                .push_bind(e.key.clone().unwrap_or_default())
                .push_bind("event")
                .push_bind(e.payload.to_vec());
        });
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    let done = next().await?;
    anyhow::ensure!(done["event"] == "done", "expected done, got {done}");
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let seconds = done["elapsed_s"].as_f64().unwrap_or(f64::NAN);
    let delivered = done["delivered"].as_u64().unwrap_or(0);
    Ok(DebeziumRun {
        entries: entries.len() as u64,
        delivered,
        seconds,
        msg_per_s: delivered as f64 / seconds,
    })
}
