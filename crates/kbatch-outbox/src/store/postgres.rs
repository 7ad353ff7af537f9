//! PostgreSQL: `FOR UPDATE SKIP LOCKED`, outcomes through `UPDATE … FROM UNNEST(arrays)`.

use kbatch_core::Timestamp;
use sqlx::PgConnection;

use super::{CLAIM_COLUMNS, ClaimOrder, ClaimedEntry, OutcomeRow, RawRow, to_claimed};
use crate::error::{Error, Result};
use crate::schema::TableName;

/// Claims up to `limit` due entries on `conn`, which must be inside a transaction that stays
/// open while they are delivered (pass `&mut tx`).
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
    let sql = format!(
        "SELECT {CLAIM_COLUMNS} FROM {{table}} AS c WHERE state = 0 AND next_attempt_at <= $1{} \
         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        order.filter()
    );
    let rows: Vec<RawRow> = sqlx::query_as(table.sql(&sql))
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
