//! The coordinator: one task that owns all scheduling and offset state.
//!
//! ```text
//!  poll events ──► buffer (scheduler lanes) ──► handler tasks (≤ max_concurrency)
//!                        ▲                              │ Done
//!                        └──── release / retry / dead-letter ◄┘
//!  every commit_interval: commit each partition's prefix + metadata, apply back-pressure
//! ```
//! Nothing here is shared: handler tasks only send `Done` back, so there are no locks.

mod jobs;
mod partitions;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use kbatch_client::{KafkaConsumer, OffsetCommit};
use kbatch_core::TopicPartition;
use kbatch_producer::Producer;
use tokio::sync::{mpsc, oneshot};

use crate::config::{ParallelConfig, ShutdownMode};
use crate::error::{Error, Result};
use crate::handler::{DeadLetterFn, Handler, RetryPolicy};
use crate::metrics::{Metrics, SharedStats};
use crate::poller::Event;
use crate::scheduler::{Job, Scheduler};
use jobs::{Done, Kind};
use partitions::Part;

/// Requests from the [`Running`](crate::Running) handle.
pub(crate) enum Control {
    Pause,
    Resume,
    Shutdown(ShutdownMode, oneshot::Sender<()>),
}

/// What a shutdown did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Records processed successfully over the consumer's life.
    pub processed: u64,
    /// Records left unprocessed (buffered or retrying at a quick or timed-out shutdown); the
    /// next owner of their partitions processes them.
    pub left_unprocessed: u64,
    /// The final commits, per partition.
    pub final_commits: Vec<(TopicPartition, i64)>,
}

struct PendingRevoke {
    partitions: Vec<TopicPartition>,
    reply: std::sync::mpsc::SyncSender<Vec<OffsetCommit>>,
    deadline: Instant,
}

struct Stopping {
    mode: ShutdownMode,
    deadline: Instant,
    reply: Option<oneshot::Sender<()>>,
}

pub(crate) struct Wiring {
    pub(crate) consumer: Arc<KafkaConsumer>,
    pub(crate) events: mpsc::Receiver<Event>,
    pub(crate) control: mpsc::Receiver<Control>,
    pub(crate) poller_stop: Arc<AtomicBool>,
    pub(crate) poller: std::thread::JoinHandle<()>,
}

pub(crate) struct Coordinator {
    cfg: ParallelConfig,
    handler: Handler,
    retry: Arc<dyn RetryPolicy>,
    dlq: Option<Producer>,
    dlq_callback: Option<DeadLetterFn>,
    /// `None` only after `finish` handed it to the poll thread to close.
    consumer: Option<Arc<KafkaConsumer>>,
    events: mpsc::Receiver<Event>,
    control: mpsc::Receiver<Control>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    poller_stop: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
    parts: HashMap<TopicPartition, Part>,
    next_epoch: u64,
    scheduler: Scheduler,
    running: HashMap<u64, (Job, Kind)>,
    waiting: HashMap<u64, (Job, Kind)>,
    retry_at: BinaryHeap<Reverse<(Instant, u64)>>,
    due: VecDeque<(u64, Job, Kind)>,
    next_id: u64,
    held_records: usize,
    held_bytes: usize,
    user_paused: bool,
    revoke: Option<PendingRevoke>,
    stopping: Option<Stopping>,
    left_unprocessed: u64,
    ticks: u64,
    /// Commit failures counted when the last commit was sent.
    commit_failures_seen: u64,
    stats: Arc<SharedStats>,
    metrics: Metrics,
}

impl Coordinator {
    #[allow(clippy::too_many_arguments, reason = "assembled once, by the builder")]
    pub(crate) fn new(
        cfg: ParallelConfig,
        handler: Handler,
        retry: Arc<dyn RetryPolicy>,
        dlq: Option<Producer>,
        dlq_callback: Option<DeadLetterFn>,
        wiring: Wiring,
        stats: Arc<SharedStats>,
    ) -> Self {
        // Every job sends exactly one Done: capacity for all in flight means no task waits.
        let (done_tx, done_rx) = mpsc::channel(cfg.max_concurrency + 16);
        let metrics = Metrics::new(cfg.kafka.group_id.as_deref().unwrap_or_default());
        Self {
            scheduler: Scheduler::new(cfg.ordering),
            handler,
            retry,
            dlq,
            dlq_callback,
            consumer: Some(wiring.consumer),
            events: wiring.events,
            control: wiring.control,
            done_tx,
            done_rx,
            poller_stop: wiring.poller_stop,
            poller: Some(wiring.poller),
            parts: HashMap::new(),
            next_epoch: 0,
            running: HashMap::new(),
            waiting: HashMap::new(),
            retry_at: BinaryHeap::new(),
            due: VecDeque::new(),
            next_id: 0,
            held_records: 0,
            held_bytes: 0,
            user_paused: false,
            revoke: None,
            stopping: None,
            left_unprocessed: 0,
            ticks: 0,
            commit_failures_seen: 0,
            stats,
            metrics,
            cfg,
        }
    }

