//! The batching producer.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kbatch_client::{
    Delivered, DeliveryError, DeliverySink, GroupMetadata, KafkaProducer, ProducerStats,
};
use kbatch_core::{Classify, Offset, Record, TopicPartition};

use crate::close::{CloseReport, LastHandle};
use crate::config::ProducerConfig;
use crate::error::{ProduceError, TrySendError};
use crate::metrics::{Metrics, ProducerCounters};
use crate::slots::{DeliveryFuture, Reserve, Slots};

/// A busy sender serves delivery reports itself every this many sends (see
/// [`KafkaProducer::poll_inline`]): the reports are freed where the messages were allocated.
const INLINE_POLL_EVERY: u64 = 64;

/// Delivery reports and statistics from the client's poll thread.
pub(crate) struct Completions {
    slots: Arc<Slots>,
    metrics: Metrics,
}

impl DeliverySink for Completions {
    fn on_delivery(&self, token: usize, result: Result<Delivered, DeliveryError>) {
        self.slots.complete(token as u32, result);
    }

    fn on_stats(&self, stats: &ProducerStats) {
        self.metrics.publish(&self.slots, Some(stats));
    }

    fn on_tick(&self) {
        self.metrics.publish(&self.slots, None);
    }
}

pub(crate) struct Inner {
    pub(crate) kafka: KafkaProducer<Completions>,
    pub(crate) slots: Arc<Slots>,
    pub(crate) config: ProducerConfig,
    /// Set by the first close, explicit or on drop; later ones return it.
    pub(crate) closed: OnceLock<CloseReport>,
}

