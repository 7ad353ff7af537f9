//! # kbatch-outbox
//!
//! The transactional outbox: write a message in the same database transaction as the
//! business data it describes, and let a relay deliver it to Kafka afterwards — delivered if
//! and only if the transaction committed, at least once, in batches.
//!
//! ```text
//!  your tx: UPDATE orders …; enqueue(&mut tx, &table, &entry); COMMIT
//!                                   │
//!                     kbatch_outbox_entries (PostgreSQL | MariaDB/MySQL | SQLite)
//!                                   │  Relay: claim a batch (row locks held), deliver,
//!                                   ▼  one UPDATE of outcomes, COMMIT
//!                     KafkaDeliverer ──► Producer (fire all, await each) ──► Kafka
//!                                        header kbatch-outbox-id = entry id
//! ```
//!
//! ```no_run
//! use kbatch_outbox::{Destination, OutboxEntry, OutboxStore, TableName, enqueue};
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! let table = TableName::default();
//! OutboxStore::Postgres(pool.clone()).migrate(&table).await?;
//! let mut tx = pool.begin().await?;
//! // … the business writes on &mut *tx …
//! let entry = OutboxEntry::new(Destination::kafka("orders"), "order 42 paid").with_key("order-42");
//! enqueue(&mut tx, &table, &entry).await?;
//! tx.commit().await?; // the entry exists only if this commits
//! # Ok(()) }
//! ```
//!
//! Then run a [`Relay`] (see [`relay`]).
#![forbid(unsafe_code)]

mod config;
mod enqueue;
mod entry;
mod error;
pub mod relay;
mod schema;
pub mod store;

pub use config::{MAX_BATCH_SIZE, MAX_BATCHES_IN_FLIGHT, RelayConfig};
pub use enqueue::{OutboxTransaction, ROWS_PER_INSERT, enqueue, enqueue_batch};
pub use entry::{Destination, OutboxEntry};
pub use error::{Error, Result};
pub use relay::{
    Attempt, BatchReport, Deliverer, Handoff, HttpConfig, HttpDeliverer, ID_HEADER, KafkaDeliverer,
    Outcome, Relay, RetryPolicy, Routed,
};
pub use schema::{TableName, migrate_mysql, migrate_postgres, migrate_sqlite};
pub use store::{ClaimOrder, ClaimedEntry, OutboxStatus, OutboxStore};
