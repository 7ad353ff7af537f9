//! The producer adapter: librdkafka's producer with a zero-allocation delivery path.
//!
//! ```text
//! send(&Record, token) ──► librdkafka queue ──► broker
//!                                        │
//!        poll thread ◄── delivery reports┘──► DeliverySink::on_delivery(token, result)
//! ```
//!
//! Each record carries a caller-chosen `usize` token as its delivery opaque, so reporting a
//! delivery allocates nothing: higher layers index their own slot tables with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kbatch_core::{Classify, ErrorClass, Offset, Record, Timestamp, TopicPartition};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::code::{ErrorCode, classify_code};
use crate::config::KafkaProducerConfig;
use crate::consumer::GroupMetadata;
use crate::error::{Error, Result};
use crate::stats::ProducerStats;
use crate::tpl::offsets_to_tpl;

/// Where a record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivered {
    /// Partition written to.
    pub partition: i32,
    /// Offset assigned by the broker (`-1` with `acks = none`).
    pub offset: Offset,
    /// Record timestamp as stored.
    pub timestamp: Option<Timestamp>,
}

impl Delivered {
    /// A delivery at `partition`, `offset`.
    pub fn new(partition: i32, offset: Offset, timestamp: Option<Timestamp>) -> Self {
        Self {
            partition,
            offset,
            timestamp,
        }
    }
}

/// Why a record was not delivered, after the client's own retries, with the record itself
/// (rebuilt from librdkafka's copy) so the caller can name it, retry it or dead-letter it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("record for topic {topic:?}, partition {partition}, key {key} was not delivered: {code}, {class}",
    topic = record.topic(), partition = partition_display(record.partition), key = record.key_for_display(),
    class = classify_code(*code))]
#[non_exhaustive]
pub struct DeliveryError {
    /// The error code.
    pub code: ErrorCode,
    /// The record as librdkafka held it (`partition` is the one it was assigned, if any).
    pub record: Box<Record>,
}

impl DeliveryError {
    /// `record` failed with `code`.
    pub fn new(code: ErrorCode, record: Box<Record>) -> Self {
        Self { code, record }
    }
}

fn partition_display(p: Option<i32>) -> String {
    p.map_or_else(|| "unassigned".to_owned(), |p| p.to_string())
}

impl Classify for DeliveryError {
    fn class(&self) -> ErrorClass {
        classify_code(self.code)
    }
}

/// Receives every delivery report, on the producer's poll thread. Keep it short: a slow
/// sink delays all later reports.
pub trait DeliverySink: Send + Sync + 'static {
    /// The record sent with `token` was delivered or failed for good.
    fn on_delivery(&self, token: usize, result: Result<Delivered, DeliveryError>);

    /// Client statistics, every `statistics_interval` when that is set.
    fn on_stats(&self, _stats: &ProducerStats) {}

    /// Called from the background poll thread about every [`TICK`], busy or idle: a place
    /// for periodic work (publishing metrics) that costs nothing per record.
    fn on_tick(&self) {}
}

/// How often [`DeliverySink::on_tick`] runs.
pub const TICK: Duration = Duration::from_millis(250);

/// A record that could not even be enqueued; the caller keeps its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("could not enqueue: {code}")]
#[non_exhaustive]
pub struct EnqueueError {
    /// The error code: `QueueFull` when the client queue is full.
    pub code: ErrorCode,
}

impl EnqueueError {
    /// True when the client queue is full: wait for deliveries and try again.
    pub fn is_queue_full(&self) -> bool {
        self.code.is_queue_full()
    }
}

impl Classify for EnqueueError {
    fn class(&self) -> ErrorClass {
        classify_code(self.code)
    }
}

struct SinkContext<S> {
    sink: Arc<S>,
}

impl<S: DeliverySink> ClientContext for SinkContext<S> {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "producer client error");
    }

    fn stats(&self, stats: rdkafka::Statistics) {
        self.sink.on_stats(&ProducerStats::from_rdkafka(&stats));
    }
}

/// The code of a per-record error; librdkafka's per-record errors always carry one.
fn code_of(e: &KafkaError) -> ErrorCode {
    ErrorCode::from_rdkafka(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail))
}

/// Rebuilds a kbatch record from librdkafka's copy of a message (failure path only).
fn record_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    use rdkafka::message::Headers as _;
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| kbatch_core::Header {
                    key: h.key.to_owned(),
                    value: h.value.map(bytes::Bytes::copy_from_slice),
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic: m.topic().into(),
        partition: (m.partition() >= 0).then_some(m.partition()),
        key: m.key().map(bytes::Bytes::copy_from_slice),
        value: m.payload().map(bytes::Bytes::copy_from_slice),
        headers,
        timestamp: m.timestamp().to_millis().map(Timestamp),
    }
}

