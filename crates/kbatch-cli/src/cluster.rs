//! Choosing the cluster: `--brokers`, or the embedded dev broker.

use clap::Args as ClapArgs;
use kbatch_client::{Admin, ClientConfig, DevBroker, NewTopic};

/// Where to connect.
#[derive(ClapArgs, Debug, Clone)]
pub(crate) struct Target {
    /// Bootstrap servers of a Kafka cluster; without it an embedded in-memory dev broker is
    /// started in this process.
    #[arg(long, env = "KBATCH_BROKERS")]
    pub(crate) brokers: Option<String>,
}

/// A connected cluster; holds the embedded broker alive when one was started.
pub(crate) struct Cluster {
    pub(crate) bootstrap: String,
    pub(crate) dev: Option<DevBroker>,
}

impl Target {
    pub(crate) fn connect(&self) -> anyhow::Result<Cluster> {
        match &self.brokers {
            Some(b) => {
                ClientConfig::new(b.as_str()).validate()?;
                Ok(Cluster {
                    bootstrap: b.clone(),
                    dev: None,
                })
            }
            None => {
                let dev = DevBroker::start(1)?;
                let bootstrap = dev.bootstrap_servers();
                eprintln!(
                    "started embedded in-memory DEV broker at {bootstrap} (librdkafka mock cluster; not a real Kafka, data lives only in this process)"
                );
                Ok(Cluster {
                    bootstrap,
                    dev: Some(dev),
                })
            }
        }
    }
}

impl Cluster {
    pub(crate) fn client(&self) -> ClientConfig {
        ClientConfig::new(self.bootstrap.as_str()).with_client_id("kbatch-cli")
    }

    /// Creates the topic if missing. Returns its partition count.
    pub(crate) async fn ensure_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<i32> {
        if let Some(dev) = &self.dev {
            dev.create_topic(topic, partitions)?;
            return Ok(partitions);
        }
        let admin = Admin::new(&self.client())?;
        // Describe first: an existing topic needs no CreateTopics permission (nor support:
        // librdkafka's mock cluster lacks it).
        match admin.describe_topic(topic).await {
            Ok(d) => return Ok(d.partitions.len() as i32),
            Err(kbatch_client::Error::UnknownTopic(_)) => {}
            Err(e) => return Err(e.into()),
        }
        admin.ensure_topic(NewTopic::new(topic, partitions)).await?;
        Ok(admin.describe_topic(topic).await?.partitions.len() as i32)
    }
}

/// A random suffix for names this process makes up (demo and benchmark topics, groups).
pub(crate) fn random_suffix() -> u32 {
    rand::random()
}
