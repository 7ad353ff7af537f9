//! A real three-node Kafka cluster for fault tests: kill a node, restart it, find leaders and
//! coordinators.
//!
//! ```text
//!   cluster() ──► KBATCH_CLUSTER_BROKERS (+ KBATCH_CLUSTER_STATE_DIR), or
//!                 scripts/kafka up --brokers 3   (once per `cargo test` run, reaped at its end)
//!   cluster().faults().await ──► Faults: exclusive; kill(node) / restart(node)
//!                                 via scripts/kafka kill|start NODE --state-dir …
//! ```
//!
//! Nodes are numbered 1..=3 and the number is also the node's broker id, so a partition
//! leader from the metadata names the node to kill.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kbatch_client::{
    Admin, ClientConfig, ConsumerConfig, KafkaConsumer, KafkaProducerConfig, NewTopic,
    TopicDescription,
};
use kbatch_core::TopicPartition;
use tokio::sync::{Mutex, MutexGuard};

use crate::kafka::{client_config_for, consumer_config_for};
use crate::services::{repo_root, start_service};

/// Node ids of the cluster `scripts/kafka up --brokers 3` starts.
pub const CLUSTER_NODES: [i32; 3] = [1, 2, 3];

/// The three-node test cluster; see [`cluster`].
#[derive(Debug)]
pub struct Cluster {
    brokers: String,
    /// Where `scripts/kafka` keeps the nodes' pids, ports and data; needed to kill and restart.
    state_dir: Option<PathBuf>,
}

/// The three-node cluster the fault tests use: replication factor 3 and
/// `min.insync.replicas=2` by default, each node a broker and a controller voter.
///
/// `KBATCH_CLUSTER_BROKERS` if set (with `KBATCH_CLUSTER_STATE_DIR`, as printed by
/// `scripts/kafka env --brokers 3`, for [`Cluster::faults`]); otherwise `scripts/kafka up
/// --brokers 3` starts one on first use, shared by every test binary of this `cargo test` run
/// and stopped when that run exits, as [`brokers`](crate::brokers) does for the single broker.
pub fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        if let Ok(b) = std::env::var("KBATCH_CLUSTER_BROKERS")
            && !b.trim().is_empty()
        {
            let state_dir = std::env::var_os("KBATCH_CLUSTER_STATE_DIR").map(PathBuf::from);
            return Cluster {
                brokers: b.trim().to_owned(),
                state_dir,
            };
        }
        let t0 = Instant::now();
        let (brokers, state) = start_service(
            "KBATCH_CLUSTER_BROKERS",
            "kafka",
            &["--brokers", "3"],
            "kafka-cluster",
        );
        eprintln!(
            "kbatch-testkit: cluster ready in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        Cluster {
            brokers,
            state_dir: Some(state),
        }
    })
}

/// One fault test at a time: tests of one binary run in parallel, and a test that kills a
/// node must not have another test kill a second one under its feet.
static FAULTS: Mutex<()> = Mutex::const_new(());

impl Cluster {
    /// The bootstrap list, `127.0.0.1:PORT,…`.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Client settings for this cluster.
    pub fn client_config(&self) -> ClientConfig {
        client_config_for(&self.brokers)
    }

    /// Producer settings for this cluster (kbatch defaults: idempotent, acks=all).
    pub fn producer_config(&self) -> KafkaProducerConfig {
        KafkaProducerConfig::new(self.client_config())
    }

    /// Consumer settings for this cluster, reading from the earliest offset.
    pub fn consumer_config(&self) -> ConsumerConfig {
        consumer_config_for(&self.brokers)
    }

    /// An admin client for this cluster.
    pub fn admin(&self) -> Admin {
        Admin::new(&self.client_config()).unwrap()
    }

