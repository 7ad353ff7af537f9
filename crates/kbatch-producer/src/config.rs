//! Producer settings: the Kafka client's, plus kbatch's own bounds.

use std::time::Duration;

use kbatch_client::{ClientConfig, Compression, KafkaProducerConfig};
use kbatch_core::ConfigError;

/// Settings of a [`Producer`](crate::Producer): the Kafka client's ([`KafkaProducerConfig`])
/// plus kbatch's own bounds.
///
/// ```
/// use std::time::Duration;
/// use kbatch_producer::{ClientConfig, ProducerConfig};
///
/// let config = ProducerConfig::new(ClientConfig::new("kafka-1:9092,kafka-2:9092"))
///     .with_batch(5_000, 512 << 10, Duration::from_millis(10))
///     .with_pending_limits(50_000, 32 << 20);
/// config.validate().unwrap(); // `Producer::new` validates too
/// ```
///
/// Batching — flush a partition's batch at `N` records, `B` bytes or `T` linger, whichever
/// comes first — is `kafka.batch_records`, `kafka.batch_bytes` and `kafka.linger`
/// (defaults 10,000 records, 1 MiB, 5 ms). Memory is bounded by `max_pending_records` and
/// `max_pending_bytes`: past either, [`Producer::send`](crate::Producer::send) waits and
/// [`Producer::try_send`](crate::Producer::try_send) hands the record back as `Full`.
/// Builders only set fields; [`ProducerConfig::validate`] (called by
/// [`Producer::new`](crate::Producer::new)) checks them all.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// The Kafka client settings (connection, acks, idempotence, batching, compression…).
    pub kafka: KafkaProducerConfig,
    /// Most records the producer holds (sent, not yet delivered or failed),
    /// 1..=10,000,000. Default 100,000. Futures the caller has not awaited do not count.
    pub max_pending_records: usize,
    /// Most payload bytes (key + value + headers) sent and not yet delivered, at least
    /// `kafka.max_record_bytes`. Default 64 MiB.
    pub max_pending_bytes: usize,
    /// How long `close` (and drop) may wait for outstanding deliveries before failing them.
    /// Default 30 s.
    pub close_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        let mut kafka = KafkaProducerConfig::default();
        // The producer's metrics include librdkafka's batch statistics.
        kafka.statistics_interval = Some(Duration::from_secs(1));
        Self {
            kafka,
            max_pending_records: 100_000,
            max_pending_bytes: 64 << 20,
            close_timeout: Duration::from_secs(30),
        }
    }
}

impl ProducerConfig {
    /// Defaults for the given connection settings, e.g.
    /// `ProducerConfig::new(ClientConfig::new("host:9092"))`.
    pub fn new(client: ClientConfig) -> Self {
        let mut c = Self::default();
        c.kafka.client = client;
        c
    }

    /// Defaults for the cluster at `brokers` (`host:port[,host:port…]`): the short path,
    /// `ProducerConfig::new(ClientConfig::new(brokers))`.
    pub fn for_brokers(brokers: &str) -> Self {
        Self::new(ClientConfig::new(brokers))
    }

    /// Replaces the Kafka client settings as a whole; they are used as given (including
    /// their `statistics_interval`, which `new` sets to 1 s for the producer's metrics).
    #[must_use]
    pub fn with_kafka(mut self, kafka: KafkaProducerConfig) -> Self {
        self.kafka = kafka;
        self
    }

    /// Sets the batch triggers: `records` (N), `bytes` (B) and `linger` (T).
    #[must_use]
    pub fn with_batch(mut self, records: usize, bytes: usize, linger: Duration) -> Self {
        self.kafka.batch_records = records;
        self.kafka.batch_bytes = bytes;
        self.kafka.linger = linger;
        self
    }

    /// Sets the compression codec.
    #[must_use]
    pub fn with_compression(mut self, c: Compression) -> Self {
        self.kafka = self.kafka.with_compression(c);
        self
    }

