//! MariaDB 10.6+ / MySQL 8: `FOR UPDATE SKIP LOCKED`, outcomes through one multi-table
//! `UPDATE … JOIN (SELECT … UNION ALL …)`.

use kbatch_core::Timestamp;
use sqlx::MySqlConnection;

use super::postgres::check_count;
use super::{CLAIM_COLUMNS, ClaimOrder, ClaimedEntry, OutcomeRow, RawRow, to_claimed};
use crate::error::{Error, Result};
use crate::schema::TableName;

/// Claims up to `limit` due entries on `conn`, which must be inside a transaction that stays
/// open while they are delivered (pass `&mut tx`).
///
/// # Errors
/// [`Error::ClaimOutsideTransaction`] when `conn` is in auto-commit (checked first, through
/// `@@in_transaction`: nothing is claimed then).
pub async fn claim_mysql(
    conn: &mut MySqlConnection,
    table: &TableName,
    limit: usize,
    now: Timestamp,
    order: ClaimOrder,
) -> Result<Vec<ClaimedEntry>> {
    let (in_tx,): (i64,) = sqlx::query_as("SELECT CAST(@@in_transaction AS SIGNED)")
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::db("claim: transaction check"))?;
    if in_tx == 0 {
        return Err(Error::ClaimOutsideTransaction { backend: "mysql" });
    }
    let sql = format!(
        "SELECT {CLAIM_COLUMNS} FROM {{table}} AS c WHERE state = 0 AND next_attempt_at <= ?{} \
         ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
        order.filter()
    );
    let rows: Vec<RawRow> = sqlx::query_as(table.sql(&sql))
        .bind(now.millis())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::db("claim"))?;
    rows.into_iter().map(|r| to_claimed(table, r)).collect()
}

pub(super) async fn write_outcomes(
    conn: &mut MySqlConnection,
    table: &TableName,
    rows: &[OutcomeRow],
) -> Result<()> {
    let mut values = String::with_capacity(rows.len() * 40);
    for i in 0..rows.len() {
        values.push_str(if i == 0 {
            "SELECT ? AS id, ? AS state, ? AS attempts, ? AS next_at, ? AS err, ? AS delivered_at"
        } else {
            " UNION ALL SELECT ?, ?, ?, ?, ?, ?"
        });
    }
    let sql = format!(
        "UPDATE {{table}} AS t JOIN ({values}) AS v ON t.id = v.id SET t.state = v.state, \
         t.attempts = v.attempts, t.next_attempt_at = v.next_at, t.last_error = v.err, \
         t.delivered_at = v.delivered_at"
    );
    write_outcome_rows!(conn, table, &sql, rows)
}
