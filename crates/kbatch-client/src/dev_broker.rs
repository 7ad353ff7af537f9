//! An in-memory development broker: librdkafka's mock cluster.
//!
//! **Not a real Kafka.** It keeps about 5 MiB per partition, does not enforce transactions
//! faithfully and lives only as long as this process. It exists so `kbatch demo` and
//! `kbatch broker` run with no set-up; tests of Kafka behaviour use a real broker.

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka_sys::{RDKafkaApiKey, RDKafkaRespErr};

use crate::error::{Error, Result};

/// An error the dev broker can be told to answer requests with (fault injection for tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InjectedError {
    /// The write reached the leader but too few replicas: the record is *possibly persisted*.
    NotEnoughReplicasAfterAppend,
    /// Too few in-sync replicas; nothing was written.
    NotEnoughReplicas,
    /// Leadership moved.
    NotLeaderForPartition,
    /// The broker timed the request out.
    RequestTimedOut,
    /// The broker drops the connection instead of answering (with several requests in flight,
    /// all of them are lost).
    Disconnect,
    /// The client may not write the topic.
    TopicAuthorizationFailed,
    /// The broker is not the group's coordinator (any more).
    NotCoordinator,
    /// The group coordinator is not available.
    CoordinatorNotAvailable,
}

impl InjectedError {
    fn code(self) -> RDKafkaRespErr {
        use RDKafkaRespErr as E;
        match self {
            InjectedError::NotEnoughReplicasAfterAppend => {
                E::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND
            }
            InjectedError::NotEnoughReplicas => E::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            InjectedError::NotLeaderForPartition => E::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            InjectedError::RequestTimedOut => E::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            InjectedError::Disconnect => E::RD_KAFKA_RESP_ERR__TRANSPORT,
            InjectedError::TopicAuthorizationFailed => {
                E::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED
            }
            InjectedError::NotCoordinator => E::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            InjectedError::CoordinatorNotAvailable => {
                E::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE
            }
        }
    }
}

/// An in-process mock Kafka cluster. Dropping it stops it.
pub struct DevBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for DevBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevBroker")
            .field("bootstrap", &self.bootstrap_servers())
            .finish()
    }
}

impl DevBroker {
    /// Starts a mock cluster with `brokers` brokers listening on loopback.
    pub fn start(brokers: i32) -> Result<Self> {
        let cluster = MockCluster::new(brokers).map_err(|e| Error::kafka("start dev broker", e))?;
        Ok(Self { cluster })
    }

    /// The bootstrap address, `127.0.0.1:port[,…]`.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic (the mock does not implement the CreateTopics admin request).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        self.cluster
            .create_topic(name, partitions, 1)
            .map_err(|e| Error::kafka(format!("create topic {name:?} on dev broker"), e))
    }

    /// The next produce requests (one per error, in order) fail with these errors.
    pub fn fail_next_produce_requests(&self, errors: &[InjectedError]) {
        let codes: Vec<RDKafkaRespErr> = errors.iter().map(|e| e.code()).collect();
        self.cluster.request_errors(RDKafkaApiKey::Produce, &codes);
    }

    /// The next offset-commit requests (one per error, in order) fail with these errors.
    pub fn fail_next_commit_requests(&self, errors: &[InjectedError]) {
        let codes: Vec<RDKafkaRespErr> = errors.iter().map(|e| e.code()).collect();
        self.cluster
            .request_errors(RDKafkaApiKey::OffsetCommit, &codes);
    }

    /// Takes broker `id` (1-based) down: connections are refused until [`DevBroker::broker_up`].
    pub fn broker_down(&self, id: i32) -> Result<()> {
        self.cluster
            .broker_down(id)
            .map_err(|e| Error::kafka(format!("take dev broker {id} down"), e))
    }

    /// Brings broker `id` back.
    pub fn broker_up(&self, id: i32) -> Result<()> {
        self.cluster
            .broker_up(id)
            .map_err(|e| Error::kafka(format!("bring dev broker {id} up"), e))
    }

    /// Delays every response of broker `id` by `rtt`.
    pub fn set_round_trip_time(&self, id: i32, rtt: Duration) -> Result<()> {
        self.cluster
            .broker_round_trip_time(id, rtt)
            .map_err(|e| Error::kafka(format!("set round-trip time of dev broker {id}"), e))
    }
}
