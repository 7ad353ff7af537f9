//! PostgreSQL: `FOR UPDATE SKIP LOCKED`, outcomes through `UPDATE … FROM UNNEST(arrays)`.

use kbatch_core::Timestamp;
use sqlx::PgConnection;

use super::{CLAIM_COLUMNS, ClaimOrder, ClaimedEntry, OutcomeRow, RawRow, to_claimed};
use crate::error::{Error, Result};
use crate::schema::TableName;

/// Begins a claim transaction with sorts and bitmap scans disabled for its own statements.
///
/// A claim must be an index scan of the pending index in id order that stops after `limit`
/// rows. Statistics taken while the table held few pending rows (or none yet, as after a
/// bulk load) make the planner expect a handful of rows and sort every pending one instead:
/// over 100 ms per claim at a 200,000-entry backlog, exactly when the relay must be fast.
/// `SET LOCAL` ends with the transaction.
pub const POSTGRES_CLAIM_BEGIN: &str =
    "BEGIN; SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off";

/// The claim statement: `$1` now, `$2` the limit.
fn claim_sql(order: ClaimOrder) -> String {
    format!(
        "SELECT {CLAIM_COLUMNS} FROM {{table}} AS c WHERE state = 0 AND next_attempt_at <= $1{} \
         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        order.filter()
    )
}

/// Claims up to `limit` due entries on `conn`, which must be inside a transaction that stays
/// open while they are delivered (pass `&mut tx`).
///
/// Open it with [`POSTGRES_CLAIM_BEGIN`] (as [`OutboxStore::claim`](super::OutboxStore::claim)
/// does) to keep the claim fast when the table's statistics predate a backlog.
///
/// # Errors
/// [`Error::ClaimOutsideTransaction`] when `conn` is in auto-commit: the row locks were
/// already released, so the caller must not deliver the entries.
pub async fn claim_postgres(
    conn: &mut PgConnection,
    table: &TableName,
    limit: usize,
    now: Timestamp,
    order: ClaimOrder,
) -> Result<Vec<ClaimedEntry>> {
    let rows: Vec<RawRow> = sqlx::query_as(table.sql(&claim_sql(order)))
        .bind(now.millis())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::db("claim"))?;
    if !rows.is_empty() {
        // Row locks give the transaction an xid; a statement that finds none runs in a new
        // transaction, so the claim's own ended with it: auto-commit.
        let (in_tx,): (bool,) = sqlx::query_as("SELECT txid_current_if_assigned() IS NOT NULL")
            .fetch_one(&mut *conn)
            .await
            .map_err(Error::db("claim: transaction check"))?;
        if !in_tx {
            return Err(Error::ClaimOutsideTransaction {
                backend: "postgres",
            });
        }
    }
    rows.into_iter().map(|r| to_claimed(table, r)).collect()
}

pub(super) async fn write_outcomes(
    conn: &mut PgConnection,
    table: &TableName,
    rows: &[OutcomeRow],
) -> Result<()> {
    let sql = "UPDATE {table} AS t SET state = v.state, attempts = v.attempts, \
               next_attempt_at = v.next_at, last_error = v.err, delivered_at = v.delivered_at \
               FROM UNNEST($1::uuid[], $2::int2[], $3::int4[], $4::int8[], $5::text[], $6::int8[]) \
               AS v(id, state, attempts, next_at, err, delivered_at) WHERE t.id = v.id";
    let done = sqlx::query(table.sql(sql))
        .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.state).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.attempts).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.next_attempt_at).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.last_error.clone())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.delivered_at).collect::<Vec<_>>())
        .execute(conn)
        .await
        .map_err(Error::db("finish: write outcomes"))?;
    check_count(table, done.rows_affected(), rows.len())
}

/// Every claimed row is locked by us: fewer updated rows means the table changed under the
/// claim (a row deleted by hand), and committing would hide it.
pub(super) fn check_count(table: &TableName, updated: u64, claimed: usize) -> Result<()> {
    if updated != claimed as u64 {
        return Err(Error::OutcomeMismatch {
            table: table.to_string(),
            updated,
            claimed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests: a panic is a failure")]
    use super::*;

    /// A table bulk-loaded and never analyzed (as after an outage's backlog, or with stale
    /// statistics) must still be claimed by an index scan in id order, not a sort of every
    /// pending row. Fails without [`POSTGRES_CLAIM_BEGIN`]'s settings (the plan sorts).
    #[tokio::test]
    async fn the_claim_is_an_index_scan_on_a_table_without_statistics() {
        let pool = sqlx::PgPool::connect(kbatch_testkit::pg_url())
            .await
            .unwrap();
        let suffix = kbatch_testkit::unique_name("p");
        let table = TableName::new(format!(
            "kbatch_outbox_plan{}",
            suffix.trim_start_matches("p-")
        ))
        .unwrap();
        crate::schema::migrate_postgres(&mut pool.acquire().await.unwrap(), &table)
            .await
            .unwrap();
        let load = "INSERT INTO {table} (id, msg_key, dest_kind, dest, payload, headers, \
                    created_at, next_attempt_at) SELECT gen_random_uuid(), 'k' || (g % 1000), 0, \
                    't', '\\x00'::bytea, '\\x'::bytea, 1, 1 FROM generate_series(1, 50000) g";
        sqlx::query(table.sql(load)).execute(&pool).await.unwrap();
        for order in [ClaimOrder::Id, ClaimOrder::PerKey] {
            let mut tx = pool.begin_with(POSTGRES_CLAIM_BEGIN).await.unwrap();
            let explain = format!("EXPLAIN {}", claim_sql(order));
            let plan: Vec<String> = sqlx::query_scalar(table.sql(&explain))
                .bind(2_i64)
                .bind(1_000_i64)
                .fetch_all(&mut *tx)
                .await
                .unwrap();
            let plan = plan.join("\n");
            assert!(
                plan.contains(&format!("Index Scan using {table}_pending"))
                    && !plan.contains("Sort"),
                "{order:?}: the claim must walk the pending index in id order:\n{plan}"
            );
            tx.rollback().await.unwrap();
        }
        sqlx::query(table.sql("DROP TABLE {table}"))
            .execute(&pool)
            .await
            .unwrap();
    }
}
