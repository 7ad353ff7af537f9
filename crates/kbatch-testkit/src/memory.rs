//! In-memory stand-ins for the seams (`RecordSource`, `OffsetSink`): test an engine and its
//! driver without a broker, with rebalances, pauses and commit failures under the test's
//! control.
//!
//! ```text
//!  MemoryBroker (topics, partitions, committed offsets)
//!     ▲ produce / committed          ▲ commit
//!  MemorySource ──poll_batch──►  consumer ──►  MemorySink (log of every CommitRequest,
//!     revoke() / assign()                      fail_next(n) to refuse commits,
//!                                              hold() / release() to keep them waiting)
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use kbatch_core::{
    CommitMode, CommitRequest, CommittedOffset, ConsumedRecord, ErrorClass, Offset,
    RebalanceListener, Record, RecordSource, SourceError, TopicPartition,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
struct BrokerState {
    logs: BTreeMap<TopicPartition, Vec<ConsumedRecord>>,
    committed: BTreeMap<TopicPartition, (Offset, String)>,
}

/// Topics, partitions and one group's committed offsets, in memory. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct MemoryBroker(Arc<Mutex<BrokerState>>);

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates `topic` with `partitions` empty partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let mut s = lock(&self.0);
        for p in 0..partitions {
            s.logs.entry(TopicPartition::new(topic, p)).or_default();
        }
    }

    /// Appends a record to a partition; returns its offset.
    pub fn produce(
        &self,
        tp: &TopicPartition,
        key: Option<&str>,
        value: impl Into<Bytes>,
    ) -> Offset {
        let mut r = Record::new(tp.topic.clone(), value);
        r.key = key.map(|k| Bytes::copy_from_slice(k.as_bytes()));
        self.produce_record(tp, r)
    }

    /// Appends `record` — key, value, headers and timestamp; its topic and partition are
    /// ignored — to a partition; returns its offset.
    pub fn produce_record(&self, tp: &TopicPartition, record: Record) -> Offset {
        let mut s = lock(&self.0);
        let log = s.logs.entry(tp.clone()).or_default();
        let offset = Offset(log.len() as i64);
        log.push(ConsumedRecord {
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset,
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp: record.timestamp,
            envelope: None,
        });
        offset
    }

    /// The group's committed offset and metadata of a partition.
    pub fn committed(&self, tp: &TopicPartition) -> Option<(Offset, String)> {
        lock(&self.0).committed.get(tp).cloned()
    }

    /// Partitions of `topic`.
    pub fn partitions(&self, topic: &str) -> Vec<TopicPartition> {
        lock(&self.0)
            .logs
            .keys()
            .filter(|tp| *tp.topic == *topic)
            .cloned()
            .collect()
    }
}

enum Rebalance {
    Assign(Vec<TopicPartition>),
    Revoke(Vec<TopicPartition>, bool),
}

#[derive(Default)]
struct SourceState {
    listener: Option<Arc<dyn RebalanceListener>>,
    positions: BTreeMap<TopicPartition, i64>,
    paused: BTreeSet<TopicPartition>,
    pending: VecDeque<Rebalance>,
    pause_calls: usize,
}

/// A [`RecordSource`] over a [`MemoryBroker`]: `subscribe` assigns every partition of the
/// topics on the next poll; [`MemorySource::revoke`] and [`MemorySource::assign`] script
/// rebalances, run from inside the next `poll_batch` as librdkafka runs its callbacks.
pub struct MemorySource {
    broker: MemoryBroker,
    state: Mutex<SourceState>,
}

impl MemorySource {
    /// A source reading `broker`.
    pub fn new(broker: &MemoryBroker) -> Self {
        Self {
            broker: broker.clone(),
            state: Mutex::default(),
        }
    }

    /// Revokes `partitions` on the next poll (`lost`: the assignment was lost).
    pub fn revoke(&self, partitions: &[TopicPartition], lost: bool) {
        lock(&self.state)
            .pending
            .push_back(Rebalance::Revoke(partitions.to_vec(), lost));
    }

    /// Assigns `partitions` on the next poll, from the broker's committed offsets.
    pub fn assign(&self, partitions: &[TopicPartition]) {
        lock(&self.state)
            .pending
            .push_back(Rebalance::Assign(partitions.to_vec()));
    }

    /// Partitions assigned now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        lock(&self.state).positions.keys().cloned().collect()
    }

    /// Partitions paused now.
    pub fn paused(&self) -> Vec<TopicPartition> {
        lock(&self.state).paused.iter().cloned().collect()
    }

    /// How many times `pause` was called with at least one partition.
    pub fn pause_calls(&self) -> usize {
        lock(&self.state).pause_calls
    }

    fn rebalance(&self, r: Rebalance, listener: &Arc<dyn RebalanceListener>) {
        match r {
            Rebalance::Assign(tps) => {
                let committed: Vec<CommittedOffset> = tps
                    .iter()
                    .map(|tp| {
                        let c = self.broker.committed(tp);
                        CommittedOffset {
                            tp: tp.clone(),
                            offset: c.as_ref().map(|c| c.0),
                            metadata: c.map(|c| c.1).unwrap_or_default(),
                        }
                    })
                    .collect();
                {
                    let mut s = lock(&self.state);
                    for c in &committed {
                        s.positions
                            .insert(c.tp.clone(), c.offset.map_or(0, |o| o.0));
                        s.paused.remove(&c.tp);
                    }
                }
                listener.on_assign(committed);
            }
            Rebalance::Revoke(tps, lost) => {
                // As librdkafka: the partitions stay assigned until the callback returns.
                listener.on_revoke(&tps, lost);
                let mut s = lock(&self.state);
                for tp in &tps {
                    s.positions.remove(tp);
                    s.paused.remove(tp);
                }
            }
        }
    }
}

