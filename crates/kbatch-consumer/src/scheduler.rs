//! Ordering lanes: which buffered records may start now.
//!
//! ```text
//!  KEY:        lane per (topic, key)  ─┐   null keys: one lane per partition
//!  PARTITION:  lane per partition     ─┼─► ready lanes (FIFO) ─► next_job() ─► one job in flight per lane
//!  UNORDERED:  no lanes, one FIFO     ─┘
//! ```
//! A lane with a job in flight (or waiting to retry) is busy: its later records wait, which is
//! what makes a failing record block only its key (KEY), its partition (PARTITION), or nothing
//! but itself (UNORDERED).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use kbatch_core::{ConsumedRecord, Topic, TopicPartition};

use crate::config::ProcessingOrder;

/// What must not run concurrently.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LaneKey {
    Key(Topic, Bytes),
    Partition(TopicPartition),
}

/// One buffered record.
#[derive(Debug, Clone)]
pub(crate) struct Work {
    pub(crate) record: ConsumedRecord,
    /// The partition's assignment epoch when the record was polled.
    pub(crate) epoch: u64,
    pub(crate) size: usize,
}

/// Records that start (and retry) together, with the lanes they hold.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) works: Vec<Work>,
    pub(crate) lanes: Vec<LaneKey>,
    pub(crate) attempts: u32,
}

#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<Work>,
    busy: bool,
}

#[derive(Debug)]
pub(crate) struct Scheduler {
    order: ProcessingOrder,
    lanes: HashMap<LaneKey, Lane>,
    ready: VecDeque<LaneKey>,
    unordered: VecDeque<Work>,
    buffered: usize,
}

impl Scheduler {
    pub(crate) fn new(order: ProcessingOrder) -> Self {
        Self {
            order,
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            unordered: VecDeque::new(),
            buffered: 0,
        }
    }

    fn lane_of(&self, r: &ConsumedRecord) -> Option<LaneKey> {
        match (self.order, &r.key) {
            (ProcessingOrder::Unordered, _) => None,
            (ProcessingOrder::Key, Some(k)) => Some(LaneKey::Key(r.topic.clone(), k.clone())),
            (ProcessingOrder::Key, None) | (ProcessingOrder::Partition, _) => {
                Some(LaneKey::Partition(r.topic_partition()))
            }
        }
    }

    /// Buffers a polled record behind the earlier records of its lane.
    pub(crate) fn push(&mut self, w: Work) {
        self.buffered += 1;
        let Some(key) = self.lane_of(&w.record) else {
            self.unordered.push_back(w);
            return;
        };
        let lane = self.lanes.entry(key.clone()).or_default();
        lane.queue.push_back(w);
        if !lane.busy && lane.queue.len() == 1 {
            self.ready.push_back(key);
        }
    }

    /// Records buffered, not started.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buffered
    }

    /// The next job of up to `batch` records, taking from ready lanes in turn (a batch may take
    /// several consecutive records of one lane: they stay in order within the batch).
    pub(crate) fn next_job(&mut self, batch: usize) -> Option<Job> {
        let mut job = Job {
            works: Vec::new(),
            lanes: Vec::new(),
            attempts: 0,
        };
        while job.works.len() < batch {
            if let Some(w) = self.unordered.pop_front() {
                job.works.push(w);
                continue;
            }
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            if lane.busy || lane.queue.is_empty() {
                continue;
            }
            lane.busy = true;
            let take = (batch - job.works.len()).min(lane.queue.len());
            job.works.extend(lane.queue.drain(..take));
            job.lanes.push(key);
        }
        self.buffered -= job.works.len();
        (!job.works.is_empty()).then_some(job)
    }

    /// The job holding `lanes` finished for good: their next records may start.
    pub(crate) fn release(&mut self, lanes: &[LaneKey]) {
        for key in lanes {
            if let Entry::Occupied(mut e) = self.lanes.entry(key.clone()) {
                let lane = e.get_mut();
                lane.busy = false;
                if lane.queue.is_empty() {
                    e.remove();
                } else {
                    self.ready.push_back(key.clone());
                }
            }
        }
    }

    /// Drops the buffered records of `tp` (revoked); returns them for accounting. Lanes held by
    /// jobs in flight stay busy until those jobs come back.
    pub(crate) fn remove_partition(&mut self, tp: &TopicPartition) -> Vec<Work> {
        let mut dropped = Vec::new();
        let is_tp = |w: &Work| w.record.partition == tp.partition && w.record.topic == tp.topic;
        self.unordered.retain(|w| {
            let keep = !is_tp(w);
            if !keep {
                dropped.push(w.clone());
            }
            keep
        });
        self.lanes.retain(|_, lane| {
            lane.queue.retain(|w| {
                let keep = !is_tp(w);
                if !keep {
                    dropped.push(w.clone());
                }
                keep
            });
            lane.busy || !lane.queue.is_empty()
        });
        self.buffered -= dropped.len();
        dropped
    }

    /// Drops every buffered record (quick shutdown).
    pub(crate) fn clear(&mut self) -> Vec<Work> {
        let mut all: Vec<Work> = self.unordered.drain(..).collect();
        for lane in self.lanes.values_mut() {
            all.extend(lane.queue.drain(..));
        }
        self.lanes.retain(|_, l| l.busy);
        self.ready.clear();
        self.buffered = 0;
        all
    }
}