    /// Runs until shutdown (or a fatal error), then commits, stops the poll thread and reports.
    pub(crate) async fn run(mut self) -> Result<ShutdownReport> {
        let result = self.run_loop().await;
        let report = self.finish(result.is_ok()).await;
        result.map(|()| report)
    }

    /// The loop. Every pass first does what is due by the clock — commits, retries, the
    /// revocation and shutdown deadlines — and only then waits for whichever comes first:
    /// a finished handler, a poll event, a control request or the next deadline. The wait is
    /// unbiased and every pass does bounded work, so however busy one source is, a deadline
    /// is late by at most one pass and no source starves another (issue 7: a `biased` select
    /// that always found a finished handler never committed while the consumer was busy).
    async fn run_loop(&mut self) -> Result<()> {
        let mut next_commit = Instant::now() + self.cfg.commit_interval;
        let wake = tokio::time::sleep_until(tokio::time::Instant::from_std(next_commit));
        tokio::pin!(wake);
        loop {
            let now = Instant::now();
            if now >= next_commit {
                self.on_tick().await;
                // A commit that took longer than the interval is not followed by a burst.
                next_commit = (next_commit + self.cfg.commit_interval).max(Instant::now());
            }
            self.release_due(now);
            if self.revoke.as_ref().is_some_and(|r| now >= r.deadline) {
                self.finish_revoke();
            }
            if self.stopping.as_ref().is_some_and(|s| now >= s.deadline) {
                tracing::warn!("shutdown timeout: stopping with work unfinished");
                return Ok(());
            }
            self.dispatch();
            self.finish_revoke_if_ready();
            if self.stop_ready() {
                return Ok(());
            }
            let deadline = [
                Some(next_commit),
                self.retry_at.peek().map(|Reverse((t, _))| *t),
                self.revoke.as_ref().map(|r| r.deadline),
                self.stopping.as_ref().map(|s| s.deadline),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_commit);
            let deadline = tokio::time::Instant::from_std(deadline);
            if wake.deadline() != deadline {
                wake.as_mut().reset(deadline);
            }
            tokio::select! {
                Some(d) = self.done_rx.recv() => {
                    self.on_done(d);
                    // Bounded: at most one completion per job in flight is queued anyway.
                    for _ in 0..self.cfg.max_concurrency {
                        let Ok(d) = self.done_rx.try_recv() else { break };
                        self.on_done(d);
                    }
                }
                ev = self.events.recv() => match ev {
                    Some(ev) => self.on_event(ev)?,
                    None => return Err(Error::Stopped("the poll thread ended".into())),
                },
                Some(c) = self.control.recv() => self.on_control(c),
                () = &mut wake => {}
            }
        }
    }

