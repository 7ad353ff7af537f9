//! Packed envelopes: a fetched record with the `kbatch-envelope` header becomes its events,
//! released into the ordering lanes only as the budget has room.
//!
//! ```text
//!  fetched ──► envelope, or behind one ──► Part::backlog ──► (budget has room) ──► scheduler
//!                                             │ decoded when its turn comes:            one Work
//!                                             │ Unpacking releases its events in order  per event
//!  complete(event) ──► open_envelopes[offset] -= 1 ──► 0: tracker.completed(offset)
//! ```
//!
//! - **One unit per event.** Each event is a record of its own for ordering (its own key),
//!   concurrency, retries and dead-lettering; it carries the envelope's topic, partition and
//!   offset and its [`EnvelopePosition`].
//! - **Envelope-level commit.** The envelope's offset stays incomplete in the tracker until
//!   every event is done (succeeded, dead-lettered, or skipped for good). Commit metadata is
//!   offset-granular: after a crash or a revocation the next owner redoes every event of an
//!   envelope that was not wholly done, and never one of an envelope committed as done.
//! - **Bounded.** Events enter the scheduler only while the records and bytes held are under
//!   the budget, so an envelope of 10,000 events is held a few at a time when the budget is
//!   small. Records fetched behind a partly released envelope wait in the backlog (their
//!   partition's and their keys' order holds), and a partition with a backlog stays paused: the
//!   backlog is at most what was already fetched when the pause went out.
//! - **Malformed envelopes** fail alone, permanently, with the decoder's message: the raw
//!   record is dead-lettered (or skipped, logged, without a dead-letter target) and counted.

use bytes::Bytes;
use kbatch_core::envelope::{self, EnvelopeError, Event};
use kbatch_core::{ConsumedRecord, EnvelopePosition, Offset, Timestamp, Topic, TopicPartition};

use super::Engine;
use crate::config::ShutdownMode;
use crate::handler::HandlerError;
use crate::scheduler::{Job, Work};

/// Units released from one partition's backlog before the next partition gets a turn.
const RELEASE_TURN: usize = 64;

/// An envelope whose events are being released, in order.
#[derive(Debug)]
pub(super) struct Unpacking {
    topic: Topic,
    partition: i32,
    offset: Offset,
    timestamp: Option<Timestamp>,
    count: u32,
    next_index: u32,
    events: std::vec::IntoIter<Event>,
}

impl Unpacking {
    /// The next event as a record of its own.
    fn next_record(&mut self) -> Option<ConsumedRecord> {
        let e = self.events.next()?;
        let index = self.next_index;
        self.next_index += 1;
        Some(ConsumedRecord {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            key: e.key,
            value: e.value,
            headers: e.headers,
            timestamp: e.timestamp.or(self.timestamp),
            envelope: Some(EnvelopePosition {
                index,
                count: self.count,
            }),
        })
    }

    /// Events not released yet.
    pub(super) fn remaining(&self) -> usize {
        self.events.len()
    }
}

/// What releasing one unit from a backlog did.
enum Step {
    /// A record or event went to the scheduler, or an envelope with nothing to do was done.
    Released,
    /// An envelope did not decode: it fails as a whole.
    Malformed(ConsumedRecord, EnvelopeError, u64),
    /// The budget is full.
    Full,
    /// The partition's backlog is empty (or the partition is gone).
    Drained,
}

impl Engine {
    /// True when `r` is an envelope to unpack.
    pub(super) fn is_packed(&self, r: &ConsumedRecord) -> bool {
        self.s.unpack_envelopes && envelope::is_envelope(&r.headers)
    }

    /// Queues a fetched record behind its partition's backlog (an envelope always goes there
    /// first, to be released as the budget allows).
    pub(super) fn push_backlog(&mut self, tp: TopicPartition, r: ConsumedRecord) {
        let Some(part) = self.parts.get_mut(&tp) else {
            return;
        };
        let queued = part.has_backlog();
        part.backlog.push_back(r);
        if !queued {
            self.unpack_queue.push_back(tp);
        }
    }

