//! Adaptive microbatching: the batch size and linger follow the load, within a latency
//! budget, and a microbatch travels as one packed Kafka record.
//!
//! ```sh
//! KBATCH_BROKERS=127.0.0.1:9092 cargo run -p kbatch-examples --example adaptive_produce
//! cargo run -p kbatch-examples --example adaptive_produce   # in-memory dev broker
//! ```
//!
//! A trickle, a burst, a trickle again: the pressure level rises within the short window
//! when the burst arrives and comes back down when it ends. What was learned is saved to a
//! calibration file, so the next run starts from it (`kbatch calibration show --path …`).

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use std::time::{Duration, Instant};

use kbatch::adaptive::{ControllerConfig, LevelId};
use kbatch::client::{Admin, DevBroker, NewTopic};
use kbatch::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let topic = format!("clicks-example-{}", std::process::id());
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

    let calibration = std::env::temp_dir().join("kbatch-example-calibration.sqlite3");
    let mut config = AdaptiveConfig::new(ProducerConfig::for_brokers(&brokers))
        .with_shape(Shape::Packed)
        .with_calibration_path(&calibration)
        .with_profile("adaptive_produce example")
        .with_initial_level(LevelId(1))
        .with_epoch(Duration::from_millis(250));
    // A short example: a 3 s rate window instead of 10 s, so the level comes down in time.
    config.controller = ControllerConfig {
        window: Duration::from_secs(3),
        min_dwell: Duration::from_millis(500),
        ..ControllerConfig::default()
    };
    let producer = AdaptiveProducer::start(config)?;

    let mut futures = Vec::new();
    let mut batches = Vec::new();
    let mut report = Instant::now();
    let mut seq = 0u64;
    for (phase, rate, secs) in [
        ("trickle", 200.0, 2.0),
        ("burst", 100_000.0, 2.0),
        ("trickle", 200.0, 4.0),
    ] {
        println!("{phase}: {rate} events/s for {secs} s");
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            // Open loop: as many as the rate owes by now.
            let owed = (start.elapsed().as_secs_f64() * rate) as u64;
            let click = |seq: u64| {
                Record::new(topic.as_str(), format!("click {seq}"))
                    .with_key(format!("user-{}", seq % 1_000))
            };
            if phase == "burst" {
                // Many at once: one send_many call, one future for all of them.
                let n = owed.saturating_sub(sent).min(1_000);
                if n > 0 {
                    let clicks = (seq..seq + n).map(click).collect();
                    batches.push(producer.send_many(clicks).await);
                    sent += n;
                    seq += n;
                }
            }
            while sent < owed {
                futures.push(producer.send(click(seq)).await?);
                sent += 1;
                seq += 1;
            }
            if report.elapsed() >= Duration::from_millis(500) {
                report = Instant::now();
                println!("  level {} with {}", producer.level(), producer.settings());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for b in batches {
        let results = b.await;
        // Compact outcomes: counting reads no event's; the first failure, if any, says why.
        if let Some((i, e)) = results.errors().next() {
            return Err(format!(
                "event {i} of {} in a send_many call failed: {e}",
                results.len()
            )
            .into());
        }
    }
    let mut last = None;
    for f in futures {
        last = Some(f.await?);
    }
    if let Some(d) = last {
        println!(
            "last event: partition {}, envelope at offset {}, event {} in it",
            d.partition,
            d.offset,
            d.index.unwrap_or(0)
        );
    }
    let closed = producer.close().await;
    let s = closed.stats;
    println!(
        "{} events delivered in {} Kafka records ({:.0} events per record), {} failed, {} level changes, {} budget overruns",
        s.delivered,
        s.records,
        s.delivered as f64 / s.records.max(1) as f64,
        s.failed,
        s.level_changes,
        s.budget_overruns
    );
    println!("learned settings saved to {}", calibration.display());
    assert_eq!(s.delivered, seq, "every event delivered");
    Ok(())
}
