//! Assigned partitions: assignment from committed metadata, fetched records, revocation,
//! back-pressure.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use kbatch_core::{CommitReason, CommitRequest, CommittedOffset, ConsumedRecord, TopicPartition};

use super::unpack::Unpacking;
use super::{Action, Engine, JobState, PendingRevoke};
use crate::codec::{self, DecodeError};
use crate::config::MetadataPolicy;
use crate::error::{Error, Result};
use crate::scheduler::Work;
use crate::tracker::{Seen, Tracker};

/// One assigned partition.
#[derive(Debug)]
pub(super) struct Part {
    pub(super) epoch: u64,
    pub(super) tracker: Tracker,
    /// Records of this partition held (buffered, in flight, retrying) and their bytes.
    pub(super) held: usize,
    pub(super) held_bytes: usize,
    /// Paused at the client right now.
    pub(super) paused: bool,
    /// Paused for holding more than its share of a full budget, until it drains to half.
    pub(super) budget_paused: bool,
    /// The metadata passed 75 % of the limit: take no new records until it falls below 50 %.
    pub(super) metadata_pressure: bool,
    pub(super) metadata_len: usize,
    /// Fetched records not yet in the scheduler: envelopes waiting to be unpacked, and the
    /// records behind them (which must not overtake their events).
    pub(super) backlog: VecDeque<ConsumedRecord>,
    /// The envelope whose events are being released.
    pub(super) unpacking: Option<Unpacking>,
    /// Envelopes (by offset) with events not done yet, and how many.
    pub(super) open_envelopes: HashMap<i64, u32>,
}

impl Part {
    pub(super) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty() || self.unpacking.is_some()
    }

    /// Backlogged records (an envelope not started counts as one) and events not released.
    pub(super) fn backlog_len(&self) -> usize {
        self.backlog.len() + self.unpacking.as_ref().map_or(0, Unpacking::remaining)
    }

    pub(super) fn update_metadata_pressure(&mut self, limit: usize) {
        // A few dozen incomplete offsets cannot approach the limit: skip the encoding then.
        self.metadata_len = if self.tracker.incomplete_count() < 48 {
            0
        } else {
            self.tracker.metadata_len()
        };
        if self.metadata_len * 4 > limit * 3 {
            self.metadata_pressure = true;
        } else if self.metadata_len * 2 < limit {
            self.metadata_pressure = false;
        }
    }
}

impl Engine {
    /// Partitions were assigned, with their committed offsets and metadata. Fails (policy
    /// `FailFast`) when a partition's metadata cannot be read.
    pub(crate) fn assigned(&mut self, committed: Vec<CommittedOffset>) -> Result<()> {
        for c in committed {
            self.assign(c)?;
        }
        self.apply_pressure();
        Ok(())
    }

    fn assign(&mut self, c: CommittedOffset) -> Result<()> {
        let map = match c.offset {
            None => None,
            Some(off) => match codec::decode(off.0, &c.metadata) {
                // Each incomplete offset is tracked one by one: refuse metadata naming more
                // than this consumer could ever have held (with overshoot) — hostile or corrupt.
                Ok(m) if m.incomplete_count() > self.incomplete_limit() => Err(DecodeError::Corrupt {
                    format: "any",
                    why: format!("{} incomplete offsets, more than {} (4 × max_records, at least 100,000)", m.incomplete_count(), self.incomplete_limit()),
                }),
                other => other,
            }
            .map(Some)
            .or_else(|e| match self.s.metadata_policy {
                MetadataPolicy::FailFast => Err(Error::Metadata { tp: c.tp.clone(), source: e }),
                MetadataPolicy::Ignore => {
                    tracing::warn!(tp = %c.tp, error = %e, "ignoring unreadable commit metadata: completed records above the committed offset will be reprocessed");
                    Ok(None)
                }
            })?,
        };
        self.next_epoch += 1;
        let part = Part {
            epoch: self.next_epoch,
            tracker: Tracker::new(c.offset.map(|o| o.0), map),
            held: 0,
            held_bytes: 0,
            paused: false,
            budget_paused: false,
            metadata_pressure: false,
            metadata_len: 0,
            backlog: VecDeque::new(),
            unpacking: None,
            open_envelopes: HashMap::new(),
        };
        tracing::debug!(tp = %c.tp, committed = ?c.offset, "assigned");
        self.parts.insert(c.tp, part);
        Ok(())
    }

    fn incomplete_limit(&self) -> u64 {
        (self.s.max_records as u64 * 4).max(100_000)
    }

    /// Records were polled.
    pub(crate) fn fetched(&mut self, records: Vec<ConsumedRecord>) {
        for r in records {
            self.fetched_one(r);
        }
        self.release_backlogs();
        self.apply_pressure();
    }

    fn fetched_one(&mut self, r: ConsumedRecord) {
        if self.stopping.is_some() || self.stopped {
            return; // not tracked: the next owner reads it again
        }
        let tp = r.topic_partition();
        let packed = self.is_packed(&r);
        let Some(part) = self.parts.get_mut(&tp) else {
            return; // revoked meanwhile
        };
        match part.tracker.seen(r.offset.0) {
            Seen::Skip => self.counters.skipped_completed += 1,
            // Envelopes are released as the budget allows; a record behind one waits for it.
            Seen::Process if packed || part.has_backlog() => self.push_backlog(tp, r),
            Seen::Process => {
                let size = r.size();
                part.held += 1;
                part.held_bytes += size;
                self.held_records += 1;
                self.held_bytes += size;
                self.scheduler.push(Work {
                    record: r,
                    epoch: part.epoch,
                    size,
                });
            }
        }
    }

