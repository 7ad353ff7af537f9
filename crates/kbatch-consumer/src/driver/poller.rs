//! The poll thread: owns the blocking Kafka consumer and turns what `poll` produces —
//! records and rebalances — into one ordered stream of events for the coordinator.
//!
//! ```text
//!  poll thread ── Records / Assigned / Revoked(reply) ──► coordinator (one bounded channel)
//!       ▲  revoke callback blocks until the coordinator replies with the final commits,
//!       └─ which are committed synchronously before the partitions are released
//! ```
//! One channel keeps the order: records polled before a revocation are seen before it, so
//! they are dropped with the partition, and none of a new assignment is seen before it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use kbatch_client::{CommittedOffset, KafkaConsumer, OffsetCommit, RebalanceListener};
use kbatch_core::{Classify as _, ConsumedRecord, TopicPartition};
use tokio::sync::mpsc;

/// What the poll thread reports.
#[derive(Debug)]
pub(crate) enum Event {
    /// The client is unusable (e.g. fenced by another member with the same instance id).
    Fatal(kbatch_client::Error),
    Records(Vec<ConsumedRecord>),
    Assigned(Vec<CommittedOffset>),
    Revoked {
        partitions: Vec<TopicPartition>,
        lost: bool,
        /// When the rebalance asked: the revoke deadline counts from here, not from when the
        /// coordinator reads the event behind records polled before it.
        at: std::time::Instant,
        reply: std::sync::mpsc::SyncSender<Vec<OffsetCommit>>,
    },
}

/// Bridges rebalance callbacks (on the poll thread) to the coordinator.
pub(crate) struct Listener {
    pub(crate) tx: mpsc::Sender<Event>,
    /// How long a revocation may wait for the coordinator's final commits.
    pub(crate) revoke_wait: Duration,
    pub(crate) stats: std::sync::Arc<crate::metrics::SharedStats>,
}

impl RebalanceListener for Listener {
    fn on_revoke(&self, partitions: &[TopicPartition], lost: bool) -> Vec<OffsetCommit> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let ev = Event::Revoked {
            partitions: partitions.to_vec(),
            lost,
            at: std::time::Instant::now(),
            reply,
        };
        if self.tx.blocking_send(ev).is_err() {
            return Vec::new(); // the coordinator has finished (shutdown): it committed already
        }
        answer.recv_timeout(self.revoke_wait).unwrap_or_else(|_| {
            tracing::warn!(?partitions, "no final commit from the coordinator in time; the next owner reprocesses from the last commit");
            Vec::new()
        })
    }

    fn on_commit(&self, result: kbatch_client::Result<()>) {
        if let Err(e) = result {
            // The offsets stay uncommitted: the next interval commits them again.
            tracing::warn!(error = %e, "commit failed");
            self.stats.add_commit_failures(1);
        }
    }

    fn on_assign(&self, committed: Vec<CommittedOffset>) {
        let _ = self.tx.blocking_send(Event::Assigned(committed));
    }
}

/// Records per event: big enough to amortise the channel, small enough to spread work early.
const BATCH: usize = 1000;

/// Starts the poll thread. It stops when `stop` is set or the coordinator is gone, and is
/// the last owner of the consumer, so closing it (and its final revocation) happens there.
pub(crate) fn spawn(
    consumer: Arc<KafkaConsumer>,
    tx: mpsc::Sender<Event>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kbatch-consumer-poll".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let mut batch = Vec::with_capacity(BATCH);
                match consumer.poll_batch(&mut batch, BATCH, Duration::from_millis(50)) {
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
            drop(consumer);
        })
}
