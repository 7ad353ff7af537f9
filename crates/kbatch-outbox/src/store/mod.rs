//! The outbox table as the relay sees it: claim a batch of due entries, write their outcomes.
//!
//! ```text
//!  OutboxStore::claim ── BEGIN (IMMEDIATE on SQLite) ─ SELECT … ORDER BY id LIMIT n
//!        │                                           FOR UPDATE SKIP LOCKED (PG, MariaDB)
//!        ▼
//!      Claim { entries, open transaction }   row locks held while the relay delivers
//!        │
//!  Claim::finish(outcomes) ── ONE UPDATE for the whole batch ── COMMIT
//! ```
//!
//! # Why the claim transaction stays open through delivery
//! The alternative, a lease (`claimed_until`) committed before delivery, lets a second relay
//! claim the same rows once the lease runs out while the first is still delivering: "never
//! deliver concurrently" would then depend on choosing the lease longer than every delivery.
//! Holding the row locks makes it structural: another relay skips locked rows, and a relay
//! that dies (crash, lost connection) releases them with its transaction, so its entries
//! become claimable again and are delivered again with the same id (at least once; the
//! `kbatch-outbox-id` header lets consumers de-duplicate). The price is a transaction open
//! for one batch's delivery, bounded by the deliverer's timeout; on SQLite it holds the one
//! write lock that long.
//!
//! # The auto-commit trap
//! A claim run outside an explicit transaction releases its locks as the statement ends,
//! and two relays deliver the same rows (Okapi's duplicate deliveries). The `claim_*`
//! functions take a connection so they can be used in a caller's transaction, and check
//! that one is open: [`Error::ClaimOutsideTransaction`] otherwise, before anything is
//! delivered.

/// Writes a batch's outcomes in the one statement `sql` (six placeholders per row: id, state,
/// attempts, next_attempt_at, last_error, delivered_at) and checks every claimed row was
/// updated. A macro because each database has its own sqlx query type.
macro_rules! write_outcome_rows {
    ($conn:expr, $table:expr, $sql:expr, $rows:expr) => {{
        let rows = $rows;
        let mut q = sqlx::query($table.sql($sql));
        for r in rows {
            q = q
                .bind(r.id)
                .bind(r.state)
                .bind(r.attempts)
                .bind(r.next_attempt_at)
                .bind(r.last_error.clone())
                .bind(r.delivered_at);
        }
        let done = q
            .execute($conn)
            .await
            .map_err(Error::db("finish: write outcomes"))?;
        check_count($table, done.rows_affected(), rows.len())
    }};
}

mod mysql;
mod postgres;
mod rows;
mod sqlite;

pub use mysql::claim_mysql;
pub use postgres::{POSTGRES_CLAIM_BEGIN, claim_postgres};
pub use sqlite::claim_sqlite;

pub(crate) use rows::{CLAIM_COLUMNS, OutcomeRow, RawRow, to_claimed};

use kbatch_core::Timestamp;
use sqlx::{MySql, MySqlPool, PgPool, Postgres, Sqlite, SqlitePool, Transaction};

use crate::entry::OutboxEntry;
use crate::error::{Error, Result};
use crate::relay::Outcome;
use crate::schema::{self, TableName};

/// Which due entries a claim may take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimOrder {
    /// Any due entry, oldest id first. Entries of one key may overtake each other when one
    /// is retried.
    #[default]
    Id,
    /// Per key, only the oldest pending entry (keyless entries are always free): a key's
    /// next entry is claimed once the one before it is delivered or dead, so a head that
    /// backs off blocks its own key only, while other keys keep flowing. Holds across relays:
    /// a locked head is still pending, so no relay can take the entry behind it. A dead head
    /// stops blocking its key (it is out of the flow until redriven).
    PerKey,
}

impl ClaimOrder {
    /// The claim's WHERE clause after `state = 0 AND next_attempt_at <= ?`.
    pub(crate) fn filter(self) -> &'static str {
        match self {
            ClaimOrder::Id => "",
            ClaimOrder::PerKey => {
                " AND NOT EXISTS (SELECT 1 FROM {table} AS prior WHERE prior.msg_key = c.msg_key \
                 AND prior.state = 0 AND prior.id < c.id)"
            }
        }
    }
}

/// An entry claimed for delivery, with the attempts it had before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedEntry {
    /// The entry.
    pub entry: OutboxEntry,
    /// Delivery attempts before this one.
    pub attempts: u32,
}

/// Where the outbox table lives: a pool of one of the three databases.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum OutboxStore {
    /// PostgreSQL.
    Postgres(PgPool),
    /// MariaDB 10.6+ or MySQL 8.
    MySql(MySqlPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

/// Counts by state, for `status` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Entries waiting for delivery (due or backing off).
    pub pending: u64,
    /// Entries delivered and not yet purged.
    pub delivered: u64,
    /// Entries given up on.
    pub dead: u64,
    /// `created_at` of the oldest pending entry: the relay's lag.
    pub oldest_pending: Option<Timestamp>,
}

