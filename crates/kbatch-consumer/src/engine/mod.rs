//! The parallel consumer's decisions, without I/O: no tokio, no rdkafka, no clock reads.
//!
//! ```text
//!  events in                                   actions out (next_action)
//!  assigned / fetched / revoked ──►┌────────┐──► Dispatch (records, or envelopes' events, to a
//!                                  │        │              handler or the DLQ)
//!  finished (ok / failed / panic) ►│ Engine │──► Pause / Resume partitions
//!  tick(now) / pause / shutdown ──►└────────┘──► Commit / FinishRevocation / Stop (CommitRequest)
//! ```
//!
//! Time is an input (`now` on every timed event), so backoff, the commit interval and the
//! revoke and shutdown deadlines run the same on a simulated clock as on the real one. The
//! driver ([`crate::driver`]) performs the actions and feeds back what happened.
//!
//! Dispatch is pulled: [`Engine::next_action`] hands out a job whenever fewer than
//! `max_concurrency` run, so a caller that processes a bounded number of actions per pass
//! bounds its pass.
//!
//! Packed envelopes are unpacked here (`unpack`): each event is a unit of its own for
//! ordering, retries and dead letters; the envelope's offset completes with its last event.

mod jobs;
#[cfg(test)]
mod model;
mod partitions;
mod unpack;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kbatch_core::{CommitReason, CommitRequest, ConsumedRecord, OffsetCommit, TopicPartition};

use crate::config::{MetadataPolicy, ParallelConfig, ProcessingOrder, ShutdownMode};
use crate::handler::{HandlerError, RetryPolicy};
use crate::scheduler::{Job, Scheduler};
pub(crate) use jobs::Outcome;
use partitions::Part;

/// Identifies a dispatched job until it is finished.
pub(crate) type JobId = u64;

/// What a dispatched job does.
#[derive(Clone, Debug)]
pub(crate) enum Work {
    /// Run the user's handler.
    Handle,
    /// Write records that failed for good to the dead-letter target.
    DeadLetter {
        /// The last error.
        error: HandlerError,
        /// Attempts made.
        attempts: u32,
    },
}

/// Something for the driver to do.
#[derive(Debug)]
pub(crate) enum Action {
    /// Run `work` on `records`; report back with [`Engine::finished`].
    Dispatch {
        id: JobId,
        records: Vec<ConsumedRecord>,
        work: Work,
    },
    /// Stop fetching these partitions.
    Pause(Vec<TopicPartition>),
    /// Fetch these partitions again.
    Resume(Vec<TopicPartition>),
    /// Commit progress (in the configured commit mode); report failures with
    /// [`Engine::commit_failed`].
    Commit(CommitRequest),
    /// The pending revocation is done: commit this synchronously, then let the partitions go.
    /// Empty when the assignment was lost.
    FinishRevocation(CommitRequest),
    /// The consumer has stopped: commit this synchronously and close.
    Stop(CommitRequest),
}

/// The engine's settings, taken from [`ParallelConfig`].
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) ordering: ProcessingOrder,
    pub(crate) max_concurrency: usize,
    pub(crate) max_records: usize,
    pub(crate) max_bytes: usize,
    pub(crate) batch_size: usize,
    pub(crate) commit_interval: Duration,
    pub(crate) metadata_limit: usize,
    pub(crate) metadata_policy: MetadataPolicy,
    pub(crate) revoke_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) max_attempts: Option<u32>,
    /// Records that failed for good go to a dead-letter target (else they are skipped).
    pub(crate) dead_letter: bool,
    /// Envelope records are unpacked into their events.
    pub(crate) unpack_envelopes: bool,
    pub(crate) retry: Arc<dyn RetryPolicy>,
}

impl Settings {
    pub(crate) fn new(
        cfg: &ParallelConfig,
        batch_size: usize,
        dead_letter: bool,
        retry: Arc<dyn RetryPolicy>,
    ) -> Self {
        Self {
            ordering: cfg.ordering,
            max_concurrency: cfg.max_concurrency,
            max_records: cfg.max_records,
            max_bytes: cfg.max_bytes,
            batch_size: batch_size.max(1),
            commit_interval: cfg.commit_interval,
            metadata_limit: cfg.metadata_limit,
            metadata_policy: cfg.metadata_policy,
            revoke_timeout: cfg.revoke_timeout,
            shutdown_timeout: cfg.shutdown_timeout,
            max_attempts: cfg.max_attempts,
            dead_letter,
            unpack_envelopes: cfg.unpack_envelopes,
            retry,
        }
    }
}

/// Counters the engine keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) processed: u64,
    pub(crate) failed: u64,
    pub(crate) retried: u64,
    pub(crate) dead_lettered: u64,
    /// Dead-letter writes that failed (and are tried again).
    pub(crate) dead_letter_failures: u64,
    pub(crate) skipped_completed: u64,
    pub(crate) skipped_failed: u64,
    pub(crate) commits: u64,
    /// Records left for the next owner at shutdown (dropped by a quick shutdown, or still
    /// held when the shutdown timeout passed).
    pub(crate) left_unprocessed: u64,
    /// Envelope records decoded into their events.
    pub(crate) envelopes_unpacked: u64,
    /// Envelope records that did not decode (failed for good as one record).
    pub(crate) malformed_envelopes: u64,
}

