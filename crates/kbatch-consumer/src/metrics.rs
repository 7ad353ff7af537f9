//! Counters kept by the coordinator, readable through [`Running::stats`](crate::Running::stats)
//! and published to the `metrics` recorder every commit interval.
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `kbatch_consumer_records_processed_total` | counter | handler succeeded |
//! | `kbatch_consumer_records_failed_total` | counter | handler attempts that failed |
//! | `kbatch_consumer_records_retried_total` | counter | failed attempts scheduled again |
//! | `kbatch_consumer_records_dead_lettered_total` | counter | written to the dead-letter target |
//! | `kbatch_consumer_dead_letter_failures_total` | counter | dead-letter writes that failed (tried again) |
//! | `kbatch_consumer_records_skipped_total{reason}` | counter | `completed` (per metadata) / `failed` (no dead-letter target) |
//! | `kbatch_consumer_envelopes_unpacked_total` | counter | envelope records decoded into their events (each event then counts as a record above) |
//! | `kbatch_consumer_envelopes_malformed_total` | counter | envelope records that did not decode: failed for good as one record (dead-lettered or skipped) |
//! | `kbatch_consumer_commits_total` / `_commit_failures_total` | counter | commits made / refused or not confirmed in time |
//! | `kbatch_consumer_commit_pending_seconds` | gauge | how long the commit under way has waited (an outage shows here) |
//! | `kbatch_consumer_in_flight` / `_waiting` | gauge | handler jobs running / records held not running |
//! | `kbatch_consumer_handler_seconds` | histogram | handler latency |
//! | `kbatch_consumer_partition_incomplete_offsets{topic,partition}` | gauge | polled, not done |
//! | `kbatch_consumer_partition_highest_seen_offset` / `_highest_completed_offset` / `_committed_offset` | gauge | per partition |
//! | `kbatch_consumer_partition_metadata_ratio` | gauge | metadata size / limit |
//!
//! Every metric carries a `group` label.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Histogram, gauge, histogram};

/// A snapshot of the consumer's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Records processed successfully.
    pub processed: u64,
    /// Handler attempts that failed.
    pub failed: u64,
    /// Failed attempts scheduled for a retry.
    pub retried: u64,
    /// Records written to the dead-letter target.
    pub dead_lettered: u64,
    /// Dead-letter writes that failed; the record stays unfinished (its offset is not
    /// committed past) and the write is tried again.
    pub dead_letter_failures: u64,
    /// Records skipped because the commit metadata said they were already completed.
    pub skipped_completed: u64,
    /// Records that failed for good with no dead-letter target (logged, then skipped).
    pub skipped_failed: u64,
    /// Envelope records unpacked into their events (the events count as records in the
    /// other counters).
    pub envelopes_unpacked: u64,
    /// Envelope records that did not decode; each failed for good as one record, and is also
    /// counted in `dead_lettered` or `skipped_failed`.
    pub malformed_envelopes: u64,
    /// Handler jobs running now.
    pub in_flight: u64,
    /// Records held and not running (buffered or waiting to retry).
    pub waiting: u64,
    /// Partitions paused at the client now.
    pub paused_partitions: u64,
    /// Commit requests sent to the group (periodic, at revocation and at shutdown).
    pub commits: u64,
    /// Commits the broker refused, or that were not confirmed in time at a revocation or a
    /// shutdown (periodic ones are made again on the next interval).
    pub commit_failures: u64,
    /// How long the periodic commit under way has waited for the broker, in milliseconds (0
    /// when none is): while the group coordinator is unreachable, librdkafka holds commits
    /// until it is back, so a commit that waits is how an outage shows.
    pub commit_pending_ms: u64,
}

/// Atomics shared between the coordinator and the handle.
#[derive(Debug, Default)]
pub(crate) struct SharedStats {
    processed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    dead_letter_failures: AtomicU64,
    skipped_completed: AtomicU64,
    skipped_failed: AtomicU64,
    envelopes_unpacked: AtomicU64,
    malformed_envelopes: AtomicU64,
    in_flight: AtomicU64,
    waiting: AtomicU64,
    paused: AtomicU64,
    commits: AtomicU64,
    commit_failures: AtomicU64,
    commit_pending_ms: AtomicU64,
}

macro_rules! adders {
    ($($name:ident => $field:ident),*) => {
        $(pub(crate) fn $name(&self, n: u64) { self.$field.fetch_add(n, Ordering::Relaxed); })*
    };
}

impl SharedStats {
    adders!(add_commits => commits, add_commit_failures => commit_failures);

    /// Copies the engine's counters.
    pub(crate) fn set_counters(&self, c: &crate::engine::Counters) {
        let s = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        s(&self.processed, c.processed);
        s(&self.failed, c.failed);
        s(&self.retried, c.retried);
        s(&self.dead_lettered, c.dead_lettered);
        s(&self.dead_letter_failures, c.dead_letter_failures);
        s(&self.skipped_completed, c.skipped_completed);
        s(&self.skipped_failed, c.skipped_failed);
        s(&self.envelopes_unpacked, c.envelopes_unpacked);
        s(&self.malformed_envelopes, c.malformed_envelopes);
    }

