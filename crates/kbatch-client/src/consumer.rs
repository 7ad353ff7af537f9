//! The consumer adapter: librdkafka's consumer speaking kbatch's record and offset types.
//!
//! All calls are blocking (poll waits up to its timeout): run the consumer on a thread of its
//! own, or in `spawn_blocking`, and hand records to async code through a bounded channel.

use std::time::Duration;

use bytes::Bytes;
use std::sync::{Arc, OnceLock};

use kbatch_core::{
    CommitMode as Wait, CommitRequest, CommittedOffset, ConsumedRecord, Header, Offset,
    OffsetCommit, OffsetSink, RebalanceListener, RecordSource, SourceError, Timestamp, Topic,
    TopicPartition,
};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::config::ConsumerConfig;
use crate::error::{Error, Result};
use crate::tpl::{offsets_to_tpl, tpl_partitions};

/// Where to start reading an assigned partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOffset {
    /// The oldest retained record.
    Beginning,
    /// After the last record (only new records).
    End,
    /// The group's committed offset, or `auto_offset_reset` without one.
    Committed,
    /// This exact offset.
    At(Offset),
}

/// The consumer group state a transactional producer needs to commit offsets atomically.
/// Cheap to clone.
#[derive(Clone)]
pub struct GroupMetadata(std::sync::Arc<ConsumerGroupMetadata>);

impl GroupMetadata {
    pub(crate) fn inner(&self) -> &ConsumerGroupMetadata {
        &self.0
    }
}

impl std::fmt::Debug for GroupMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupMetadata")
    }
}

struct ListenerContext {
    /// Set by [`RecordSource::subscribe`]: only a subscription makes group membership, so no
    /// rebalance goes unreported.
    listener: OnceLock<Arc<dyn RebalanceListener>>,
    /// Bound on the committed-offsets fetch done at assignment.
    timeout: Duration,
}

impl ClientContext for ListenerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "consumer client error");
    }
}

impl ConsumerContext for ListenerContext {
    fn pre_rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        // The listener commits what it wants through this consumer's `OffsetSink` side before
        // it returns: the partitions stay assigned until this callback ends.
        if let (Some(l), rdkafka::consumer::Rebalance::Revoke(tpl)) =
            (self.listener.get(), rebalance)
        {
            l.on_revoke(&tpl_partitions(tpl), consumer.assignment_lost());
        }
    }

    fn post_rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        let (Some(l), rdkafka::consumer::Rebalance::Assign(tpl)) = (self.listener.get(), rebalance)
        else {
            return;
        };
        let parts = tpl_partitions(tpl);
        if parts.is_empty() {
            return;
        }
        let committed = match committed_of(consumer, &parts, self.timeout) {
            Ok(c) => c,
            Err(e) => {
                // Without the metadata nothing can be skipped: start from the committed
                // offsets librdkafka fetches itself and reprocess (at-least-once).
                tracing::warn!(error = %e, "cannot fetch committed offsets at assignment");
                parts
                    .into_iter()
                    .map(|tp| CommittedOffset {
                        tp,
                        offset: None,
                        metadata: String::new(),
                    })
                    .collect()
            }
        };
        l.on_assign(committed);
    }
}

/// librdkafka's consumer.
pub struct KafkaConsumer {
    inner: BaseConsumer<ListenerContext>,
    has_group: bool,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer").finish_non_exhaustive()
    }
}

impl KafkaConsumer {
    /// Validates `config` and creates the client.
    pub fn new(config: &ConsumerConfig) -> Result<Self> {
        config.validate()?;
        let ctx = ListenerContext {
            listener: OnceLock::new(),
            timeout: config.session_timeout.min(Duration::from_secs(30)),
        };
        let inner = config
            .to_rdkafka()
            .create_with_context(ctx)
            .map_err(|e| Error::kafka("create consumer", e))?;
        Ok(Self {
            inner,
            has_group: config.group_id.is_some(),
        })
    }

    fn require_group(&self, op: &str) -> Result<()> {
        if self.has_group {
            Ok(())
        } else {
            Err(Error::Invalid {
                what: op.to_owned(),
                why: "the consumer has no group_id".into(),
            })
        }
    }