/// Where a job is.
#[derive(Debug)]
enum JobState {
    Running,
    /// Waiting for its retry time (in `retry_at`).
    Waiting,
    /// Its retry time came: next to dispatch (in `due`).
    Due,
}

#[derive(Debug)]
struct Entry {
    job: Job,
    work: Work,
    state: JobState,
}

struct PendingRevoke {
    partitions: Vec<TopicPartition>,
    deadline: Instant,
}

struct Stopping {
    mode: ShutdownMode,
    deadline: Instant,
}

/// The parallel consumer's state machine. See the [module docs](self).
pub(crate) struct Engine {
    s: Settings,
    parts: HashMap<TopicPartition, Part>,
    next_epoch: u64,
    scheduler: Scheduler,
    jobs: HashMap<JobId, Entry>,
    running: usize,
    retry_at: BinaryHeap<Reverse<(Instant, JobId)>>,
    due: VecDeque<JobId>,
    next_id: JobId,
    held_records: usize,
    held_bytes: usize,
    /// Partitions with a backlog to release (see `unpack`), in turn.
    unpack_queue: VecDeque<TopicPartition>,
    user_paused: bool,
    revoke: Option<PendingRevoke>,
    stopping: Option<Stopping>,
    stopped: bool,
    next_commit: Instant,
    actions: VecDeque<Action>,
    counters: Counters,
}

