//! Ordering guarantees and concurrency against the real broker.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Ledger, config, eventually, filled_topic};
use kbatch_consumer::{ParallelConsumer, ProcessingOrder, ShutdownMode};
use kbatch_testkit::unique_name;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_order_holds_per_key_while_concurrency_exceeds_the_partitions() {
    const N: u64 = 3_000;
    let topic = filled_topic("pc-key", 2, N, 100).await;
    let group = unique_name("pc-key-g");
    let ledger = Ledger::default();
    let (active, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let running = ParallelConsumer::builder(
        config(&group, &[&topic], ProcessingOrder::Key).with_concurrency(64),
    )
    .handler({
        let (ledger, active, peak) = (ledger.clone(), active.clone(), peak.clone());
        move |r| {
            let (ledger, active, peak) = (ledger.clone(), active.clone(), peak.clone());
            async move {
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                ledger.push(&r);
                tokio::time::sleep(Duration::from_millis(2)).await;
                active.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        }
    })
    .build()
    .unwrap()
    .start()
    .unwrap();
    eventually(60, "all records processed", || ledger.len() >= N as usize).await;
    let report = running.shutdown(ShutdownMode::Drain).await.unwrap();
    assert_eq!(report.processed, N);
    let mut seqs = ledger.seqs();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..N).collect::<Vec<_>>(), "each record exactly once");
    for (key, offsets) in ledger.per_key() {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "key {key:?} out of order: {offsets:?}"
        );
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak > 2,
        "concurrency {peak} should exceed the 2 partitions"
    );
    let total: i64 = [0, 1]
        .iter()
        .map(|p| common::committed(&group, &topic, *p).0.unwrap())
        .sum();
    assert_eq!(total, N as i64, "everything committed at shutdown");
}
