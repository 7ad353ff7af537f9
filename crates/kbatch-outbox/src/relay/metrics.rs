//! The relay's metrics, published to the `metrics` recorder (e.g. the Prometheus exporter).
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `kbatch_outbox_entries_total{table,outcome}` | counter | entries by outcome: delivered / retried / dead |
//! | `kbatch_outbox_batch_entries{table}` | histogram | entries per claimed batch |
//! | `kbatch_outbox_delivery_seconds{table}` | histogram | time to deliver one batch |
//! | `kbatch_outbox_lag_seconds{table}` | histogram | created_at to delivered, per delivered entry |
//! | `kbatch_outbox_pending{table}` | gauge | pending entries (published every `status_every`) |
//! | `kbatch_outbox_dead{table}` | gauge | dead entries (likewise) |
//! | `kbatch_outbox_oldest_pending_age_seconds{table}` | gauge | age of the oldest pending entry (lag) |

use std::time::Duration;

use kbatch_core::Timestamp;
use metrics::{counter, gauge, histogram};

use super::BatchReport;
use crate::store::OutboxStatus;

pub(super) fn record_batch(table: &str, report: &BatchReport, took: Duration, lags_ms: &[i64]) {
    let t = table.to_owned();
    for (outcome, n) in [
        ("delivered", report.delivered),
        ("retried", report.retried),
        ("dead", report.dead),
    ] {
        counter!("kbatch_outbox_entries_total", "table" => t.clone(), "outcome" => outcome)
            .increment(n as u64);
    }
    histogram!("kbatch_outbox_batch_entries", "table" => t.clone()).record(report.claimed as f64);
    histogram!("kbatch_outbox_delivery_seconds", "table" => t.clone()).record(took.as_secs_f64());
    let lag = histogram!("kbatch_outbox_lag_seconds", "table" => t);
    for ms in lags_ms {
        lag.record(*ms as f64 / 1_000.0);
    }
}

pub(super) fn record_status(table: &str, s: &OutboxStatus, now: Timestamp) {
    let t = table.to_owned();
    gauge!("kbatch_outbox_pending", "table" => t.clone()).set(s.pending as f64);
    gauge!("kbatch_outbox_dead", "table" => t.clone()).set(s.dead as f64);
    let age = s
        .oldest_pending
        .map_or(0.0, |o| (now.millis() - o.millis()).max(0) as f64 / 1_000.0);
    gauge!("kbatch_outbox_oldest_pending_age_seconds", "table" => t).set(age);
}