impl RecordSource for MemorySource {
    fn subscribe(
        &self,
        topics: &[&str],
        listener: Arc<dyn RebalanceListener>,
    ) -> Result<(), SourceError> {
        let all: Vec<TopicPartition> = topics
            .iter()
            .flat_map(|t| self.broker.partitions(t))
            .collect();
        if all.is_empty() {
            return Err(SourceError::new(
                ErrorClass::Permanent,
                format!("unknown topics {topics:?}"),
            ));
        }
        let mut s = lock(&self.state);
        s.listener = Some(listener);
        s.pending.push_back(Rebalance::Assign(all));
        Ok(())
    }

    fn poll_batch(
        &self,
        out: &mut Vec<ConsumedRecord>,
        max: usize,
        timeout: Duration,
    ) -> Result<usize, SourceError> {
        loop {
            let (r, listener) = {
                let mut s = lock(&self.state);
                match (s.pending.pop_front(), s.listener.clone()) {
                    (Some(r), Some(l)) => (r, l),
                    _ => break,
                }
            };
            self.rebalance(r, &listener);
        }
        let mut n = 0;
        {
            let logs = lock(&self.broker.0);
            let mut s = lock(&self.state);
            let ready: Vec<TopicPartition> = s
                .positions
                .keys()
                .filter(|tp| !s.paused.contains(*tp))
                .cloned()
                .collect();
            for tp in ready {
                let Some(log) = logs.logs.get(&tp) else {
                    continue;
                };
                let pos = s.positions.get_mut(&tp).expect("assigned");
                while n < max && (*pos as usize) < log.len() {
                    out.push(log[*pos as usize].clone());
                    *pos += 1;
                    n += 1;
                }
            }
        }
        if n == 0 {
            std::thread::sleep(timeout.min(Duration::from_millis(5)));
        }
        Ok(n)
    }

    fn pause(&self, partitions: &[TopicPartition]) -> Result<(), SourceError> {
        let mut s = lock(&self.state);
        s.pause_calls += usize::from(!partitions.is_empty());
        s.paused.extend(partitions.iter().cloned());
        Ok(())
    }

    fn resume(&self, partitions: &[TopicPartition]) -> Result<(), SourceError> {
        let mut s = lock(&self.state);
        for tp in partitions {
            s.paused.remove(tp);
        }
        Ok(())
    }
}

/// An [`OffsetSink`](kbatch_core::OffsetSink) into a [`MemoryBroker`]'s committed offsets,
/// keeping a log of every request; [`MemorySink::fail_next`] makes the next commits fail.
pub struct MemorySink {
    broker: MemoryBroker,
    log: Mutex<Vec<(CommitRequest, CommitMode, bool)>>,
    fail: AtomicUsize,
    /// While true, commits wait (a coordinator that is slow to answer).
    held: Mutex<bool>,
    unheld: Condvar,
    waiting: AtomicUsize,
}

impl MemorySink {
    /// A sink committing to `broker`.
    pub fn new(broker: &MemoryBroker) -> Self {
        Self {
            broker: broker.clone(),
            log: Mutex::default(),
            fail: AtomicUsize::new(0),
            held: Mutex::new(false),
            unheld: Condvar::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Commits from now on wait, unanswered, until [`MemorySink::release`].
    pub fn hold(&self) {
        *lock(&self.held) = true;
    }

    /// Lets the waiting commits (and later ones) through.
    pub fn release(&self) {
        *lock(&self.held) = false;
        self.unheld.notify_all();
    }

    /// How many commits are waiting because of [`MemorySink::hold`].
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The next `n` commits fail with a retriable error (and change nothing).
    pub fn fail_next(&self, n: usize) {
        self.fail.store(n, Ordering::SeqCst);
    }

    /// Every commit asked for: the request, its mode, and whether it succeeded.
    pub fn log(&self) -> Vec<(CommitRequest, CommitMode, bool)> {
        lock(&self.log).clone()
    }
}

impl kbatch_core::OffsetSink for MemorySink {
    fn commit(&self, request: &CommitRequest, mode: CommitMode) -> Result<(), SourceError> {
        {
            let mut held = lock(&self.held);
            if *held {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                while *held {
                    held = self
                        .unheld
                        .wait(held)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                self.waiting.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let failing = self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        lock(&self.log).push((request.clone(), mode, !failing));
        if failing {
            return Err(SourceError::new(
                ErrorClass::Retriable,
                "injected commit failure",
            ));
        }
        let mut s = lock(&self.broker.0);
        for c in &request.offsets {
            s.committed.insert(
                c.tp.clone(),
                (c.offset, c.metadata.clone().unwrap_or_default()),
            );
        }
        Ok(())
    }
}
