//! The relay: claim a batch, deliver it, write the outcomes back, commit.
//!
//! ```text
//!  loop:  store.claim(batch_size, now) ──► entries (row locks held)
//!             │ none due: sleep idle_poll (or until cancelled)
//!             ▼
//!         deliverer.deliver(entries) ──► one Attempt per entry
//!             ▼
//!         RetryPolicy::decide (pure) ──► Delivered | Retry{next_attempt_at} | Dead{last_error}
//!             ▼
//!         claim.finish(outcomes)  one UPDATE + COMMIT per batch
//! ```
//!
//! ```no_run
//! use kbatch_outbox::{KafkaDeliverer, OutboxStore, Relay, RelayConfig};
//! use kbatch_producer::{Producer, ProducerConfig};
//! # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! let producer = Producer::new(ProducerConfig::for_brokers("127.0.0.1:9092"))?;
//! let relay = Relay::new(OutboxStore::Postgres(pool), KafkaDeliverer::new(producer), RelayConfig::default())?;
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let report = relay.run(cancel).await?;
//! # Ok(()) }
//! ```

mod deliver;
mod http;
mod metrics;
mod outcome;

pub use deliver::{Deliverer, ID_HEADER, KafkaDeliverer, Routed};
pub use http::{HttpConfig, HttpDeliverer};
pub use outcome::{Attempt, Outcome, RetryPolicy};

use kbatch_core::{Classify, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::error::Result;
use crate::store::OutboxStore;

/// How often [`Relay::run`] publishes the status gauges.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What one batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Entries claimed.
    pub claimed: usize,
    /// Delivered.
    pub delivered: usize,
    /// Pending again, backing off.
    pub retried: usize,
    /// Given up on.
    pub dead: usize,
}

impl BatchReport {
    fn add(&mut self, other: &BatchReport) {
        self.claimed += other.claimed;
        self.delivered += other.delivered;
        self.retried += other.retried;
        self.dead += other.dead;
    }
}

/// Claims, delivers and records outcomes, batch after batch. Several relays (in one
/// process or many) may run on one table: claimed rows stay locked until their outcomes
/// are committed, so no entry is delivered by two relays at once.
#[derive(Debug)]
pub struct Relay<D> {
    store: OutboxStore,
    deliverer: D,
    config: RelayConfig,
}

impl<D: Deliverer> Relay<D> {
    /// A relay over `store`, delivering through `deliverer`.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) naming the field out of range.
    pub fn new(store: OutboxStore, deliverer: D, config: RelayConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            store,
            deliverer,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The deliverer.
    pub fn deliverer(&self) -> &D {
        &self.deliverer
    }

    /// Claims, delivers and records one batch of entries due now.
    ///
    /// # Errors
    /// A database error; the batch's outcomes are then not recorded and its entries will be
    /// claimed and delivered again (same ids).
    ///
    /// # Cancellation
    /// Dropping the future mid-batch rolls the claim back: entries already handed to the
    /// deliverer are delivered again by a later batch.
    pub async fn run_once(&self) -> Result<BatchReport> {
        let claim = self
            .store
            .claim(
                &self.config.table,
                self.config.batch_size,
                Timestamp::now(),
                self.config.order,
            )
            .await?;
        let claimed = claim.entries();
        if claimed.is_empty() {
            claim.finish(&[], Timestamp::now()).await?;
            return Ok(BatchReport::default());
        }
        let entries: Vec<_> = claimed.iter().map(|c| &c.entry).collect();
        let started = std::time::Instant::now();
        let attempts = self.deliverer.deliver(&entries).await;
        let took = started.elapsed();
        if attempts.len() != entries.len() {
            // Dropping the claim rolls it back: nothing is recorded for a batch we cannot
            // account for entry by entry.
            return Err(crate::Error::DelivererContract {
                expected: entries.len(),
                got: attempts.len(),
            });
        }
        let now = Timestamp::now();
        let mut report = BatchReport {
            claimed: entries.len(),
            ..BatchReport::default()
        };
        let outcomes: Vec<Outcome> = claimed
            .iter()
            .zip(attempts)
            .map(|(c, attempt)| {
                let outcome =
                    self.config
                        .retry
                        .decide(c.attempts, attempt, now, rand::random::<f64>());
                match &outcome {
                    Outcome::Delivered => report.delivered += 1,
                    Outcome::Retry { .. } => report.retried += 1,
                    Outcome::Dead { last_error } => {
                        tracing::warn!(id = %c.entry.id, error = %last_error, "outbox entry dead");
                        report.dead += 1;
                    }
                }
                outcome
            })
            .collect();
        let lags: Vec<i64> = claimed
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| matches!(o, Outcome::Delivered))
            .map(|(c, _)| now.millis() - c.entry.created_at.millis())
            .collect();
        claim.finish(&outcomes, now).await?;
        // Recorded once committed: a rolled-back batch is delivered again and counted then.
        metrics::record_batch(self.config.table.as_str(), &report, took, &lags);
        Ok(report)
    }

