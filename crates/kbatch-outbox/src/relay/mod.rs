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
//! [`Relay::run`] and [`Relay::drain`] keep up to `batches_in_flight` batches going at once
//! (default 2): batch k+1 is claimed as soon as batch k has been handed to the destination,
//! so k's acknowledgements, outcome update and commit overlap k+1's claim and delivery.
//!
//! ```text
//!  claim k ─ fire k ─┬─ claim k+1 ─ fire k+1 ─┬─ claim k+2 …
//!                    └─ acks k ─ UPDATE, COMMIT k └─ acks k+1 ─ UPDATE, COMMIT k+1
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

pub use deliver::{Deliverer, Handoff, ID_HEADER, KafkaDeliverer, Routed};
pub use http::{HttpConfig, HttpDeliverer};
pub use outcome::{Attempt, Outcome, RetryPolicy};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use kbatch_core::{Classify, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::error::Result;
use crate::store::{Claim, OutboxStore};

/// How often [`Relay::run`] publishes the status gauges.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What one batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Batches that claimed at least one entry.
    pub batches: usize,
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
        self.batches += other.batches;
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
        let claim = self.claim_due().await?;
        self.complete(claim, Handoff::detached()).await
    }

    /// Runs batches (up to `batches_in_flight` at once) until nothing due is left to claim,
    /// and returns what they did: a backlog drained, as in a one-shot `kbatch outbox relay
    /// --once`. Entries backing off are left for later.
    ///
    /// # Errors
    /// The first database error; batches already in flight are completed first.
    pub async fn drain(&self) -> Result<BatchReport> {
        let never = CancellationToken::new();
        let mut total = BatchReport::default();
        loop {
            let (pass, outcome) = self.pass(&never, None).await;
            total.add(&pass);
            outcome?;
            // A short claim ended the pass; with per-key order the entries behind the keys
            // it delivered are due only now, so go on until a pass finds nothing.
            if pass.claimed == 0 {
                return Ok(total);
            }
        }
    }

    fn claim_due(&self) -> impl std::future::Future<Output = Result<Claim>> + '_ {
        self.store.claim(
            &self.config.table,
            self.config.batch_size,
            Timestamp::now(),
            self.config.order,
        )
    }

    /// Batches in flight at once: SQLite's claim holds its one writer lock until the batch
    /// commits, so a second claim could only wait for it.
    fn depth(&self) -> usize {
        match self.store {
            OutboxStore::Sqlite(_) => 1,
            _ => self.config.batches_in_flight,
        }
    }

    /// Delivers a claimed batch (completing `handoff` once it is with the destination) and
    /// records its outcomes.
    async fn complete(&self, claim: Claim, handoff: Handoff) -> Result<BatchReport> {
        let claimed = claim.entries();
        if claimed.is_empty() {
            handoff.complete();
            claim.finish(&[], Timestamp::now()).await?;
            return Ok(BatchReport::default());
        }
        let entries: Vec<_> = claimed.iter().map(|c| &c.entry).collect();
        let started = std::time::Instant::now();
        let attempts = self.deliverer.deliver_with_handoff(&entries, handoff).await;
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
            batches: 1,
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

    /// Claims and completes batches, up to [`depth`](Self::depth) in flight, until a claim
    /// comes back short (caught up), a batch fails, `cancel` fires or `until` passes; then
    /// completes the batches in flight. Returns what they did and the first error.
    async fn pass(
        &self,
        cancel: &CancellationToken,
        until: Option<std::time::Instant>,
    ) -> (BatchReport, Result<()>) {
        let depth = self.depth();
        let mut in_flight = FuturesOrdered::new();
        let mut done: Vec<Result<BatchReport>> = Vec::new();
        let mut total = BatchReport::default();
        let mut failed: Option<crate::Error> = None;
        let mut caught_up = false;
        loop {
            for r in done.drain(..) {
                match r {
                    Ok(batch) => total.add(&batch),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            let claim_more = in_flight.len() < depth
                && !caught_up
                && failed.is_none()
                && !cancel.is_cancelled()
                && until.is_none_or(|t| std::time::Instant::now() < t);
            if claim_more {
                match alongside(&mut in_flight, &mut done, self.claim_due()).await {
                    Ok(claim) => {
                        caught_up = claim.entries().len() < self.config.batch_size;
                        let (handoff, handed) = Handoff::new();
                        in_flight.push_back(self.complete(claim, handoff));
                        // The next claim waits until this batch is with the destination,
                        // so batches reach it in claim order.
                        alongside(&mut in_flight, &mut done, async {
                            // Err: the handoff was dropped, which completes it as well.
                            let _ = handed.await;
                        })
                        .await;
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
                continue;
            }
            match in_flight.next().await {
                Some(r) => done.push(r),
                None => break,
            }
        }
        (total, failed.map_or(Ok(()), Err))
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
            let (batch, outcome) = self.pass(&cancel, Some(status_at + STATUS_EVERY)).await;
            total.add(&batch);
            let pause = match outcome {
                // A pass ends caught up (a short claim: pause) or at the status deadline.
                Ok(()) => status_at.elapsed() < STATUS_EVERY,
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

/// Awaits `fut` while driving the batches in flight, whose results (in claim order) go to
/// `done`: a batch's acknowledgements and commit go on while the next is claimed.
async fn alongside<B, T>(
    in_flight: &mut FuturesOrdered<B>,
    done: &mut Vec<Result<BatchReport>>,
    fut: impl std::future::Future<Output = T>,
) -> T
where
    B: std::future::Future<Output = Result<BatchReport>>,
{
    let mut fut = std::pin::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            // Guarded: an empty collection would answer None at once, forever.
            Some(r) = in_flight.next(), if !in_flight.is_empty() => done.push(r),
        }
    }
}
