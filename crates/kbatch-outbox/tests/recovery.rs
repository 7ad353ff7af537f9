//! The relay loses its database connection between publishing a batch and recording it.
#![allow(clippy::unwrap_used, reason = "tests: a panic is a failure")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kbatch_client::Isolation;
use kbatch_outbox::{
    Attempt, Deliverer, Destination, ID_HEADER, KafkaDeliverer, OutboxEntry, OutboxStore, Relay,
    RelayConfig, TableName, enqueue,
};
use kbatch_producer::{Producer, ProducerConfig};
use kbatch_testkit::{consume_all, create_topic, pg_url, producer_config, unique_name, wait_until};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Delivers through Kafka, then — once — terminates the backend holding the claim's row
/// locks, as a crash or a network cut between publish and mark-delivered would.
struct CutAfterPublish {
    kafka: KafkaDeliverer,
    admin: PgPool,
    table: TableName,
    cut: AtomicBool,
    first_batch: std::sync::Mutex<Vec<Uuid>>,
}

impl Deliverer for CutAfterPublish {
    async fn deliver(&self, entries: &[&OutboxEntry]) -> Vec<Attempt> {
        let attempts = self.kafka.deliver(entries).await;
        if !self.cut.swap(true, Ordering::SeqCst) {
            *self.first_batch.lock().unwrap() = entries.iter().map(|e| e.id).collect();
            let killed: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_locks \
                 WHERE relation = $1::regclass AND pid <> pg_backend_pid()",
            )
            .bind(self.table.as_str())
            .fetch_all(&self.admin)
            .await
            .unwrap();
            assert!(killed.contains(&true), "no backend held the claim's locks");
        }
        attempts
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_after_publish_redelivers_the_batch_with_the_same_ids_and_loses_nothing() {
    let pool = PgPool::connect(pg_url()).await.unwrap();
    let admin = PgPool::connect(pg_url()).await.unwrap();
    let table = TableName::new(format!(
        "kbatch_outbox_cut{}",
        unique_name("t").trim_start_matches("t-")
    ))
    .unwrap();
    let store = OutboxStore::Postgres(pool.clone());
    store.migrate(&table).await.unwrap();
    let topic = unique_name("outbox-cut");
    create_topic(&topic, 2).await;
    let entries: Vec<OutboxEntry> = (0..50)
        .map(|i| OutboxEntry::new(Destination::kafka(&topic), format!("e{i}")))
        .collect();
    let mut tx = pool.begin().await.unwrap();
    for e in &entries {
        enqueue(&mut tx, &table, e).await.unwrap();
    }
    tx.commit().await.unwrap();

    let producer = Producer::new(ProducerConfig::default().with_kafka(producer_config())).unwrap();
    let deliverer = CutAfterPublish {
        kafka: KafkaDeliverer::new(producer),
        admin,
        table: table.clone(),
        cut: AtomicBool::new(false),
        first_batch: Default::default(),
    };
    let config = RelayConfig::default()
        .with_table(table.clone())
        .with_batch_size(20)
        .with_idle_poll(Duration::from_millis(50));
    let relay = std::sync::Arc::new(Relay::new(store.clone(), deliverer, config).unwrap());
    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, cancel) = (relay.clone(), cancel.clone());
        async move { relay.run(cancel).await }
    });
    wait_until(
        Duration::from_secs(60),
        "every entry recorded as delivered",
        || {
            let store = store.clone();
            let table = table.clone();
            async move { store.status(&table).await.unwrap().delivered == 50 }
        },
    )
    .await;
    cancel.cancel();
    running
        .await
        .unwrap()
        .expect("the relay survives the lost connection");

    let topic2 = topic.clone();
    let parts = tokio::task::spawn_blocking(move || {
        consume_all(
            &topic2,
            Isolation::ReadUncommitted,
            None,
            Duration::from_secs(3),
        )
    })
    .await
    .unwrap();
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    for r in parts.into_values().flatten() {
        let h = r.headers.iter().find(|h| h.key == ID_HEADER).unwrap();
        let id = Uuid::parse_str(std::str::from_utf8(h.value.as_ref().unwrap()).unwrap()).unwrap();
        *seen.entry(id).or_insert(0) += 1;
    }
    let first: Vec<Uuid> = relay_first_batch(&relay);
    assert_eq!(first.len(), 20);
    for e in &entries {
        let want = if first.contains(&e.id) { 2 } else { 1 };
        assert_eq!(
            seen.get(&e.id),
            Some(&want),
            "entry {} (first batch: {})",
            e.id,
            first.contains(&e.id)
        );
    }
    assert_eq!(seen.len(), 50);
}

fn relay_first_batch(relay: &Relay<CutAfterPublish>) -> Vec<Uuid> {
    relay.deliverer().first_batch.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_relay_on_postgres_is_woken_by_the_insert_not_its_poll() {
    let pool = PgPool::connect(pg_url()).await.unwrap();
    let table = TableName::new(format!(
        "kbatch_outbox_wake{}",
        unique_name("t").trim_start_matches("t-")
    ))
    .unwrap();
    let store = OutboxStore::Postgres(pool.clone());
    store.migrate(&table).await.unwrap();
    let topic = unique_name("outbox-wake");
    create_topic(&topic, 1).await;
    let producer = Producer::new(ProducerConfig::default().with_kafka(producer_config())).unwrap();
    // A 30 s poll: only the notification can deliver within the 5 s the test waits.
    let config = RelayConfig::default()
        .with_table(table.clone())
        .with_idle_poll(Duration::from_secs(30));
    let relay = Relay::new(store.clone(), KafkaDeliverer::new(producer), config).unwrap();
    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let cancel = cancel.clone();
        async move { relay.run(cancel).await }
    });
    tokio::time::sleep(Duration::from_millis(1_000)).await; // the relay found nothing and waits
    let mut tx = pool.begin().await.unwrap();
    let e = OutboxEntry::new(Destination::kafka(&topic), "wake up");
    enqueue(&mut tx, &table, &e).await.unwrap();
    tx.commit().await.unwrap();
    let started = std::time::Instant::now();
    wait_until(
        Duration::from_secs(5),
        "the entry delivered without waiting for the poll",
        || {
            let (store, table) = (store.clone(), table.clone());
            async move { store.status(&table).await.unwrap().delivered == 1 }
        },
    )
    .await;
    eprintln!("delivered {:?} after commit", started.elapsed());
    cancel.cancel();
    running.await.unwrap().unwrap();
}
