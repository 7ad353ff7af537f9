//! Closing the producer: explicitly ([`Producer::close`](crate::Producer::close)) or when its
//! last handle is dropped.
//!
//! ```text
//!  last handle dropped ─┬─ inside a tokio runtime ─► spawn_blocking(close) ─┐ (the runtime waits
//!                       └─ outside one ───────────► close right here ───────┤  for it at shutdown)
//!  close: refuse new records ─► flush ≤ close_timeout ─► purge ─► fail what is left
//!         ─► report (CloseReport, a log line with counts, the failure counters)
//!  then the client stops (poll thread joined, librdkafka destroyed) on that same thread
//! ```
//!
//! Flushing and stopping the client block for up to `close_timeout` plus librdkafka's own
//! shutdown: done inline, a drop inside async code would stall a runtime worker, and on a
//! current-thread runtime everything else with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::ProducerCounters;
use crate::producer::Inner;

/// What [`Producer::close`](crate::Producer::close) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseReport {
    /// Records awaiting delivery when close began.
    pub pending_at_close: usize,
    /// Whether everything was delivered within the close timeout.
    pub flushed: bool,
    /// Records that failed while closing, because the timeout passed or the broker refused
    /// them (their futures resolved with an error).
    pub failed: usize,
}

impl Inner {
    /// Closes once; later calls (and a concurrent one, which waits) get the first report.
    pub(crate) fn close_once(&self, dropped: bool) -> CloseReport {
        *self.closed.get_or_init(|| self.close_blocking(dropped))
    }

    fn close_blocking(&self, dropped: bool) -> CloseReport {
        let slots = &self.slots;
        slots.close();
        let pending_at_close = slots.undelivered();
        let failed_before = failures(&slots.counters());
        let deadline = Instant::now() + self.config.close_timeout;
        let flushed =
            self.kafka.flush(self.config.close_timeout).is_ok() && slots.undelivered() == 0;
        if !flushed {
            // Purged records come back as delivery reports (PurgeQueue / PurgeInflight errors).
            self.kafka.purge();
            let grace = deadline.max(Instant::now()) + Duration::from_secs(5);
            while slots.undelivered() > 0 && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(5));
            }
            slots.fail_undelivered();
        }
        let counters = slots.counters();
        let report = CloseReport {
            pending_at_close,
            flushed,
            failed: (failures(&counters) - failed_before) as usize,
        };
        self.log_close(&report, &counters, dropped);
        report
    }

    fn log_close(&self, r: &CloseReport, c: &ProducerCounters, dropped: bool) {
        let client = self.config.kafka.client.client_id.as_str();
        let (sent, delivered) = (c.sent, c.delivered);
        let (retriable, permanent, fatal) =
            (c.failed_retriable, c.failed_permanent, c.failed_fatal);
        if r.failed == 0 {
            tracing::debug!(
                client,
                dropped,
                pending_at_close = r.pending_at_close,
                sent,
                delivered,
                "kbatch producer closed; every record sent was delivered or failed earlier"
            );
        } else if dropped {
            // Nobody gets a CloseReport for a dropped producer: this line is the report.
            tracing::error!(
                client,
                pending_at_close = r.pending_at_close,
                failed = r.failed,
                sent,
                delivered,
                failed_retriable = retriable,
                failed_permanent = permanent,
                failed_fatal = fatal,
                "kbatch producer dropped before every record was delivered: the failed records' \
                 futures resolved with errors (call close() to wait for this and get the report)"
            );
        } else {
            tracing::warn!(
                client,
                pending_at_close = r.pending_at_close,
                failed = r.failed,
                sent,
                delivered,
                "kbatch producer closed before every record was delivered"
            );
        }
    }
}

fn failures(c: &ProducerCounters) -> u64 {
    c.failed_retriable + c.failed_permanent + c.failed_fatal
}

/// Shared by a producer's handles; dropping the last one closes the producer.
pub(crate) struct LastHandle(Option<Arc<Inner>>);

impl LastHandle {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self(Some(inner))
    }
}

impl Drop for LastHandle {
    fn drop(&mut self) {
        let Some(inner) = self.0.take() else { return };
        let closing = Closing(Some(inner));
        match tokio::runtime::Handle::try_current() {
            // A blocking-pool thread owns the client from here on. Dropping the join handle
            // detaches the task; a runtime shutting down still waits for it.
            Ok(runtime) => drop(runtime.spawn_blocking(move || closing.run())),
            Err(_) => closing.run(),
        }
    }
}

/// Closes the producer on the thread that runs (or drops) it, then lets go of the client,
/// stopping it there too when no blocking call (a flush, a transaction) still holds it.
struct Closing(Option<Arc<Inner>>);

impl Closing {
    fn run(mut self) {
        if let Some(inner) = self.0.take() {
            inner.close_once(true);
        }
    }
}

impl Drop for Closing {
    /// A runtime that is shutting down drops blocking tasks instead of running them: close
    /// here then, rather than lose what is still queued without a report.
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            inner.close_once(true);
        }
    }
}