    /// Releases backlogged records and envelope events into the scheduler while the budget has
    /// room, a turn of [`RELEASE_TURN`] units per partition at a time.
    pub(super) fn release_backlogs(&mut self) {
        let quick = self
            .stopping
            .as_ref()
            .is_some_and(|s| s.mode == ShutdownMode::Quick);
        if quick || self.stopped {
            return;
        }
        let mut drained = false;
        'turns: while let Some(tp) = self.unpack_queue.pop_front() {
            for _ in 0..RELEASE_TURN {
                match self.release_one(&tp) {
                    Step::Released => {}
                    Step::Malformed(r, e, epoch) => self.malformed(r, e, epoch),
                    Step::Full => {
                        self.unpack_queue.push_front(tp);
                        break 'turns;
                    }
                    Step::Drained => {
                        drained = true;
                        continue 'turns;
                    }
                }
            }
            self.unpack_queue.push_back(tp);
        }
        if drained {
            // A partition kept paused for its backlog may fetch again.
            self.apply_pressure();
        }
    }

    fn has_room(&self) -> bool {
        self.held_records < self.s.max_records && self.held_bytes < self.s.max_bytes
    }

    fn release_one(&mut self, tp: &TopicPartition) -> Step {
        if !self.has_room() {
            return Step::Full;
        }
        let unpack = self.s.unpack_envelopes;
        let Some(part) = self.parts.get_mut(tp) else {
            return Step::Drained;
        };
        let epoch = part.epoch;
        let record = if let Some(u) = &mut part.unpacking {
            let next = u.next_record();
            if u.remaining() == 0 {
                part.unpacking = None;
            }
            match next {
                Some(r) => r,
                None => return Step::Released,
            }
        } else {
            let Some(r) = part.backlog.pop_front() else {
                return Step::Drained;
            };
            if !(unpack && envelope::is_envelope(&r.headers)) {
                r
            } else {
                let value = r.value.clone().unwrap_or_else(Bytes::new);
                let events = match envelope::decode(&value) {
                    Ok(events) => events,
                    Err(e) => return Step::Malformed(r, e, epoch),
                };
                let offset = r.offset.0;
                if part.open_envelopes.contains_key(&offset) {
                    return Step::Released; // fetched twice in one assignment: already under way
                }
                self.counters.envelopes_unpacked += 1;
                if events.is_empty() {
                    part.tracker.completed(offset);
                    return Step::Released;
                }
                // `decode` never returns more than u32::MAX events: the count field is a u32.
                let count = u32::try_from(events.len()).unwrap_or(u32::MAX);
                part.open_envelopes.insert(offset, count);
                let mut u = Unpacking {
                    topic: r.topic,
                    partition: r.partition,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    count,
                    next_index: 0,
                    events: events.into_iter(),
                };
                let Some(first) = u.next_record() else {
                    return Step::Released;
                };
                if u.remaining() > 0 {
                    part.unpacking = Some(u);
                }
                first
            }
        };
        let size = record.size();
        part.held += 1;
        part.held_bytes += size;
        self.held_records += 1;
        self.held_bytes += size;
        self.scheduler.push(Work {
            record,
            epoch,
            size,
        });
        Step::Released
    }

    /// An envelope that does not decode: a permanent failure of that one record, never handed
    /// to the handler — dead-lettered whole, or skipped without a dead-letter target.
    fn malformed(&mut self, r: ConsumedRecord, e: EnvelopeError, epoch: u64) {
        self.counters.malformed_envelopes += 1;
        tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset.0, error = %e,
            "malformed envelope: failed for good as one record");
        let size = r.size();
        if let Some(p) = self.parts.get_mut(&r.topic_partition()) {
            p.held += 1;
            p.held_bytes += size;
        }
        self.held_records += 1;
        self.held_bytes += size;
        self.next_id += 1;
        let job = Job {
            works: vec![Work {
                record: r,
                epoch,
                size,
            }],
            // It is never processed, only written away: it holds no lane.
            lanes: Vec::new(),
            attempts: 0,
        };
        self.give_up(self.next_id, job, HandlerError::permanent(e));
    }

    /// Drops the backlog of `tp` (revoked); returns the units dropped (records, and events
    /// not yet released).
    pub(super) fn drop_backlog(&mut self, tp: &TopicPartition) -> usize {
        self.unpack_queue.retain(|q| q != tp);
        let Some(part) = self.parts.get_mut(tp) else {
            return 0;
        };
        let n = part.backlog_len();
        part.backlog.clear();
        part.unpacking = None;
        n
    }

    /// Records waiting in backlogs (an envelope counts as one: its events are not held as
    /// records until released).
    pub(super) fn backlogged_records(&self) -> usize {
        self.unpack_queue
            .iter()
            .filter_map(|tp| self.parts.get(tp))
            .map(|p| p.backlog.len())
            .sum()
    }

    /// Records and unreleased events in backlogs: what is left undone if the consumer stops.
    pub(super) fn backlogged_units(&self) -> usize {
        self.unpack_queue
            .iter()
            .filter_map(|tp| self.parts.get(tp))
            .map(super::partitions::Part::backlog_len)
            .sum()
    }

    /// One event (or record) of `w`'s partition is done: the record's offset is complete
    /// unless it is an envelope with events still to do.
    pub(super) fn complete_unit(&mut self, w: &Work) {
        let Some(p) = self.parts.get_mut(&w.record.topic_partition()) else {
            return;
        };
        if p.epoch != w.epoch {
            return;
        }
        let offset = w.record.offset.0;
        if w.record.envelope.is_some()
            && let Some(left) = p.open_envelopes.get_mut(&offset)
        {
            *left -= 1;
            if *left > 0 {
                return;
            }
            p.open_envelopes.remove(&offset);
        }
        p.tracker.completed(offset);
    }

    /// Units waiting in backlogs, exactly: a record or a malformed envelope is one, an
    /// envelope as many as its events (for the model test).
    #[cfg(test)]
    pub(super) fn backlog_units(&self) -> usize {
        self.parts
            .values()
            .map(|p| {
                let waiting: usize = p
                    .backlog
                    .iter()
                    .map(|r| {
                        if self.is_packed(r) {
                            let value = r.value.clone().unwrap_or_default();
                            envelope::decode(&value).map_or(1, |e| e.len())
                        } else {
                            1
                        }
                    })
                    .sum();
                waiting + p.unpacking.as_ref().map_or(0, Unpacking::remaining)
            })
            .sum()
    }
}
