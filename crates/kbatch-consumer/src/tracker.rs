//! Per-partition offset tracking: what may be committed, and what the metadata must say.
//!
//! ```text
//!   committed ─┐   incomplete = polled, not yet done (dispatched, buffered, retrying)
//!              ▼
//!   ... x x x [o] x x o o x x x (H)      commit point = lowest incomplete, else H + 1
//!                                         metadata     = encoding of the span [commit, H]
//! ```
//! Offsets never polled inside the span (transaction markers, compacted-away records) are not
//! incomplete, so gaps never hold the commit back.

use std::collections::BTreeSet;

use crate::codec::{self, OffsetMap};

/// Outcome of seeing a polled record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// New work: process it.
    Process,
    /// Already completed (per the metadata found at assignment, or before a re-poll), or
    /// polled before in this assignment and still held: skip.
    Skip,
}

/// The offsets of one assigned partition.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// Lowest offset this assignment may commit (the committed offset found at assignment).
    floor: Option<i64>,
    incomplete: BTreeSet<i64>,
    highest_seen: Option<i64>,
    /// Highest offset polled in this assignment. A record polled again at or below it was
    /// handed over already — in flight, retrying, buffered or done — and must not run a
    /// second time: librdkafka can fetch a partition it keeps again from an older position
    /// (seen once in the cooperative churn test: one instance ran one record twice, 127 ms
    /// apart, with no rebalance of its own in between).
    polled: Option<i64>,
    /// Highest offset completed so far in this assignment.
    highest_completed: Option<i64>,
    /// Records dispatched to a handler and not yet back.
    pub(crate) in_flight: usize,
    /// What was last committed (offset, metadata): commit only on change.
    last_commit: Option<(i64, String)>,
}

impl Tracker {
    /// A tracker starting from the committed offset (if any) and its decoded metadata.
    pub(crate) fn new(committed: Option<i64>, map: Option<OffsetMap>) -> Self {
        let mut t = Self {
            floor: committed,
            incomplete: BTreeSet::new(),
            highest_seen: None,
            polled: None,
            highest_completed: None,
            in_flight: 0,
            last_commit: None,
        };
        if let (Some(c), Some(m)) = (committed, map) {
            if m.end > m.base {
                t.highest_seen = Some(m.end - 1);
                t.incomplete
                    .extend(m.incomplete.iter().flat_map(|r| r.clone()));
            }
            t.last_commit = Some((c, codec::encode(&t.map_at(c))));
        } else if let Some(c) = committed {
            t.last_commit = Some((c, String::new()));
        }
        t
    }

    /// A record at `offset` was polled.
    pub(crate) fn seen(&mut self, offset: i64) -> Seen {
        if self.polled.is_some_and(|p| offset <= p) {
            return Seen::Skip;
        }
        self.polled = Some(offset);
        if self.floor.is_none() {
            // First record of a partition never committed: the floor starts here.
            self.floor = Some(offset);
        }
        if self.floor.is_some_and(|f| offset < f) {
            return Seen::Skip;
        }
        match self.highest_seen {
            Some(h) if offset <= h => {
                if self.incomplete.contains(&offset) {
                    Seen::Process
                } else {
                    Seen::Skip
                }
            }
            _ => {
                self.highest_seen = Some(offset);
                self.incomplete.insert(offset);
                Seen::Process
            }
        }
    }

    /// The record at `offset` is done (processed, skipped for good, or dead-lettered).
    pub(crate) fn completed(&mut self, offset: i64) {
        self.incomplete.remove(&offset);
        self.highest_completed = Some(self.highest_completed.map_or(offset, |h| h.max(offset)));
    }

    /// Highest offset completed in this assignment.
    pub(crate) fn highest_completed(&self) -> Option<i64> {
        self.highest_completed
    }

    /// The offset to commit: the lowest incomplete one, else one past the highest seen.
    pub(crate) fn commit_point(&self) -> Option<i64> {
        self.incomplete
            .first()
            .copied()
            .or(self.highest_seen.map(|h| h + 1))
            .or(self.floor)
    }

    /// Incomplete offsets (polled, not done).
    pub(crate) fn incomplete_count(&self) -> usize {
        self.incomplete.len()
    }

    /// Highest offset polled so far.
    pub(crate) fn highest_seen(&self) -> Option<i64> {
        self.highest_seen
    }

    fn map_at(&self, commit: i64) -> OffsetMap {
        let end = self.highest_seen.map_or(commit, |h| h + 1).max(commit);
        OffsetMap::from_incomplete(commit, end, self.incomplete.range(commit..end).copied())
    }

    /// The commit for this partition, with metadata of at most `limit` bytes: if the whole span
    /// does not fit, a shorter span is encoded — offsets past it are then merely unknown
    /// (reprocessed after a restart), never wrongly marked done.
    pub(crate) fn commit(&self, limit: usize) -> Option<(i64, String)> {
        let commit = self.commit_point()?;
        let mut map = self.map_at(commit);
        let mut text = codec::encode(&map);
        while text.len() > limit && map.end > map.base + 1 {
            let keep = (map.end - map.base) / 2;
            map = OffsetMap::from_incomplete(
                commit,
                commit + keep,
                self.incomplete.range(commit..commit + keep).copied(),
            );
            text = codec::encode(&map);
        }
        if text.len() > limit {
            text.clear();
        }
        Some((commit, text))
    }