    /// Creates a topic replicated on all three nodes that needs two of them in sync to accept
    /// an acks=all write (set on the topic, whatever the broker defaults), and waits until
    /// every partition has a leader.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let t = NewTopic::new(name, partitions)
            .with_replication(3)
            .with_config("min.insync.replicas", "2");
        self.admin()
            .create_topics(&[t])
            .await
            .unwrap_or_else(|e| panic!("create topic {name} on the cluster: {e}"));
    }

    /// Partitions, leaders, replicas and ISRs of a topic (internal ones too), as the metadata
    /// reports them now.
    pub async fn describe(&self, topic: &str) -> kbatch_client::Result<TopicDescription> {
        self.admin()
            .with_timeout(Duration::from_secs(10))
            .describe_topic(topic)
            .await
    }

    /// The node leading `topic`'s `partition` (-1 while it has none).
    pub async fn leader(&self, topic: &str, partition: i32) -> i32 {
        let d = self
            .describe(topic)
            .await
            .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
        d.partitions
            .iter()
            .find(|p| p.id == partition)
            .unwrap_or_else(|| panic!("{topic} has no partition {partition}"))
            .leader
    }

    /// The node coordinating consumer group `group`, asked with a FindCoordinator request
    /// (librdkafka does not expose it). Retries while a coordinator is being elected.
    pub async fn coordinator(&self, group: &str) -> i32 {
        let wire = repo_root().join("scripts/kafka-broker/wire.py");
        let brokers = self.brokers.clone();
        let group = group.to_owned();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .arg(wire)
                .args(["coordinator", &brokers, &group, "--timeout", "60"])
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run python3 for FindCoordinator: {e}"));
        assert!(
            out.status.success(),
            "FindCoordinator failed ({})",
            out.status
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("FindCoordinator printed {text:?}, not a node id"))
    }

    /// Low and high watermarks (first offset, offset after the last record) of every
    /// partition of `topic`. Retries for up to 2 minutes while the metadata or the offsets are
    /// not to be had, as right after a leader change (`OFFSET_NOT_AVAILABLE` until the new
    /// leader's high watermark has caught up).
    pub async fn watermarks(&self, topic: &str) -> BTreeMap<i32, (i64, i64)> {
        let config = self.consumer_config();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let c = KafkaConsumer::new(&config).unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            let retry = |what: &str, e: &dyn std::fmt::Display| {
                assert!(Instant::now() < deadline, "{what} for 2 minutes: {e}");
                eprintln!("kbatch-testkit: {what} ({e}); retrying");
                std::thread::sleep(Duration::from_millis(200));
            };
            let partitions = loop {
                match c.partition_count(&topic, Duration::from_secs(10)) {
                    Ok(n) => break n,
                    Err(e) => retry(&format!("no partition count of {topic}"), &e),
                }
            };
            (0..partitions)
                .map(|p| {
                    let tp = TopicPartition::new(topic.as_str(), p);
                    loop {
                        match c.watermarks(&tp, Duration::from_secs(10)) {
                            Ok((lo, hi)) => break (p, (lo.0, hi.0)),
                            Err(e) => retry(&format!("no watermarks of {tp}"), &e),
                        }
                    }
                })
                .collect()
        })
        .await
        .unwrap()
    }

    /// Waits until every partition of every topic in `topics` has a leader and all its
    /// replicas in sync, e.g. until a restarted node has caught up. Panics after `limit`,
    /// naming the first partition that was not.
    pub async fn wait_fully_replicated(&self, topics: &[&str], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let mut lagging = None;
            for t in topics {
                match self.describe(t).await {
                    Ok(d) => {
                        if let Some(p) = d
                            .partitions
                            .iter()
                            .find(|p| p.leader < 0 || p.isr.len() < p.replicas.len())
                        {
                            lagging = Some(format!("{t}-{}: {p:?}", p.id));
                        }
                    }
                    Err(e) => lagging = Some(format!("{t}: {e}")),
                }
                if lagging.is_some() {
                    break;
                }
            }
            let Some(what) = lagging else { return };
            assert!(
                Instant::now() < deadline,
                "not fully replicated after {limit:?}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Exclusive use of the cluster's nodes for one fault test; first starts any node a
    /// previous test left stopped (say, one that failed between a kill and its restart).
    ///
    /// Panics unless the test run started the cluster or `KBATCH_CLUSTER_STATE_DIR` names its
    /// state dir: killing a node needs its pid, restarting it its config.
    pub async fn faults(&'static self) -> Faults {
        let guard = FAULTS.lock().await;
        let faults = Faults {
            cluster: self,
            _exclusive: guard,
        };
        faults.script(&["start"]).await;
        faults
    }
}

/// Kill and restart nodes of the [`cluster`]; held by one test at a time
/// ([`Cluster::faults`]).
#[derive(Debug)]
pub struct Faults {
    cluster: &'static Cluster,
    _exclusive: MutexGuard<'static, ()>,
}

impl Faults {
    /// SIGKILLs node `node` (1..=3) and returns once its process is gone: no clean shutdown,
    /// no goodbye to the controller or the clients.
    pub async fn kill(&self, node: i32) {
        eprintln!("kbatch-testkit: SIGKILL cluster node {node}");
        self.script(&["kill", &node.to_string()]).await;
    }

    /// Starts node `node` again with its data dir and ports, and returns once it serves
    /// (registered with the controllers and unfenced). It may still be catching up:
    /// [`Cluster::wait_fully_replicated`] waits for that.
    pub async fn restart(&self, node: i32) {
        let t0 = Instant::now();
        self.script(&["start", &node.to_string()]).await;
        eprintln!(
            "kbatch-testkit: cluster node {node} serving again after {:.1} s",
            t0.elapsed().as_secs_f64()
        );
    }

    async fn script(&self, args: &[&str]) {
        let state = self.cluster.state_dir.clone().unwrap_or_else(|| {
            panic!(
                "KBATCH_CLUSTER_BROKERS is set without KBATCH_CLUSTER_STATE_DIR: fault tests \
                 need the state dir of `scripts/kafka up --brokers 3` to kill and restart nodes \
                 (`scripts/kafka env --brokers 3` prints both)"
            )
        });
        let script = repo_root().join("scripts/kafka");
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let what = args.join(" ");
        let status = tokio::task::spawn_blocking(move || {
            Command::new(script)
                .args(&args)
                .arg("--state-dir")
                .arg(state)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .status()
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run scripts/kafka {what}: {e}"));
        assert!(status.success(), "scripts/kafka {what} failed ({status})");
    }
}
