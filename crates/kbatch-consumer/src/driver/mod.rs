//! The thin async driver around the [engine](crate::engine): it feeds the engine what
//! happened and performs what the engine decides.
//!
//! ```text
//!  poll thread ─Event─►┐                         ┌─► handler tasks (TaskTracker, CancellationToken)
//!  Running ─Control───►│ driver ◄─► Engine ─────►├─► RecordSource::pause / resume
//!  handler tasks ─Done►┘   (one task)            └─► OffsetSink::commit (CommitRequest)
//! ```
//!
//! Every pass first ticks the engine with the time, performs a bounded number of actions,
//! then waits — unbiased — for the first of: a finished handler, a poll event, a control
//! request, the engine's next deadline. However busy one source is, a deadline is late by
//! one pass at most.

pub(crate) mod poller;
mod tasks;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use kbatch_core::{CommitMode, CommitRequest, Offset, OffsetSink, RecordSource, TopicPartition};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ShutdownMode;
use crate::engine::{Action, Engine};
use crate::error::{Error, Result};
use crate::handler::{HandlerResult, Process};
use crate::metrics::{Metrics, SharedStats};
use poller::Event;
pub(crate) use tasks::DeadLetter;

/// Requests from the [`Running`](crate::Running) handle.
pub(crate) enum Control {
    Pause,
    Resume,
    Shutdown(ShutdownMode),
}

/// What a shutdown did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Records processed successfully over the consumer's life.
    pub processed: u64,
    /// Records left unprocessed (buffered or retrying at a quick or timed-out shutdown, or in
    /// flight when the timeout passed); the next owner of their partitions processes them.
    pub left_unprocessed: u64,
    /// The final commits that the group confirmed, per partition.
    pub committed: Vec<(TopicPartition, Offset)>,
    /// The final commits that failed, per partition, with why: the next owner starts from
    /// the previous commit and reprocesses what lies between.
    pub not_committed: Vec<(TopicPartition, Offset, String)>,
}

/// Where processing stands, as the driver last published it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Partitions assigned to this consumer now.
    pub assigned: BTreeSet<TopicPartition>,
    /// Per assigned partition, the offset last handed to the offset sink (with
    /// `CommitMode::Async` the broker may still refuse it: see `ConsumerStats::commit_failures`).
    pub committed: BTreeMap<TopicPartition, Offset>,
    /// Records processed successfully so far.
    pub processed: u64,
    /// Records held: buffered, running or waiting to retry.
    pub held: u64,
    /// Caught up: partitions are assigned, nothing is held, every completed record's offset
    /// was handed to the sink, and the source delivered nothing new for a commit interval.
    pub idle: bool,
    /// The consumer has stopped.
    pub stopped: bool,
}

/// A handler job came back.
pub(crate) struct Done {
    id: u64,
    result: HandlerResult,
    elapsed: Duration,
}

/// Everything the driver owns.
pub(crate) struct Driver {
    pub(crate) engine: Engine,
    pub(crate) process: Arc<dyn Process>,
    pub(crate) dead_letter: DeadLetter,
    pub(crate) source: Arc<dyn RecordSource>,
    pub(crate) sink: Arc<dyn OffsetSink>,
    pub(crate) commit_mode: CommitMode,
    pub(crate) events: mpsc::Receiver<Event>,
    pub(crate) control: mpsc::Receiver<Control>,
    pub(crate) poller_stop: Arc<AtomicBool>,
    pub(crate) poller: Option<std::thread::JoinHandle<()>>,
    pub(crate) stats: Arc<SharedStats>,
    pub(crate) metrics: Metrics,
    pub(crate) progress: watch::Sender<Progress>,
    pub(crate) commit_interval: Duration,
}

/// Per-run state of the driver.
struct Loop {
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    revoke_reply: Option<std::sync::mpsc::SyncSender<()>>,
    commit_failures_seen: u64,
    /// When the source last delivered records (the start, before any).
    last_records: Instant,
    next_publish: Instant,
    final_commit: Option<CommitRequest>,
}

/// Actions performed per pass before the driver looks at its channels and the clock again.
const ACTIONS_PER_PASS: usize = 4096;

impl Driver {
    /// Runs until the consumer stops (shutdown, or a fatal error), then commits, stops the
    /// poll thread and the handler tasks, and reports.
    pub(crate) async fn run(mut self, max_concurrency: usize) -> Result<ShutdownReport> {
        // Every job sends exactly one Done: capacity for all in flight means no task waits.
        let (done_tx, done_rx) = mpsc::channel(max_concurrency + 16);
        let mut l = Loop {
            done_tx,
            done_rx,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            revoke_reply: None,
            commit_failures_seen: 0,
            last_records: Instant::now(),
            next_publish: Instant::now(),
            final_commit: None,
        };
        let result = self.run_loop(&mut l).await;
        let report = self.finish(&mut l, result.is_ok()).await;
        // The poll thread has ended: these are the last handles on the client, whose close
        // blocks (a final rebalance, the group leave) and must not run on a runtime thread.
        let (source, sink) = (self.source, self.sink);
        let _ = tokio::task::spawn_blocking(move || drop((source, sink))).await;
        result.map(|()| report)
    }

