//! Kafka helpers: configs pointing at the test cluster, topics, produce and consume-all.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kbatch_client::{
    Admin, AutoOffsetReset, ClientConfig, ConsumerConfig, Delivered, DeliveryError, DeliverySink,
    Isolation, KafkaConsumer, KafkaProducer, KafkaProducerConfig, NewTopic, StartOffset,
};
use kbatch_core::{ConsumedRecord, Record, TopicPartition};

use crate::brokers;

/// Records read back, per partition, in offset order.
pub type PartitionedRecords = BTreeMap<i32, Vec<ConsumedRecord>>;

/// Client settings for the test cluster.
pub fn client_config() -> ClientConfig {
    client_config_for(brokers())
}

pub(crate) fn client_config_for(bootstrap: &str) -> ClientConfig {
    ClientConfig::new(bootstrap).with_client_id("kbatch-test")
}

/// Producer settings for the test cluster (kbatch defaults: idempotent, acks=all).
pub fn producer_config() -> KafkaProducerConfig {
    KafkaProducerConfig::new(client_config())
}

/// Consumer settings for the test cluster, reading from the earliest offset.
pub fn consumer_config() -> ConsumerConfig {
    consumer_config_for(brokers())
}

pub(crate) fn consumer_config_for(bootstrap: &str) -> ConsumerConfig {
    ConsumerConfig::new(client_config_for(bootstrap)).with_offset_reset(AutoOffsetReset::Earliest)
}

/// An admin client for the test cluster.
pub fn admin() -> Admin {
    Admin::new(&client_config()).unwrap()
}

/// Creates a topic with `partitions` partitions and waits until every partition has a leader.
pub async fn create_topic(name: &str, partitions: i32) {
    admin()
        .create_topics(&[NewTopic::new(name, partitions)])
        .await
        .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
}

/// Deletes a consumer group (and its committed offsets); retries while its members leave.
pub async fn admin_delete_group(group: &str) {
    let a = admin();
    for attempt in 0.. {
        match a.delete_groups(&[group]).await {
            Ok(()) => return,
            Err(e) if attempt < 50 => {
                tracing::debug!(error = %e, "group not yet deletable");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("delete group {group}: {e}"),
        }
    }
}

#[derive(Default)]
struct Collect(Mutex<Vec<Option<Result<Delivered, DeliveryError>>>>);

impl DeliverySink for Collect {
    fn on_delivery(&self, token: usize, result: Result<Delivered, DeliveryError>) {
        self.0.lock().unwrap()[token] = Some(result);
    }
}

/// Produces `records` with `config` and returns each record's delivery result, in input
/// order. Waits (by flushing) until every record has a result.
pub fn produce(
    config: &KafkaProducerConfig,
    records: &[Record],
) -> Vec<Result<Delivered, DeliveryError>> {
    let sink = Collect(Mutex::new(vec![None; records.len()]));
    let p = KafkaProducer::new(config, sink).unwrap();
    for (i, r) in records.iter().enumerate() {
        loop {
            match p.send(r, i) {
                Ok(()) => break,
                Err(e) if e.is_queue_full() => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => {
                    p.sink().0.lock().unwrap()[i] =
                        Some(Err(DeliveryError::new(e.code, Box::new(r.clone()))));
                    break;
                }
            }
        }
    }
    p.flush(Duration::from_secs(120)).unwrap();
    let results = std::mem::take(&mut *p.sink().0.lock().unwrap());
    results
        .into_iter()
        .map(|r| r.expect("every record has a delivery report after flush"))
        .collect()
}

/// Reads every partition of `topic` from the beginning until `expected` records arrived, or
/// until nothing arrived for `idle`, and returns the records per partition in offset order.
/// Panics after 120 s.
pub fn consume_all(
    topic: &str,
    isolation: Isolation,
    expected: Option<usize>,
    idle: Duration,
) -> PartitionedRecords {
    consume_all_from(brokers(), topic, isolation, expected, idle)
}

/// [`consume_all`] from another cluster (e.g. a `DevBroker` used for fault injection).
pub fn consume_all_from(
    bootstrap: &str,
    topic: &str,
    isolation: Isolation,
    expected: Option<usize>,
    idle: Duration,
) -> PartitionedRecords {
    // Not `consumer_config()`: that would start the single test broker just to be overridden.
    let cfg = consumer_config_for(bootstrap).with_isolation(isolation);
    let c = KafkaConsumer::new(&cfg).unwrap();
    let n = c.partition_count(topic, Duration::from_secs(10)).unwrap();
    let parts: Vec<_> = (0..n)
        .map(|p| (TopicPartition::new(topic, p), StartOffset::Beginning))
        .collect();
    c.assign(&parts).unwrap();
    let mut out = PartitionedRecords::new();
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = Instant::now();
    let mut buf = Vec::with_capacity(10_000);
    while expected.is_none_or(|e| total < e) && last.elapsed() < idle {
        assert!(
            Instant::now() < deadline,
            "consume_all({topic}) timed out after {total} records"
        );
        buf.clear();
        if c.poll_batch(&mut buf, 10_000, Duration::from_millis(100))
            .unwrap()
            > 0
        {
            last = Instant::now();
        }
        for r in buf.drain(..) {
            total += 1;
            out.entry(r.partition).or_default().push(r);
        }
    }
    out
}