impl Engine {
    /// A new engine; `now` starts the commit interval.
    pub(crate) fn new(s: Settings, now: Instant) -> Self {
        Self {
            scheduler: Scheduler::new(s.ordering),
            next_commit: now + s.commit_interval,
            s,
            parts: HashMap::new(),
            next_epoch: 0,
            jobs: HashMap::new(),
            running: 0,
            retry_at: BinaryHeap::new(),
            due: VecDeque::new(),
            next_id: 0,
            held_records: 0,
            held_bytes: 0,
            unpack_queue: VecDeque::new(),
            user_paused: false,
            revoke: None,
            stopping: None,
            stopped: false,
            actions: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// The next thing to do: queued actions first, then a job to dispatch while fewer than
    /// `max_concurrency` run. `None` when there is nothing to do now.
    pub(crate) fn next_action(&mut self) -> Option<Action> {
        if let Some(a) = self.actions.pop_front() {
            return Some(a);
        }
        if self.stopped {
            return None;
        }
        if !self.unpack_queue.is_empty() {
            self.release_backlogs();
        }
        if let Some(d) = self.dispatch() {
            return Some(d);
        }
        // Nothing to start: the last held records may have gone some other way (a revocation,
        // a stale retry dropped) — a shutdown waiting for that can end now.
        self.stop_if_ready();
        self.actions.pop_front()
    }

    /// Time passed: commits every `commit_interval`, retries whose delay is over, the
    /// revocation and shutdown deadlines.
    pub(crate) fn tick(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        if now >= self.next_commit {
            self.commit_progress();
            for p in self.parts.values_mut() {
                p.update_metadata_pressure(self.s.metadata_limit);
            }
            self.apply_pressure();
            self.next_commit = (self.next_commit + self.s.commit_interval).max(now);
        }
        self.release_due(now);
        if self.revoke.as_ref().is_some_and(|r| now >= r.deadline) {
            self.finish_revocation();
        }
        if self.stopping.as_ref().is_some_and(|s| now >= s.deadline) {
            tracing::warn!("shutdown timeout: stopping with work unfinished");
            self.stop();
        }
    }

    /// When [`Engine::tick`] next has something to do, if ever.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        [
            Some(self.next_commit),
            self.retry_at.peek().map(|Reverse((t, _))| *t),
            self.revoke.as_ref().map(|r| r.deadline),
            self.stopping.as_ref().map(|s| s.deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The user paused (or resumed) every partition.
    pub(crate) fn set_user_paused(&mut self, paused: bool) {
        self.user_paused = paused;
        self.apply_pressure();
    }

    /// Stop as `mode` says, by `now + shutdown_timeout` at the latest.
    pub(crate) fn shutdown(&mut self, mode: ShutdownMode, now: Instant) {
        if self.stopped || self.stopping.is_some() {
            return;
        }
        if mode == ShutdownMode::Quick {
            let dropped = self.scheduler.clear();
            self.counters.left_unprocessed += dropped.len() as u64;
            self.unhold(&dropped);
            for tp in std::mem::take(&mut self.unpack_queue) {
                self.counters.left_unprocessed += self.drop_backlog(&tp) as u64;
            }
            let waiting: Vec<JobId> = self
                .jobs
                .iter()
                .filter(|(_, e)| !matches!(e.state, JobState::Running))
                .map(|(id, _)| *id)
                .collect();
            for id in waiting {
                if let Some(e) = self.jobs.remove(&id) {
                    self.counters.left_unprocessed += e.job.works.len() as u64;
                    self.unhold(&e.job.works);
                    self.scheduler.release(&e.job.lanes);
                }
            }
            self.retry_at.clear();
            self.due.clear();
        }
        self.stopping = Some(Stopping {
            mode,
            deadline: now + self.s.shutdown_timeout,
        });
        self.apply_pressure();
        self.stop_if_ready();
    }

    /// A commit the engine asked for failed: commit those partitions again next time, even
    /// unchanged.
    pub(crate) fn commit_failed(&mut self, request: &CommitRequest) {
        for c in &request.offsets {
            if let Some(p) = self.parts.get_mut(&c.tp) {
                p.tracker.forget_last_commit();
            }
        }
    }

    /// Nothing held: no record buffered, running or waiting to retry, no envelope waiting to
    /// be unpacked.
    pub(crate) fn is_idle(&self) -> bool {
        self.held_records == 0 && self.unpack_queue.is_empty()
    }

    pub(crate) fn counters(&self) -> Counters {
        self.counters
    }

    /// Jobs running now.
    pub(crate) fn running(&self) -> usize {
        self.running
    }

    /// Records held (buffered, running, waiting) and bytes.
    pub(crate) fn held(&self) -> (usize, usize) {
        (self.held_records, self.held_bytes)
    }

    /// Records held and not running, and records waiting in backlogs (an envelope not unpacked
    /// yet counts as one).
    pub(crate) fn waiting_records(&self) -> usize {
        let running: usize = self
            .jobs
            .values()
            .filter(|e| matches!(e.state, JobState::Running))
            .map(|e| e.job.works.len())
            .sum();
        self.held_records.saturating_sub(running) + self.backlogged_records()
    }

    /// Assigned partitions, with their trackers and metadata size relative to the limit.
    pub(crate) fn partitions(
        &self,
    ) -> impl Iterator<Item = (&TopicPartition, &crate::tracker::Tracker, f64, bool)> {
        let limit = self.s.metadata_limit as f64;
        self.parts
            .iter()
            .map(move |(tp, p)| (tp, &p.tracker, p.metadata_len as f64 / limit, p.paused))
    }

    /// The commits handed out could not be made at all: make every partition's again next
    /// time.
    pub(crate) fn commits_not_made(&mut self) {
        for p in self.parts.values_mut() {
            p.tracker.forget_last_commit();
        }
    }

    /// True when every partition's commit equals the one last handed out.
    pub(crate) fn nothing_to_commit(&self) -> bool {
        let limit = self.s.metadata_limit;
        self.parts
            .values()
            .all(|p| p.tracker.commit(limit).map(|c| c.0) == p.tracker.last_committed())
    }

    /// Commits every partition whose commit changed, unless it is being revoked.
    fn commit_progress(&mut self) {
        let revoking = self.revoke.as_ref().map(|r| r.partitions.clone());
        let offsets = self.commits(
            |tp| revoking.as_ref().is_none_or(|r| !r.contains(tp)),
            false,
        );
        if !offsets.is_empty() {
            self.counters.commits += 1;
            self.actions.push_back(Action::Commit(CommitRequest::new(
                offsets,
                CommitReason::Periodic,
            )));
        }
    }

    /// The commits of the partitions `which` selects: changed ones, or all when `all`.
    fn commits(&mut self, which: impl Fn(&TopicPartition) -> bool, all: bool) -> Vec<OffsetCommit> {
        let limit = self.s.metadata_limit;
        let mut out = Vec::new();
        for (tp, p) in &mut self.parts {
            if !which(tp) {
                continue;
            }
            let c = if all {
                p.tracker.commit(limit)
            } else {
                p.tracker.commit_if_changed(limit)
            };
            if let Some((offset, meta)) = c {
                out.push(OffsetCommit {
                    tp: tp.clone(),
                    offset: kbatch_core::Offset(offset),
                    metadata: (!meta.is_empty()).then_some(meta),
                });
            }
        }
        out.sort_by(|a, b| a.tp.cmp(&b.tp));
        out
    }

    /// Stops now if the shutdown mode's condition holds.
    fn stop_if_ready(&mut self) {
        let Some(s) = &self.stopping else { return };
        let idle = self.running == 0;
        let ready = match s.mode {
            ShutdownMode::Quick => idle,
            ShutdownMode::Drain => idle && self.is_idle(),
        };
        if ready {
            self.stop();
        }
    }

    /// Stops: finishes a pending revocation, then hands out the final commit.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        if self.revoke.is_some() {
            self.finish_revocation();
        }
        self.counters.left_unprocessed += (self.held_records + self.backlogged_units()) as u64;
        let offsets = self.commits(|_| true, true);
        self.counters.commits += u64::from(!offsets.is_empty());
        self.actions.push_back(Action::Stop(CommitRequest::new(
            offsets,
            CommitReason::Final,
        )));
        self.stopped = true;
    }
}