    async fn run_loop(&mut self, l: &mut Loop) -> Result<()> {
        let wake = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(wake);
        let mut control_open = true;
        loop {
            let now = Instant::now();
            let failures = self.stats.commit_failures();
            if failures != l.commit_failures_seen {
                // An async commit was refused: commit everything again next interval.
                l.commit_failures_seen = failures;
                self.engine.commits_lost();
            }
            self.engine.tick(now);
            let busy = self.perform(l).await;
            if l.final_commit.is_some() {
                return Ok(());
            }
            self.publish(l, now);
            if busy {
                // Actions are left over: look at the channels without waiting, then go on.
                tokio::task::yield_now().await;
            } else {
                let deadline = self
                    .engine
                    .next_deadline()
                    .unwrap_or(now + Duration::from_secs(3600));
                let deadline = tokio::time::Instant::from_std(deadline);
                if wake.deadline() != deadline {
                    wake.as_mut().reset(deadline);
                }
            }
            tokio::select! {
                Some(d) = l.done_rx.recv() => {
                    self.finished(d);
                    // Bounded: at most one completion per job in flight is queued anyway.
                    for _ in 0..ACTIONS_PER_PASS {
                        let Ok(d) = l.done_rx.try_recv() else { break };
                        self.finished(d);
                    }
                }
                ev = self.events.recv() => match ev {
                    Some(ev) => self.on_event(l, ev)?,
                    None => return Err(Error::Stopped("the poll thread ended".into())),
                },
                c = self.control.recv(), if control_open => match c {
                    Some(Control::Pause) => self.engine.set_user_paused(true),
                    Some(Control::Resume) => self.engine.set_user_paused(false),
                    Some(Control::Shutdown(mode)) => self.engine.shutdown(mode, Instant::now()),
                    // The handle is gone: nobody can ask for a shutdown any more, so do one.
                    None => {
                        control_open = false;
                        self.engine.shutdown(ShutdownMode::Quick, Instant::now());
                    }
                },
                () = &mut wake, if !busy => {}
                () = std::future::ready(()), if busy => {}
            }
        }
    }

    fn on_event(&mut self, l: &mut Loop, ev: Event) -> Result<()> {
        match ev {
            Event::Records(batch) => {
                l.last_records = Instant::now();
                self.engine.fetched(batch);
            }
            Event::Assigned(committed) => self.engine.assigned(committed)?,
            Event::Revoked {
                partitions,
                lost,
                at,
                reply,
            } => {
                l.revoke_reply = Some(reply);
                self.engine.revoked(partitions, lost, at);
            }
            Event::Fatal(e) => return Err(Error::Source(e)),
        }
        Ok(())
    }

    /// Performs up to [`ACTIONS_PER_PASS`] actions; true when more are left.
    async fn perform(&mut self, l: &mut Loop) -> bool {
        for _ in 0..ACTIONS_PER_PASS {
            let Some(action) = self.engine.next_action() else {
                return false;
            };
            match action {
                Action::Dispatch { id, records, work } => {
                    if let Some((result, elapsed)) = self.start(l, id, records, work) {
                        self.finished(Done {
                            id,
                            result,
                            elapsed,
                        });
                    }
                }
                Action::Pause(tps) => {
                    if let Err(e) = self.source.pause(&tps) {
                        tracing::warn!(error = %e, "pause failed");
                    }
                }
                Action::Resume(tps) => {
                    if let Err(e) = self.source.resume(&tps) {
                        tracing::warn!(error = %e, "resume failed");
                    }
                }
                Action::Commit(req) => {
                    self.stats.add_commits(1);
                    if let Err(e) = self.commit(&req, self.commit_mode).await {
                        tracing::warn!(error = %e, "commit failed; committed again next interval");
                        if self.commit_mode == CommitMode::Async {
                            // Not sent at all; the broker's answers (sync ones too) are
                            // counted by the poll thread.
                            self.stats.add_commit_failures(1);
                        }
                        self.engine.commit_failed(&req);
                    }
                }
                Action::FinishRevocation(req) => {
                    if !req.is_empty() {
                        self.stats.add_commits(1);
                        if let Err(e) = self.commit(&req, CommitMode::Sync).await {
                            tracing::warn!(error = %e, "final commit before revocation failed");
                        }
                    }
                    if let Some(reply) = l.revoke_reply.take() {
                        let _ = reply.send(());
                    }
                }
                Action::Stop(req) => {
                    l.final_commit = Some(req);
                    return false;
                }
            }
        }
        true
    }

