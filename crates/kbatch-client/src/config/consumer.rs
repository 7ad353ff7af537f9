//! Consumer settings.

use std::time::Duration;

use kbatch_core::ConfigError;

use super::ClientConfig;
use super::producer::millis;

/// Where to start when a group has no committed offset for a partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AutoOffsetReset {
    /// The oldest retained record.
    Earliest,
    /// Only records produced from now on (Kafka's default).
    #[default]
    Latest,
    /// Fail with an error.
    Error,
}

/// Whether aborted transactional records are visible.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// Only committed transactional records (librdkafka's default).
    #[default]
    ReadCommitted,
    /// Everything, including records of aborted and open transactions.
    ReadUncommitted,
}

/// How partitions are assigned among group members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AssignmentStrategy {
    /// Eager range assignment (librdkafka's default).
    #[default]
    Range,
    /// Eager round-robin assignment.
    RoundRobin,
    /// Incremental cooperative rebalancing: only moved partitions are revoked.
    CooperativeSticky,
}

/// Which consumer group protocol the client speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupProtocol {
    /// The classic protocol (JoinGroup/SyncGroup; assignment computed by a member).
    #[default]
    Classic,
    /// KIP-848's consumer protocol (Kafka 4.0+): the broker assigns partitions, incrementally,
    /// without a stop-the-world rebalance. The session timeout and the assignor are then the
    /// broker's (`group.consumer.session.timeout.ms`, default 45 s); `session_timeout` and
    /// `assignment_strategy` must stay at their defaults.
    Consumer,
}

/// Properties the typed consumer fields own (besides the connection's): passing them through
/// `extra` would fight the typed value, or take commits away from kbatch.
const OWNED_PROPERTIES: &[super::Owned] = &[
    ("group.id", "group_id"),
    ("group.instance.id", "group_instance_id"),
    ("group.protocol", "group_protocol"),
    ("auto.offset.reset", "auto_offset_reset"),
    ("isolation.level", "isolation"),
    ("partition.assignment.strategy", "assignment_strategy"),
    ("enable.auto.commit", "enable_auto_commit"),
    (
        "enable.auto.offset.store",
        "(offsets are stored as records complete)",
    ),
    ("session.timeout.ms", "session_timeout"),
    ("max.poll.interval.ms", "max_poll_interval"),
    ("max.partition.fetch.bytes", "max_partition_fetch_bytes"),
    ("queued.max.messages.kbytes", "prefetch_bytes"),
    ("fetch.wait.max.ms", "fetch_wait_max"),
];

/// Settings of the Kafka consumer client.
///
/// kbatch commits offsets itself, so auto-commit and auto offset store are off by default.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// Connection settings.
    pub client: ClientConfig,
    /// Consumer group; `None` allows only manual assignment without commits.
    pub group_id: Option<String>,
    /// Static membership (KIP-345, `group.instance.id`): a member restarted with the same id
    /// takes its partitions back at once, without a rebalance, instead of waiting out the
    /// session timeout. Each running member needs its own id; a second one with the same id
    /// fences the first. A static member does not leave the group on shutdown: its partitions
    /// wait for it until the session timeout.
    pub group_instance_id: Option<String>,
    /// Consumer group protocol. Default [`GroupProtocol::Classic`].
    pub group_protocol: GroupProtocol,
    /// Start position without a committed offset.
    pub auto_offset_reset: AutoOffsetReset,
    /// Transactional visibility.
    pub isolation: Isolation,
    /// Group assignment strategy.
    pub assignment_strategy: AssignmentStrategy,
    /// Let the client commit on a timer (off: kbatch commits what is done).
    pub enable_auto_commit: bool,
    /// Group session timeout, 1 s..=1 h.
    pub session_timeout: Duration,
    /// Longest gap between polls before the member is considered stuck, ≥ session timeout.
    pub max_poll_interval: Duration,
    /// Most bytes fetched per partition per request, 1 KiB..=1 GiB.
    pub max_partition_fetch_bytes: usize,
    /// Bytes the client pre-fetches per partition (`queued.max.messages.kbytes` × 1024).
    pub prefetch_bytes: usize,
    /// Longest the broker may wait to fill a fetch (`fetch.wait.max.ms`).
    pub fetch_wait_max: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            client: ClientConfig::default(),
            group_id: None,
            group_instance_id: None,
            group_protocol: GroupProtocol::Classic,
            auto_offset_reset: AutoOffsetReset::Latest,
            isolation: Isolation::ReadCommitted,
            assignment_strategy: AssignmentStrategy::Range,
            enable_auto_commit: false,
            session_timeout: Duration::from_secs(45),
            max_poll_interval: Duration::from_secs(300),
            max_partition_fetch_bytes: 1 << 20,
            prefetch_bytes: 64 << 20,
            fetch_wait_max: Duration::from_millis(100),
        }
    }
}

