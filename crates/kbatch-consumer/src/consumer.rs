//! The public API: build, start, watch progress, pause, resume, shut down.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use kbatch_client::KafkaConsumer;
use kbatch_core::{ConsumedRecord, OffsetSink, RecordSource};
use kbatch_producer::{Producer, ProducerConfig};
use tokio::sync::{mpsc, watch};

use crate::config::{ParallelConfig, ShutdownMode};
use crate::driver::poller::{self, Listener};
use crate::driver::{Control, DeadLetter, Driver, Progress, ShutdownReport};
use crate::engine::{Engine, Settings};
use crate::error::{Error, Result};
use crate::handler::{
    Batch, BatchHandler, Blocking, DeadLetterFn, ExponentialBackoff, Handler, HandlerError,
    HandlerResult, One, Process, RetryPolicy,
};
use crate::metrics::{ConsumerStats, Metrics, SharedStats};

/// A consumer that processes the records of each partition concurrently, in the configured
/// order, acknowledging each record individually. Build one with [`ParallelConsumer::builder`].
pub struct ParallelConsumer {
    cfg: ParallelConfig,
    process: Arc<dyn Process>,
    batch_size: usize,
    retry: Arc<dyn RetryPolicy>,
    dlq_callback: Option<DeadLetterFn>,
    seams: Option<(Arc<dyn RecordSource>, Arc<dyn OffsetSink>)>,
}

impl std::fmt::Debug for ParallelConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelConsumer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Assembles a [`ParallelConsumer`].
#[must_use = "a builder does nothing until build() and start()"]
pub struct Builder {
    cfg: ParallelConfig,
    process: Option<(Arc<dyn Process>, usize)>,
    retry: Arc<dyn RetryPolicy>,
    dlq_callback: Option<DeadLetterFn>,
    seams: Option<(Arc<dyn RecordSource>, Arc<dyn OffsetSink>)>,
}

impl ParallelConsumer {
    /// Starts building a consumer with `config`.
    pub fn builder(config: ParallelConfig) -> Builder {
        Builder {
            cfg: config,
            process: None,
            retry: Arc::new(ExponentialBackoff::default()),
            dlq_callback: None,
            seams: None,
        }
    }

    /// Joins the group and starts processing, on the current tokio runtime.
    pub fn start(self) -> Result<Running> {
        let dead_letter = match (&self.cfg.dead_letter_topic, self.dlq_callback) {
            (_, Some(cb)) => DeadLetter::Callback(cb),
            (Some(topic), None) => {
                let p = ProducerConfig::new(self.cfg.kafka.client.clone());
                let p = Producer::new(p).map_err(|e| Error::DeadLetter(e.to_string()))?;
                DeadLetter::Topic(p, topic.clone(), self.cfg.kafka.client.clone())
            }
            (None, None) => DeadLetter::Skip,
        };
        let (source, sink) = match self.seams {
            Some(s) => s,
            None => {
                let c = Arc::new(KafkaConsumer::new(&self.cfg.effective_kafka())?);
                (
                    Arc::clone(&c) as Arc<dyn RecordSource>,
                    c as Arc<dyn OffsetSink>,
                )
            }
        };
        let stats = Arc::new(SharedStats::default());
        let (events_tx, events) = mpsc::channel(poller::CHANNEL_BATCHES);
        let listener = Arc::new(Listener {
            tx: events_tx.clone(),
            // The driver replies by the revoke deadline, late by one pass at most; this wait
            // only guards against a driver that stopped answering.
            revoke_wait: self.cfg.revoke_timeout + std::time::Duration::from_secs(30),
        });
        let topics: Vec<&str> = self.cfg.topics.iter().map(String::as_str).collect();
        source.subscribe(&topics, listener).map_err(Error::Source)?;
        let poller_stop = Arc::new(AtomicBool::new(false));
        let batch = poller::batch_size(self.cfg.max_records);
        let poller = poller::spawn(
            Arc::clone(&source),
            events_tx,
            Arc::clone(&poller_stop),
            batch,
        )
        .map_err(|e| Error::Stopped(format!("cannot start the poll thread: {e}")))?;
        let (control_tx, control) = mpsc::channel(16);
        let (progress_tx, progress) = watch::channel(Progress::default());
        let dead_letter_target = !matches!(dead_letter, DeadLetter::Skip);
        let settings = Settings::new(&self.cfg, self.batch_size, dead_letter_target, self.retry);
        let driver = Driver {
            engine: Engine::new(settings, Instant::now()),
            process: self.process,
            dead_letter,
            source,
            sink,
            commit_mode: self.cfg.commit_mode,
            events,
            control,
            poller_stop,
            poller: Some(poller),
            metrics: Metrics::new(self.cfg.kafka.group_id.as_deref().unwrap_or_default()),
            stats: Arc::clone(&stats),
            progress: progress_tx,
            commit_interval: self.cfg.commit_interval,
            revoke_timeout: self.cfg.revoke_timeout,
            shutdown_timeout: self.cfg.shutdown_timeout,
        };
        let task = tokio::spawn(driver.run(self.cfg.max_concurrency));
        Ok(Running {
            control: control_tx,
            task: Some(task),
            stats,
            progress,
        })
    }
}

