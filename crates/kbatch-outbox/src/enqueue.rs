//! Writing entries inside the caller's own transaction.
//!
//! ```text
//!  let mut tx = pool.begin().await?;
//!  ... business writes on &mut *tx ...
//!  enqueue(&mut tx, &table, &entry).await?;   INSERT into kbatch_outbox_… in the same tx
//!  tx.commit().await?;                         entry and business data commit (or roll back) together
//! ```
//!
//! Taking a `Transaction` rather than a connection is the point: an entry written in
//! auto-commit could be delivered for business data that later rolls back.

use std::future::Future;

use sqlx::{MySql, Postgres, Sqlite, Transaction};

use crate::entry::{OutboxEntry, encode_headers};
use crate::error::{Error, Result};
use crate::schema::TableName;

const INSERT_PG: &str = "INSERT INTO {table} (id, msg_key, dest_kind, dest, payload, headers, \
     created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)";
const INSERT_QM: &str = "INSERT INTO {table} (id, msg_key, dest_kind, dest, payload, headers, \
     created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";

/// A database transaction an outbox entry can be written in: sqlx's `Transaction` on
/// PostgreSQL, MariaDB/MySQL or SQLite. Sealed.
pub trait OutboxTransaction: sealed::Sealed + Send {
    /// Inserts `entry` into `table` within this transaction.
    fn insert_entry<'a>(
        &'a mut self,
        table: &'a TableName,
        entry: &'a OutboxEntry,
    ) -> impl Future<Output = Result<()>> + Send + 'a;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::Transaction<'_, sqlx::Postgres> {}
    impl Sealed for sqlx::Transaction<'_, sqlx::MySql> {}
    impl Sealed for sqlx::Transaction<'_, sqlx::Sqlite> {}
}

/// Writes `entry` into `table` inside the caller's transaction `tx`: it is delivered only if
/// `tx` commits. The entry's `created_at` is also when it first becomes due.
///
/// # Errors
/// [`Error::InvalidEntry`] for an empty Kafka topic or a non-HTTP URL (nothing written);
/// [`Error::Database`] when the insert fails (a duplicate id, a missing table: run
/// `migrate_*` first) — the caller's transaction should then be rolled back.
pub async fn enqueue<T: OutboxTransaction>(
    tx: &mut T,
    table: &TableName,
    entry: &OutboxEntry,
) -> Result<()> {
    check(entry)?;
    tx.insert_entry(table, entry).await
}

fn check(entry: &OutboxEntry) -> Result<()> {
    use crate::entry::Destination;
    let reason = match &entry.destination {
        Destination::Kafka { topic } if topic.is_empty() => "the Kafka topic is empty".to_owned(),
        Destination::Http { url }
            if !(url.starts_with("http://") || url.starts_with("https://")) =>
        {
            format!("HTTP destination {url:?} must start with http:// or https://")
        }
        _ => return Ok(()),
    };
    Err(Error::InvalidEntry {
        id: entry.id,
        reason,
    })
}

impl OutboxTransaction for Transaction<'_, Postgres> {
    async fn insert_entry(&mut self, table: &TableName, e: &OutboxEntry) -> Result<()> {
        let (kind, dest) = e.destination.to_columns();
        sqlx::query(table.sql(INSERT_PG))
            .bind(e.id)
            .bind(e.key.as_deref())
            .bind(kind)
            .bind(dest)
            .bind(&e.payload[..])
            .bind(encode_headers(&e.headers))
            .bind(e.created_at.millis())
            .execute(&mut **self)
            .await
            .map_err(Error::db("enqueue"))?;
        Ok(())
    }
}

impl OutboxTransaction for Transaction<'_, MySql> {
    async fn insert_entry(&mut self, table: &TableName, e: &OutboxEntry) -> Result<()> {
        let (kind, dest) = e.destination.to_columns();
        sqlx::query(table.sql(INSERT_QM))
            .bind(e.id)
            .bind(e.key.as_deref())
            .bind(kind)
            .bind(dest)
            .bind(&e.payload[..])
            .bind(encode_headers(&e.headers))
            .bind(e.created_at.millis())
            .bind(e.created_at.millis())
            .execute(&mut **self)
            .await
            .map_err(Error::db("enqueue"))?;
        Ok(())
    }
}

impl OutboxTransaction for Transaction<'_, Sqlite> {
    async fn insert_entry(&mut self, table: &TableName, e: &OutboxEntry) -> Result<()> {
        let (kind, dest) = e.destination.to_columns();
        sqlx::query(table.sql(INSERT_QM))
            .bind(e.id)
            .bind(e.key.as_deref())
            .bind(kind)
            .bind(dest)
            .bind(&e.payload[..])
            .bind(encode_headers(&e.headers))
            .bind(e.created_at.millis())
            .bind(e.created_at.millis())
            .execute(&mut **self)
            .await
            .map_err(Error::db("enqueue"))?;
        Ok(())
    }
}
