//! Assigned partitions: assignment from committed metadata, revocation, back-pressure.

use std::time::Instant;

use kbatch_client::{CommittedOffset, OffsetCommit};
use kbatch_core::{ConsumedRecord, Offset, TopicPartition};

use super::{Coordinator, PendingRevoke};
use crate::codec::{self, DecodeError};
use crate::config::MetadataPolicy;
use crate::error::{Error, Result};
use crate::scheduler::Work;
use crate::tracker::{Seen, Tracker};

/// One assigned partition.
#[derive(Debug)]
pub(crate) struct Part {
    pub(crate) epoch: u64,
    pub(crate) tracker: Tracker,
    /// Records of this partition held (buffered, in flight, retrying) and their bytes.
    pub(crate) held: usize,
    pub(crate) held_bytes: usize,
    /// Paused at the client right now.
    pub(crate) paused: bool,
    /// Paused for holding more than its share of a full budget, until it drains to half.
    pub(crate) budget_paused: bool,
    /// The metadata passed 75 % of the limit: take no new records until it falls below 50 %.
    pub(crate) metadata_pressure: bool,
    pub(crate) metadata_len: usize,
}

impl Part {
    pub(crate) fn update_metadata_pressure(&mut self, limit: usize) {
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

impl Coordinator {
    pub(super) fn assign(&mut self, c: CommittedOffset) -> Result<()> {
        let map = match c.offset {
            None => None,
            Some(off) => match codec::decode(off.0, &c.metadata) {
                Ok(m) if m.incomplete_count() > self.cfg.max_records as u64 => Err(DecodeError::Corrupt {
                    format: "any",
                    why: format!("{} incomplete offsets, more than max_records ({})", m.incomplete_count(), self.cfg.max_records),
                }),
                other => other,
            }
            .map(Some)
            .or_else(|e| match self.cfg.metadata_policy {
                MetadataPolicy::FailFast => Err(Error::Metadata { tp: c.tp.clone(), source: e }),
                MetadataPolicy::Ignore => {
                    tracing::warn!(tp = %c.tp, error = %e, "ignoring unreadable commit metadata: completed records above the committed offset will be reprocessed");
                    Ok(None)
                }
            })?,
        };
        self.next_epoch += 1;
        let tracker = Tracker::new(c.offset.map(|o| o.0), map);
        let part = Part {
            epoch: self.next_epoch,
            tracker,
            held: 0,
            held_bytes: 0,
            paused: false,
            budget_paused: false,
            metadata_pressure: false,
            metadata_len: 0,
        };
        tracing::debug!(tp = %c.tp, committed = ?c.offset, "assigned");
        self.parts.insert(c.tp, part);
        Ok(())
    }

    pub(super) fn on_record(&mut self, r: ConsumedRecord) {
        if self.stopping.is_some() {
            return; // not tracked: the next owner reads it again
        }
        let tp = r.topic_partition();
        let Some(part) = self.parts.get_mut(&tp) else {
            return;
        };
        match part.tracker.seen(r.offset.0) {
            Seen::Skip => self.stats.add_skipped_completed(1),
            Seen::Process => {
                let size =
                    r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len());
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

    pub(super) fn start_revoke(
        &mut self,
        partitions: Vec<TopicPartition>,
        lost: bool,
        asked_at: Instant,
        reply: std::sync::mpsc::SyncSender<Vec<OffsetCommit>>,
    ) {
        for tp in &partitions {
            let dropped = self.scheduler.remove_partition(tp);
            self.unhold(&dropped);
            self.drop_waiting(tp);
        }
        if lost {
            for tp in &partitions {
                self.parts.remove(tp);
            }
            let _ = reply.send(Vec::new());
            return;
        }
        let deadline = asked_at + self.cfg.revoke_timeout;
        self.revoke = Some(PendingRevoke {
            partitions,
            reply,
            deadline,
        });
        self.finish_revoke_if_ready();
    }

    fn drop_waiting(&mut self, tp: &TopicPartition) {
        let ids: Vec<u64> = self.waiting.keys().copied().collect();
        for id in ids {
            let Some((job, _)) = self.waiting.get_mut(&id) else {
                continue;
            };
            let (gone, kept): (Vec<Work>, Vec<Work>) = job
                .works
                .drain(..)
                .partition(|w| w.record.topic == tp.topic && w.record.partition == tp.partition);
            job.works = kept;
            let empty = job.works.is_empty();
            self.unhold(&gone);
            if empty && let Some((job, _)) = self.waiting.remove(&id) {
                self.scheduler.release(&job.lanes);
            }
        }
    }

    pub(super) fn finish_revoke_if_ready(&mut self) {
        let Some(r) = &self.revoke else { return };
        let busy = r
            .partitions
            .iter()
            .any(|tp| self.parts.get(tp).is_some_and(|p| p.tracker.in_flight > 0));
        if !busy {
            self.finish_revoke();
        }
    }

    /// Replies with the final commits of the revoked partitions and forgets them; work still
    /// in flight is left out of the commit (the next owner reprocesses it), and leaves the
    /// budget through `unhold` when it returns, like every other record.
    pub(super) fn finish_revoke(&mut self) {
        let Some(r) = self.revoke.take() else { return };
        let mut commits = Vec::new();
        for tp in &r.partitions {
            if let Some(p) = self.parts.remove(tp)
                && let Some((offset, meta)) = p.tracker.commit(self.cfg.metadata_limit)
            {
                commits.push(OffsetCommit {
                    tp: tp.clone(),
                    offset: Offset(offset),
                    metadata: (!meta.is_empty()).then_some(meta),
                });
            }
        }
        tracing::debug!(?commits, "revoked");
        let _ = r.reply.send(commits);
    }

    /// Pauses (at the client) each partition over its share of a full budget, or under
    /// metadata pressure, or everything while paused by the user or stopping; resumes the rest.
    pub(super) fn apply_pressure(&mut self) {
        let n = self.parts.len().max(1);
        let (share_r, share_b) = (
            (self.cfg.max_records / n).max(1),
            (self.cfg.max_bytes / n).max(1),
        );
        let over =
            self.held_records >= self.cfg.max_records || self.held_bytes >= self.cfg.max_bytes;
        let over_half = self.held_records > self.cfg.max_records / 2
            || self.held_bytes > self.cfg.max_bytes / 2;
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
            let want = global || p.metadata_pressure || p.budget_paused;
            if want && !p.paused {
                pause.push(tp.clone());
                p.paused = true;
            } else if !want && p.paused {
                resume.push(tp.clone());
                p.paused = false;
            }
        }
        let Some(consumer) = &self.consumer else {
            return;
        };
        if !pause.is_empty()
            && let Err(e) = consumer.pause(&pause)
        {
            tracing::warn!(error = %e, "pause failed");
        }
        if !resume.is_empty()
            && let Err(e) = consumer.resume(&resume)
        {
            tracing::warn!(error = %e, "resume failed");
        }
    }
}
