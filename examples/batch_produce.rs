//! Batch produce: fire a batch, flush once, await each record's delivery.
//!
//! ```sh
//! KBATCH_BROKERS=127.0.0.1:9092 cargo run -p kbatch-examples --example batch_produce
//! cargo run -p kbatch-examples --example batch_produce   # in-memory dev broker
//! ```
//!
//! Each record gets its own future and its own result: one bad record (here, one aimed at a
//! partition that does not exist) fails alone, with an error that names it, and hands the
//! record back so it could be retried or dead-lettered.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::time::Duration;

use kbatch::Classify as _;
use kbatch::client::{Admin, DevBroker, NewTopic};
use kbatch::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let topic = format!("orders-example-{}", std::process::id());
    // A real cluster if KBATCH_BROKERS is set, else the in-memory dev broker.
    let dev;
    let brokers = match std::env::var("KBATCH_BROKERS") {
        Ok(b) => {
            Admin::new(&ClientConfig::new(b.as_str()))?
                .create_topics(&[NewTopic::new(&topic, 4)])
                .await?;
            b
        }
        Err(_) => {
            dev = DevBroker::start(1)?;
            dev.create_topic(&topic, 4)?;
            dev.bootstrap_servers()
        }
    };

    // Batches leave at 5,000 records, 512 KiB or 10 ms, whichever comes first.
    let config = ProducerConfig::for_brokers(&brokers)
        .with_batch(5_000, 512 << 10, Duration::from_millis(10))
        .with_pending_limits(50_000, 32 << 20);
    let producer = Producer::new(config)?;

    let mut batch: Vec<Record> = (0..10_000)
        .map(|i| {
            Record::new(topic.as_str(), format!("order {i} created"))
                .with_key(format!("customer-{}", i % 97))
                .with_header("source", "example")
        })
        .collect();
    batch.insert(
        5_000,
        Record::new(topic.as_str(), "misrouted")
            .with_key("customer-x")
            .with_partition(42),
    );

    let results = producer.send_batch(batch).await;
    let delivered = results.iter().filter(|r| r.is_ok()).count();
    println!(
        "delivered {delivered} of {} records to {topic}",
        results.len()
    );
    for (i, r) in results.iter().enumerate() {
        if let Err(e) = r {
            println!("record {i} failed ({}): {e}", e.class());
            let back = e.record().map(|r| r.key_for_display());
            println!("  record handed back: key {}", back.unwrap_or_default());
        }
    }
    if let Some(last) = results.iter().rev().find_map(|r| r.as_ref().ok()) {
        println!(
            "last record: partition {} offset {}",
            last.partition, last.offset
        );
    }

    let c = producer.counters();
    println!(
        "counters: sent {} delivered {} failed {}",
        c.sent,
        c.delivered,
        c.failed_permanent + c.failed_retriable
    );
    let report = producer.close().await;
    println!(
        "closed: flushed = {}, failed at close = {}",
        report.flushed, report.failed
    );
    if delivered != 10_000 {
        return Err(format!("expected 10000 delivered, got {delivered}").into());
    }
    Ok(())
}