#[cfg(test)]
mod tests {
    use kbatch_core::Offset;

    use super::*;

    fn rec(topic: &str, p: i32, o: i64, key: Option<&str>) -> Work {
        let record = ConsumedRecord {
            topic: topic.into(),
            partition: p,
            offset: Offset(o),
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: None,
            headers: Vec::new(),
            timestamp: None,
            envelope: None,
        };
        Work {
            record,
            epoch: 0,
            size: 0,
        }
    }

    fn offsets(j: &Job) -> Vec<i64> {
        j.works.iter().map(|w| w.record.offset.0).collect()
    }

    #[test]
    fn key_order_runs_keys_concurrently_and_each_key_in_sequence() {
        let mut s = Scheduler::new(ProcessingOrder::Key);
        for (o, k) in [(0, "a"), (1, "b"), (2, "a"), (3, "c"), (4, "b")] {
            s.push(rec("t", 0, o, Some(k)));
        }
        let j1 = s.next_job(1).unwrap();
        let j2 = s.next_job(1).unwrap();
        let j3 = s.next_job(1).unwrap();
        assert_eq!(
            (offsets(&j1), offsets(&j2), offsets(&j3)),
            (vec![0], vec![1], vec![3])
        );
        assert!(s.next_job(1).is_none(), "a and b are busy; 2 and 4 wait");
        s.release(&j1.lanes);
        assert_eq!(offsets(&s.next_job(1).unwrap()), vec![2]);
        assert!(s.next_job(1).is_none());
        s.release(&j2.lanes);
        assert_eq!(offsets(&s.next_job(1).unwrap()), vec![4]);
    }

    #[test]
    fn same_key_on_two_topics_are_independent_and_null_keys_follow_the_partition() {
        let mut s = Scheduler::new(ProcessingOrder::Key);
        s.push(rec("t1", 0, 0, Some("k")));
        s.push(rec("t2", 0, 0, Some("k")));
        s.push(rec("t1", 0, 1, None));
        s.push(rec("t1", 0, 2, None));
        s.push(rec("t1", 1, 0, None));
        let started: Vec<Job> = std::iter::from_fn(|| s.next_job(1)).collect();
        assert_eq!(started.len(), 4, "k@t1, k@t2, null@p0, null@p1");
        assert_eq!(s.buffered(), 1, "the second null-key record of p0 waits");
    }

    #[test]
    fn partition_order_and_batches_keep_sequence() {
        let mut s = Scheduler::new(ProcessingOrder::Partition);
        for o in 0..5 {
            s.push(rec("t", 0, o, Some("x")));
        }
        s.push(rec("t", 1, 0, Some("y")));
        let j = s.next_job(3).unwrap();
        assert_eq!(offsets(&j), vec![0, 1, 2], "three in order from p0");
        let j2 = s.next_job(3).unwrap();
        assert_eq!(offsets(&j2), vec![0], "p1 meanwhile");
        assert!(s.next_job(3).is_none(), "p0 busy until its batch returns");
        s.release(&j.lanes);
        assert_eq!(offsets(&s.next_job(3).unwrap()), vec![3, 4]);
    }

    #[test]
    fn unordered_and_revocation() {
        let mut s = Scheduler::new(ProcessingOrder::Unordered);
        for o in 0..4 {
            s.push(rec("t", (o % 2) as i32, o, Some("same")));
        }
        let dropped = s.remove_partition(&TopicPartition::new("t", 1));
        assert_eq!(dropped.len(), 2);
        let all: Vec<Job> = std::iter::from_fn(|| s.next_job(1)).collect();
        assert_eq!(
            all.iter().flat_map(offsets).collect::<Vec<_>>(),
            vec![0, 2],
            "same key, no ordering"
        );
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn revoking_keeps_busy_lanes_until_their_job_returns() {
        let mut s = Scheduler::new(ProcessingOrder::Key);
        s.push(rec("t", 0, 0, Some("a")));
        s.push(rec("t", 0, 1, Some("a")));
        let j = s.next_job(1).unwrap();
        assert_eq!(s.remove_partition(&TopicPartition::new("t", 0)).len(), 1);
        s.push(rec("t", 0, 1, Some("a")));
        assert!(s.next_job(1).is_none(), "lane still busy with the old job");
        s.release(&j.lanes);
        assert_eq!(offsets(&s.next_job(1).unwrap()), vec![1]);
    }
}