impl Builder {
    /// Processes each record with an async closure, `|record| async move { … }`. Thousands
    /// may be in flight.
    pub fn handler<F, Fut>(self, f: F) -> Self
    where
        F: Fn(ConsumedRecord) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.with_handler(f)
    }

    /// Processes each record with a [`Handler`] of yours: its state is shared through
    /// `&self`, cloned by no one.
    pub fn with_handler(mut self, handler: impl Handler) -> Self {
        self.process = Some((Arc::new(One(handler)), 1));
        self
    }

    /// Processes each record with a blocking function, on the runtime's blocking pool.
    pub fn blocking_handler<F>(mut self, f: F) -> Self
    where
        F: Fn(ConsumedRecord) -> HandlerResult + Send + Sync + 'static,
    {
        self.process = Some((Arc::new(Blocking(Arc::new(f))), 1));
        self
    }

    /// Processes up to `batch_size` records at a time with an async closure over
    /// `Vec<ConsumedRecord>`; a batch respects the ordering (records of one key or partition
    /// appear in offset order) and succeeds or fails as a whole.
    pub fn batch_handler<F, Fut>(self, batch_size: usize, f: F) -> Self
    where
        F: Fn(Vec<ConsumedRecord>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.with_batch_handler(batch_size, f)
    }

    /// [`Builder::batch_handler`] with a [`BatchHandler`] of yours.
    pub fn with_batch_handler(mut self, batch_size: usize, handler: impl BatchHandler) -> Self {
        self.process = Some((Arc::new(Batch(handler)), batch_size.max(1)));
        self
    }

    /// Sets the retry delay policy (default: [`ExponentialBackoff::default`]).
    pub fn retry_policy(mut self, p: impl RetryPolicy) -> Self {
        self.retry = Arc::new(p);
        self
    }

    /// Hands records that failed for good to `f` (record, last error, attempts) instead of a
    /// dead-letter topic; the record is done once `f` returns `Ok`.
    pub fn dead_letter_callback<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ConsumedRecord, HandlerError, u32) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.dlq_callback = Some(Arc::new(move |r, e, n| Box::pin(f(r, e, n))));
        self
    }

    /// Reads from `source` and commits to `sink` instead of a Kafka consumer built from the
    /// config's `kafka` settings: an in-memory source for tests without a broker, or any other
    /// source of records. `kafka.group_id` still names the consumer in metrics.
    pub fn source(mut self, source: Arc<dyn RecordSource>, sink: Arc<dyn OffsetSink>) -> Self {
        self.seams = Some((source, sink));
        self
    }

    /// Validates the config and checks a handler was set.
    pub fn build(self) -> Result<ParallelConsumer> {
        self.cfg.validate()?;
        let (process, batch_size) = self.process.ok_or(Error::NoHandler)?;
        Ok(ParallelConsumer {
            cfg: self.cfg,
            process,
            batch_size,
            retry: self.retry,
            dlq_callback: self.dlq_callback,
            seams: self.seams,
        })
    }

    /// [`Builder::build`], then [`ParallelConsumer::start`].
    pub fn start(self) -> Result<Running> {
        self.build()?.start()
    }
}

/// A started consumer. Dropping it shuts the consumer down (quick mode: in-flight records
/// finish, then the final commit) — with a warning, since `shutdown` reports what happened.
#[must_use = "dropping a Running shuts the consumer down at once; keep it and call shutdown()"]
pub struct Running {
    control: mpsc::Sender<Control>,
    /// `None` once shut down or joined.
    task: Option<tokio::task::JoinHandle<Result<ShutdownReport>>>,
    stats: Arc<SharedStats>,
    progress: watch::Receiver<Progress>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Stops taking new records from every partition (in-flight and buffered work continues).
    pub async fn pause(&self) {
        let _ = self.control.send(Control::Pause).await;
    }

    /// Undoes [`Running::pause`].
    pub async fn resume(&self) {
        let _ = self.control.send(Control::Resume).await;
    }

    /// Current counters.
    pub fn stats(&self) -> ConsumerStats {
        self.stats.snapshot()
    }

    /// Where processing stands; `changed()` on the receiver wakes when it moves on (at most
    /// every commit interval, and when the consumer goes idle or stops).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits until the consumer has caught up — partitions assigned, no record buffered,
    /// running or waiting to retry, every completed record's offset handed to the offset sink,
    /// and nothing new from the source for a commit interval — or until it stops. Records
    /// arriving later start a new busy period.
    ///
    /// # Cancellation
    /// Cancel-safe: it only watches.
    pub async fn until_idle(&self) -> Progress {
        self.wait_for(|p| p.idle).await
    }

    /// Waits until `f` holds for the progress (or the consumer stops), and returns it.
    ///
    /// # Cancellation
    /// Cancel-safe: it only watches.
    pub async fn wait_for(&self, mut f: impl FnMut(&Progress) -> bool) -> Progress {
        let mut rx = self.progress.clone();
        let result = rx.wait_for(|p| p.stopped || f(p)).await.map(|p| p.clone());
        result.unwrap_or_else(|_| self.progress.borrow().clone())
    }

    /// True once the consumer stopped (after a shutdown or a fatal error).
    pub fn is_finished(&self) -> bool {
        self.task
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
    }

    /// Finishes work as `mode` says (bounded by `shutdown_timeout`), commits, leaves the group,
    /// and reports what was committed and what was not.
    pub async fn shutdown(mut self, mode: ShutdownMode) -> Result<ShutdownReport> {
        let _ = self.control.send(Control::Shutdown(mode)).await;
        self.join_inner().await
    }

    /// Waits until the consumer stops on its own (a fatal error, e.g. unreadable metadata).
    pub async fn join(mut self) -> Result<ShutdownReport> {
        self.join_inner().await
    }

    async fn join_inner(&mut self) -> Result<ShutdownReport> {
        let Some(task) = self.task.take() else {
            return Err(Error::Stopped("already joined".into()));
        };
        task.await.map_err(|e| Error::Stopped(e.to_string()))?
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.task.as_ref().is_some_and(|t| !t.is_finished()) {
            tracing::warn!(
                "parallel consumer handle dropped without shutdown(): shutting down (quick)"
            );
            let _ = self
                .control
                .try_send(Control::Shutdown(ShutdownMode::Quick));
        }
    }
}
