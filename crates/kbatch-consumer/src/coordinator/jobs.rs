//! Jobs: starting handler tasks, their completion, retries and dead-lettering.

use std::cmp::Reverse;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;
use kbatch_core::{ConsumedRecord, Header, Record};

use super::Coordinator;
use crate::handler::{Handler, HandlerError, HandlerResult};
use crate::scheduler::Job;

/// What a job runs.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// The user's handler.
    Handle,
    /// Writing records that failed for good to the dead-letter target.
    DeadLetter(HandlerError),
}

/// A job came back.
#[derive(Debug)]
pub(crate) struct Done {
    id: u64,
    result: HandlerResult,
    elapsed: Duration,
}

impl Coordinator {
    /// Starts due retries first, then buffered records, up to the concurrency limit.
    pub(super) fn dispatch(&mut self) {
        let quick = self
            .stopping
            .as_ref()
            .is_some_and(|s| s.mode == crate::config::ShutdownMode::Quick);
        // Bounded per call: jobs that finish on their first poll never fill `running`, and the
        // loop must get back to its channels and timers.
        let mut budget = 4096;
        while self.running.len() < self.cfg.max_concurrency && !quick && budget > 0 {
            budget -= 1;
            if let Some((id, job, kind)) = self.due.pop_front() {
                self.start(id, job, kind);
                continue;
            }
            let Some(job) = self.scheduler.next_job(self.handler.batch_size()) else {
                break;
            };
            self.next_id += 1;
            self.start(self.next_id, job, Kind::Handle);
        }
    }