impl OutboxStore {
    /// Connects to the database `url` names: `postgres://` or `postgresql://`, `mysql://` or
    /// `mariadb://`, `sqlite:` URLs, or else a SQLite file path (created if missing, WAL
    /// journal, 10 s busy timeout so a relay waiting for the writer lock does not fail).
    pub async fn connect(url: &str) -> Result<Self> {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
        let err = Error::db("connect");
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(OutboxStore::Postgres(
                PgPool::connect(url).await.map_err(err)?,
            ));
        }
        if let Some(rest) = url.strip_prefix("mariadb://") {
            let url = format!("mysql://{rest}");
            return Ok(OutboxStore::MySql(
                MySqlPool::connect(&url).await.map_err(err)?,
            ));
        }
        if url.starts_with("mysql://") {
            return Ok(OutboxStore::MySql(
                MySqlPool::connect(url).await.map_err(err)?,
            ));
        }
        if url.contains("://") && !url.starts_with("sqlite:") {
            return Err(Error::Config(format!(
                "database URL {url:?} is not supported: use postgres://, mysql://, mariadb://, \
                 sqlite: or a SQLite file path"
            )));
        }
        let opts = if url.starts_with("sqlite:") {
            url.parse::<SqliteConnectOptions>()
                .map_err(Error::db("connect"))?
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .connect_with(opts)
            .await
            .map_err(err)?;
        Ok(OutboxStore::Sqlite(pool))
    }

    /// Creates the outbox table (and index) if missing.
    pub async fn migrate(&self, table: &TableName) -> Result<()> {
        let conn_err = Error::db("migrate");
        match self {
            OutboxStore::Postgres(p) => {
                schema::migrate_postgres(&mut *p.acquire().await.map_err(conn_err)?, table).await
            }
            OutboxStore::MySql(p) => {
                schema::migrate_mysql(&mut *p.acquire().await.map_err(conn_err)?, table).await
            }
            OutboxStore::Sqlite(p) => {
                schema::migrate_sqlite(&mut *p.acquire().await.map_err(conn_err)?, table).await
            }
        }
    }

    /// Counts entries by state and finds the oldest pending one.
    pub async fn status(&self, table: &TableName) -> Result<OutboxStatus> {
        let sql = table.sql(
            "SELECT state, COUNT(*), MIN(created_at) FROM {table} GROUP BY state ORDER BY state",
        );
        let rows: Vec<(i64, i64, Option<i64>)> = match self {
            OutboxStore::Postgres(p) => {
                let sql = table.sql(
                    "SELECT state::int8, COUNT(*)::int8, MIN(created_at) FROM {table} GROUP BY state",
                );
                sqlx::query_as(sql).fetch_all(p).await
            }
            OutboxStore::MySql(p) => {
                let sql = table.sql(
                    "SELECT CAST(state AS SIGNED), COUNT(*), MIN(created_at) FROM {table} GROUP BY state",
                );
                sqlx::query_as(sql).fetch_all(p).await
            }
            OutboxStore::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await,
        }
        .map_err(Error::db("status"))?;
        let mut s = OutboxStatus::default();
        for (state, count, oldest) in rows {
            let count = u64::try_from(count).unwrap_or(0);
            match state {
                STATE_PENDING => {
                    s.pending = count;
                    s.oldest_pending = oldest.map(Timestamp);
                }
                STATE_DELIVERED => s.delivered = count,
                _ => s.dead += count,
            }
        }
        Ok(s)
    }

    /// Moves every dead entry back to pending, due `now`, with its attempts reset; its last
    /// error stays until the next attempt. Returns how many were moved.
    pub async fn redrive(&self, table: &TableName, now: Timestamp) -> Result<u64> {
        let set = "UPDATE {table} SET state = 0, attempts = 0, next_attempt_at = ";
        self.execute_with_time(
            table,
            &format!("{set}$1 WHERE state = 2"),
            &format!("{set}? WHERE state = 2"),
            now,
            "redrive",
        )
        .await
    }

    /// Deletes delivered entries delivered before `before` (now less the retention).
    /// Returns how many were deleted. Pending and dead entries are never purged.
    pub async fn purge_delivered(&self, table: &TableName, before: Timestamp) -> Result<u64> {
        let del = "DELETE FROM {table} WHERE state = 1 AND delivered_at < ";
        self.execute_with_time(
            table,
            &format!("{del}$1"),
            &format!("{del}?"),
            before,
            "purge",
        )
        .await
    }