    /// How long the periodic commit under way has waited.
    pub(crate) fn set_commit_pending(&self, waited: Duration) {
        self.commit_pending_ms
            .store(waited.as_millis() as u64, Ordering::Relaxed);
    }

    /// Jobs running, records held and not running, partitions paused.
    pub(crate) fn set_load(&self, in_flight: usize, waiting: usize, paused: usize) {
        self.in_flight.store(in_flight as u64, Ordering::Relaxed);
        self.waiting.store(waiting as u64, Ordering::Relaxed);
        self.paused.store(paused as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ConsumerStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConsumerStats {
            processed: l(&self.processed),
            failed: l(&self.failed),
            retried: l(&self.retried),
            dead_lettered: l(&self.dead_lettered),
            dead_letter_failures: l(&self.dead_letter_failures),
            skipped_completed: l(&self.skipped_completed),
            skipped_failed: l(&self.skipped_failed),
            envelopes_unpacked: l(&self.envelopes_unpacked),
            malformed_envelopes: l(&self.malformed_envelopes),
            in_flight: l(&self.in_flight),
            waiting: l(&self.waiting),
            paused_partitions: l(&self.paused),
            commits: l(&self.commits),
            commit_failures: l(&self.commit_failures),
            commit_pending_ms: l(&self.commit_pending_ms),
        }
    }
}

/// Handles into the `metrics` recorder.
pub(crate) struct Metrics {
    group: String,
    latency: Histogram,
}

impl Metrics {
    pub(crate) fn new(group: &str) -> Self {
        Self {
            group: group.to_owned(),
            latency: histogram!("kbatch_consumer_handler_seconds", "group" => group.to_owned()),
        }
    }

    pub(crate) fn handler_latency(&self, d: Duration) {
        self.latency.record(d.as_secs_f64());
    }

    pub(crate) fn publish_totals(&self, s: &ConsumerStats) {
        let g = self.group.clone();
        metrics::counter!("kbatch_consumer_records_processed_total", "group" => g.clone())
            .absolute(s.processed);
        metrics::counter!("kbatch_consumer_records_failed_total", "group" => g.clone())
            .absolute(s.failed);
        metrics::counter!("kbatch_consumer_records_retried_total", "group" => g.clone())
            .absolute(s.retried);
        metrics::counter!("kbatch_consumer_records_dead_lettered_total", "group" => g.clone())
            .absolute(s.dead_lettered);
        metrics::counter!("kbatch_consumer_dead_letter_failures_total", "group" => g.clone())
            .absolute(s.dead_letter_failures);
        metrics::counter!("kbatch_consumer_records_skipped_total", "group" => g.clone(), "reason" => "completed").absolute(s.skipped_completed);
        metrics::counter!("kbatch_consumer_records_skipped_total", "group" => g.clone(), "reason" => "failed").absolute(s.skipped_failed);
        metrics::counter!("kbatch_consumer_envelopes_unpacked_total", "group" => g.clone())
            .absolute(s.envelopes_unpacked);
        metrics::counter!("kbatch_consumer_envelopes_malformed_total", "group" => g.clone())
            .absolute(s.malformed_envelopes);
        metrics::counter!("kbatch_consumer_commits_total", "group" => g.clone())
            .absolute(s.commits);
        metrics::counter!("kbatch_consumer_commit_failures_total", "group" => g.clone())
            .absolute(s.commit_failures);
        gauge!("kbatch_consumer_commit_pending_seconds", "group" => g.clone())
            .set(s.commit_pending_ms as f64 / 1e3);
        gauge!("kbatch_consumer_in_flight", "group" => g.clone()).set(s.in_flight as f64);
        gauge!("kbatch_consumer_waiting", "group" => g).set(s.waiting as f64);
    }

    pub(crate) fn publish_partition(
        &self,
        topic: &str,
        partition: i32,
        t: &crate::tracker::Tracker,
        ratio: f64,
    ) {
        let labels = [
            ("group", self.group.clone()),
            ("topic", topic.to_owned()),
            ("partition", partition.to_string()),
        ];
        gauge!("kbatch_consumer_partition_incomplete_offsets", &labels)
            .set(t.incomplete_count() as f64);
        if let Some(h) = t.highest_seen() {
            gauge!("kbatch_consumer_partition_highest_seen_offset", &labels).set(h as f64);
        }
        if let Some(h) = t.highest_completed() {
            gauge!(
                "kbatch_consumer_partition_highest_completed_offset",
                &labels
            )
            .set(h as f64);
        }
        if let Some(c) = t.commit_point() {
            gauge!("kbatch_consumer_partition_committed_offset", &labels).set(c as f64);
        }
        gauge!("kbatch_consumer_partition_metadata_ratio", &labels).set(ratio);
    }
}