    fn start(&mut self, id: u64, job: Job, kind: Kind) {
        for w in &job.works {
            if let Some(p) = self.parts.get_mut(&w.record.topic_partition())
                && p.epoch == w.epoch
            {
                p.tracker.in_flight += 1;
            }
        }
        let records: Vec<ConsumedRecord> = job.works.iter().map(|w| w.record.clone()).collect();
        let tx = self.done_tx.clone();
        let mut fut = match &kind {
            Kind::Handle => self.handler_future(records),
            Kind::DeadLetter(e) => self.dead_letter_future(records, e.clone(), job.attempts),
        };
        // Poll once here: a handler that finishes without waiting (cache hit, no-op, filter)
        // completes with no task, no channel, no wake-up. One that waits is spawned and polled
        // again there, with a real waker.
        let t = Instant::now();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
            Ok(std::task::Poll::Ready(result)) => {
                self.finished(id, job, kind, result, t.elapsed());
                return;
            }
            Err(p) => {
                let result = Err(HandlerError::Retriable(format!(
                    "handler panicked: {}",
                    panic_text(&p)
                )));
                self.finished(id, job, kind, result, t.elapsed());
                return;
            }
            Ok(std::task::Poll::Pending) => {}
        }
        tokio::spawn(async move {
            let t = Instant::now();
            let result = AssertUnwindSafe(fut)
                .catch_unwind()
                .await
                .unwrap_or_else(|p| {
                    Err(HandlerError::Retriable(format!(
                        "handler panicked: {}",
                        panic_text(&p)
                    )))
                });
            let _ = tx
                .send(Done {
                    id,
                    result,
                    elapsed: t.elapsed(),
                })
                .await;
        });
        self.running.insert(id, (job, kind));
        self.stats.set_in_flight(self.running.len());
    }

    fn handler_future(
        &self,
        mut records: Vec<ConsumedRecord>,
    ) -> futures::future::BoxFuture<'static, HandlerResult> {
        match &self.handler {
            Handler::Async(f) => match records.pop() {
                Some(r) => f(r),
                None => Box::pin(async { Ok(()) }),
            },
            Handler::Blocking(f) => {
                let f = f.clone();
                Box::pin(async move {
                    let Some(r) = records.pop() else {
                        return Ok(());
                    };
                    tokio::task::spawn_blocking(move || f(r))
                        .await
                        .unwrap_or_else(|e| {
                            Err(HandlerError::Retriable(format!(
                                "blocking handler failed: {e}"
                            )))
                        })
                })
            }
            Handler::Batch(f, _) => f(records),
        }
    }

    fn dead_letter_future(
        &self,
        records: Vec<ConsumedRecord>,
        error: HandlerError,
        attempts: u32,
    ) -> futures::future::BoxFuture<'static, HandlerResult> {
        if let Some(cb) = &self.dlq_callback {
            let cb = cb.clone();
            return Box::pin(async move {
                for r in records {
                    cb(r, error.clone(), attempts).await?;
                }
                Ok(())
            });
        }
        let (Some(p), Some(topic)) = (self.dlq.clone(), self.cfg.dead_letter_topic.clone()) else {
            return Box::pin(async { Ok(()) });
        };
        Box::pin(async move {
            let out: Vec<Record> = records
                .iter()
                .map(|r| dead_letter_record(&topic, r, &error, attempts))
                .collect();
            for result in p.send_batch(out).await {
                result.map_err(|e| {
                    HandlerError::Retriable(format!("dead-letter write failed: {e}"))
                })?;
            }
            Ok(())
        })
    }

    pub(super) fn on_done(&mut self, d: Done) {
        let Some((job, kind)) = self.running.remove(&d.id) else {
            return;
        };
        self.stats.set_in_flight(self.running.len());
        self.finished(d.id, job, kind, d.result, d.elapsed);
    }

    /// A job's outcome, whether it came back from a task or finished on its first poll.
    fn finished(
        &mut self,
        id: u64,
        mut job: Job,
        kind: Kind,
        result: HandlerResult,
        elapsed: Duration,
    ) {
        let d = Done {
            id,
            result,
            elapsed,
        };
        let mut live = false;
        for w in &job.works {
            if let Some(p) = self.parts.get_mut(&w.record.topic_partition())
                && p.epoch == w.epoch
            {
                p.tracker.in_flight -= 1;
                live = true;
            }
        }
        self.metrics.handler_latency(d.elapsed);
        if !live {
            // Its partitions were revoked meanwhile: the new owner reprocesses; only free lanes.
            self.unhold(&job.works);
            self.scheduler.release(&job.lanes);
            return;
        }
        match (d.result, kind) {
            (Ok(()), Kind::Handle) => {
                self.stats.add_processed(job.works.len() as u64);
                self.complete(job);
            }
            (Ok(()), Kind::DeadLetter(_)) => {
                self.stats.add_dead_lettered(job.works.len() as u64);
                self.complete(job);
            }
            (Err(e), Kind::Handle) => {
                self.stats.add_failed(job.works.len() as u64);
                job.attempts += 1;
                let exhausted = self.cfg.max_attempts.is_some_and(|m| job.attempts >= m);
                match e {
                    HandlerError::Retriable(_) if !exhausted => {
                        self.stats.add_retried(job.works.len() as u64);
                        let delay = self.retry.delay(job.attempts);
                        self.wait(d.id, job, Kind::Handle, delay);
                    }
                    e => self.give_up(d.id, job, e),
                }
            }
            (Err(e), Kind::DeadLetter(original)) => {
                tracing::warn!(error = %e, "dead-letter write failed; retrying");
                job.attempts += 1;
                let delay = self.retry.delay(job.attempts.min(8));
                self.wait(d.id, job, Kind::DeadLetter(original), delay);
            }
        }
    }

    /// Records that failed for good go to the dead-letter target, or are skipped (logged and
    /// counted) when there is none.
    fn give_up(&mut self, id: u64, job: Job, e: HandlerError) {
        if self.dlq.is_some() || self.dlq_callback.is_some() {
            self.due.push_back((id, job, Kind::DeadLetter(e)));
            return;
        }
        for w in &job.works {
            tracing::error!(topic = %w.record.topic, partition = w.record.partition, offset = w.record.offset.0,
                key = %w.record.key_for_display(), attempts = job.attempts, error = %e,
                "record failed for good and no dead-letter target is configured: skipped");
        }
        self.stats.add_skipped_failed(job.works.len() as u64);
        self.complete(job);
    }

    fn wait(&mut self, id: u64, job: Job, kind: Kind, delay: Duration) {
        self.retry_at.push(Reverse((Instant::now() + delay, id)));
        self.waiting.insert(id, (job, kind));
    }

    /// Moves retries whose time has come to the front of the dispatch queue.
    pub(super) fn release_due(&mut self, now: Instant) {
        while let Some(Reverse((t, id))) = self.retry_at.peek().copied() {
            if t > now {
                break;
            }
            self.retry_at.pop();
            if let Some((job, kind)) = self.waiting.remove(&id) {
                self.due.push_back((id, job, kind));
            }
        }
    }

    /// The job's records are done: mark them, free their lanes and budget.
    fn complete(&mut self, job: Job) {
        for w in &job.works {
            if let Some(p) = self.parts.get_mut(&w.record.topic_partition())
                && p.epoch == w.epoch
            {
                p.tracker.completed(w.record.offset.0);
            }
        }
        self.unhold(&job.works);
        self.scheduler.release(&job.lanes);
    }
}

/// The dead-letter copy of `r`: same key, value, headers and timestamp, plus where it came from
/// and why it failed.
fn dead_letter_record(topic: &str, r: &ConsumedRecord, e: &HandlerError, attempts: u32) -> Record {
    let mut headers = r.headers.clone();
    let h = |k: &str, v: String| Header {
        key: k.to_owned(),
        value: Some(Bytes::from(v)),
    };
    headers.push(h("kbatch.dlq.topic", r.topic.to_string()));
    headers.push(h("kbatch.dlq.partition", r.partition.to_string()));
    headers.push(h("kbatch.dlq.offset", r.offset.0.to_string()));
    headers.push(Header {
        key: "kbatch.dlq.key".into(),
        value: r.key.clone(),
    });
    headers.push(h("kbatch.dlq.error", e.to_string()));
    headers.push(h("kbatch.dlq.attempts", attempts.to_string()));
    Record {
        topic: topic.into(),
        partition: None,
        key: r.key.clone(),
        value: r.value.clone(),
        headers,
        timestamp: r.timestamp,
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}