    async fn execute_with_time(
        &self,
        table: &TableName,
        pg_sql: &str,
        qm_sql: &str,
        t: Timestamp,
        during: &'static str,
    ) -> Result<u64> {
        let done = match self {
            OutboxStore::Postgres(p) => sqlx::query(table.sql(pg_sql))
                .bind(t.millis())
                .execute(p)
                .await
                .map(|d| d.rows_affected()),
            OutboxStore::MySql(p) => sqlx::query(table.sql(qm_sql))
                .bind(t.millis())
                .execute(p)
                .await
                .map(|d| d.rows_affected()),
            OutboxStore::Sqlite(p) => sqlx::query(table.sql(qm_sql))
                .bind(t.millis())
                .execute(p)
                .await
                .map(|d| d.rows_affected()),
        };
        done.map_err(Error::db(during))
    }

    /// Opens a transaction and claims up to `limit` entries due at `now`, oldest id first,
    /// locking them until [`Claim::finish`] (or drop, which rolls back).
    pub async fn claim(
        &self,
        table: &TableName,
        limit: usize,
        now: Timestamp,
        order: ClaimOrder,
    ) -> Result<Claim> {
        let begin = Error::db("claim: begin");
        Ok(match self {
            OutboxStore::Postgres(p) => {
                let mut tx = p.begin_with(POSTGRES_CLAIM_BEGIN).await.map_err(begin)?;
                let entries = claim_postgres(&mut tx, table, limit, now, order).await?;
                Claim {
                    entries,
                    tx: ClaimTx::Postgres(tx),
                    table: table.clone(),
                }
            }
            OutboxStore::MySql(p) => {
                // READ COMMITTED: a locking scan under REPEATABLE READ also takes gap locks,
                // which would stall the application's inserts until the batch commits.
                let mut tx = p
                    .begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
                    .await
                    .map_err(begin)?;
                let entries = claim_mysql(&mut tx, table, limit, now, order).await?;
                Claim {
                    entries,
                    tx: ClaimTx::MySql(tx),
                    table: table.clone(),
                }
            }
            OutboxStore::Sqlite(p) => {
                // IMMEDIATE takes the write lock first: two deferred readers could both read
                // the same rows before either writes.
                let mut tx = p.begin_with("BEGIN IMMEDIATE").await.map_err(begin)?;
                let entries = claim_sqlite(&mut tx, table, limit, now, order).await?;
                Claim {
                    entries,
                    tx: ClaimTx::Sqlite(tx),
                    table: table.clone(),
                }
            }
        })
    }
}

pub(crate) const STATE_PENDING: i64 = 0;
pub(crate) const STATE_DELIVERED: i64 = 1;
pub(crate) const STATE_DEAD: i64 = 2;

enum ClaimTx {
    Postgres(Transaction<'static, Postgres>),
    MySql(Transaction<'static, MySql>),
    Sqlite(Transaction<'static, Sqlite>),
}

/// A claimed batch: its entries, locked by an open transaction until [`finish`](Self::finish).
/// Dropping it rolls back: the entries are claimable again, nothing is recorded.
pub struct Claim {
    entries: Vec<ClaimedEntry>,
    tx: ClaimTx,
    table: TableName,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("table", &self.table)
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl Claim {
    /// The claimed entries, oldest id first.
    pub fn entries(&self) -> &[ClaimedEntry] {
        &self.entries
    }

    /// Writes one outcome per claimed entry (in [`entries`](Self::entries) order) in one
    /// statement, at `now`, and commits.
    ///
    /// # Errors
    /// On a database error nothing is recorded: the transaction rolls back and the entries
    /// are claimed and delivered again later.
    ///
    /// # Panics
    /// When `outcomes` is not exactly one per claimed entry (a caller bug).
    pub async fn finish(self, outcomes: &[Outcome], now: Timestamp) -> Result<()> {
        assert_eq!(
            outcomes.len(),
            self.entries.len(),
            "one outcome per claimed entry"
        );
        let rows: Vec<OutcomeRow> = self
            .entries
            .iter()
            .zip(outcomes)
            .map(|(c, o)| OutcomeRow::new(c, o, now))
            .collect();
        let commit = Error::db("finish: commit");
        match self.tx {
            ClaimTx::Postgres(mut tx) => {
                if !rows.is_empty() {
                    postgres::write_outcomes(&mut tx, &self.table, &rows).await?;
                }
                tx.commit().await.map_err(commit)
            }
            ClaimTx::MySql(mut tx) => {
                if !rows.is_empty() {
                    mysql::write_outcomes(&mut tx, &self.table, &rows).await?;
                }
                tx.commit().await.map_err(commit)
            }
            ClaimTx::Sqlite(mut tx) => {
                if !rows.is_empty() {
                    sqlite::write_outcomes(&mut tx, &self.table, &rows).await?;
                }
                tx.commit().await.map_err(commit)
            }
        }
    }
}
