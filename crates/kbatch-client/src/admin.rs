//! Topic administration: create, describe, delete.
//!
//! ```no_run
//! # async fn f() -> kbatch_client::Result<()> {
//! use kbatch_client::{Admin, ClientConfig, NewTopic};
//! let admin = Admin::new(&ClientConfig::new("127.0.0.1:9092"))?;
//! admin.create_topics(&[NewTopic::new("orders", 8).with_config("retention.ms", "3600000")]).await?;
//! let d = admin.describe_topic("orders").await?;
//! assert_eq!(d.partitions.len(), 8);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic as RdNewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::code::ErrorCode;
use crate::config::ClientConfig;
use crate::error::{Error, Result};

/// A topic to create.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewTopic {
    /// Topic name.
    pub name: String,
    /// Partition count, ≥ 1.
    pub partitions: i32,
    /// Replication factor; `None` uses the broker default.
    pub replication_factor: Option<i32>,
    /// Topic configs, e.g. `cleanup.policy = compact`.
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    /// A topic with `partitions` partitions and the broker's default replication.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication_factor: None,
            configs: BTreeMap::new(),
        }
    }

    /// Adds a topic config.
    #[must_use]
    pub fn with_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.insert(key.into(), value.into());
        self
    }

    /// Sets the replication factor.
    #[must_use]
    pub fn with_replication(mut self, rf: i32) -> Self {
        self.replication_factor = Some(rf);
        self
    }
}

/// One partition as the cluster metadata reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionInfo {
    /// Partition id.
    pub id: i32,
    /// Leader broker id; -1 while leaderless.
    pub leader: i32,
    /// Replica broker ids.
    pub replicas: Vec<i32>,
    /// In-sync replica broker ids.
    pub isr: Vec<i32>,
}

/// A topic as the cluster metadata reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicDescription {
    /// Topic name.
    pub name: String,
    /// Partitions, ordered by id.
    pub partitions: Vec<PartitionInfo>,
}

/// Admin operations on a cluster.
pub struct Admin {
    inner: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// An admin client; operations time out after 30 s.
    pub fn new(config: &ClientConfig) -> Result<Self> {
        config.validate()?;
        let mut c = rdkafka::ClientConfig::new();
        config.apply(&mut c);
        config.apply_extra(&mut c);
        let inner = c
            .create()
            .map_err(|e| Error::kafka("create admin client", e))?;
        Ok(Self {
            inner: Arc::new(inner),
            timeout: Duration::from_secs(30),
        })
    }

