//! Helpers shared by the parallel consumer's integration tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kbatch_client::ConsumerConfig;
use kbatch_consumer::{ParallelConfig, ProcessingOrder};
use kbatch_core::{ConsumedRecord, Record};
use kbatch_testkit::{consumer_config, create_topic, produce, producer_config, unique_name};

/// A topic with `partitions` partitions holding `n` records keyed `key-{i % keys}` (null
/// keys when `keys == 0`), values `v:{i}`.
pub(crate) async fn filled_topic(prefix: &str, partitions: i32, n: u64, keys: u64) -> String {
    let topic = unique_name(prefix);
    create_topic(&topic, partitions).await;
    let records: Vec<Record> = (0..n)
        .map(|i| {
            let r = Record::new(topic.as_str(), format!("v:{i}"));
            if keys == 0 {
                // Without keys the client's sticky partitioner may put a quick burst all on
                // one partition; in turn, every partition gets its share.
                r.with_partition((i % partitions as u64) as i32)
            } else {
                r.with_key(format!("key-{}", i % keys))
            }
        })
        .collect();
    let results = tokio::task::block_in_place(|| produce(&producer_config(), &records));
    assert!(results.iter().all(Result::is_ok));
    topic
}

pub(crate) fn kafka(group: &str) -> ConsumerConfig {
    let mut c = consumer_config().with_group(group);
    c.session_timeout = Duration::from_secs(10);
    c
}

pub(crate) fn config(group: &str, topics: &[&str], order: ProcessingOrder) -> ParallelConfig {
    let mut c = ParallelConfig::new(kafka(group), topics.iter().copied()).with_ordering(order);
    c.commit_interval = Duration::from_millis(50);
    c
}

pub(crate) fn seq(r: &ConsumedRecord) -> u64 {
    std::str::from_utf8(r.value.as_deref().unwrap())
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Every handler call, in call order.
#[derive(Clone, Default)]
pub(crate) struct Ledger(pub(crate) Arc<Mutex<Vec<ConsumedRecord>>>);

impl Ledger {
    pub(crate) fn push(&self, r: &ConsumedRecord) {
        self.0.lock().unwrap().push(r.clone());
    }
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub(crate) fn seqs(&self) -> Vec<u64> {
        self.0.lock().unwrap().iter().map(seq).collect()
    }
    /// Call order per key.
    pub(crate) fn per_key(&self) -> BTreeMap<Option<Vec<u8>>, Vec<i64>> {
        let mut m: BTreeMap<Option<Vec<u8>>, Vec<i64>> = BTreeMap::new();
        for r in self.0.lock().unwrap().iter() {
            m.entry(r.key.as_ref().map(|k| k.to_vec()))
                .or_default()
                .push(r.offset.0);
        }
        m
    }
}

/// Waits until `f` holds, failing after `secs` with `what`. The limit is a hang guard that names
/// the missing condition, not a speed target: callers give several times what it ever takes.
pub(crate) async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The group's committed offset and metadata for one partition.
pub(crate) fn committed(group: &str, topic: &str, partition: i32) -> (Option<i64>, String) {
    let c = kbatch_client::KafkaConsumer::new(&kafka(group)).unwrap();
    let tp = kbatch_core::TopicPartition::new(topic, partition);
    let got = c.committed(&[tp], Duration::from_secs(10)).unwrap();
    (got[0].offset.map(|o| o.0), got[0].metadata.clone())
}

/// Starts a consumer whose handler waits `delay` (if any) and records each record in `ledger`.
pub(crate) fn start_recording(
    cfg: kbatch_consumer::ParallelConfig,
    ledger: &Ledger,
    delay: Duration,
) -> kbatch_consumer::Running {
    let ledger = ledger.clone();
    kbatch_consumer::ParallelConsumer::builder(cfg)
        .handler(move |r| {
            let ledger = ledger.clone();
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                ledger.push(&r);
                Ok(())
            }
        })
        .build()
        .unwrap()
        .start()
        .unwrap()
}

/// Prints the consumers' warnings (a revocation commit that failed, a deadline that passed)
/// in the test's output, so a test that finds records redone says why.
pub(crate) fn log_consumer_warnings() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("kbatch_consumer=warn,kbatch_client=warn")
        .with_test_writer()
        .try_init();
}
