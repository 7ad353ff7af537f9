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
     created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const INSERT_MANY_HEAD: &str = "INSERT INTO {table} (id, msg_key, dest_kind, dest, payload, \
     headers, created_at, next_attempt_at) ";
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

    /// Inserts `entries` into `table` within this transaction, up to
    /// [`ROWS_PER_INSERT`] rows per statement.
    fn insert_entries<'a>(
        &'a mut self,
        table: &'a TableName,
        entries: &'a [OutboxEntry],
    ) -> impl Future<Output = Result<()>> + Send + 'a;
}

/// Rows per multi-row `INSERT` of [`enqueue_batch`]: 8 bind parameters a row stays under
/// every backend's limit (SQLite's 32,766, the wire protocols' 65,535) with room to spare.
pub const ROWS_PER_INSERT: usize = 1_000;

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

/// Writes every entry of `entries` into `table` inside the caller's transaction `tx`, with
/// multi-row inserts (one round trip per [`ROWS_PER_INSERT`] entries instead of one per
/// entry): for an application that produces many events in one transaction, and for loading
/// a backlog. Same rules as [`enqueue`]: delivered only if `tx` commits.
///
/// # Errors
/// As [`enqueue`]; every entry is checked before anything is written.
pub async fn enqueue_batch<T: OutboxTransaction>(
    tx: &mut T,
    table: &TableName,
    entries: &[OutboxEntry],
) -> Result<()> {
    entries.iter().try_for_each(check)?;
    for chunk in entries.chunks(ROWS_PER_INSERT) {
        tx.insert_entries(table, chunk).await?;
    }
    Ok(())
}

/// One multi-row insert of `entries` (the chunking is the caller's), for any backend.
macro_rules! insert_many {
    ($db:ty, $conn:expr, $table:expr, $entries:expr) => {{
        let mut q = sqlx::QueryBuilder::<$db>::new($table.sql(INSERT_MANY_HEAD).0);
        q.push_values($entries, |mut row, e| {
            let (kind, dest) = e.destination.to_columns();
            row.push_bind(e.id)
                .push_bind(e.key.clone())
                .push_bind(kind)
                .push_bind(dest.to_owned())
                .push_bind(e.payload.to_vec())
                .push_bind(encode_headers(&e.headers))
                .push_bind(e.created_at.millis())
                .push_bind(e.created_at.millis());
        });
        q.build()
            .execute($conn)
            .await
            .map_err(Error::db("enqueue"))?;
        Ok(())
    }};
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

/// One entry inserted; the same binds on every database (placeholders differ: `sql`). Due at
/// once: `next_attempt_at` is its `created_at`.
macro_rules! insert_one {
    ($conn:expr, $sql:expr, $e:expr) => {{
        let e = $e;
        let (kind, dest) = e.destination.to_columns();
        sqlx::query($sql)
            .bind(e.id)
            .bind(e.key.as_deref())
            .bind(kind)
            .bind(dest)
            .bind(&e.payload[..])
            .bind(encode_headers(&e.headers))
            .bind(e.created_at.millis())
            .bind(e.created_at.millis())
            .execute($conn)
            .await
            .map_err(Error::db("enqueue"))?;
        Ok(())
    }};
}

impl OutboxTransaction for Transaction<'_, Postgres> {
    async fn insert_entries(&mut self, table: &TableName, entries: &[OutboxEntry]) -> Result<()> {
        insert_many!(Postgres, &mut **self, table, entries)
    }

    async fn insert_entry(&mut self, table: &TableName, e: &OutboxEntry) -> Result<()> {
        insert_one!(&mut **self, table.sql(INSERT_PG), e)
    }
}

impl OutboxTransaction for Transaction<'_, MySql> {
    async fn insert_entries(&mut self, table: &TableName, entries: &[OutboxEntry]) -> Result<()> {
        insert_many!(MySql, &mut **self, table, entries)
    }

    async fn insert_entry(&mut self, table: &TableName, e: &OutboxEntry) -> Result<()> {
        insert_one!(&mut **self, table.sql(INSERT_QM), e)
    }
}

impl OutboxTransaction for Transaction<'_, Sqlite> {
    async fn insert_entries(&mut self, table: &TableName, entries: &[OutboxEntry]) -> Result<()> {
        insert_many!(Sqlite, &mut **self, table, entries)
    }

    async fn insert_entry(&mut self, table: &TableName, e: &OutboxEntry) -> Result<()> {
        insert_one!(&mut **self, table.sql(INSERT_QM), e)
    }
}
