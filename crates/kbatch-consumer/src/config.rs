//! Parallel consumer settings.

use std::time::Duration;

use kbatch_client::ConsumerConfig as KafkaConfig;
pub use kbatch_core::CommitMode;
use kbatch_core::ConfigError;

/// Which records may be processed at the same time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProcessingOrder {
    /// Records with the same key (within one topic) one at a time, in offset order; different
    /// keys concurrently, far beyond the partition count. Records with a null key are ordered
    /// by partition, as if they shared one key per partition.
    #[default]
    Key,
    /// Records of one partition one at a time, in offset order.
    Partition,
    /// Any records concurrently.
    Unordered,
}

/// What to do with commit metadata that cannot be read at assignment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetadataPolicy {
    /// Stop the consumer with an error naming the partition (nothing is reprocessed silently).
    #[default]
    FailFast,
    /// Warn and start from the committed offset, reprocessing completed records above it.
    Ignore,
}

/// How [`Running::shutdown`](crate::Running::shutdown) ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Finish buffered and in-flight records, then commit.
    #[default]
    Drain,
    /// Finish in-flight records only, then commit; buffered ones are left to the next owner.
    Quick,
}

/// Settings of a [`ParallelConsumer`](crate::ParallelConsumer).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ParallelConfig {
    /// The Kafka consumer (must name a group; auto-commit is forced off).
    pub kafka: KafkaConfig,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Ordering guarantee. Default [`ProcessingOrder::Key`].
    pub ordering: ProcessingOrder,
    /// Most handler invocations (or batches) at once, 1..=100,000. Default 256.
    pub max_concurrency: usize,
    /// Most records held (buffered, in flight, waiting to retry), 1..=10,000,000. Default 50,000.
    pub max_records: usize,
    /// Most payload bytes held. Default 128 MiB.
    pub max_bytes: usize,
    /// How often completed offsets are committed. Default 200 ms.
    pub commit_interval: Duration,
    /// Commit mode. Default async.
    pub commit_mode: CommitMode,
    /// The broker's `offset.metadata.max.bytes`. Default 4,096 (Kafka's default).
    pub metadata_limit: usize,
    /// Unreadable metadata at assignment. Default fail fast.
    pub metadata_policy: MetadataPolicy,
    /// How long a revocation waits for in-flight records of the revoked partitions. Default 10 s.
    pub revoke_timeout: Duration,
    /// Attempts per record before it is dead-lettered; `None` retries retriable errors forever.
    pub max_attempts: Option<u32>,
    /// Topic that records failing for good are written to (with their origin in headers).
    pub dead_letter_topic: Option<String>,
    /// Longest a shutdown waits for work to finish. Default 30 s.
    pub shutdown_timeout: Duration,
    /// Unpack packed-microbatch envelopes (records with the `kbatch-envelope` header, see
    /// [`kbatch_core::envelope`]) into their events: handlers get one record per event, each
    /// ordered, retried and dead-lettered on its own; the envelope's offset is committed once
    /// all its events are done. `false` hands the envelope record itself to the handler.
    /// Default true.
    pub unpack_envelopes: bool,
}

