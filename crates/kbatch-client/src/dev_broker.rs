//! An in-memory development broker: librdkafka's mock cluster.
//!
//! **Not a real Kafka.** It keeps about 5 MiB per partition, does not enforce transactions
//! faithfully and lives only as long as this process. It exists so `kbatch demo` and
//! `kbatch broker` run with no set-up; tests of Kafka behaviour use a real broker.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::error::{Error, Result};

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
}
