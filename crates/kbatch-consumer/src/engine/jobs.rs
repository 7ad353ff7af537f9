//! Jobs: dispatching records, their outcome, retries and dead-lettering.

use std::cmp::Reverse;
use std::time::Instant;

use super::{Action, Engine, Entry, JobId, JobState, Work};
use crate::config::ShutdownMode;
use crate::handler::HandlerError;
use crate::scheduler::Job;

/// How a dispatched job ended.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    /// Done: the records are complete.
    Ok,
    /// Failed: retried, dead-lettered or skipped as the error's kind and the attempts say.
    Failed(HandlerError),
}

impl Engine {
    /// Hands out the next job — due retries first, then buffered records — while fewer than
    /// `max_concurrency` run.
    pub(super) fn dispatch(&mut self) -> Option<Action> {
        let quick = self
            .stopping
            .as_ref()
            .is_some_and(|s| s.mode == ShutdownMode::Quick);
        if self.running >= self.s.max_concurrency || quick {
            return None;
        }
        let (id, job, work) = if let Some((id, job, work)) = self.next_due() {
            (id, job, work)
        } else {
            let job = self.scheduler.next_job(self.s.batch_size)?;
            self.next_id += 1;
            (self.next_id, job, Work::Handle)
        };
        for w in &job.works {
            if let Some(p) = self.parts.get_mut(&w.record.topic_partition())
                && p.epoch == w.epoch
            {
                p.tracker.in_flight += 1;
            }
        }
        let records = job.works.iter().map(|w| w.record.clone()).collect();
        self.jobs.insert(
            id,
            Entry {
                job,
                work: work.clone(),
                state: JobState::Running,
            },
        );
        self.running += 1;
        Some(Action::Dispatch { id, records, work })
    }

    /// A dispatched job ended at `now`. Unknown ids (never dispatched, or already finished)
    /// change nothing.
    pub(crate) fn finished(&mut self, id: JobId, outcome: Outcome, now: Instant) {
        let Some(e) = self.jobs.remove(&id) else {
            return;
        };
        if !matches!(e.state, JobState::Running) {
            self.jobs.insert(id, e);
            return;
        }
        self.running -= 1;
        let Entry { mut job, work, .. } = e;
        let mut live = false;
        for w in &job.works {
            if let Some(p) = self.parts.get_mut(&w.record.topic_partition())
                && p.epoch == w.epoch
            {
                p.tracker.in_flight -= 1;
                live = true;
            }
        }
        let failed = matches!(outcome, Outcome::Failed(_));
        if !live || (failed && self.is_revoking(&job)) {
            // Its partitions were revoked meanwhile, or are being revoked: the new owner
            // (re)processes the records; here only the lanes and the budget are freed.
            self.unhold(&job.works);
            self.scheduler.release(&job.lanes);
        } else {
            match (outcome, work) {
                (Outcome::Ok, Work::Handle) => {
                    self.counters.processed += job.works.len() as u64;
                    self.complete(job);
                }
                (Outcome::Ok, Work::DeadLetter { .. }) => {
                    self.counters.dead_lettered += job.works.len() as u64;
                    self.complete(job);
                }
                (Outcome::Failed(e), Work::Handle) => {
                    self.counters.failed += job.works.len() as u64;
                    job.attempts += 1;
                    let exhausted = self.s.max_attempts.is_some_and(|m| job.attempts >= m);
                    if e.is_retriable() && !exhausted {
                        self.counters.retried += job.works.len() as u64;
                        let delay = self.s.retry.delay(job.attempts);
                        self.wait(id, job, Work::Handle, now + delay);
                    } else {
                        self.give_up(id, job, e);
                    }
                }
                (Outcome::Failed(e), Work::DeadLetter { error, attempts }) => {
                    tracing::warn!(error = %e, "dead-letter write failed; retrying");
                    self.counters.dead_letter_failures += 1;
                    job.attempts += 1;
                    let delay = self.s.retry.delay(job.attempts.min(8));
                    self.wait(id, job, Work::DeadLetter { error, attempts }, now + delay);
                }
            }
        }
        self.finish_revocation_if_ready();
        self.stop_if_ready();
    }

    /// The next due job whose partitions are still assigned; due jobs of partitions that went
    /// meanwhile are dropped (freeing their lanes and budget), never run for a former owner.
    fn next_due(&mut self) -> Option<(JobId, Job, Work)> {
        while let Some(id) = self.due.pop_front() {
            let Some(e) = self.jobs.remove(&id) else {
                continue;
            };
            let live = e.job.works.iter().all(|w| {
                self.parts
                    .get(&w.record.topic_partition())
                    .is_some_and(|p| p.epoch == w.epoch)
            });
            if live && !self.is_revoking(&e.job) {
                return Some((id, e.job, e.work));
            }
            self.unhold(&e.job.works);
            self.scheduler.release(&e.job.lanes);
        }
        None
    }

    /// True when a record of `job` belongs to a partition being revoked.
    fn is_revoking(&self, job: &Job) -> bool {
        self.revoke.as_ref().is_some_and(|r| {
            job.works.iter().any(|w| {
                r.partitions
                    .iter()
                    .any(|tp| *tp.topic == *w.record.topic && tp.partition == w.record.partition)
            })
        })
    }

    /// Records that failed for good go to the dead-letter target, or are skipped (logged and
    /// counted) when there is none.
    pub(super) fn give_up(&mut self, id: JobId, job: Job, error: HandlerError) {
        if self.s.dead_letter {
            let attempts = job.attempts;
            self.jobs.insert(
                id,
                Entry {
                    job,
                    work: Work::DeadLetter { error, attempts },
                    state: JobState::Due,
                },
            );
            self.due.push_back(id);
            return;
        }
        for w in &job.works {
            tracing::error!(topic = %w.record.topic, partition = w.record.partition, offset = w.record.offset.0,
                key = %w.record.key_for_display(), attempts = job.attempts, error = %error,
                "record failed for good and no dead-letter target is configured: skipped");
        }
        self.counters.skipped_failed += job.works.len() as u64;
        self.complete(job);
    }

    fn wait(&mut self, id: JobId, job: Job, work: Work, at: Instant) {
        self.retry_at.push(Reverse((at, id)));
        self.jobs.insert(
            id,
            Entry {
                job,
                work,
                state: JobState::Waiting,
            },
        );
    }

    /// Moves retries whose time has come to the dispatch queue.
    pub(super) fn release_due(&mut self, now: Instant) {
        while let Some(Reverse((t, id))) = self.retry_at.peek().copied() {
            if t > now {
                break;
            }
            self.retry_at.pop();
            if let Some(e) = self.jobs.get_mut(&id)
                && matches!(e.state, JobState::Waiting)
            {
                e.state = JobState::Due;
                self.due.push_back(id);
            }
        }
    }

    /// The job's records are done: mark them (an envelope's offset once all its events are),
    /// free their lanes and budget.
    fn complete(&mut self, job: Job) {
        for w in &job.works {
            self.complete_unit(w);
        }
        self.unhold(&job.works);
        self.scheduler.release(&job.lanes);
    }
}

/// The delay a retry policy gives, for tests that need one without randomness.
#[cfg(test)]
pub(crate) fn fixed(d: std::time::Duration) -> std::sync::Arc<dyn crate::handler::RetryPolicy> {
    use std::time::Duration;
    struct Fixed(Duration);
    impl crate::handler::RetryPolicy for Fixed {
        fn delay(&self, _: u32) -> Duration {
            self.0
        }
    }
    std::sync::Arc::new(Fixed(d))
}