    async fn commit(&self, req: &CommitRequest, mode: CommitMode) -> Result<()> {
        match mode {
            CommitMode::Sync => {
                let (sink, req) = (Arc::clone(&self.sink), req.clone());
                tokio::task::spawn_blocking(move || sink.commit(&req, CommitMode::Sync))
                    .await
                    .map_err(|e| Error::Stopped(format!("commit task: {e}")))?
                    .map_err(Error::Source)
            }
            _ => self.sink.commit(req, mode).map_err(Error::Source),
        }
    }

    fn finished(&mut self, d: Done) {
        self.metrics.handler_latency(d.elapsed);
        let outcome = match d.result {
            Ok(()) => crate::engine::Outcome::Ok,
            Err(e) => crate::engine::Outcome::Failed(e),
        };
        self.engine.finished(d.id, outcome, Instant::now());
    }

    /// Copies the engine's counters to the shared stats (every pass: a few atomic stores);
    /// metrics and progress every commit interval, and when the consumer goes idle.
    fn publish(&mut self, l: &mut Loop, now: Instant) {
        let c = self.engine.counters();
        self.stats.set_counters(&c);
        let (held, _) = self.engine.held();
        let paused = self.engine.partitions().filter(|p| p.3).count();
        self.stats
            .set_load(self.engine.running(), self.engine.waiting_records(), paused);
        // Caught up: partitions assigned, nothing held, everything handed to the sink, and the
        // source has delivered nothing for a commit interval.
        let idle = self.engine.is_idle()
            && self.engine.partitions().next().is_some()
            && now.duration_since(l.last_records) >= self.commit_interval;
        let (was_idle, was_assigned) = {
            let p = self.progress.borrow();
            (p.idle, p.assigned.len())
        };
        if now < l.next_publish
            && idle == was_idle
            && self.engine.partitions().count() == was_assigned
        {
            return;
        }
        l.next_publish = now + self.commit_interval;
        self.metrics.publish_totals(&self.stats.snapshot());
        for (tp, tracker, ratio, _) in self.engine.partitions() {
            self.metrics
                .publish_partition(&tp.topic, tp.partition, tracker, ratio);
        }
        let committed: BTreeMap<TopicPartition, Offset> = self
            .engine
            .committed()
            .map(|(tp, o)| (tp.clone(), Offset(o)))
            .collect();
        let settled = idle && self.engine.nothing_to_commit();
        let assigned: BTreeSet<TopicPartition> =
            self.engine.partitions().map(|p| p.0.clone()).collect();
        self.progress.send_if_modified(|p| {
            let next = Progress {
                assigned,
                committed,
                processed: c.processed,
                held: held as u64,
                idle: settled,
                stopped: false,
            };
            let changed = *p != next;
            *p = next;
            changed
        });
    }

    /// Commits the final offsets, stops the handler tasks and the poll thread, and reports.
    async fn finish(&mut self, l: &mut Loop, commit: bool) -> ShutdownReport {
        let mut committed = Vec::new();
        let mut not_committed = Vec::new();
        if let Some(reply) = l.revoke_reply.take() {
            let _ = reply.send(());
        }
        if let Some(req) = l.final_commit.take()
            && commit
            && !req.is_empty()
        {
            self.stats.add_commits(1);
            match self.commit(&req, CommitMode::Sync).await {
                Ok(()) => {
                    committed = req
                        .offsets
                        .iter()
                        .map(|c| (c.tp.clone(), c.offset))
                        .collect();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "final commit failed");
                    not_committed = req
                        .offsets
                        .iter()
                        .map(|c| (c.tp.clone(), c.offset, e.to_string()))
                        .collect();
                }
            }
        }
        // No handler outlives the consumer: whatever still runs (a timed-out shutdown, a
        // fatal error) is cancelled, and awaited.
        l.cancel.cancel();
        l.tasks.close();
        l.tasks.wait().await;
        let c = self.engine.counters();
        self.stats.set_counters(&c);
        self.metrics.publish_totals(&self.stats.snapshot());
        // Close the event channel first so a revocation during close cannot wait on us.
        self.events.close();
        while self.events.try_recv().is_ok() {}
        self.poller_stop
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(h) = self.poller.take() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        self.progress.send_modify(|p| {
            p.stopped = true;
            p.processed = c.processed;
        });
        ShutdownReport {
            processed: c.processed,
            left_unprocessed: c.left_unprocessed,
            committed,
            not_committed,
        }
    }
}