impl<S: DeliverySink> ProducerContext for SinkContext<S> {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, token: usize) {
        let r = match result {
            Ok(m) => Ok(Delivered {
                partition: m.partition(),
                offset: Offset(m.offset()),
                timestamp: m.timestamp().to_millis().map(Timestamp),
            }),
            Err((e, m)) => Err(DeliveryError {
                code: code_of(e),
                record: Box::new(record_of(m)),
            }),
        };
        self.sink.on_delivery(token, r);
    }
}

/// librdkafka's producer, reporting deliveries to a [`DeliverySink`].
///
/// Delivery reports are served by a background poll thread, or — while a sender calls
/// [`KafkaProducer::poll_inline`] — by the sending thread itself, with the background thread
/// standing back. Serving reports where the messages were allocated keeps librdkafka's
/// message-count lock and the allocator's arena on one thread: a dedicated poll thread fighting
/// the sender for both cost about a quarter of the throughput on 2 cores.
///
/// Transaction calls block up to their timeout: call them from a blocking context
/// (`tokio::task::spawn_blocking`) in async code.
pub struct KafkaProducer<S: DeliverySink> {
    inner: Arc<BaseProducer<SinkContext<S>>>,
    sink: Arc<S>,
    transactional: bool,
    poller: Option<JoinHandle<()>>,
    shared: Arc<PollState>,
}

/// Coordination between inline polling and the background poll thread.
struct PollState {
    stop: AtomicBool,
    epoch: Instant,
    /// Nanoseconds since `epoch` of the last inline poll.
    last_inline: AtomicU64,
}

/// How long after an inline poll the background thread keeps standing back.
const INLINE_GRACE: Duration = Duration::from_millis(2);

impl<S: DeliverySink> Drop for KafkaProducer<S> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(h) = self.poller.take() {
            let _ = h.join();
        }
    }
}

impl<S: DeliverySink> std::fmt::Debug for KafkaProducer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("transactional", &self.transactional)
            .finish_non_exhaustive()
    }
}

impl<S: DeliverySink> KafkaProducer<S> {
    /// Validates `config` and starts the client and its poll thread.
    pub fn new(config: &KafkaProducerConfig, sink: S) -> Result<Self> {
        config.validate()?;
        let sink = Arc::new(sink);
        let ctx = SinkContext {
            sink: Arc::clone(&sink),
        };
        let inner: Arc<BaseProducer<SinkContext<S>>> = Arc::new(
            config
                .to_rdkafka()
                .create_with_context(ctx)
                .map_err(|e| Error::kafka("create producer", e))?,
        );
        let shared = Arc::new(PollState {
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
            last_inline: AtomicU64::new(0),
        });
        let poller = {
            let (inner, shared) = (Arc::clone(&inner), Arc::clone(&shared));
            std::thread::Builder::new()
                .name("kbatch-producer-poll".into())
                .spawn(move || background_poll(&inner, &shared))
                .map_err(|e| Error::Invalid {
                    what: "producer poll thread".into(),
                    why: e.to_string(),
                })?
        };
        Ok(Self {
            inner,
            sink,
            transactional: config.transactional_id.is_some(),
            poller: Some(poller),
            shared,
        })
    }

    /// Serves the delivery reports that are ready, on the calling thread, without blocking.
    /// Call it every few hundred sends from a busy sending loop.
    pub fn poll_inline(&self) {
        let now = self.shared.epoch.elapsed().as_nanos() as u64;
        self.shared.last_inline.store(now, Ordering::Relaxed);
        self.inner.poll(Duration::ZERO);
    }

    /// The sink receiving delivery reports.
    pub fn sink(&self) -> &Arc<S> {
        &self.sink
    }