impl ConsumerConfig {
    /// Defaults for the given connection settings.
    pub fn new(client: ClientConfig) -> Self {
        Self {
            client,
            ..Self::default()
        }
    }

    /// Sets the consumer group.
    #[must_use]
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group_id = Some(group.into());
        self
    }

    /// Makes this member static, with `id` (see [`ConsumerConfig::group_instance_id`]).
    #[must_use]
    pub fn with_instance_id(mut self, id: impl Into<String>) -> Self {
        self.group_instance_id = Some(id.into());
        self
    }

    /// Sets the group protocol.
    #[must_use]
    pub fn with_group_protocol(mut self, p: GroupProtocol) -> Self {
        self.group_protocol = p;
        self
    }

    /// Sets the start position for partitions without a committed offset.
    #[must_use]
    pub fn with_offset_reset(mut self, r: AutoOffsetReset) -> Self {
        self.auto_offset_reset = r;
        self
    }

    /// Sets the transactional visibility.
    #[must_use]
    pub fn with_isolation(mut self, i: Isolation) -> Self {
        self.isolation = i;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.client.validate()?;
        if self.group_id.as_deref() == Some("") {
            return Err(ConfigError::new(
                "group_id",
                "\"\"",
                "a non-empty group id or None",
            ));
        }
        if self.group_instance_id.as_deref() == Some("") {
            return Err(ConfigError::new(
                "group_instance_id",
                "\"\"",
                "a non-empty id or None",
            ));
        }
        if self.group_instance_id.is_some() && self.group_id.is_none() {
            return Err(ConfigError::new(
                "group_instance_id",
                format!("{:?}", self.group_instance_id),
                "None without a group_id (static membership is membership of a group)",
            ));
        }
        super::refuse_owned("client.extra", self.client.extra.keys(), OWNED_PROPERTIES)?;
        ConfigError::check_range(
            "session_timeout",
            self.session_timeout,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        if self.group_protocol == GroupProtocol::Consumer {
            let d = Self::default();
            if self.session_timeout != d.session_timeout {
                return Err(ConfigError::new(
                    "session_timeout",
                    format!("{:?}", self.session_timeout),
                    "the default with group_protocol Consumer: the broker sets it (group.consumer.session.timeout.ms)",
                ));
            }
            if self.assignment_strategy != d.assignment_strategy {
                return Err(ConfigError::new(
                    "assignment_strategy",
                    format!("{:?}", self.assignment_strategy),
                    "the default with group_protocol Consumer: the broker assigns (group.consumer.assignors)",
                ));
            }
        }
        if self.max_poll_interval < self.session_timeout {
            return Err(ConfigError::new(
                "max_poll_interval",
                format!("{:?}", self.max_poll_interval),
                format!(">= session_timeout ({:?})", self.session_timeout),
            ));
        }
        ConfigError::check_range(
            "max_partition_fetch_bytes",
            self.max_partition_fetch_bytes,
            1024,
            1 << 30,
        )?;
        ConfigError::check_range(
            "prefetch_bytes",
            self.prefetch_bytes,
            1024,
            2_097_151 * 1024,
        )?;
        ConfigError::check_range(
            "fetch_wait_max",
            self.fetch_wait_max,
            Duration::ZERO,
            Duration::from_secs(300),
        )?;
        Ok(())
    }

    pub(crate) fn to_rdkafka(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        self.client.apply(&mut c);
        // librdkafka needs a group handle even for manual assignment; without a group the
        // consumer never commits (auto-commit is off and `commit` refuses), so the id is inert.
        c.set(
            "group.id",
            self.group_id.as_deref().unwrap_or("kbatch-assign-only"),
        );
        if let Some(id) = &self.group_instance_id {
            c.set("group.instance.id", id);
        }
        c.set(
            "auto.offset.reset",
            match self.auto_offset_reset {
                AutoOffsetReset::Earliest => "earliest",
                AutoOffsetReset::Latest => "latest",
                AutoOffsetReset::Error => "error",
            },
        )
        .set(
            "isolation.level",
            match self.isolation {
                Isolation::ReadCommitted => "read_committed",
                Isolation::ReadUncommitted => "read_uncommitted",
            },
        )
        .set("enable.auto.commit", self.enable_auto_commit.to_string())
        .set("enable.auto.offset.store", "false")
        .set("max.poll.interval.ms", millis(self.max_poll_interval))
        .set(
            "max.partition.fetch.bytes",
            self.max_partition_fetch_bytes.to_string(),
        )
        .set(
            "queued.max.messages.kbytes",
            (self.prefetch_bytes / 1024).to_string(),
        )
        .set("fetch.wait.max.ms", millis(self.fetch_wait_max))
        .set("enable.partition.eof", "false");
        match self.group_protocol {
            GroupProtocol::Classic => {
                c.set(
                    "partition.assignment.strategy",
                    match self.assignment_strategy {
                        AssignmentStrategy::Range => "range",
                        AssignmentStrategy::RoundRobin => "roundrobin",
                        AssignmentStrategy::CooperativeSticky => "cooperative-sticky",
                    },
                )
                .set("session.timeout.ms", millis(self.session_timeout));
            }
            // librdkafka refuses both with the consumer protocol: the broker owns them.
            GroupProtocol::Consumer => {
                c.set("group.protocol", "consumer");
            }
        }
        self.client.apply_extra(&mut c);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_valid_and_manual_commit() {
        let c = ConsumerConfig::default().with_group("g");
        c.validate().unwrap();
        assert_eq!(c.to_rdkafka().get("enable.auto.commit"), Some("false"));
    }

    #[test]
    fn static_membership_and_the_consumer_protocol() {
        let c = ConsumerConfig::default()
            .with_group("g")
            .with_instance_id("worker-1")
            .with_group_protocol(GroupProtocol::Consumer);
        c.validate().unwrap();
        let r = c.to_rdkafka();
        assert_eq!(r.get("group.instance.id"), Some("worker-1"));
        assert_eq!(r.get("group.protocol"), Some("consumer"));
        assert_eq!(
            r.get("session.timeout.ms"),
            None,
            "the broker's with KIP-848"
        );
        assert_eq!(r.get("partition.assignment.strategy"), None);
        let e = ConsumerConfig {
            session_timeout: Duration::from_secs(10),
            ..c.clone()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "session_timeout");
        assert!(
            e.to_string().contains("group.consumer.session.timeout.ms"),
            "{e}"
        );
        let e = ConsumerConfig::default()
            .with_instance_id("w")
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "group_instance_id");
        let mut c = ConsumerConfig::default().with_group("g");
        c.client
            .extra
            .insert("enable.auto.commit".into(), "true".into());
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("enable_auto_commit"), "{e}");
    }

    #[test]
    fn poll_interval_must_cover_session() {
        let c = ConsumerConfig {
            max_poll_interval: Duration::from_secs(2),
            ..Default::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "max_poll_interval");
        assert!(e.to_string().contains(">= session_timeout"), "{e}");
        assert_eq!(
            ConsumerConfig::default()
                .with_group("")
                .validate()
                .unwrap_err()
                .field,
            "group_id"
        );
    }
}