    /// Joins the group for these topics (requires a `group_id`). Rebalances are reported to
    /// no one; [`RecordSource::subscribe`] gives them to a listener.
    pub fn subscribe(&self, topics: &[&str]) -> Result<()> {
        self.require_group("subscribe")?;
        self.inner
            .subscribe(topics)
            .map_err(|e| Error::kafka(format!("subscribe to {topics:?}"), e))
    }

    /// Reads exactly these partitions, without group membership.
    pub fn assign(&self, partitions: &[(TopicPartition, StartOffset)]) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (tp, start) in partitions {
            let off = match start {
                StartOffset::Beginning => rdkafka::Offset::Beginning,
                StartOffset::End => rdkafka::Offset::End,
                StartOffset::Committed => rdkafka::Offset::Stored,
                StartOffset::At(o) => rdkafka::Offset::Offset(o.0),
            };
            tpl.add_partition_offset(&tp.topic, tp.partition, off)
                .map_err(|e| Error::kafka(format!("assign {tp}"), e))?;
        }
        self.inner
            .assign(&tpl)
            .map_err(|e| Error::kafka("assign", e))
    }

    /// Waits up to `timeout` for the next record. `Ok(None)` when none arrived in time.
    pub fn poll(&self, timeout: Duration) -> Result<Option<ConsumedRecord>> {
        match self.inner.poll(timeout) {
            None => Ok(None),
            Some(Ok(m)) => Ok(Some(to_record(&m, None))),
            Some(Err(e)) => Err(Error::kafka("poll", e)),
        }
    }

    /// Appends up to `max` records to `out`, waiting up to `timeout` for the first one only.
    /// Reuses the topic name allocation across records of the same topic. Returns how many
    /// were appended.
    pub fn poll_batch(
        &self,
        out: &mut Vec<ConsumedRecord>,
        max: usize,
        timeout: Duration,
    ) -> Result<usize> {
        let mut topic: Option<Topic> = None;
        let mut n = 0;
        let mut wait = timeout;
        while n < max {
            match self.inner.poll(wait) {
                None => break,
                Some(Ok(m)) => {
                    if topic.as_deref() != Some(m.topic()) {
                        topic = Some(Topic::from(m.topic()));
                    }
                    out.push(to_record(&m, topic.clone()));
                    n += 1;
                    wait = Duration::ZERO;
                }
                Some(Err(e)) if n == 0 => return Err(Error::kafka("poll", e)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "poll error after a partial batch");
                    break;
                }
            }
        }
        Ok(n)
    }

    /// Commits offsets (with metadata) for the group; `sync` waits for the broker's answer.
    pub fn commit(&self, offsets: &[OffsetCommit], sync: bool) -> Result<()> {
        self.require_group("commit")?;
        let tpl = offsets_to_tpl(
            offsets
                .iter()
                .map(|c| (&c.tp, c.offset, c.metadata.as_deref())),
        )?;
        let mode = if sync {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        self.inner
            .commit(&tpl, mode)
            .map_err(|e| Error::kafka("commit offsets", e))
    }

    /// The group's committed offsets and metadata for these partitions.
    pub fn committed(
        &self,
        partitions: &[TopicPartition],
        timeout: Duration,
    ) -> Result<Vec<CommittedOffset>> {
        committed_of(&self.inner, partitions, timeout)
    }

    /// What a transactional producer needs to commit this group's offsets.
    pub fn group_metadata(&self) -> Option<GroupMetadata> {
        if !self.has_group {
            return None;
        }
        self.inner
            .group_metadata()
            .map(|g| GroupMetadata(std::sync::Arc::new(g)))
    }

    /// Currently assigned partitions.
    pub fn assignment(&self) -> Result<Vec<TopicPartition>> {
        self.inner
            .assignment()
            .map(|t| tpl_partitions(&t))
            .map_err(|e| Error::kafka("assignment", e))
    }

    /// Stops fetching these partitions (the assignment is kept).
    pub fn pause(&self, partitions: &[TopicPartition]) -> Result<()> {
        let tpl = partitions_tpl(partitions);
        self.inner.pause(&tpl).map_err(|e| Error::kafka("pause", e))
    }

    /// Resumes fetching paused partitions.
    pub fn resume(&self, partitions: &[TopicPartition]) -> Result<()> {
        let tpl = partitions_tpl(partitions);
        self.inner
            .resume(&tpl)
            .map_err(|e| Error::kafka("resume", e))
    }

    /// Low and high watermarks (first offset, offset after the last record) of a partition.
    pub fn watermarks(&self, tp: &TopicPartition, timeout: Duration) -> Result<(Offset, Offset)> {
        self.inner
            .fetch_watermarks(&tp.topic, tp.partition, timeout)
            .map(|(lo, hi)| (Offset(lo), Offset(hi)))
            .map_err(|e| Error::kafka(format!("fetch watermarks of {tp}"), e))
    }

    /// Partition count of a topic, from cluster metadata.
    pub fn partition_count(&self, topic: &str, timeout: Duration) -> Result<i32> {
        let md = self
            .inner
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| Error::kafka(format!("metadata of {topic:?}"), e))?;
        match md.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().len() as i32)
            }
            _ => Err(Error::UnknownTopic(topic.to_owned())),
        }
    }
}