    /// Enqueues a copy of `record`; its delivery is reported to the sink with `token`.
    /// Never blocks: a full client queue is [`EnqueueError::is_queue_full`].
    pub fn send(&self, record: &Record, token: usize) -> Result<(), EnqueueError> {
        let mut br: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&record.topic, token);
        br.key = record.key.as_deref();
        br.payload = record.value.as_deref();
        br.partition = record.partition;
        br.timestamp = record.timestamp.map(Timestamp::millis);
        if !record.headers.is_empty() {
            let hs = record.headers.iter().fold(
                OwnedHeaders::new_with_capacity(record.headers.len()),
                |hs, h| {
                    hs.insert(Header {
                        key: &h.key,
                        value: h.value.as_deref(),
                    })
                },
            );
            br.headers = Some(hs);
        }
        self.inner
            .send(br)
            .map_err(|(e, _)| EnqueueError { code: code_of(&e) })
    }

    /// Waits until every enqueued record has a delivery report, or the timeout passes.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner.flush(timeout).map_err(|e| match e {
            KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) => Error::Timeout {
                op: format!("flush ({} records left)", self.in_flight()),
                after: timeout,
            },
            e => Error::kafka("flush", e),
        })
    }

    /// Partition count of a topic, from cluster metadata (blocks up to `timeout`).
    pub fn partition_count(&self, topic: &str, timeout: Duration) -> Result<i32> {
        let md = self
            .inner
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| Error::kafka(format!("metadata of {topic:?}"), e))?;
        match md.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(i32::try_from(t.partitions().len()).unwrap_or(i32::MAX))
            }
            _ => Err(Error::UnknownTopic(topic.to_owned())),
        }
    }

    /// The cluster's id, as the broker reports it in its metadata (blocks up to `timeout`).
    pub fn cluster_id(&self, timeout: Duration) -> Result<String> {
        self.inner
            .client()
            .fetch_cluster_id(timeout)
            .ok_or_else(|| Error::Timeout {
                op: "cluster id from metadata".into(),
                after: timeout,
            })
    }

    /// Records enqueued or in flight without a delivery report yet.
    pub fn in_flight(&self) -> usize {
        usize::try_from(self.inner.in_flight_count()).unwrap_or(0)
    }

    /// Fails everything still queued or in flight with `PurgeQueue` / `PurgeInflight` reports.
    pub fn purge(&self) {
        self.inner
            .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }

    /// Registers the transactional id with the coordinator (once, before the first transaction).
    pub fn init_transactions(&self, timeout: Duration) -> Result<()> {
        self.require_transactional("init_transactions")?;
        self.inner
            .init_transactions(timeout)
            .map_err(|e| Error::kafka("init transactions", e))
    }

    /// Starts a transaction.
    pub fn begin_transaction(&self) -> Result<()> {
        self.inner
            .begin_transaction()
            .map_err(|e| Error::kafka("begin transaction", e))
    }

    /// Adds consumed offsets to the transaction: they become the group's committed offsets
    /// when, and only when, the transaction commits.
    pub fn send_offsets_to_transaction(
        &self,
        offsets: &[(TopicPartition, Offset)],
        group: &GroupMetadata,
        timeout: Duration,
    ) -> Result<()> {
        let tpl = offsets_to_tpl(offsets.iter().map(|(tp, o)| (tp, *o, None)))?;
        self.inner
            .send_offsets_to_transaction(&tpl, group.inner(), timeout)
            .map_err(|e| Error::kafka("send offsets to transaction", e))
    }

    /// Flushes and commits the transaction.
    pub fn commit_transaction(&self, timeout: Duration) -> Result<()> {
        self.inner
            .commit_transaction(timeout)
            .map_err(|e| Error::kafka("commit transaction", e))
    }

    /// Aborts the transaction; its records are never visible to `read_committed` readers.
    pub fn abort_transaction(&self, timeout: Duration) -> Result<()> {
        self.inner
            .abort_transaction(timeout)
            .map_err(|e| Error::kafka("abort transaction", e))
    }

    fn require_transactional(&self, op: &str) -> Result<()> {
        if self.transactional {
            Ok(())
        } else {
            Err(Error::Invalid {
                what: op.to_owned(),
                why: "the producer has no transactional_id".into(),
            })
        }
    }
}

/// The background poll loop: serves delivery reports unless a sender polled inline within
/// the last [`INLINE_GRACE`].
fn background_poll<S: DeliverySink>(p: &BaseProducer<SinkContext<S>>, s: &PollState) {
    let mut last_tick = Instant::now();
    while !s.stop.load(Ordering::Acquire) {
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            p.context().sink.on_tick();
        }
        // A sender may stamp a time later than the `elapsed` read here: that is "just now".
        let since_inline = (s.epoch.elapsed().as_nanos() as u64)
            .saturating_sub(s.last_inline.load(Ordering::Relaxed));
        if since_inline < INLINE_GRACE.as_nanos() as u64 {
            std::thread::sleep(INLINE_GRACE);
        } else {
            p.poll(Duration::from_millis(50));
        }
    }
}
