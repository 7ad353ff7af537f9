//! The relay's settings.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::relay::RetryPolicy;
use crate::schema::TableName;
use crate::store::ClaimOrder;

/// Largest batch: the outcome update binds six values per entry, and SQLite allows 32,766
/// bound values per statement (MySQL 65,535).
pub const MAX_BATCH_SIZE: usize = 5_000;

/// Most batches a relay keeps in flight: each holds a database connection and an open
/// transaction.
pub const MAX_BATCHES_IN_FLIGHT: usize = 16;

/// How a [`Relay`](crate::Relay) claims and retries.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayConfig {
    /// The outbox table. Default `kbatch_outbox_entries`.
    pub table: TableName,
    /// Entries claimed per batch. Default 500; 1..=5,000.
    pub batch_size: usize,
    /// Backoff and attempt limit.
    pub retry: RetryPolicy,
    /// Sleep when nothing is due. Default 200 ms; 1 ms..=60 s.
    pub idle_poll: Duration,
    /// Which entries a batch may claim. Default [`ClaimOrder::Id`]; [`ClaimOrder::PerKey`]
    /// delivers each key's entries in order (one per key per batch).
    pub order: ClaimOrder,
    /// Batches claimed and in delivery at once by [`Relay::run`](crate::Relay::run) and
    /// [`Relay::drain`](crate::Relay::drain). Default 2; 1..=16. With 2, one batch's outcome
    /// update and commit and the next batch's claim run while the other is being delivered,
    /// instead of the destination idling during database work and the database during
    /// delivery. Batches are handed to the destination in claim order (see
    /// [`Deliverer::deliver_with_handoff`](crate::Deliverer::deliver_with_handoff)). Each
    /// batch in flight holds a database connection. On SQLite, whose one writer lock a claim
    /// holds until its outcomes commit, batches always go one at a time.
    pub batches_in_flight: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            table: TableName::default(),
            batch_size: 500,
            retry: RetryPolicy::default(),
            idle_poll: Duration::from_millis(200),
            order: ClaimOrder::Id,
            batches_in_flight: 2,
        }
    }
}

impl RelayConfig {
    /// Uses `table`.
    pub fn with_table(mut self, table: TableName) -> Self {
        self.table = table;
        self
    }

    /// Claims up to `n` entries per batch.
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// Uses `retry`.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sleeps `d` when nothing is due.
    pub fn with_idle_poll(mut self, d: Duration) -> Self {
        self.idle_poll = d;
        self
    }

    /// Claims entries in `order`.
    pub fn with_order(mut self, order: ClaimOrder) -> Self {
        self.order = order;
        self
    }

    /// Keeps up to `n` batches in flight.
    pub fn with_batches_in_flight(mut self, n: usize) -> Self {
        self.batches_in_flight = n;
        self
    }

    /// Checks every field against its documented range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(Error::Config(format!(
                "batch_size = {} is out of range; allowed: 1..={MAX_BATCH_SIZE}",
                self.batch_size
            )));
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&self.idle_poll) {
            return Err(Error::Config(format!(
                "idle_poll = {:?} is out of range; allowed: 1ms..=60s",
                self.idle_poll
            )));
        }
        if !(1..=MAX_BATCHES_IN_FLIGHT).contains(&self.batches_in_flight) {
            return Err(Error::Config(format!(
                "batches_in_flight = {} is out of range; allowed: 1..={MAX_BATCHES_IN_FLIGHT}",
                self.batches_in_flight
            )));
        }
        self.retry.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_fields_are_named() {
        RelayConfig::default().validate().unwrap();
        let e = RelayConfig::default()
            .with_batch_size(0)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("batch_size = 0"), "{e}");
        let e = RelayConfig::default()
            .with_batch_size(MAX_BATCH_SIZE + 1)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("batch_size"), "{e}");
        let e = RelayConfig::default()
            .with_idle_poll(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("idle_poll"), "{e}");
        for n in [0, MAX_BATCHES_IN_FLIGHT + 1] {
            let e = RelayConfig::default()
                .with_batches_in_flight(n)
                .validate()
                .unwrap_err();
            assert!(
                e.to_string().contains(&format!("batches_in_flight = {n}")),
                "{e}"
            );
        }
    }
}