    /// Enables transactions under this id (see [`KafkaProducerConfig::with_transactional_id`]).
    #[must_use]
    pub fn with_transactional_id(mut self, id: impl Into<String>) -> Self {
        self.kafka = self.kafka.with_transactional_id(id);
        self
    }

    /// Sets the time from enqueue to a final delivery report, retries included.
    #[must_use]
    pub fn with_delivery_timeout(mut self, t: Duration) -> Self {
        self.kafka = self.kafka.with_delivery_timeout(t);
        self
    }

    /// Sets the memory bounds.
    #[must_use]
    pub fn with_pending_limits(mut self, records: usize, bytes: usize) -> Self {
        self.max_pending_records = records;
        self.max_pending_bytes = bytes;
        self
    }

    /// Sets the close deadline.
    #[must_use]
    pub fn with_close_timeout(mut self, t: Duration) -> Self {
        self.close_timeout = t;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        ConfigError::check_range(
            "max_pending_records",
            self.max_pending_records,
            1,
            10_000_000,
        )?;
        if self.max_pending_bytes < self.kafka.max_record_bytes {
            return Err(ConfigError::new(
                "max_pending_bytes",
                self.max_pending_bytes,
                format!(
                    ">= kafka.max_record_bytes ({}), so every valid record fits",
                    self.kafka.max_record_bytes
                ),
            ));
        }
        ConfigError::check_range("max_pending_bytes", self.max_pending_bytes, 1024, 1 << 38)?;
        ConfigError::check_range(
            "close_timeout",
            self.close_timeout,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        Ok(())
    }

    /// The client settings actually used: librdkafka's own queue is sized above kbatch's
    /// bounds so that kbatch's back-pressure, not a client `QueueFull`, is what callers see.
    /// Public for benchmarks, which give their peers the very same settings.
    #[doc(hidden)]
    pub fn effective_kafka_for_bench(&self) -> KafkaProducerConfig {
        self.effective_kafka()
    }

    pub(crate) fn effective_kafka(&self) -> KafkaProducerConfig {
        let mut k = self.kafka.clone();
        // librdkafka counts key + value bytes; kbatch's budget counts headers too, so equal
        // limits keep the client queue at least as large as what kbatch admits.
        k.queue_records = k
            .queue_records
            .max(self.max_pending_records)
            .min(i32::MAX as usize);
        k.queue_bytes = k
            .queue_bytes
            .max(self.max_pending_bytes)
            .min(2_097_151 * 1024);
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_client_queue_exceeds_our_bounds() {
        let c = ProducerConfig::default().with_pending_limits(300_000, 512 << 20);
        c.validate().unwrap();
        let k = c.effective_kafka();
        assert!(k.queue_records >= 300_000 && k.queue_bytes >= 512 << 20);
        let d = ProducerConfig::default();
        assert_eq!(
            d.effective_kafka(),
            d.kafka,
            "defaults already agree: nothing is changed"
        );
    }

    #[test]
    fn short_path_from_a_bootstrap_string_validates_on_use() {
        let c = ProducerConfig::new(ClientConfig::new("k1:9092,k2:9092"))
            .with_compression(Compression::Zstd)
            .with_transactional_id("orders-tx");
        assert_eq!(c.kafka.client.brokers, "k1:9092,k2:9092");
        assert_eq!(c.kafka.transactional_id.as_deref(), Some("orders-tx"));
        assert_eq!(c.kafka.statistics_interval, Some(Duration::from_secs(1)));
        c.validate().unwrap();
        // Builders do not check; validation names the field.
        let e = ProducerConfig::new(ClientConfig::new("k1"))
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "brokers");
    }

    #[test]
    fn bounds_are_checked_with_clear_errors() {
        let e = ProducerConfig::default()
            .with_pending_limits(0, 1 << 20)
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "max_pending_records");
        let e = ProducerConfig::default()
            .with_pending_limits(10, 1000)
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "max_pending_bytes");
        assert!(e.to_string().contains("max_record_bytes"), "{e}");
        let e = ProducerConfig::default()
            .with_batch(0, 1 << 20, Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "batch_records");
    }
}
