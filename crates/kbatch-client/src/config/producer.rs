//! Producer settings.

use std::time::Duration;

use kbatch_core::ConfigError;

use super::ClientConfig;

/// Which replicas must acknowledge a write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Acks {
    /// No acknowledgement (fire and forget; offsets are unknown).
    None,
    /// The partition leader only.
    Leader,
    /// All in-sync replicas (required by idempotence and transactions).
    #[default]
    All,
}

/// Batch compression codec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// librdkafka's name for the codec.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        Ok(match s {
            "none" => Compression::None,
            "gzip" => Compression::Gzip,
            "snappy" => Compression::Snappy,
            "lz4" => Compression::Lz4,
            "zstd" => Compression::Zstd,
            _ => {
                return Err(ConfigError::new(
                    "compression",
                    format!("{s:?}"),
                    "none, gzip, snappy, lz4 or zstd",
                ));
            }
        })
    }
}

/// librdkafka properties the typed producer fields set (besides the connection's), with their
/// aliases: every property `to_rdkafka` sets is here, so `extra` cannot silently override one.
const OWNED_PROPERTIES: &[super::Owned] = &[
    ("acks", "acks"),
    ("request.required.acks", "acks"),
    ("enable.idempotence", "idempotence"),
    ("linger.ms", "linger"),
    ("queue.buffering.max.ms", "linger"),
    ("batch.num.messages", "batch_records"),
    ("batch.size", "batch_bytes"),
    ("compression.type", "compression"),
    ("compression.codec", "compression"),
    ("message.timeout.ms", "delivery_timeout"),
    ("delivery.timeout.ms", "delivery_timeout"),
    ("queue.buffering.max.messages", "queue_records"),
    ("queue.buffering.max.kbytes", "queue_bytes"),
    ("message.max.bytes", "max_record_bytes"),
    ("transactional.id", "transactional_id"),
    ("transaction.timeout.ms", "transaction_timeout"),
    ("allow.auto.create.topics", "allow_auto_create_topics"),
    ("statistics.interval.ms", "statistics_interval"),
    // Success reports are what resolve kbatch's delivery futures and release its budgets:
    // without them every future would hang and the producer would fill up for good.
    (
        "delivery.report.only.error",
        "(every delivery report resolves a future)",
    ),
];

/// Settings of the Kafka producer client.
///
/// Defaults favour throughput with safety: `acks = all`, idempotence on, 5 ms linger,
/// batches up to 10,000 records or 1 MiB, a 120 s delivery timeout (as Java's
/// `delivery.timeout.ms`), and a client queue of 100,000 records / 256 MiB.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaProducerConfig {
    /// Connection settings.
    pub client: ClientConfig,
    /// Acknowledgements required.
    pub acks: Acks,
    /// Idempotent producer: no duplicates or reordering from internal retries.
    pub idempotence: bool,
    /// How long the client waits to fill a batch (`linger.ms`), 0..=900 s.
    pub linger: Duration,
    /// Most records in one batch (`batch.num.messages`), 1..=1,000,000.
    pub batch_records: usize,
    /// Most bytes in one batch (`batch.size`), 1 KiB..=2 GiB-1.
    pub batch_bytes: usize,
    /// Compression codec.
    pub compression: Compression,
    /// Time from enqueue to a final delivery report, retries included (`message.timeout.ms`).
    pub delivery_timeout: Duration,
    /// Records the client itself may hold (`queue.buffering.max.messages`), 1..=2^31-1.
    pub queue_records: usize,
    /// Bytes the client itself may hold (`queue.buffering.max.kbytes` × 1024).
    pub queue_bytes: usize,
    /// Largest record the client accepts (`message.max.bytes`), 1,000..=1,000,000,000.
    pub max_record_bytes: usize,
    /// Transactional id; `Some` enables transactions (requires idempotence).
    pub transactional_id: Option<String>,
    /// Transaction timeout (`transaction.timeout.ms`).
    pub transaction_timeout: Duration,
    /// Let the client create a missing topic when producing to it (off: a typo in a topic name
    /// fails the record instead of creating a topic).
    pub allow_auto_create_topics: bool,
    /// How often the client reports statistics (batch sizes, queue latency); `None`: never.
    pub statistics_interval: Option<Duration>,
}

impl Default for KafkaProducerConfig {
    fn default() -> Self {
        Self {
            client: ClientConfig::default(),
            acks: Acks::All,
            idempotence: true,
            linger: Duration::from_millis(5),
            batch_records: 10_000,
            batch_bytes: 1 << 20,
            compression: Compression::None,
            delivery_timeout: Duration::from_secs(120),
            queue_records: 100_000,
            queue_bytes: 256 << 20,
            max_record_bytes: 1_000_000,
            transactional_id: None,
            transaction_timeout: Duration::from_secs(60),
            allow_auto_create_topics: false,
            statistics_interval: None,
        }
    }
}

