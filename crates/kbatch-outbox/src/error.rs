//! The outbox's one error type.

use kbatch_core::{Classify, ErrorClass};

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the outbox: its configuration, its database, or its rows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration field is out of range; the message names it and the allowed range.
    #[error("invalid outbox configuration: {0}")]
    Config(String),
    /// The database refused or failed a statement.
    #[error("outbox database error during {during}: {source}")]
    Database {
        /// What the outbox was doing (`"claim"`, `"enqueue"`, …).
        during: &'static str,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// The claim ran outside an explicit transaction: its row locks ended with the statement,
    /// so a second relay could claim and deliver the same entries (the auto-commit trap).
    #[error(
        "the outbox claim ran outside a transaction on {backend}: its row locks were released \
         when the statement ended, so concurrent relays would deliver the same entries twice; \
         pass a connection inside a transaction (`pool.begin()`, or `BEGIN IMMEDIATE` on SQLite)"
    )]
    ClaimOutsideTransaction {
        /// `postgres`, `mysql` or `sqlite`.
        backend: &'static str,
    },
    /// A stored row cannot be read back (written by something other than this crate?).
    #[error("outbox entry {id} in table {table} is corrupt: {reason}")]
    CorruptEntry {
        /// The entry's id, as stored.
        id: String,
        /// The table.
        table: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The batch's outcome update matched fewer rows than were claimed: claimed rows were
    /// changed or deleted outside the relay. Nothing is committed.
    #[error(
        "the outcome update in table {table} touched {updated} rows, {claimed} were claimed: rows changed outside the relay"
    )]
    OutcomeMismatch {
        /// The table.
        table: String,
        /// Rows the update changed.
        updated: u64,
        /// Rows claimed.
        claimed: usize,
    },
    /// A deliverer returned a different number of attempts than it was given entries (a bug
    /// in the deliverer). The batch is rolled back, so its entries are delivered again.
    #[error(
        "the deliverer returned {got} attempts for {expected} entries; the batch is rolled back"
    )]
    DelivererContract {
        /// Entries handed to the deliverer.
        expected: usize,
        /// Attempts it returned.
        got: usize,
    },
    /// An entry given to `enqueue` is invalid; the message says what would be right.
    #[error("invalid outbox entry {id}: {reason}")]
    InvalidEntry {
        /// The entry's id.
        id: uuid::Uuid,
        /// What is wrong and what would be right.
        reason: String,
    },
}

impl Error {
    pub(crate) fn db(during: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| Error::Database { during, source }
    }
}

impl Classify for Error {
    fn class(&self) -> ErrorClass {
        match self {
            // Connection losses, pool timeouts, deadlocks and serialization failures pass;
            // the relay's next round starts from a fresh claim.
            Error::Database { source, .. } => match source {
                sqlx::Error::Configuration(_)
                | sqlx::Error::ColumnNotFound(_)
                | sqlx::Error::TypeNotFound { .. }
                | sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::Decode(_) => ErrorClass::Permanent,
                _ => ErrorClass::Retriable,
            },
            Error::Config(_)
            | Error::ClaimOutsideTransaction { .. }
            | Error::CorruptEntry { .. }
            | Error::OutcomeMismatch { .. }
            | Error::DelivererContract { .. }
            | Error::InvalidEntry { .. } => ErrorClass::Permanent,
        }
    }
}
