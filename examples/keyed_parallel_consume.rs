//! Keyed parallel consume: the "slow GPS service" case from Parallel Consumer's README.
//!
//! ```sh
//! KBATCH_BROKERS=127.0.0.1:9092 cargo run -p kbatch-examples --example keyed_parallel_consume
//! cargo run -p kbatch-examples --example keyed_parallel_consume   # in-memory dev broker
//! ```
//!
//! 5,000 position fixes for 200 vehicles sit on a 2-partition topic. Each fix takes a call to a
//! slow service (1–5 ms here). Two partitions would allow two calls at a time; KEY ordering
//! allows one per vehicle — 200 at a time — while each vehicle's fixes stay in order. Fixes
//! the service rejects go to a dead-letter topic.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kbatch::client::{Admin, DevBroker, NewTopic};
use kbatch::prelude::*;

const FIXES: u64 = 5_000;
const VEHICLES: u64 = 200;

/// The handler: a client of the slow service, and what it saw per vehicle. Its state is
/// shared through `&self` by every record in flight — nothing is cloned per record.
struct Router {
    seen: Arc<Mutex<HashMap<Vec<u8>, Vec<i64>>>>,
}

impl Handler for Router {
    async fn handle(&self, fix: ConsumedRecord) -> HandlerResult {
        if fix.value.as_deref() == Some(b"malformed") {
            return Err(HandlerError::permanent("service rejected a malformed fix"));
        }
        // The slow service.
        tokio::time::sleep(Duration::from_millis(rand::random_range(1..=5))).await;
        let vehicle = fix.key.as_deref().unwrap_or_default().to_vec();
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(vehicle)
            .or_default()
            .push(fix.offset.0);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let topic = format!("gps-fixes-{}", std::process::id());
    let dlq = format!("{topic}-rejected");
    let dev;
    let brokers = match std::env::var("KBATCH_BROKERS") {
        Ok(b) => {
            Admin::new(&ClientConfig::new(b.as_str()))?
                .create_topics(&[NewTopic::new(&topic, 2), NewTopic::new(&dlq, 1)])
                .await?;
            b
        }
        Err(_) => {
            dev = DevBroker::start(1)?;
            dev.create_topic(&topic, 2)?;
            dev.create_topic(&dlq, 1)?;
            dev.bootstrap_servers()
        }
    };

    // Every 97th fix is malformed: the service rejects it for good.
    let producer = Producer::new(ProducerConfig::for_brokers(&brokers))?;
    let fixes = (0..FIXES).map(|i| {
        let body = if i % 97 == 0 {
            "malformed".to_owned()
        } else {
            format!("fix {i}")
        };
        Record::new(topic.as_str(), body).with_key(format!("vehicle-{}", i % VEHICLES))
    });
    let sent = producer.send_batch(fixes).await;
    assert!(sent.iter().all(Result::is_ok));
    producer.close().await;

    let config = ParallelConfig::for_brokers(&brokers, &format!("{topic}-router"), [&topic])
        .with_ordering(ProcessingOrder::Key)
        .with_concurrency(500)
        .with_dead_letter(dlq.as_str(), 3);
    let started = Instant::now();
    let seen = Arc::default();
    let router = Router {
        seen: Arc::clone(&seen),
    };
    let running = ParallelConsumer::builder(config)
        .with_handler(router)
        .start()?;
    let rejected = FIXES.div_ceil(97);
    running.wait_for(|p| p.processed >= FIXES - rejected).await;
    let elapsed = started.elapsed();
    running.until_idle().await; // the dead letters written, every offset committed
    let dead_lettered = running.stats().dead_lettered;
    let report = running.shutdown(ShutdownMode::Drain).await?;
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let in_order = seen
        .values()
        .all(|offs| offs.windows(2).all(|w| w[0] < w[1]));
    println!(
        "processed {} fixes for {} vehicles in {elapsed:.2?} (incl. group join), each vehicle in order: {in_order}",
        report.processed,
        seen.len()
    );
    println!("dead-lettered {dead_lettered} malformed fixes to {dlq}");
    println!(
        "sequentially per partition this would take ~{:.1} s",
        (FIXES as f64 * 3e-3) / 2.0
    );
    if !in_order || report.processed != FIXES - rejected || dead_lettered != rejected {
        return Err("ordering or count check failed".into());
    }
    Ok(())
}