impl ParallelConfig {
    /// Defaults for `kafka`, subscribing to `topics`.
    pub fn new(kafka: KafkaConfig, topics: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            kafka,
            topics: topics.into_iter().map(Into::into).collect(),
            ordering: ProcessingOrder::Key,
            max_concurrency: 256,
            max_records: 50_000,
            max_bytes: 128 << 20,
            commit_interval: Duration::from_millis(200),
            commit_mode: CommitMode::Async,
            metadata_limit: 4096,
            metadata_policy: MetadataPolicy::FailFast,
            revoke_timeout: Duration::from_secs(10),
            max_attempts: None,
            dead_letter_topic: None,
            shutdown_timeout: Duration::from_secs(30),
            unpack_envelopes: true,
        }
    }

    /// Defaults for group `group` on the cluster at `brokers` (`host:port[,host:port…]`),
    /// subscribing to `topics`, reading from the earliest offset where the group has no
    /// commit yet.
    ///
    /// ```
    /// use kbatch_consumer::ParallelConfig;
    /// let c = ParallelConfig::for_brokers("127.0.0.1:9092", "router", ["positions"]);
    /// assert_eq!(c.kafka.group_id.as_deref(), Some("router"));
    /// c.validate().unwrap();
    /// ```
    pub fn for_brokers(
        brokers: &str,
        group: &str,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let kafka = KafkaConfig::new(kbatch_client::ClientConfig::new(brokers))
            .with_group(group)
            .with_offset_reset(kbatch_client::AutoOffsetReset::Earliest);
        Self::new(kafka, topics)
    }

    /// Sets the ordering.
    #[must_use]
    pub fn with_ordering(mut self, o: ProcessingOrder) -> Self {
        self.ordering = o;
        self
    }

    /// Sets the concurrency.
    #[must_use]
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }

    /// Sets the dead-letter topic and the attempts before a record goes there.
    #[must_use]
    pub fn with_dead_letter(mut self, topic: impl Into<String>, max_attempts: u32) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Unpacks envelopes into their events (`true`, the default) or hands envelope records to
    /// the handler as they are (`false`).
    #[must_use]
    pub fn with_unpack_envelopes(mut self, unpack: bool) -> Self {
        self.unpack_envelopes = unpack;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        if self.kafka.group_id.is_none() {
            return Err(ConfigError::new(
                "kafka.group_id",
                "None",
                "a consumer group: commits need one",
            ));
        }
        if self.topics.is_empty() || self.topics.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                "topics",
                format!("{:?}", self.topics),
                "one or more non-empty topic names",
            ));
        }
        ConfigError::check_range("max_concurrency", self.max_concurrency, 1, 100_000)?;
        ConfigError::check_range("max_records", self.max_records, 1, 10_000_000)?;
        ConfigError::check_range("max_bytes", self.max_bytes, 1024, 1 << 40)?;
        ConfigError::check_range(
            "commit_interval",
            self.commit_interval,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        )?;
        ConfigError::check_range("metadata_limit", self.metadata_limit, 64, 1 << 20)?;
        ConfigError::check_range(
            "revoke_timeout",
            self.revoke_timeout,
            Duration::ZERO,
            Duration::from_secs(600),
        )?;
        ConfigError::check_range(
            "shutdown_timeout",
            self.shutdown_timeout,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        if self.max_attempts == Some(0) {
            return Err(ConfigError::new(
                "max_attempts",
                "Some(0)",
                "None (retry forever) or at least 1",
            ));
        }
        if self.dead_letter_topic.as_deref() == Some("") {
            return Err(ConfigError::new(
                "dead_letter_topic",
                "\"\"",
                "a topic name or None",
            ));
        }
        if self
            .dead_letter_topic
            .as_ref()
            .is_some_and(|d| self.topics.contains(d))
        {
            return Err(ConfigError::new(
                "dead_letter_topic",
                format!("{:?}", self.dead_letter_topic),
                "a topic not consumed here (it would loop)",
            ));
        }
        Ok(())
    }

    /// The Kafka settings used: manual commits, whatever the caller set.
    pub(crate) fn effective_kafka(&self) -> KafkaConfig {
        let mut kafka = self.kafka.clone();
        kafka.enable_auto_commit = false;
        kafka
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> ParallelConfig {
        ParallelConfig::new(KafkaConfig::default().with_group("g"), ["t"])
    }

    #[test]
    fn defaults_valid_and_errors_name_fields() {
        ok().validate().unwrap();
        let e = ParallelConfig::new(KafkaConfig::default(), ["t"])
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "kafka.group_id");
        assert_eq!(
            ok().with_concurrency(0).validate().unwrap_err().field,
            "max_concurrency"
        );
        let e = ok().with_dead_letter("t", 3).validate().unwrap_err();
        assert!(e.to_string().contains("loop"), "{e}");
        let c = ParallelConfig {
            max_attempts: Some(0),
            ..ok()
        };
        assert_eq!(c.validate().unwrap_err().field, "max_attempts");
    }
}