impl KafkaProducerConfig {
    /// Defaults for the given connection settings.
    pub fn new(client: ClientConfig) -> Self {
        Self {
            client,
            ..Self::default()
        }
    }

    /// Sets the linger.
    #[must_use]
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sets the compression codec.
    #[must_use]
    pub fn with_compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }

    /// Enables transactions under this id. Also caps `delivery_timeout` at
    /// `transaction_timeout`, which librdkafka requires of a transactional producer.
    #[must_use]
    pub fn with_transactional_id(mut self, id: impl Into<String>) -> Self {
        self.transactional_id = Some(id.into());
        self.delivery_timeout = self.delivery_timeout.min(self.transaction_timeout);
        self
    }

    /// Sets the delivery timeout.
    #[must_use]
    pub fn with_delivery_timeout(mut self, t: Duration) -> Self {
        self.delivery_timeout = t;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.client.validate()?;
        self.refuse_owned_extras()?;
        ConfigError::check_range(
            "linger",
            self.linger,
            Duration::ZERO,
            Duration::from_secs(900),
        )?;
        ConfigError::check_range("batch_records", self.batch_records, 1, 1_000_000)?;
        ConfigError::check_range("batch_bytes", self.batch_bytes, 1024, i32::MAX as usize)?;
        ConfigError::check_range("queue_records", self.queue_records, 1, i32::MAX as usize)?;
        ConfigError::check_range("queue_bytes", self.queue_bytes, 1024, 2_097_151 * 1024)?;
        ConfigError::check_range(
            "max_record_bytes",
            self.max_record_bytes,
            1_000,
            1_000_000_000,
        )?;
        ConfigError::check_range(
            "delivery_timeout",
            self.delivery_timeout,
            Duration::from_millis(1),
            Duration::from_millis(i32::MAX as u64),
        )?;
        if let Some(i) = self.statistics_interval {
            ConfigError::check_range(
                "statistics_interval",
                i,
                Duration::from_millis(10),
                Duration::from_secs(86_400),
            )?;
        }
        if self.idempotence && self.acks != Acks::All {
            return Err(ConfigError::new(
                "acks",
                format!("{:?}", self.acks),
                "All, because idempotence is on",
            ));
        }
        if self.transactional_id.is_some() && !self.idempotence {
            return Err(ConfigError::new(
                "idempotence",
                false,
                "true, because transactional_id is set",
            ));
        }
        if self.transactional_id.is_some() && self.delivery_timeout > self.transaction_timeout {
            return Err(ConfigError::new(
                "delivery_timeout",
                format!("{:?}", self.delivery_timeout),
                format!(
                    "<= transaction_timeout ({:?}) for a transactional producer",
                    self.transaction_timeout
                ),
            ));
        }
        if self.transactional_id.as_deref() == Some("") {
            return Err(ConfigError::new(
                "transactional_id",
                "\"\"",
                "a non-empty id or None",
            ));
        }
        Ok(())
    }

    /// Refuses pass-through entries for what the typed fields set (see [`OWNED_PROPERTIES`]).
    fn refuse_owned_extras(&self) -> Result<(), ConfigError> {
        for (key, value) in &self.client.extra {
            let Some(owner) = super::owner_of(key, OWNED_PROPERTIES) else {
                continue;
            };
            let mut expected = super::owned_message(key, owner);
            if owner == "idempotence" && self.transactional_id.is_some() {
                // Turning it off would also break transactions, which require it.
                expected.push_str(" (transactions require idempotence on)");
            }
            return Err(ConfigError::new(
                format!("client.extra[{key:?}]"),
                format!("{value:?}"),
                expected,
            ));
        }
        Ok(())
    }

    pub(crate) fn to_rdkafka(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        self.client.apply(&mut c);
        c.set(
            "acks",
            match self.acks {
                Acks::None => "0",
                Acks::Leader => "1",
                Acks::All => "all",
            },
        )
        .set("enable.idempotence", self.idempotence.to_string())
        .set("linger.ms", millis(self.linger))
        .set("batch.num.messages", self.batch_records.to_string())
        .set("batch.size", self.batch_bytes.to_string())
        .set("compression.type", self.compression.as_str())
        .set("message.timeout.ms", millis(self.delivery_timeout))
        .set(
            "queue.buffering.max.messages",
            self.queue_records.to_string(),
        )
        .set(
            "queue.buffering.max.kbytes",
            (self.queue_bytes / 1024).to_string(),
        )
        .set("message.max.bytes", self.max_record_bytes.to_string())
        .set(
            "allow.auto.create.topics",
            self.allow_auto_create_topics.to_string(),
        )
        .set(
            "statistics.interval.ms",
            self.statistics_interval
                .map_or_else(|| "0".to_owned(), millis),
        );
        if let Some(id) = &self.transactional_id {
            c.set("transactional.id", id)
                .set("transaction.timeout.ms", millis(self.transaction_timeout));
        }
        self.client.apply_extra(&mut c);
        c
    }
}

