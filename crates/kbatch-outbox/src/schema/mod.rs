//! The outbox table: its name and its schema per database.
//!
//! ```text
//!  TableName ("kbatch_outbox_…", validated) ──► {table} in postgres.sql / mysql.sql / sqlite.sql
//!                                                 └─► migrate_* (idempotent CREATE … IF NOT EXISTS)
//! ```

use std::fmt;

use sqlx::{AssertSqlSafe, MySqlConnection, PgConnection, SqliteConnection};

use crate::error::{Error, Result};

const POSTGRES: &str = include_str!("postgres.sql");
const MYSQL: &str = include_str!("mysql.sql");
const SQLITE: &str = include_str!("sqlite.sql");

/// The name of an outbox table. Always starts with `kbatch_outbox` so it never clashes with
/// an application's own `outbox` table; only `[a-z0-9_]`, so it is safe to splice into SQL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableName(String);

impl TableName {
    /// The prefix every outbox table name carries.
    pub const PREFIX: &'static str = "kbatch_outbox";
    /// Longest name accepted: MySQL's 64-character identifiers, less the index suffix.
    pub const MAX_LEN: usize = 48;

    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let ok_chars = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name.starts_with(Self::PREFIX) || !ok_chars || name.len() > Self::MAX_LEN {
            return Err(Error::Config(format!(
                "table name {name:?} is invalid: it must start with {:?}, use only a-z, 0-9 and _, \
                 and be at most {} characters",
                Self::PREFIX,
                Self::MAX_LEN
            )));
        }
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `sql` with `{table}` replaced by this name.
    pub(crate) fn sql(&self, sql: &str) -> AssertSqlSafe<String> {
        // Safe to splice: `new` admits only [a-z0-9_].
        AssertSqlSafe(sql.replace("{table}", &self.0))
    }
}

impl Default for TableName {
    fn default() -> Self {
        Self("kbatch_outbox_entries".to_owned())
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Creates the outbox table and its index on PostgreSQL if missing.
pub async fn migrate_postgres(conn: &mut PgConnection, table: &TableName) -> Result<()> {
    sqlx::raw_sql(table.sql(POSTGRES))
        .execute(conn)
        .await
        .map_err(Error::db("migrate"))?;
    Ok(())
}

/// Creates the outbox table on MariaDB / MySQL if missing.
pub async fn migrate_mysql(conn: &mut MySqlConnection, table: &TableName) -> Result<()> {
    sqlx::raw_sql(table.sql(MYSQL))
        .execute(conn)
        .await
        .map_err(Error::db("migrate"))?;
    Ok(())
}

/// Creates the outbox table and its index on SQLite if missing.
pub async fn migrate_sqlite(conn: &mut SqliteConnection, table: &TableName) -> Result<()> {
    sqlx::raw_sql(table.sql(SQLITE))
        .execute(conn)
        .await
        .map_err(Error::db("migrate"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_must_be_prefixed_and_plain() {
        assert!(TableName::new("kbatch_outbox_orders").is_ok());
        for bad in [
            "outbox",
            "kbatch_outbox; drop table x",
            "kbatch_outbox_A",
            &"kbatch_outbox_x".repeat(5),
        ] {
            let e = TableName::new(bad).unwrap_err().to_string();
            assert!(e.contains("kbatch_outbox"), "{e}");
        }
    }
}