    /// Sets how long each operation may take.
    #[must_use]
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .operation_timeout(Some(self.timeout))
            .request_timeout(Some(self.timeout))
    }

    /// Creates topics and waits until every partition of each has a leader, so the caller can
    /// produce at once. Fails on the first topic the broker refuses (including one that exists).
    pub async fn create_topics(&self, topics: &[NewTopic]) -> Result<()> {
        for t in topics {
            if t.partitions < 1 {
                return Err(Error::Invalid {
                    what: format!("partition count of topic {:?}", t.name),
                    why: format!("{} is not >= 1", t.partitions),
                });
            }
        }
        let specs: Vec<Vec<(String, String)>> = topics
            .iter()
            .map(|t| t.configs.clone().into_iter().collect())
            .collect();
        let native: Vec<RdNewTopic<'_>> = topics
            .iter()
            .zip(&specs)
            .map(|(t, cfg)| {
                let rf = TopicReplication::Fixed(t.replication_factor.unwrap_or(-1));
                cfg.iter()
                    .fold(RdNewTopic::new(&t.name, t.partitions, rf), |n, (k, v)| {
                        n.set(k, v)
                    })
            })
            .collect();
        let results = self
            .inner
            .create_topics(&native, &self.options())
            .await
            .map_err(|e| Error::kafka("create topics", e))?;
        for r in results {
            if let Err((topic, code)) = r {
                return Err(Error::Topic {
                    op: "create",
                    topic,
                    code: ErrorCode::from_rdkafka(code),
                });
            }
        }
        for t in topics {
            self.wait_for_leaders(&t.name, t.partitions).await?;
        }
        Ok(())
    }

    /// Creates one topic unless it already exists (any partition count). Returns whether it
    /// was created.
    pub async fn ensure_topic(&self, topic: NewTopic) -> Result<bool> {
        match self.create_topics(std::slice::from_ref(&topic)).await {
            Ok(()) => Ok(true),
            Err(Error::Topic {
                code: ErrorCode::TopicAlreadyExists,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes topics. Unknown topics are an error naming the topic.
    pub async fn delete_topics(&self, names: &[&str]) -> Result<()> {
        let results = self
            .inner
            .delete_topics(names, &self.options())
            .await
            .map_err(|e| Error::kafka("delete topics", e))?;
        for r in results {
            if let Err((topic, code)) = r {
                return Err(match code {
                    RDKafkaErrorCode::UnknownTopicOrPartition => Error::UnknownTopic(topic),
                    code => Error::Topic {
                        op: "delete",
                        topic,
                        code: ErrorCode::from_rdkafka(code),
                    },
                });
            }
        }
        Ok(())
    }

    /// Deletes consumer groups (they must have no active members), with their committed offsets.
    pub async fn delete_groups(&self, groups: &[&str]) -> Result<()> {
        let results = self
            .inner
            .delete_groups(groups, &self.options())
            .await
            .map_err(|e| Error::kafka("delete groups", e))?;
        for r in results {
            if let Err((group, code)) = r {
                return Err(Error::Invalid {
                    what: format!("delete group {group:?}"),
                    why: ErrorCode::from_rdkafka(code).to_string(),
                });
            }
        }
        Ok(())
    }

    /// Partitions, leaders and replicas of a topic.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let inner = Arc::clone(&self.inner);
        let (name, timeout) = (name.to_owned(), self.timeout);
        tokio::task::spawn_blocking(move || describe_blocking(&inner, &name, timeout))
            .await
            .map_err(|e| Error::Invalid {
                what: "describe task".into(),
                why: e.to_string(),
            })?
    }

    /// All topic names in the cluster, internal ones (`__…`) excluded, sorted.
    pub async fn list_topics(&self) -> Result<Vec<String>> {
        let inner = Arc::clone(&self.inner);
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            let md = inner
                .inner()
                .fetch_metadata(None, timeout)
                .map_err(|e| Error::kafka("list topics", e))?;
            let mut names: Vec<String> = md
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .filter(|n| !n.starts_with("__"))
                .collect();
            names.sort();
            Ok(names)
        })
        .await
        .map_err(|e| Error::Invalid {
            what: "list task".into(),
            why: e.to_string(),
        })?
    }

    /// The topic's effective configs (name → value).
    pub async fn describe_topic_configs(&self, name: &str) -> Result<BTreeMap<String, String>> {
        let spec = ResourceSpecifier::Topic(name);
        let results = self
            .inner
            .describe_configs([&spec], &self.options())
            .await
            .map_err(|e| Error::kafka(format!("describe configs of topic {name:?}"), e))?;
        let mut out = BTreeMap::new();
        for r in results {
            let res = r.map_err(|code| Error::Topic {
                op: "describe configs",
                topic: name.into(),
                code: ErrorCode::from_rdkafka(code),
            })?;
            for e in res.entries {
                if let Some(v) = e.value {
                    out.insert(e.name, v);
                }
            }
        }
        Ok(out)
    }

    async fn wait_for_leaders(&self, name: &str, partitions: i32) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Ok(d) = self.describe_topic(name).await
                && d.partitions.len() == partitions as usize
                && d.partitions.iter().all(|p| p.leader >= 0)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    op: format!("leaders for topic {name:?}"),
                    after: self.timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn describe_blocking(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    timeout: Duration,
) -> Result<TopicDescription> {
    // Ask for all topics: a request naming the topic lets a producer-type handle (which the
    // admin client is) auto-create it on brokers with auto.create.topics.enable.
    let md = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|e| Error::kafka(format!("describe topic {name:?}"), e))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == name)
        .ok_or_else(|| Error::UnknownTopic(name.to_owned()))?;
    if let Some(err) = t.error() {
        let code = RDKafkaErrorCode::from(err);
        return Err(match code {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                Error::UnknownTopic(name.to_owned())
            }
            code => Error::Topic {
                op: "describe",
                topic: name.to_owned(),
                code: ErrorCode::from_rdkafka(code),
            },
        });
    }
    let mut partitions: Vec<PartitionInfo> = t
        .partitions()
        .iter()
        .map(|p| PartitionInfo {
            id: p.id(),
            leader: p.leader(),
            replicas: p.replicas().to_vec(),
            isr: p.isr().to_vec(),
        })
        .collect();
    partitions.sort_by_key(|p| p.id);
    Ok(TopicDescription {
        name: name.to_owned(),
        partitions,
    })
}