    /// Forgets records no longer held (done, dropped), in the budgets.
    pub(super) fn unhold(&mut self, works: &[Work]) {
        for w in works {
            self.held_records -= 1;
            self.held_bytes -= w.size;
            if let Some(p) = self.parts.get_mut(&w.record.topic_partition())
                && p.epoch == w.epoch
            {
                p.held -= 1;
                p.held_bytes -= w.size;
            }
        }
    }

    /// Partitions are being revoked (the rebalance asked at `asked_at`): their buffered and
    /// waiting records are dropped now; in-flight ones get until `asked_at + revoke_timeout`.
    /// A `lost` assignment finishes at once, without a commit.
    pub(crate) fn revoked(
        &mut self,
        partitions: Vec<TopicPartition>,
        lost: bool,
        asked_at: Instant,
    ) {
        for tp in &partitions {
            let dropped = self.scheduler.remove_partition(tp);
            self.unhold(&dropped);
            self.drop_waiting(tp);
            self.drop_backlog(tp);
        }
        if lost {
            for tp in &partitions {
                self.parts.remove(tp);
            }
            self.actions
                .push_back(Action::FinishRevocation(CommitRequest::new(
                    Vec::new(),
                    CommitReason::Revocation,
                )));
            return;
        }
        if self.stopped {
            // Nothing is held any more: the final commit was made; let them go.
            self.actions
                .push_back(Action::FinishRevocation(CommitRequest::new(
                    Vec::new(),
                    CommitReason::Revocation,
                )));
            return;
        }
        self.revoke = Some(PendingRevoke {
            partitions,
            deadline: asked_at + self.s.revoke_timeout,
        });
        self.finish_revocation_if_ready();
        self.apply_pressure();
    }

    /// Drops the jobs waiting to retry (or due) that hold records of `tp`.
    fn drop_waiting(&mut self, tp: &TopicPartition) {
        let ids: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, e)| !matches!(e.state, JobState::Running))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(e) = self.jobs.get_mut(&id) else {
                continue;
            };
            let (gone, kept): (Vec<Work>, Vec<Work>) =
                e.job.works.drain(..).partition(|w| {
                    w.record.topic == tp.topic && w.record.partition == tp.partition
                });
            e.job.works = kept;
            let empty = e.job.works.is_empty();
            self.unhold(&gone);
            if empty && let Some(e) = self.jobs.remove(&id) {
                self.scheduler.release(&e.job.lanes);
                self.due.retain(|d| *d != id);
            }
        }
    }

    pub(super) fn finish_revocation_if_ready(&mut self) {
        let Some(r) = &self.revoke else { return };
        let busy = r
            .partitions
            .iter()
            .any(|tp| self.parts.get(tp).is_some_and(|p| p.tracker.in_flight > 0));
        if !busy {
            self.finish_revocation();
        }
    }

    /// Hands out the final commits of the revoked partitions and forgets them; work still in
    /// flight is left out of the commit (the next owner reprocesses it) and leaves the budget
    /// through `unhold` when it returns, like every other record.
    pub(super) fn finish_revocation(&mut self) {
        let Some(r) = self.revoke.take() else { return };
        let limit = self.s.metadata_limit;
        let mut offsets = Vec::new();
        for tp in &r.partitions {
            if let Some(p) = self.parts.remove(tp)
                && let Some((offset, meta)) = p.tracker.commit(limit)
            {
                offsets.push(kbatch_core::OffsetCommit {
                    tp: tp.clone(),
                    offset: kbatch_core::Offset(offset),
                    metadata: (!meta.is_empty()).then_some(meta),
                });
            }
        }
        tracing::debug!(?offsets, "revoked");
        self.counters.commits += u64::from(!offsets.is_empty());
        self.actions
            .push_back(Action::FinishRevocation(CommitRequest::new(
                offsets,
                CommitReason::Revocation,
            )));
    }

    /// Pauses every partition while the budget is full (what is already fetched is taken in:
    /// the budget is exceeded by that much at most), each partition that held more than its
    /// share of a full budget until it drains to half of it (so a hot partition does not take
    /// the room the others need), one under metadata pressure, and everything while paused by
    /// the user or stopping; resumes the rest.
    pub(super) fn apply_pressure(&mut self) {
        let n = self.parts.len().max(1);
        let (share_r, share_b) = (
            (self.s.max_records / n).max(1),
            (self.s.max_bytes / n).max(1),
        );
        let over = self.held_records >= self.s.max_records || self.held_bytes >= self.s.max_bytes;
        let over_half =
            self.held_records > self.s.max_records / 2 || self.held_bytes > self.s.max_bytes / 2;
        let global = self.user_paused || self.stopping.is_some();
        let (mut pause, mut resume) = (Vec::new(), Vec::new());
        for (tp, p) in &mut self.parts {
            if p.budget_paused {
                let drained = p.held <= share_r / 2 && p.held_bytes <= share_b / 2;
                p.budget_paused = !drained && over_half;
            } else {
                // When the budget is full, some partition holds at least its share: pausing
                // those stops growth while the others keep flowing.
                p.budget_paused = over && (p.held >= share_r || p.held_bytes >= share_b);
            }
            // A backlog is released as the budget frees: fetching more would only grow it.
            let want = global || over || p.metadata_pressure || p.budget_paused || p.has_backlog();
            if want && !p.paused {
                pause.push(tp.clone());
                p.paused = true;
            } else if !want && p.paused {
                resume.push(tp.clone());
                p.paused = false;
            }
        }
        if !pause.is_empty() {
            pause.sort();
            self.actions.push_back(Action::Pause(pause));
        }
        if !resume.is_empty() {
            resume.sort();
            self.actions.push_back(Action::Resume(resume));
        }
    }
}
