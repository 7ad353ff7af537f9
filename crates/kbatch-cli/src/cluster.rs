//! Choosing the cluster: `--brokers`, or the embedded dev broker.

use std::cell::RefCell;
use std::rc::Rc;

use clap::Args as ClapArgs;
use kbatch_client::{Admin, ClientConfig, DevBroker, NewTopic};

/// Where to connect.
#[derive(ClapArgs, Debug, Clone)]
pub(crate) struct Target {
    /// Bootstrap servers of a Kafka cluster; without it an embedded in-memory dev broker is
    /// started in this process.
    #[arg(long, env = "KBATCH_BROKERS")]
    pub(crate) brokers: Option<String>,
    /// A librdkafka property passed through to the clients, as kcat takes it (repeatable).
    /// Properties kbatch sets itself through a flag or owns (commits, group) are refused.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    pub(crate) properties: Vec<(String, String)>,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!(
            "{s:?}: expected KEY=VALUE, e.g. -X socket.timeout.ms=30000"
        )),
    }
}

thread_local! {
    /// Every embedded dev broker started (on the main thread, which drives the command), kept
    /// until [`stop_dev_brokers`]: a client the command dropped is destroyed on the runtime's
    /// blocking pool after the command returns, and a broker gone before it makes it log
    /// connection errors after the command's output.
    static DEV_BROKERS: RefCell<Vec<Rc<DevBroker>>> = const { RefCell::new(Vec::new()) };
}

/// Stops the embedded dev brokers; call it once the runtime (and every client) is gone.
pub(crate) fn stop_dev_brokers() {
    DEV_BROKERS.with(|d| d.borrow_mut().clear());
}

/// A connected cluster; holds the embedded broker alive when one was started.
pub(crate) struct Cluster {
    pub(crate) bootstrap: String,
    pub(crate) dev: Option<Rc<DevBroker>>,
    properties: Vec<(String, String)>,
}

impl Target {
    pub(crate) fn connect(&self) -> anyhow::Result<Cluster> {
        match &self.brokers {
            Some(b) => {
                let cluster = Cluster {
                    bootstrap: b.clone(),
                    dev: None,
                    properties: self.properties.clone(),
                };
                cluster.client().validate()?;
                Ok(cluster)
            }
            None => {
                let dev = Rc::new(DevBroker::start(1)?);
                DEV_BROKERS.with(|d| d.borrow_mut().push(Rc::clone(&dev)));
                let bootstrap = dev.bootstrap_servers();
                eprintln!(
                    "started embedded in-memory DEV broker at {bootstrap} (librdkafka mock cluster; not a real Kafka, data lives only in this process)"
                );
                Ok(Cluster {
                    bootstrap,
                    dev: Some(dev),
                    properties: self.properties.clone(),
                })
            }
        }
    }
}

impl Cluster {
    /// Client settings for this cluster, with the `-X` properties.
    pub(crate) fn client(&self) -> ClientConfig {
        self.properties.iter().fold(
            ClientConfig::new(self.bootstrap.as_str()).with_client_id("kbatch-cli"),
            |c, (k, v)| c.with_extra(k, v),
        )
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
