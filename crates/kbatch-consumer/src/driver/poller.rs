//! The poll thread: drives the blocking [`RecordSource`] and turns what it produces — records
//! and rebalances — into one ordered stream of events for the driver.
//!
//! ```text
//!  poll thread ── Records / Assigned / Revoked(reply) ──► driver (one bounded channel)
//!       ▲  a revocation blocks in the source's callback until the driver has committed
//!       └─ the revoked partitions' final offsets through the sink and replies
//! ```
//! One channel keeps the order: records polled before a revocation are seen before it, so
//! they are dropped with the partition, and none of a new assignment is seen before it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kbatch_core::{
    Classify as _, CommittedOffset, ConsumedRecord, RebalanceListener, RecordSource, SourceError,
    TopicPartition,
};
use tokio::sync::mpsc;

/// What the poll thread reports.
#[derive(Debug)]
pub(crate) enum Event {
    /// The source is unusable (e.g. fenced by another member with the same instance id).
    Fatal(SourceError),
    Records(Vec<ConsumedRecord>),
    Assigned(Vec<CommittedOffset>),
    Revoked {
        partitions: Vec<TopicPartition>,
        lost: bool,
        /// When the rebalance asked: the revoke deadline counts from here, not from when the
        /// driver reads the event behind records polled before it.
        at: Instant,
        reply: std::sync::mpsc::SyncSender<()>,
    },
}

/// Bridges rebalance callbacks (on the poll thread) to the driver.
pub(crate) struct Listener {
    pub(crate) tx: mpsc::Sender<Event>,
    /// How long a revocation may wait for the driver.
    pub(crate) revoke_wait: Duration,
}

impl RebalanceListener for Listener {
    fn on_revoke(&self, partitions: &[TopicPartition], lost: bool) {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let ev = Event::Revoked {
            partitions: partitions.to_vec(),
            lost,
            at: Instant::now(),
            reply,
        };
        if self.tx.blocking_send(ev).is_err() {
            return; // the driver has finished (shutdown): it committed already
        }
        match answer.recv_timeout(self.revoke_wait) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => tracing::warn!(
                ?partitions,
                "no final commit from the driver in time; the next owner reprocesses from the last commit"
            ),
        }
    }

    fn on_assign(&self, committed: Vec<CommittedOffset>) {
        let _ = self.tx.blocking_send(Event::Assigned(committed));
    }
}

/// Record batches the channel holds.
pub(crate) const CHANNEL_BATCHES: usize = 2;

/// Batches that may be fetched beyond a full budget before the source stops: those in the
/// channel, the one in the poll thread's hand, and one polled while the pause is on its way.
pub(crate) const BATCHES_IN_FLIGHT: usize = CHANNEL_BATCHES + 2;

/// Records per event for a budget of `max_records`: up to 1,000 to amortise the channel, but
/// small enough that the batches in flight stay within a quarter of the budget.
pub(crate) fn batch_size(max_records: usize) -> usize {
    (max_records / (4 * BATCHES_IN_FLIGHT)).clamp(1, 1000)
}

/// Starts the poll thread. It stops when `stop` is set or the driver is gone, and is the last
/// owner of the source, so closing it (and its final revocation) happens there.
pub(crate) fn spawn(
    source: Arc<dyn RecordSource>,
    tx: mpsc::Sender<Event>,
    stop: Arc<AtomicBool>,
    batch_size: usize,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kbatch-consumer-poll".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let mut batch = Vec::with_capacity(batch_size);
                match source.poll_batch(&mut batch, batch_size, Duration::from_millis(50)) {
                    Ok(0) => {}
                    Ok(_) => {
                        if tx.blocking_send(Event::Records(batch)).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.is_fatal() => {
                        let _ = tx.blocking_send(Event::Fatal(e));
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "poll failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            drop(tx);
            drop(source);
        })
}
