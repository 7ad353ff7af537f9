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
use tokio::sync::{mpsc, oneshot, watch};
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
    /// Per assigned partition, the offset the offset sink last confirmed as committed (a
    /// commit still being made shows once it is answered).
    pub committed: BTreeMap<TopicPartition, Offset>,
    /// Records processed successfully so far.
    pub processed: u64,
    /// Records held: buffered, running or waiting to retry.
    pub held: u64,
    /// Caught up: partitions are assigned, nothing is held, every completed record's offset
    /// was committed (confirmed by the sink), and the source delivered nothing new for a
    /// commit interval.
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
    /// Bounds on the commits a revocation and a shutdown wait for: a broker that is gone must
    /// not hold a rebalance or a shutdown longer than their own timeouts.
    pub(crate) revoke_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
}

/// Per-run state of the driver.
struct Loop {
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    revoke_reply: Option<std::sync::mpsc::SyncSender<()>>,
    /// The periodic commit being made on a thread of its own (with `CommitMode::Async`), and
    /// since when.
    committing: Option<oneshot::Receiver<(CommitRequest, Result<()>)>>,
    commit_started: Instant,
    /// Periodic commits handed out while one was being made, merged per partition.
    pending_commit: BTreeMap<TopicPartition, kbatch_core::OffsetCommit>,
    /// The offsets the sink confirmed, per partition (what `Progress::committed` shows).
    confirmed: BTreeMap<TopicPartition, Offset>,
    /// When a shutdown must be over (set when one is asked for).
    shutdown_by: Option<Instant>,
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
            committing: None,
            commit_started: Instant::now(),
            pending_commit: BTreeMap::new(),
            confirmed: BTreeMap::new(),
            shutdown_by: None,
            last_records: Instant::now(),
            next_publish: Instant::now(),
            final_commit: None,
        };
        let result = match self.check_dead_letter_topic().await {
            Ok(()) => self.run_loop(&mut l).await,
            Err(e) => Err(e),
        };
        let report = self.finish(&mut l, result.is_ok()).await;
        // The poll thread has ended: these are the last handles on the client (unless a commit
        // still waits for a broker that is gone), whose close blocks — a final rebalance, the
        // group leave — so it runs on a thread of its own, waited for a bounded time.
        let (source, sink) = (self.source, self.sink);
        let bound = self.shutdown_timeout.max(Duration::from_secs(5));
        if on_thread("kbatch-consumer-close", bound, move || drop((source, sink)))
            .await
            .is_none()
        {
            tracing::warn!("the Kafka client did not close within {bound:?}; leaving it to finish");
        }
        result.map(|()| report)
    }

    async fn run_loop(&mut self, l: &mut Loop) -> Result<()> {
        let wake = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(wake);
        let mut control_open = true;
        loop {
            let now = Instant::now();
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
                    Some(Control::Shutdown(mode)) => self.shut_down(l, mode),
                    // The handle is gone: nobody can ask for a shutdown any more, so do one.
                    None => {
                        control_open = false;
                        self.shut_down(l, ShutdownMode::Quick);
                    }
                },
                done = async { l.committing.as_mut().expect("guarded").await }, if l.committing.is_some() => {
                    l.committing = None;
                    if let Ok((req, result)) = done {
                        self.committed(l, &req, result);
                    }
                    self.start_commit(l);
                }
                () = &mut wake, if !busy => {}
                () = std::future::ready(()), if busy => {}
            }
        }
    }

    fn shut_down(&mut self, l: &mut Loop, mode: ShutdownMode) {
        let now = Instant::now();
        l.shutdown_by.get_or_insert(now + self.shutdown_timeout);
        self.engine.shutdown(mode, now);
    }

    fn on_event(&mut self, l: &mut Loop, ev: Event) -> Result<()> {
        match ev {
            Event::Records(batch) => {
                l.last_records = Instant::now();
                self.engine.fetched(batch);
            }
            Event::Assigned(committed) => {
                // What the group had committed is where this owner's confirmed offsets start.
                for c in &committed {
                    match c.offset {
                        Some(o) => l.confirmed.insert(c.tp.clone(), o),
                        None => l.confirmed.remove(&c.tp),
                    };
                }
                self.engine.assigned(committed)?;
            }
            Event::Revoked {
                partitions,
                lost,
                at,
                reply,
            } => {
                if lost {
                    tracing::warn!(
                        ?partitions,
                        "partitions lost (the group moved them without a revocation): what finished since their last commit will be processed again by their next owner"
                    );
                }
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
                    if self.commit_mode == CommitMode::Sync {
                        // Waits for each; a broker gone longer than a commit interval and a
                        // half is a failed commit, made again next time.
                        let bound = self
                            .commit_interval
                            .mul_f32(1.5)
                            .max(Duration::from_secs(5));
                        let result = self.commit_within(&req, bound).await;
                        self.committed(l, &req, result);
                    } else {
                        for c in req.offsets {
                            l.pending_commit.insert(c.tp.clone(), c);
                        }
                        self.start_commit(l);
                    }
                }
                Action::FinishRevocation(req) => {
                    let bound = self.revoke_timeout.max(Duration::from_secs(2));
                    // A periodic commit under way may hold older offsets of these
                    // partitions: it must land first, not overwrite this one.
                    let failed = self.settle_commit(l, bound).await;
                    let req = with_unconfirmed(l, req, failed);
                    if !req.is_empty()
                        && let Err(e) = self.commit_now(l, &req, bound).await
                    {
                        tracing::warn!(error = %e, "final commit before revocation failed; the next owner starts from the previous one");
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

    /// Starts the pending periodic commits on a thread of its own unless one is being made.
    /// A commit is made synchronously there, so its outcome — refused, or waiting for a
    /// coordinator that is gone — comes back to the driver (librdkafka does not report the
    /// outcome of asynchronous manual commits to an event-based client); the driver does not
    /// wait for it. Not the runtime's blocking pool: a commit that waits for a broker that
    /// never returns must not hold the runtime's shutdown.
    fn start_commit(&mut self, l: &mut Loop) {
        if l.committing.is_some() || l.pending_commit.is_empty() {
            return;
        }
        let offsets = std::mem::take(&mut l.pending_commit)
            .into_values()
            .collect();
        let req = CommitRequest::new(offsets, kbatch_core::CommitReason::Periodic);
        let sink = Arc::clone(&self.sink);
        let (tx, rx) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("kbatch-consumer-commit".into())
            .spawn(move || {
                let result = sink.commit(&req, CommitMode::Sync).map_err(Error::Source);
                let _ = tx.send((req, result));
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a commit thread; committed again next interval");
            self.engine.commits_not_made();
            return;
        }
        l.commit_started = Instant::now();
        l.committing = Some(rx);
    }

    /// Waits (up to `bound`) for the periodic commit under way, taking in its outcome; returns
    /// it when it failed.
    async fn settle_commit(&mut self, l: &mut Loop, bound: Duration) -> Option<CommitRequest> {
        let rx = l.committing.take()?;
        let Ok(Ok((req, result))) = tokio::time::timeout(bound, rx).await else {
            return None;
        };
        let failed = result.is_err();
        self.committed(l, &req, result);
        failed.then_some(req)
    }

    /// A periodic commit's outcome: counted; a failed one is made again next interval.
    fn committed(&mut self, l: &mut Loop, req: &CommitRequest, result: Result<()>) {
        self.count_commit(l, req, &result);
        if let Err(e) = result {
            tracing::warn!(error = %e, "commit failed; committed again next interval");
            self.engine.commit_failed(req);
        }
    }

    /// Counts a commit and its outcome; what the sink confirmed is what
    /// `Progress::committed` shows.
    fn count_commit(&mut self, l: &mut Loop, req: &CommitRequest, result: &Result<()>) {
        self.stats.add_commits(1);
        match result {
            Ok(()) => {
                for c in &req.offsets {
                    l.confirmed.insert(c.tp.clone(), c.offset);
                }
            }
            Err(_) => self.stats.add_commit_failures(1),
        }
    }

    /// A revocation's or the final commit: made now, waited for up to `bound`, counted.
    async fn commit_now(
        &mut self,
        l: &mut Loop,
        req: &CommitRequest,
        bound: Duration,
    ) -> Result<()> {
        let result = self.commit_within(req, bound).await;
        self.count_commit(l, req, &result);
        result
    }

    /// A synchronous commit on a thread of its own that is given up after `bound` (the call
    /// may go on, but nobody waits for it).
    async fn commit_within(&self, req: &CommitRequest, bound: Duration) -> Result<()> {
        let (sink, req) = (Arc::clone(&self.sink), req.clone());
        on_thread("kbatch-consumer-commit", bound, move || {
            sink.commit(&req, CommitMode::Sync)
        })
        .await
        .unwrap_or_else(|| {
            Err(kbatch_core::SourceError::new(
                kbatch_core::ErrorClass::Retriable,
                format!("commit not confirmed within {bound:?}"),
            ))
        })
        .map_err(Error::Source)
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
        self.stats.set_commit_pending(if l.committing.is_some() {
            now.saturating_duration_since(l.commit_started)
        } else {
            Duration::ZERO
        });
        let (held, _) = self.engine.held();
        let paused = self.engine.partitions().filter(|p| p.3).count();
        self.stats
            .set_load(self.engine.running(), self.engine.waiting_records(), paused);
        // Caught up: partitions assigned, nothing held, everything handed to the sink, and the
        // source has delivered nothing for a commit interval.
        let idle = self.engine.is_idle()
            && self.engine.partitions().next().is_some()
            && now.duration_since(l.last_records) >= self.commit_interval;
        let settled_now = idle && l.committing.is_none() && l.pending_commit.is_empty();
        let (was_idle, was_assigned) = {
            let p = self.progress.borrow();
            (p.idle, p.assigned.len())
        };
        if now < l.next_publish
            && settled_now == was_idle
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
        let assigned: BTreeSet<TopicPartition> =
            self.engine.partitions().map(|p| p.0.clone()).collect();
        let committed: BTreeMap<TopicPartition, Offset> = l
            .confirmed
            .iter()
            .filter(|(tp, _)| assigned.contains(*tp))
            .map(|(tp, o)| (tp.clone(), *o))
            .collect();
        // Settled once the sink has confirmed it all, not when it was asked.
        let settled = idle
            && self.engine.nothing_to_commit()
            && l.committing.is_none()
            && l.pending_commit.is_empty();
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
            // What is left of the shutdown's time, but a moment at least for the round trip.
            let by = l
                .shutdown_by
                .unwrap_or_else(|| Instant::now() + self.shutdown_timeout);
            let bound = by
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1));
            let failed = self.settle_commit(l, bound).await;
            let req = with_unconfirmed(l, req, failed);
            match self.commit_now(l, &req, bound).await {
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
            // It ends within one poll (50 ms) once told to, unless a callback blocks it.
            let bound = self.shutdown_timeout.max(Duration::from_secs(5));
            if on_thread("kbatch-consumer-join", bound, move || h.join())
                .await
                .is_none()
            {
                tracing::warn!("the poll thread did not end within {bound:?}");
            }
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

/// Runs the blocking `f` on a thread of its own, and returns its result, or `None` if it did
/// not finish within `bound` — then it is left to finish alone. Calls into the client that
/// can wait for a broker (commits, close) run this way: the runtime's blocking pool would make
/// the runtime's shutdown wait for them.
async fn on_thread<T: Send + 'static>(
    name: &str,
    bound: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .ok()?;
    tokio::time::timeout(bound, rx).await.ok()?.ok()
}

/// The commit that ends a revocation or the consumer: `req`, plus the periodic commits not yet
/// confirmed (queued behind another, or failed just now) for partitions `req` leaves out. The
/// engine counts those as asked for and leaves them out of `req`; without them the next owner
/// would start before them and redo what they cover, and a queued one sent later would
/// overwrite the next owner's progress with an older offset.
fn with_unconfirmed(
    l: &mut Loop,
    mut req: CommitRequest,
    failed: Option<CommitRequest>,
) -> CommitRequest {
    let pending = std::mem::take(&mut l.pending_commit);
    // Newest wins: a failed one is older than a queued one, which is older than `req`.
    let mut older: BTreeMap<TopicPartition, kbatch_core::OffsetCommit> = BTreeMap::new();
    for c in failed.into_iter().flat_map(|f| f.offsets) {
        older.insert(c.tp.clone(), c);
    }
    older.extend(pending);
    for c in &req.offsets {
        older.remove(&c.tp);
    }
    req.offsets.extend(older.into_values());
    req
}