/// A Kafka producer whose [`send`](Producer::send) returns a per-record [`DeliveryFuture`]
/// while records travel in librdkafka's large batches. Cheap to clone; all clones share one
/// client. See the [crate docs](crate) for the data flow.
///
/// Dropping the last clone closes the producer as [`Producer::close`] does — flush within
/// `close_timeout`, then fail and report what is left — on a blocking thread when dropped
/// inside a tokio runtime, so no async worker waits for it.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
    /// Held by the handles only (not by blocking tasks borrowing `inner`): it drops with the
    /// last handle and closes the producer.
    _last: Arc<LastHandle>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Validates `config`, then starts the client. Fails on an invalid config, naming the field.
    pub fn new(config: ProducerConfig) -> Result<Self, kbatch_client::Error> {
        config.validate()?;
        let slots = Arc::new(Slots::new(
            config.max_pending_records,
            config.max_pending_bytes,
        ));
        let metrics = Metrics::new(&config.kafka.client.client_id);
        let sink = Completions {
            slots: Arc::clone(&slots),
            metrics,
        };
        let kafka = KafkaProducer::new(&config.effective_kafka(), sink)?;
        let inner = Arc::new(Inner {
            kafka,
            slots,
            config,
            closed: OnceLock::new(),
        });
        Ok(Self {
            _last: Arc::new(LastHandle::new(Arc::clone(&inner))),
            inner,
        })
    }

    /// Enqueues `record`, waiting while the producer is full, and returns its delivery future.
    /// Fails at once — handing the record back in the error — when the client refuses it
    /// (too large, unknown partition) or the producer is closed.
    ///
    /// # Cancellation
    /// Dropping this future while it waits for room drops the record; it was not enqueued.
    pub async fn send(&self, mut record: Record) -> Result<DeliveryFuture, ProduceError> {
        let size = self.check(&record)?;
        let mut client_full = 0u32;
        loop {
            let Some(i) = self.inner.slots.reserve(size).await else {
                return Err(ProduceError::Closed {
                    record: Some(Box::new(record)),
                });
            };
            match self.enqueue(record, i) {
                Ok(f) => return Ok(f),
                Err(TrySendError::Full(r)) => {
                    // librdkafka still counts messages whose reports are being served; serve
                    // what is ready here and let them go.
                    record = r;
                    self.inner.kafka.poll_inline();
                    client_full += 1;
                    if client_full == 1 {
                        tokio::task::yield_now().await;
                    } else {
                        // Not the transient case: wait for deliveries rather than spin.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                Err(TrySendError::Failed(e)) => return Err(e),
            }
        }
    }

    /// Enqueues `record` if there is room now; otherwise hands it back as
    /// [`TrySendError::Full`]. Never waits.
    #[allow(
        clippy::result_large_err,
        reason = "the record comes back by value: no allocation on the back-pressure path"
    )]
    pub fn try_send(&self, record: Record) -> Result<DeliveryFuture, TrySendError> {
        let size = self.check(&record).map_err(TrySendError::Failed)?;
        match self.inner.slots.try_reserve(size) {
            Reserve::Slot(i) => match self.enqueue(record, i) {
                Err(TrySendError::Full(r)) => {
                    // See `send`: one inline poll usually frees librdkafka's count.
                    self.inner.kafka.poll_inline();
                    match self.inner.slots.try_reserve(size) {
                        Reserve::Slot(i) => self.enqueue(r, i),
                        Reserve::Full => Err(TrySendError::Full(r)),
                        Reserve::Closed => Err(TrySendError::Failed(ProduceError::Closed {
                            record: Some(Box::new(r)),
                        })),
                    }
                }
                other => other,
            },
            Reserve::Full => Err(TrySendError::Full(record)),
            Reserve::Closed => Err(TrySendError::Failed(ProduceError::Closed {
                record: Some(Box::new(record)),
            })),
        }
    }

    /// Sends every record — fire all, then await each — and returns one result per record,
    /// in input order. A bad record fails alone; the others are still sent. Records travel in
    /// as few broker batches as the batch limits allow, with no round trip per record.
    pub async fn send_batch(
        &self,
        records: impl IntoIterator<Item = Record>,
    ) -> Vec<Result<Delivered, ProduceError>> {
        let mut sent: Vec<Result<DeliveryFuture, ProduceError>> = Vec::new();
        for record in records {
            sent.push(self.send(record).await);
        }
        let mut results = Vec::with_capacity(sent.len());
        for s in sent {
            results.push(match s {
                Ok(f) => f.await,
                Err(e) => Err(e),
            });
        }
        results
    }

    /// Waits until every record enqueued so far — and any enqueued concurrently — has a
    /// delivery report, or `timeout` passes.
    pub async fn flush(&self, timeout: Duration) -> Result<(), kbatch_client::Error> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.kafka.flush(timeout))
            .await
            .map_err(join_error)?
    }

    /// Stops accepting records, flushes within `close_timeout`, then fails whatever is left so
    /// that every outstanding future resolves. Later sends fail with `Closed`; later closes
    /// return the first one's report.
    pub async fn close(&self) -> CloseReport {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.close_once(false))
            .await
            .unwrap_or(CloseReport {
                pending_at_close: self.inner.slots.undelivered(),
                flushed: false,
                failed: 0,
            })
    }

    /// Partition count of `topic`, from cluster metadata, waiting at most `timeout`. Fails
    /// with `UnknownTopic` when the cluster does not know it.
    pub async fn partition_count(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<i32, kbatch_client::Error> {
        let (inner, topic) = (Arc::clone(&self.inner), topic.to_owned());
        tokio::task::spawn_blocking(move || inner.kafka.partition_count(&topic, timeout))
            .await
            .map_err(join_error)?
    }

    /// The Kafka cluster's id, from the broker's metadata, waiting at most `timeout`.
    pub async fn cluster_id(&self, timeout: Duration) -> Result<String, kbatch_client::Error> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.kafka.cluster_id(timeout))
            .await
            .map_err(join_error)?
    }

    /// Current counters.
    pub fn counters(&self) -> ProducerCounters {
        self.inner.slots.counters()
    }

    /// The config this producer runs with.
    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// Registers the transactional id with the coordinator (once, before the first transaction).
    pub async fn init_transactions(&self, timeout: Duration) -> Result<(), kbatch_client::Error> {
        self.blocking(move |k| k.init_transactions(timeout)).await
    }

    /// Starts a transaction.
    pub fn begin_transaction(&self) -> Result<(), kbatch_client::Error> {
        self.inner.kafka.begin_transaction()
    }

    /// Adds consumed offsets to the open transaction (committed with it, atomically).
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: Vec<(TopicPartition, Offset)>,
        group: GroupMetadata,
        timeout: Duration,
    ) -> Result<(), kbatch_client::Error> {
        self.blocking(move |k| k.send_offsets_to_transaction(&offsets, &group, timeout))
            .await
    }

    /// Flushes and commits the open transaction. Records' futures resolve on delivery, which
    /// is not commit: only a successful commit makes them visible to `read_committed` readers.
    pub async fn commit_transaction(&self, timeout: Duration) -> Result<(), kbatch_client::Error> {
        self.blocking(move |k| k.commit_transaction(timeout)).await
    }

    /// Aborts the open transaction; its records are never visible to `read_committed` readers.
    pub async fn abort_transaction(&self, timeout: Duration) -> Result<(), kbatch_client::Error> {
        self.blocking(move |k| k.abort_transaction(timeout)).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KafkaProducer<Completions>) -> Result<T, kbatch_client::Error> + Send + 'static,
    ) -> Result<T, kbatch_client::Error> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner.kafka))
            .await
            .map_err(join_error)?
    }

    /// Rejects what can never be sent; returns the record's budget size.
    fn check(&self, record: &Record) -> Result<usize, ProduceError> {
        let invalid = |reason: String| ProduceError::Invalid {
            reason,
            record: Box::new(record.clone()),
        };
        if record.topic.is_empty() {
            return Err(invalid("empty topic name".into()));
        }
        if record.partition.is_some_and(|p| p < 0) {
            return Err(invalid(format!(
                "partition {:?} is negative; use None to let the partitioner choose",
                record.partition
            )));
        }
        Ok(record.size_hint())
    }

    #[allow(
        clippy::result_large_err,
        reason = "the record comes back by value: no allocation on the back-pressure path"
    )]
    fn enqueue(&self, record: Record, slot: u32) -> Result<DeliveryFuture, TrySendError> {
        let slots = &self.inner.slots;
        match self.inner.kafka.send(&record, slot as usize) {
            Ok(()) => {
                if slots.enqueued().is_multiple_of(INLINE_POLL_EVERY) {
                    self.inner.kafka.poll_inline();
                }
                Ok(DeliveryFuture::new(Arc::clone(slots), slot))
            }
            Err(e) => {
                slots.cancel(slot);
                if e.is_queue_full() {
                    Err(TrySendError::Full(record))
                } else {
                    slots.count_failure(e.class());
                    Err(TrySendError::Failed(ProduceError::Enqueue {
                        code: e.code,
                        record: Box::new(record),
                    }))
                }
            }
        }
    }
}

fn join_error(e: tokio::task::JoinError) -> kbatch_client::Error {
    kbatch_client::Error::Invalid {
        what: "producer blocking task".into(),
        why: e.to_string(),
    }
}