pub(crate) fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_idempotent() {
        let c = KafkaProducerConfig::default();
        c.validate().unwrap();
        let rd = c.to_rdkafka();
        assert_eq!(rd.get("enable.idempotence"), Some("true"));
        assert_eq!(rd.get("acks"), Some("all"));
        assert_eq!(rd.get("linger.ms"), Some("5"));
    }

    #[test]
    fn errors_name_the_field_and_range() {
        let c = KafkaProducerConfig {
            batch_records: 0,
            ..Default::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "batch_records");
        assert!(e.to_string().contains("1 ..= 1000000"), "{e}");
        let c = KafkaProducerConfig {
            acks: Acks::Leader,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "acks");
        let c = KafkaProducerConfig {
            idempotence: false,
            ..Default::default()
        }
        .with_transactional_id("t");
        assert_eq!(c.validate().unwrap_err().field, "idempotence");
    }

    /// Every property the typed fields write (found by building the librdkafka config, not
    /// from the list) is refused in `extra`, also with librdkafka's `topic.` prefix, and the
    /// error names the property and the field to use.
    #[test]
    fn every_property_the_typed_fields_set_is_refused_in_extra() {
        let mut c = KafkaProducerConfig::default().with_transactional_id("tx");
        c.statistics_interval = Some(Duration::from_secs(1));
        c.validate().unwrap();
        let connection: Vec<String> = {
            let mut rd = rdkafka::ClientConfig::new();
            c.client.apply(&mut rd);
            rd.config_map().keys().map(|k| (*k).to_owned()).collect()
        };
        let typed = c.to_rdkafka();
        let mut checked = 0;
        for key in typed.config_map().keys().copied() {
            if connection.iter().any(|c| c == key) {
                continue; // refused by ClientConfig::validate (its own test)
            }
            for spelling in [key.to_owned(), format!("topic.{key}")] {
                let mut bad = c.clone();
                bad.client.extra.insert(spelling.clone(), "1".into());
                let e = bad.validate().expect_err(&spelling);
                assert_eq!(e.field, format!("client.extra[{spelling:?}]"));
                let owner = OWNED_PROPERTIES.iter().find(|(p, _)| *p == key).unwrap().1;
                assert!(
                    e.to_string().contains(&format!("`{owner}`")) && e.to_string().contains(key),
                    "{e}"
                );
            }
            checked += 1;
        }
        assert!(checked >= 14, "only {checked} typed properties found");
    }

    #[test]
    fn aliases_and_kbatch_managed_properties_are_refused() {
        for (key, owner) in [
            ("request.required.acks", "acks"),
            ("queue.buffering.max.ms", "linger"),
            ("compression.codec", "compression"),
            ("delivery.timeout.ms", "delivery_timeout"),
        ] {
            let e = KafkaProducerConfig::new(ClientConfig::new("h:1").with_extra(key, "0"))
                .validate()
                .unwrap_err();
            assert!(e.to_string().contains(&format!("`{owner}`")), "{e}");
        }
        // Turning success reports off would leave every delivery future pending for good.
        let e = KafkaProducerConfig::new(
            ClientConfig::new("h:1").with_extra("delivery.report.only.error", "true"),
        )
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("delivery report"), "{e}");
        // Idempotence cannot be switched off behind a transactional producer's back.
        let e = KafkaProducerConfig::new(
            ClientConfig::new("h:1").with_extra("enable.idempotence", "false"),
        )
        .with_transactional_id("tx")
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "client.extra[\"enable.idempotence\"]");
        assert!(
            e.to_string().contains("`idempotence`") && e.to_string().contains("transactions"),
            "{e}"
        );
        // Properties kbatch does not type still pass through, `topic.`-prefixed ones too.
        let c = KafkaProducerConfig::new(
            ClientConfig::new("h:1")
                .with_extra("topic.metadata.refresh.interval.ms", "1000")
                .with_extra("topic.partitioner", "murmur2_random"),
        );
        c.validate().unwrap();
        assert_eq!(
            c.to_rdkafka().get("topic.partitioner"),
            Some("murmur2_random")
        );
    }

    #[test]
    fn extras_pass_through_but_cannot_fight_typed_fields() {
        let mut c = KafkaProducerConfig::default().with_compression("zstd".parse().unwrap());
        c.client
            .extra
            .insert("socket.keepalive.enable".into(), "true".into());
        c.validate().unwrap();
        let rd = c.to_rdkafka();
        assert_eq!(rd.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(rd.get("compression.type"), Some("zstd"));
        c.client.extra.insert("linger.ms".into(), "50".into());
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("`linger`"), "{e}");
        assert!("brotli".parse::<Compression>().is_err());
    }
}