    fn on_event(&mut self, ev: Event) -> Result<()> {
        match ev {
            Event::Records(batch) => {
                for r in batch {
                    self.on_record(r);
                }
                self.apply_pressure();
            }
            Event::Assigned(committed) => {
                for c in committed {
                    self.assign(c)?;
                }
                self.apply_pressure();
            }
            Event::Fatal(e) => return Err(Error::Client(e)),
            Event::Revoked {
                partitions,
                lost,
                at,
                reply,
            } => self.start_revoke(partitions, lost, at, reply),
        }
        Ok(())
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Pause => self.user_paused = true,
            Control::Resume => self.user_paused = false,
            Control::Shutdown(mode, reply) => {
                if mode == ShutdownMode::Quick {
                    let dropped = self.scheduler.clear();
                    self.left_unprocessed += dropped.len() as u64;
                    self.unhold(&dropped);
                    let retrying: Vec<Job> = self
                        .waiting
                        .drain()
                        .map(|(_, (job, _))| job)
                        .chain(self.due.drain(..).map(|(_, job, _)| job))
                        .collect();
                    for job in retrying {
                        self.left_unprocessed += job.works.len() as u64;
                        self.unhold(&job.works);
                    }
                    self.retry_at.clear();
                }
                self.stopping = Some(Stopping {
                    mode,
                    deadline: Instant::now() + self.cfg.shutdown_timeout,
                    reply: Some(reply),
                });
            }
        }
        self.apply_pressure();
    }

    fn stop_ready(&self) -> bool {
        let Some(s) = &self.stopping else {
            return false;
        };
        let idle = self.running.is_empty();
        match s.mode {
            ShutdownMode::Quick => idle,
            ShutdownMode::Drain => {
                idle && self.scheduler.buffered() == 0
                    && self.waiting.is_empty()
                    && self.due.is_empty()
            }
        }
    }

    async fn on_tick(&mut self) {
        self.ticks += 1;
        // Re-send unchanged commits after an asynchronous one failed (the poll thread counts
        // the broker's answers), and now and then in any case.
        let failures = self.stats.snapshot().commit_failures;
        let force = self.ticks.is_multiple_of(25) || failures != self.commit_failures_seen;
        self.commit_failures_seen = failures;
        self.commit(force, false).await;
        for p in self.parts.values_mut() {
            p.update_metadata_pressure(self.cfg.metadata_limit);
        }
        self.apply_pressure();
        self.publish();
    }

    /// Commits every partition's prefix and metadata (only changed ones unless `force`).
    async fn commit(&mut self, force: bool, sync: bool) -> Vec<(TopicPartition, i64)> {
        let limit = self.cfg.metadata_limit;
        let revoking: Vec<TopicPartition> = self
            .revoke
            .as_ref()
            .map(|r| r.partitions.clone())
            .unwrap_or_default();
        let mut commits = Vec::new();
        for (tp, p) in &mut self.parts {
            if revoking.contains(tp) {
                continue;
            }
            let c = if force {
                p.tracker.commit(limit)
            } else {
                p.tracker.commit_if_changed(limit)
            };
            if let Some((offset, meta)) = c {
                commits.push(OffsetCommit {
                    tp: tp.clone(),
                    offset: kbatch_core::Offset(offset),
                    metadata: (!meta.is_empty()).then_some(meta),
                });
            }
        }
        if commits.is_empty() {
            return Vec::new();
        }
        let done: Vec<(TopicPartition, i64)> =
            commits.iter().map(|c| (c.tp.clone(), c.offset.0)).collect();
        let sync = sync || self.cfg.commit_mode == crate::config::CommitMode::Sync;
        self.stats.add_commits(1);
        let Some(consumer) = self.consumer.clone() else {
            return Vec::new();
        };
        let result = if sync {
            let list = commits;
            tokio::task::spawn_blocking(move || consumer.commit(&list, true))
                .await
                .unwrap_or_else(|e| {
                    Err(kbatch_client::Error::Invalid {
                        what: "commit task".into(),
                        why: e.to_string(),
                    })
                })
        } else {
            consumer.commit(&commits, false)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "commit failed; retried next interval");
            if !sync {
                // Not sent at all; the broker's answers (sync ones too) are counted by the
                // poll thread.
                self.stats.add_commit_failures(1);
            }
            for (tp, _) in &done {
                if let Some(p) = self.parts.get_mut(tp) {
                    p.tracker.forget_last_commit();
                }
            }
        }
        done
    }

    fn publish(&self) {
        let waiting = self
            .held_records
            .saturating_sub(self.running.values().map(|(j, _)| j.works.len()).sum());
        let paused = self.parts.values().filter(|p| p.paused).count();
        self.stats.set_waiting(waiting, paused);
        self.metrics.publish_totals(&self.stats.snapshot());
        for (tp, p) in &self.parts {
            let ratio = p.metadata_len as f64 / self.cfg.metadata_limit as f64;
            self.metrics
                .publish_partition(&tp.topic, tp.partition, &p.tracker, ratio);
        }
    }

    /// Stops the poll thread and commits one last time.
    async fn finish(&mut self, commit: bool) -> ShutdownReport {
        let final_commits = if commit {
            self.commit(true, true).await
        } else {
            Vec::new()
        };
        self.publish();
        // Close the event channel first so a revocation during close cannot wait on us.
        self.events.close();
        while self.events.try_recv().is_ok() {}
        self.poller_stop
            .store(true, std::sync::atomic::Ordering::Release);
        self.consumer = None;
        if let Some(h) = self.poller.take() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        if let Some(reply) = self.stopping.as_mut().and_then(|s| s.reply.take()) {
            let _ = reply.send(());
        }
        let left = self.left_unprocessed
            + self.scheduler.buffered() as u64
            + self
                .waiting
                .values()
                .map(|(j, _)| j.works.len() as u64)
                .sum::<u64>();
        ShutdownReport {
            processed: self.stats.snapshot().processed,
            left_unprocessed: left,
            final_commits,
        }
    }
}
