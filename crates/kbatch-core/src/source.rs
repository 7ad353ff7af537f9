//! The seams between kbatch's processing engines and the outside: where records come from
//! ([`RecordSource`]) and where commits go ([`OffsetSink`]).
//!
//! ```text
//!  RecordSource ──poll_batch──► records ──► engine ──► CommitRequest ──► OffsetSink
//!       │ rebalances (RebalanceListener)                         (the group today; offsets into
//!       └─ on_assign / on_revoke / on_commit                      a transaction, a checkpoint)
//! ```
//!
//! A commit is a value: the engine decides *what* to commit, the sink decides *how*. The
//! librdkafka implementations are in `kbatch-client`; in-memory ones, for tests without a
//! broker, in `kbatch-testkit`.

use std::sync::Arc;
use std::time::Duration;

use crate::{Classify, ConsumedRecord, ErrorClass, Offset, TopicPartition};

/// A group's committed position for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The partition.
    pub tp: TopicPartition,
    /// The committed offset (next record to read); `None` when nothing is committed.
    pub offset: Option<Offset>,
    /// The commit metadata string (empty when none was stored).
    pub metadata: String,
}

/// An offset to commit, with optional metadata (at most the broker's
/// `offset.metadata.max.bytes`, 4,096 by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetCommit {
    /// The partition.
    pub tp: TopicPartition,
    /// Offset of the next record to read.
    pub offset: Offset,
    /// Metadata stored with the offset.
    pub metadata: Option<String>,
}

/// Why a commit is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CommitReason {
    /// Progress, every commit interval.
    #[default]
    Periodic,
    /// The partitions are being revoked: the last commit before another member owns them.
    Revocation,
    /// The consumer is shutting down.
    Final,
}

/// What to commit, as one value: an offset (and metadata) per partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitRequest {
    /// One entry per partition.
    pub offsets: Vec<OffsetCommit>,
    /// Why it is made.
    pub reason: CommitReason,
}

impl CommitRequest {
    /// A request for these offsets.
    pub fn new(offsets: Vec<OffsetCommit>, reason: CommitReason) -> Self {
        Self { offsets, reason }
    }

    /// True when there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

/// Whether committing waits for the target's answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CommitMode {
    /// Send and go on: the caller learns the outcome later, or not at all.
    #[default]
    Async,
    /// Wait for the target to confirm or refuse it.
    Sync,
}

/// A failure of a source or sink, classified so the engine can decide: a retriable one is
/// tried again, a fatal one stops it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    class: ErrorClass,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SourceError {
    /// A failure of `class` described by `message`.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            source: None,
        }
    }

    /// The same, keeping the underlying error as the source.
    pub fn with_source(
        class: ErrorClass,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            class,
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

impl Classify for SourceError {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

/// Told about rebalances by a [`RecordSource`], on the thread that polls it, inside
/// [`RecordSource::poll_batch`].
pub trait RebalanceListener: Send + Sync + 'static {
    /// `partitions` are being revoked. Returns once the consumer is done with them — it has
    /// committed what it wants through its [`OffsetSink`] — and the source may let them go.
    /// `lost`: the assignment was already lost (e.g. after a session timeout); commits would
    /// be refused.
    fn on_revoke(&self, partitions: &[TopicPartition], lost: bool);
    /// Partitions were assigned; `committed` holds their committed offsets and metadata. Called
    /// before any of their records is returned by `poll_batch`.
    fn on_assign(&self, committed: Vec<CommittedOffset>);
}

/// Where a consumer's records come from: a Kafka consumer group, or an in-memory stand-in.
///
/// All calls may block (poll waits up to its timeout): drive a source from a thread of its
/// own. With group membership, rebalances are reported to the listener given to
/// [`RecordSource::subscribe`], from inside `poll_batch`.
pub trait RecordSource: Send + Sync + 'static {
    /// Joins the group for `topics`, reporting rebalances to `listener`.
    fn subscribe(
        &self,
        topics: &[&str],
        listener: Arc<dyn RebalanceListener>,
    ) -> Result<(), SourceError>;
    /// Appends up to `max` records to `out`, waiting up to `timeout` for the first one only;
    /// returns how many were appended.
    fn poll_batch(
        &self,
        out: &mut Vec<ConsumedRecord>,
        max: usize,
        timeout: Duration,
    ) -> Result<usize, SourceError>;
    /// Stops fetching these partitions (they stay assigned).
    fn pause(&self, partitions: &[TopicPartition]) -> Result<(), SourceError>;
    /// Fetches these paused partitions again.
    fn resume(&self, partitions: &[TopicPartition]) -> Result<(), SourceError>;
}

/// Where a consumer's commits go: the group's committed offsets, offsets into a transaction,
/// a state-store checkpoint.
pub trait OffsetSink: Send + Sync + 'static {
    /// Commits `request`; see [`CommitMode`] for when it returns.
    fn commit(&self, request: &CommitRequest, mode: CommitMode) -> Result<(), SourceError>;
}
