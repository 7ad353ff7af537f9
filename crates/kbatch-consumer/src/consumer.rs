//! The public API: build, start, pause, resume, shut down.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use kbatch_client::{KafkaConsumer, KafkaProducerConfig};
use kbatch_core::ConsumedRecord;
use kbatch_producer::{Producer, ProducerConfig};
use tokio::sync::{mpsc, oneshot};

use crate::config::{ParallelConfig, ShutdownMode};
use crate::coordinator::{Control, Coordinator, ShutdownReport, Wiring};
use crate::error::{Error, Result};
use crate::handler::{
    DeadLetterFn, ExponentialBackoff, Handler, HandlerError, HandlerResult, RetryPolicy,
};
use crate::metrics::{ConsumerStats, SharedStats};
use crate::poller::{self, Listener};

/// A consumer that processes the records of each partition concurrently, in the configured
/// order, acknowledging each record individually. Build one with [`ParallelConsumer::builder`].
pub struct ParallelConsumer {
    cfg: ParallelConfig,
    handler: Handler,
    retry: Arc<dyn RetryPolicy>,
    dlq_callback: Option<DeadLetterFn>,
}

/// Assembles a [`ParallelConsumer`].
pub struct Builder {
    cfg: ParallelConfig,
    handler: Option<Handler>,
    retry: Arc<dyn RetryPolicy>,
    dlq_callback: Option<DeadLetterFn>,
}

impl ParallelConsumer {
    /// Starts building a consumer with `config`.
    pub fn builder(config: ParallelConfig) -> Builder {
        Builder {
            cfg: config,
            handler: None,
            retry: Arc::new(ExponentialBackoff::default()),
            dlq_callback: None,
        }
    }

    /// Joins the group and starts processing, on the current tokio runtime.
    pub fn start(self) -> Result<Running> {
        let dlq = match &self.cfg.dead_letter_topic {
            Some(_) if self.dlq_callback.is_none() => {
                let p = ProducerConfig::default()
                    .with_kafka(KafkaProducerConfig::new(self.cfg.kafka.client.clone()));
                Some(Producer::new(p).map_err(|e| Error::DeadLetter(e.to_string()))?)
            }
            _ => None,
        };
        let (events_tx, events) = mpsc::channel(16);
        let stats = Arc::new(SharedStats::default());
        let listener = Arc::new(Listener {
            stats: Arc::clone(&stats),
            tx: events_tx.clone(),
            // The coordinator replies by the revoke deadline, late by one loop pass at most;
            // this wait only guards against a coordinator that stopped answering.
            revoke_wait: self.cfg.revoke_timeout + std::time::Duration::from_secs(30),
        });
        let consumer = Arc::new(KafkaConsumer::with_listener(
            &self.cfg.effective_kafka(),
            listener,
        )?);
        let topics: Vec<&str> = self.cfg.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let poller_stop = Arc::new(AtomicBool::new(false));
        let poller = poller::spawn(Arc::clone(&consumer), events_tx, Arc::clone(&poller_stop))
            .map_err(|e| Error::Stopped(format!("cannot start the poll thread: {e}")))?;
        let (control_tx, control) = mpsc::channel(16);
        let wiring = Wiring {
            consumer,
            events,
            control,
            poller_stop,
            poller,
        };
        let coordinator = Coordinator::new(
            self.cfg,
            self.handler,
            self.retry,
            dlq,
            self.dlq_callback,
            wiring,
            Arc::clone(&stats),
        );
        let task = tokio::spawn(coordinator.run());
        Ok(Running {
            control: control_tx,
            task,
            stats,
        })
    }
}

impl Builder {
    /// Processes each record with an async function (thousands may be in flight).
    #[must_use]
    pub fn handler<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ConsumedRecord) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handler = Some(Handler::from_async(f));
        self
    }

    /// Processes each record with a blocking function, on the runtime's blocking pool.
    #[must_use]
    pub fn blocking_handler<F>(mut self, f: F) -> Self
    where
        F: Fn(ConsumedRecord) -> HandlerResult + Send + Sync + 'static,
    {
        self.handler = Some(Handler::Blocking(Arc::new(f)));
        self
    }

    /// Processes up to `batch_size` records at a time; a batch respects the ordering (records
    /// of one key or partition appear in offset order) and succeeds or fails as a whole.
    #[must_use]
    pub fn batch_handler<F, Fut>(mut self, batch_size: usize, f: F) -> Self
    where
        F: Fn(Vec<ConsumedRecord>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handler = Some(Handler::Batch(
            Arc::new(move |rs| Box::pin(f(rs))),
            batch_size.max(1),
        ));
        self
    }

    /// Sets the retry delay policy (default: [`ExponentialBackoff::default`]).
    #[must_use]
    pub fn retry_policy(mut self, p: impl RetryPolicy) -> Self {
        self.retry = Arc::new(p);
        self
    }

    /// Hands records that failed for good to `f` (record, last error, attempts) instead of a
    /// dead-letter topic; the record is done once `f` returns `Ok`.
    #[must_use]
    pub fn dead_letter_callback<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ConsumedRecord, HandlerError, u32) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.dlq_callback = Some(Arc::new(move |r, e, n| Box::pin(f(r, e, n))));
        self
    }

    /// Validates the config and checks a handler was set.
    pub fn build(self) -> Result<ParallelConsumer> {
        self.cfg.validate()?;
        let handler = self.handler.ok_or(Error::NoHandler)?;
        Ok(ParallelConsumer {
            cfg: self.cfg,
            handler,
            retry: self.retry,
            dlq_callback: self.dlq_callback,
        })
    }
}

/// A started consumer.
pub struct Running {
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<Result<ShutdownReport>>,
    stats: Arc<SharedStats>,
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

    /// True once the consumer stopped (after a shutdown or a fatal error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Finishes work as `mode` says (bounded by `shutdown_timeout`), commits, leaves the group.
    pub async fn shutdown(self, mode: ShutdownMode) -> Result<ShutdownReport> {
        let (tx, _rx) = oneshot::channel();
        let _ = self.control.send(Control::Shutdown(mode, tx)).await;
        self.join().await
    }

    /// Waits until the consumer stops on its own (a fatal error, e.g. unreadable metadata).
    pub async fn join(self) -> Result<ShutdownReport> {
        self.task.await.map_err(|e| Error::Stopped(e.to_string()))?
    }
}