    /// Publishes the table's pending / dead counts and oldest pending age as gauges.
    /// Failures are logged only: metrics never stop the relay.
    pub async fn publish_status(&self) {
        match self.store.status(&self.config.table).await {
            Ok(s) => metrics::record_status(self.config.table.as_str(), &s, Timestamp::now()),
            Err(e) => tracing::warn!(error = %e, "outbox status for metrics failed"),
        }
    }

    /// Runs batches until `cancel` fires, sleeping `idle_poll` when nothing is due — on
    /// PostgreSQL woken early by the insert trigger's NOTIFY, so `idle_poll` is only the
    /// fallback there (and what brings back entries whose backoff ran out).
    /// Retriable database errors (a lost connection, a deadlock) are logged and the loop
    /// goes on after `idle_poll`; others end it.
    ///
    /// # Errors
    /// The first non-retriable error.
    pub async fn run(&self, cancel: CancellationToken) -> Result<BatchReport> {
        let mut total = BatchReport::default();
        let mut status_at = std::time::Instant::now();
        self.publish_status().await;
        let mut wake = self.listen().await;
        while !cancel.is_cancelled() {
            // The status is a COUNT over the table: published every few seconds, not per batch.
            if status_at.elapsed() >= STATUS_EVERY {
                status_at = std::time::Instant::now();
                self.publish_status().await;
            }
            let pause = match self.run_once().await {
                Ok(batch) => {
                    total.add(&batch);
                    // A full batch suggests more are due: go on at once.
                    batch.claimed < self.config.batch_size
                }
                Err(e) if e.is_retriable() => {
                    tracing::warn!(error = %e, "outbox relay batch failed; retrying");
                    true
                }
                Err(e) => return Err(e),
            };
            if pause {
                let notified = async {
                    match wake.as_mut() {
                        Some(listener) => {
                            if let Err(e) = listener.recv().await {
                                // The listener reconnects by itself on the next recv; until
                                // then the poll below is the fallback.
                                tracing::warn!(error = %e, "outbox LISTEN failed; polling");
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(self.config.idle_poll) => {}
                    () = notified => {}
                }
            }
        }
        Ok(total)
    }

    /// On PostgreSQL, a listener on the table's insert notifications (see the schema's
    /// trigger); `None` elsewhere or if it cannot connect (polling still works).
    async fn listen(&self) -> Option<sqlx::postgres::PgListener> {
        let OutboxStore::Postgres(pool) = &self.store else {
            return None;
        };
        let mut listener = match sqlx::postgres::PgListener::connect_with(pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "outbox LISTEN unavailable; polling");
                return None;
            }
        };
        match listener.listen(self.config.table.as_str()).await {
            Ok(()) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "outbox LISTEN unavailable; polling");
                None
            }
        }
    }
}
