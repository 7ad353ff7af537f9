//! Metrics: hot-path counters are plain atomics in the slot table; they are published to the
//! `metrics` recorder (e.g. the Prometheus exporter) with each client statistics report, so
//! recording costs nothing per record.
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `kbatch_producer_records_sent_total` | counter | records handed to the client |
//! | `kbatch_producer_records_delivered_total` | counter | records acknowledged |
//! | `kbatch_producer_records_failed_total{class}` | counter | failures by retriable / permanent / fatal |
//! | `kbatch_producer_pending_records` | gauge | records holding a slot (queue depth) |
//! | `kbatch_producer_pending_bytes` | gauge | payload bytes not yet delivered |
//! | `kbatch_producer_batch_records{quantile}` | gauge | records per broker batch (p50, p99) |
//! | `kbatch_producer_batch_bytes{quantile}` | gauge | bytes per broker batch (p50, p99) |
//! | `kbatch_producer_queue_latency_seconds{quantile}` | gauge | linger + queueing before send (p50, p99) |
//!
//! Every metric carries a `client` label (the client id).

use kbatch_client::ProducerStats;
use metrics::{Counter, Gauge, counter, gauge};

use crate::slots::Slots;

/// A counters snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProducerCounters {
    /// Records handed to the client.
    pub sent: u64,
    /// Records acknowledged by the broker. A future that has resolved is counted here (or in
    /// a `failed_*` field) already.
    pub delivered: u64,
    /// Records failed, retriable class.
    pub failed_retriable: u64,
    /// Records failed, permanent class.
    pub failed_permanent: u64,
    /// Records failed, fatal class (including closed).
    pub failed_fatal: u64,
    /// Records the producer holds (sent, not yet delivered or failed): the queue depth. The
    /// poll thread gives a record back just after resolving its future; after `close()` it
    /// is settled.
    pub pending_records: u64,
    /// Payload bytes the producer holds.
    pub pending_bytes: u64,
    /// Delivery futures not yet awaited or dropped (a slot is given back once both the future
    /// and the poll thread are done with it).
    pub outstanding_futures: u64,
}

pub(crate) struct Metrics {
    sent: Counter,
    delivered: Counter,
    failed: [Counter; 3],
    pending_records: Gauge,
    pending_bytes: Gauge,
    batch_records: [Gauge; 2],
    batch_bytes: [Gauge; 2],
    queue_latency: [Gauge; 2],
}

impl Metrics {
    pub(crate) fn new(client: &str) -> Self {
        let c = client.to_owned();
        let q = |name: &'static str| {
            [
                gauge!(name, "client" => c.clone(), "quantile" => "0.5"),
                gauge!(name, "client" => c.clone(), "quantile" => "0.99"),
            ]
        };
        Self {
            sent: counter!("kbatch_producer_records_sent_total", "client" => c.clone()),
            delivered: counter!("kbatch_producer_records_delivered_total", "client" => c.clone()),
            failed: ["retriable", "permanent", "fatal"]
                .map(|class| counter!("kbatch_producer_records_failed_total", "client" => c.clone(), "class" => class)),
            pending_records: gauge!("kbatch_producer_pending_records", "client" => c.clone()),
            pending_bytes: gauge!("kbatch_producer_pending_bytes", "client" => c.clone()),
            batch_records: q("kbatch_producer_batch_records"),
            batch_bytes: q("kbatch_producer_batch_bytes"),
            queue_latency: q("kbatch_producer_queue_latency_seconds"),
        }
    }

    pub(crate) fn publish(&self, slots: &Slots, stats: Option<&ProducerStats>) {
        let c = slots.counters();
        self.sent.absolute(c.sent);
        self.delivered.absolute(c.delivered);
        self.failed[0].absolute(c.failed_retriable);
        self.failed[1].absolute(c.failed_permanent);
        self.failed[2].absolute(c.failed_fatal);
        self.pending_records.set(c.pending_records as f64);
        self.pending_bytes.set(c.pending_bytes as f64);
        if let Some(s) = stats {
            self.batch_records[0].set(s.batch_records_p50 as f64);
            self.batch_records[1].set(s.batch_records_p99 as f64);
            self.batch_bytes[0].set(s.batch_bytes_p50 as f64);
            self.batch_bytes[1].set(s.batch_bytes_p99 as f64);
            self.queue_latency[0].set(s.queue_latency_us_p50 as f64 / 1e6);
            self.queue_latency[1].set(s.queue_latency_us_p99 as f64 / 1e6);
        }
    }
}