impl RecordSource for KafkaConsumer {
    fn subscribe(
        &self,
        topics: &[&str],
        listener: Arc<dyn RebalanceListener>,
    ) -> std::result::Result<(), SourceError> {
        if self.inner.context().listener.set(listener).is_err() {
            return Err(Error::Invalid {
                what: "subscribe".into(),
                why: "this consumer already reports rebalances to a listener".into(),
            }
            .into());
        }
        KafkaConsumer::subscribe(self, topics).map_err(Into::into)
    }

    fn poll_batch(
        &self,
        out: &mut Vec<ConsumedRecord>,
        max: usize,
        timeout: Duration,
    ) -> std::result::Result<usize, SourceError> {
        KafkaConsumer::poll_batch(self, out, max, timeout).map_err(Into::into)
    }

    fn pause(&self, partitions: &[TopicPartition]) -> std::result::Result<(), SourceError> {
        KafkaConsumer::pause(self, partitions).map_err(Into::into)
    }

    fn resume(&self, partitions: &[TopicPartition]) -> std::result::Result<(), SourceError> {
        KafkaConsumer::resume(self, partitions).map_err(Into::into)
    }
}

/// Commits to the consumer's group.
impl OffsetSink for KafkaConsumer {
    fn commit(&self, request: &CommitRequest, mode: Wait) -> std::result::Result<(), SourceError> {
        KafkaConsumer::commit(self, &request.offsets, mode == Wait::Sync).map_err(Into::into)
    }
}

fn committed_of<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &[TopicPartition],
    timeout: Duration,
) -> Result<Vec<CommittedOffset>> {
    let tpl = consumer
        .committed_offsets(partitions_tpl(partitions), timeout)
        .map_err(|e| Error::kafka("fetch committed offsets", e))?;
    Ok(tpl
        .elements()
        .iter()
        .map(|e| CommittedOffset {
            tp: TopicPartition::new(e.topic(), e.partition()),
            offset: e.offset().to_raw().filter(|o| *o >= 0).map(Offset),
            metadata: e.metadata().to_owned(),
        })
        .collect())
}

fn partitions_tpl(partitions: &[TopicPartition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for tp in partitions {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    tpl
}

fn to_record(m: &BorrowedMessage<'_>, topic: Option<Topic>) -> ConsumedRecord {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| Header {
                    key: h.key.to_owned(),
                    value: h.value.map(Bytes::copy_from_slice),
                })
                .collect()
        })
        .unwrap_or_default();
    ConsumedRecord {
        topic: topic.unwrap_or_else(|| Topic::from(m.topic())),
        partition: m.partition(),
        offset: Offset(m.offset()),
        key: m.key().map(Bytes::copy_from_slice),
        value: m.payload().map(Bytes::copy_from_slice),
        headers,
        timestamp: m.timestamp().to_millis().map(Timestamp),
        envelope: None,
    }
}
