//! SQLite: one writer at a time, so the claim holds the write lock (`BEGIN IMMEDIATE`);
//! outcomes through one `UPDATE … FROM (VALUES …)`.

use kbatch_core::Timestamp;
use sqlx::SqliteConnection;

use super::postgres::check_count;
/// SQLite's integers decode as i64.
type SqliteRow = (
    uuid::Uuid,
    Option<String>,
    i64,
    String,
    Vec<u8>,
    Vec<u8>,
    i64,
    i64,
);

use super::{CLAIM_COLUMNS, ClaimOrder, ClaimedEntry, OutcomeRow, to_claimed};
use crate::error::{Error, Result};
use crate::schema::TableName;

/// Claims up to `limit` due entries on `conn`, which must be inside a transaction
/// (`BEGIN IMMEDIATE` preferred) that stays open while they are delivered.
///
/// # Errors
/// [`Error::ClaimOutsideTransaction`] when `conn` is in auto-commit (checked first: nothing
/// is claimed then).
pub async fn claim_sqlite(
    conn: &mut SqliteConnection,
    table: &TableName,
    limit: usize,
    now: Timestamp,
    order: ClaimOrder,
) -> Result<Vec<ClaimedEntry>> {
    // SQL cannot ask SQLite whether a transaction is open, but BEGIN can: it fails inside one.
    if sqlx::raw_sql("BEGIN").execute(&mut *conn).await.is_ok() {
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut *conn)
            .await
            .map_err(Error::db("claim: transaction check"))?;
        return Err(Error::ClaimOutsideTransaction { backend: "sqlite" });
    }
    // A write statement takes the write lock even when it changes nothing: a caller's
    // DEFERRED transaction then cannot read rows that another relay is about to claim too.
    sqlx::query(table.sql("UPDATE {table} SET state = state WHERE 0"))
        .execute(&mut *conn)
        .await
        .map_err(Error::db("claim: write lock"))?;
    let sql = format!(
        "SELECT {CLAIM_COLUMNS} FROM {{table}} AS c WHERE state = 0 AND next_attempt_at <= ?{} \
         ORDER BY id LIMIT ?",
        order.filter()
    );
    let rows: Vec<SqliteRow> = sqlx::query_as(table.sql(&sql))
        .bind(now.millis())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::db("claim"))?;
    rows.into_iter()
        .map(
            |(id, key, kind, dest, payload, headers, created, attempts)| {
                let kind = i16::try_from(kind).unwrap_or(i16::MAX);
                let attempts = i32::try_from(attempts).unwrap_or(0);
                to_claimed(
                    table,
                    (id, key, kind, dest, payload, headers, created, attempts),
                )
            },
        )
        .collect()
}

pub(super) async fn write_outcomes(
    conn: &mut SqliteConnection,
    table: &TableName,
    rows: &[OutcomeRow],
) -> Result<()> {
    let values = vec!["(?, ?, ?, ?, ?, ?)"; rows.len()].join(", ");
    let sql = format!(
        "UPDATE {{table}} SET state = v.column2, attempts = v.column3, \
         next_attempt_at = v.column4, last_error = v.column5, delivered_at = v.column6 \
         FROM (VALUES {values}) AS v WHERE {{table}}.id = v.column1"
    );
    write_outcome_rows!(conn, table, &sql, rows)
}