    /// Like [`Tracker::commit`], but `None` when nothing changed since the last commit.
    pub(crate) fn commit_if_changed(&mut self, limit: usize) -> Option<(i64, String)> {
        let c = self.commit(limit)?;
        if self.last_commit.as_ref() == Some(&c) {
            return None;
        }
        self.last_commit = Some(c.clone());
        Some(c)
    }

    /// The offset of the last commit handed out (or found at assignment).
    pub(crate) fn last_committed(&self) -> Option<i64> {
        self.last_commit.as_ref().map(|(o, _)| *o)
    }

    /// Makes the next [`Tracker::commit_if_changed`] commit again (the last one failed).
    pub(crate) fn forget_last_commit(&mut self) {
        self.last_commit = None;
    }

    /// Size of the metadata a commit would carry now, unbounded.
    pub(crate) fn metadata_len(&self) -> usize {
        self.commit_point()
            .map_or(0, |c| codec::encode(&self.map_at(c)).len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_never_passes_an_incomplete_offset_and_skips_gaps() {
        let mut t = Tracker::new(Some(10), None);
        assert_eq!(t.commit_point(), Some(10));
        for o in [10, 11, 12, 15, 16] {
            assert_eq!(t.seen(o), Seen::Process);
        }
        t.completed(11);
        t.completed(12);
        assert_eq!(t.commit_point(), Some(10), "10 is still in flight");
        t.completed(10);
        assert_eq!(
            t.commit_point(),
            Some(15),
            "13 and 14 were never polled: a gap, not work"
        );
        t.completed(16);
        t.completed(15);
        assert_eq!(t.commit_point(), Some(17));
        assert_eq!(t.commit(4096), Some((17, String::new())));
    }

    #[test]
    fn restart_from_metadata_skips_exactly_the_completed() {
        let mut t = Tracker::new(Some(100), None);
        for o in 100..110 {
            t.seen(o);
        }
        for o in [101, 102, 105, 106, 107, 108] {
            t.completed(o);
        }
        let (commit, meta) = t.commit(4096).unwrap();
        assert_eq!(commit, 100);
        let mut again = Tracker::new(Some(commit), Some(codec::decode(commit, &meta).unwrap()));
        let decisions: Vec<(i64, Seen)> = (100..112).map(|o| (o, again.seen(o))).collect();
        let process: Vec<i64> = decisions
            .iter()
            .filter(|(_, s)| *s == Seen::Process)
            .map(|(o, _)| *o)
            .collect();
        assert_eq!(process, vec![100, 103, 104, 109, 110, 111]);
        assert_eq!(again.commit_point(), Some(100));
    }

    #[test]
    fn metadata_is_truncated_to_the_limit_never_refused() {
        // Pseudo-random completions: incompressible, unlike a periodic pattern.
        let done = |o: i64| {
            (o.wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407)
                >> 33)
                % 3
                != 0
        };
        let mut t = Tracker::new(Some(0), None);
        for o in 0..200_000 {
            t.seen(o);
            if o > 0 && done(o) {
                t.completed(o);
            }
        }
        let full = t.metadata_len();
        assert!(full > 4096, "{full}");
        let (commit, meta) = t.commit(4096).unwrap();
        assert_eq!(commit, 0);
        assert!(meta.len() <= 4096);
        let m = codec::decode(0, &meta).unwrap();
        assert!(m.end > 1000, "a useful prefix survives: {}", m.end);
        for o in m.base..m.end {
            assert_eq!(m.is_completed(o), o > 0 && done(o), "offset {o}");
        }
    }

    #[test]
    fn a_record_polled_again_in_the_same_assignment_runs_once() {
        // Incomplete from the metadata, polled for the first time: processed once.
        let mut t = Tracker::new(Some(100), None);
        for o in 100..104 {
            t.seen(o);
        }
        t.completed(101);
        let (commit, meta) = t.commit(4096).unwrap();
        let mut again = Tracker::new(Some(commit), Some(codec::decode(commit, &meta).unwrap()));
        assert_eq!(
            again.seen(100),
            Seen::Process,
            "incomplete per the metadata"
        );
        assert_eq!(again.seen(101), Seen::Skip, "completed per the metadata");
        assert_eq!(again.seen(102), Seen::Process);
        // Polled again while 100 and 102 are still in flight: not a second time.
        for o in 100..103 {
            assert_eq!(again.seen(o), Seen::Skip, "offset {o} polled again");
        }
        assert_eq!(again.seen(103), Seen::Process);
        assert_eq!(again.seen(104), Seen::Process, "new work goes on");
        assert_eq!(
            again.commit_point(),
            Some(100),
            "the in-flight 100 holds the commit"
        );
    }

    #[test]
    fn without_a_commit_the_first_record_sets_the_floor() {
        let mut t = Tracker::new(None, None);
        assert_eq!(t.commit_point(), None);
        assert_eq!(t.seen(42), Seen::Process);
        assert_eq!(t.commit_point(), Some(42));
        t.completed(42);
        assert_eq!(t.commit_point(), Some(43));
        assert!(t.commit_if_changed(4096).is_some());
        assert!(
            t.commit_if_changed(4096).is_none(),
            "unchanged: no second commit"
        );
    }
}
