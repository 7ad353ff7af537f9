//! The transactional outbox: an order and its event commit together, a relay delivers the
//! event to Kafka afterwards — and a rolled-back order's event is never delivered.
//!
//! ```sh
//! KBATCH_PG_URL=postgres://… KBATCH_BROKERS=127.0.0.1:9092 cargo run -p kbatch-examples --example outbox_postgres
//! cargo run -p kbatch-examples --example outbox_postgres   # SQLite file + in-memory dev broker
//! ```

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use kbatch::client::{Admin, DevBroker, NewTopic};
use kbatch::outbox::{
    Destination, KafkaDeliverer, OutboxEntry, OutboxStore, Relay, RelayConfig, TableName, enqueue,
};
use kbatch::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let topic = format!("order-events-example-{}", std::process::id());
    let dev;
    let brokers = match std::env::var("KBATCH_BROKERS") {
        Ok(b) => {
            Admin::new(&ClientConfig::new(b.as_str()))?
                .create_topics(&[NewTopic::new(&topic, 3)])
                .await?;
            b
        }
        Err(_) => {
            dev = DevBroker::start(1)?;
            dev.create_topic(&topic, 3)?;
            dev.bootstrap_servers()
        }
    };
    let dir = std::env::temp_dir().join(format!("kbatch-outbox-example-{}.db", std::process::id()));
    let url = std::env::var("KBATCH_PG_URL").unwrap_or_else(|_| dir.display().to_string());
    let store = OutboxStore::connect(&url).await?;
    let table = TableName::new(format!("kbatch_outbox_example_{}", std::process::id()))?;
    store.migrate(&table).await?;

    // The application's transaction: the order row and its event, or neither.
    let paid = OutboxEntry::new(Destination::kafka(&topic), r#"{"order":1,"event":"paid"}"#)
        .with_key("order-1");
    let ghost = OutboxEntry::new(Destination::kafka(&topic), r#"{"order":2,"event":"paid"}"#)
        .with_key("order-2");
    match &store {
        OutboxStore::Postgres(pool) => {
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS example_orders (id BIGINT PRIMARY KEY, paid BOOLEAN)",
            )
            .execute(pool)
            .await?;
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO example_orders VALUES ($1, true) ON CONFLICT (id) DO UPDATE SET paid = true")
                .bind(1i64)
                .execute(&mut *tx)
                .await?;
            enqueue(&mut tx, &table, &paid).await?;
            tx.commit().await?;
            let mut tx = pool.begin().await?;
            enqueue(&mut tx, &table, &ghost).await?;
            tx.rollback().await?; // the payment failed: no event either
        }
        OutboxStore::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            enqueue(&mut tx, &table, &paid).await?;
            tx.commit().await?;
            let mut tx = pool.begin().await?;
            enqueue(&mut tx, &table, &ghost).await?;
            tx.rollback().await?;
        }
        _ => return Err("this example runs on PostgreSQL or SQLite".into()),
    }

    let producer = Producer::new(ProducerConfig::for_brokers(&brokers))?;
    let relay = Relay::new(
        store.clone(),
        KafkaDeliverer::new(producer.clone()),
        RelayConfig::default().with_table(table.clone()),
    )?;
    let batch = relay.run_once().await?;
    println!("relay batch: {batch:?}");
    let status = store.status(&table).await?;
    println!(
        "outbox: {} delivered, {} pending, {} dead",
        status.delivered, status.pending, status.dead
    );
    assert_eq!(
        (batch.delivered, status.pending),
        (1, 0),
        "only the committed event is delivered"
    );
    producer.close().await;
    if !url.contains("://") {
        let _ = std::fs::remove_file(&dir);
    }
    Ok(())
}
