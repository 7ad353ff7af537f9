//! The other handler shapes and controls: blocking and batch handlers, a dead-letter callback,
//! global pause/resume, synchronous commits, and the metrics they publish.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Ledger, committed, config, eventually, filled_topic};
use kbatch_consumer::{CommitMode, HandlerError, ParallelConsumer, ProcessingOrder, ShutdownMode};
use kbatch_testkit::unique_name;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocking_handlers_run_concurrently_and_commit_synchronously() {
    const N: u64 = 200;
    let topic = filled_topic("pc-blocking", 1, N, 50).await;
    let group = unique_name("pc-blocking-g");
    let ledger = Ledger::default();
    let mut cfg = config(&group, &[&topic], ProcessingOrder::Key).with_concurrency(16);
    cfg.commit_mode = CommitMode::Sync;
    // How many blocking handlers run at once: more than one (they run off the driver, in
    // parallel), never more than the concurrency.
    let running_now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let running = ParallelConsumer::builder(cfg)
        .blocking_handler({
            let (ledger, running_now, peak) = (ledger.clone(), running_now.clone(), peak.clone());
            move |r| {
                let now = running_now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10)); // blocking work, off the runtime
                ledger.push(&r);
                running_now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    eventually(60, "all processed", || ledger.len() >= N as usize).await;
    running.shutdown(ShutdownMode::Drain).await.unwrap();
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        (2..=16).contains(&peak),
        "blocking handlers ran {peak} at a time; want several, at most the concurrency of 16"
    );
    for (key, offs) in ledger.per_key() {
        assert!(offs.windows(2).all(|w| w[0] < w[1]), "{key:?}: {offs:?}");
    }
    assert_eq!(committed(&group, &topic, 0).0, Some(N as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_handlers_get_ordered_batches_and_a_failed_batch_goes_to_the_callback() {
    const N: u64 = 500;
    let topic = filled_topic("pc-batch", 2, N, 10).await;
    let group = unique_name("pc-batch-g");
    let batches: Arc<Mutex<Vec<Vec<kbatch_core::ConsumedRecord>>>> = Arc::default();
    let dead: Arc<Mutex<Vec<(u64, String, u32)>>> = Arc::default();
    let mut cfg = config(&group, &[&topic], ProcessingOrder::Key);
    cfg.max_attempts = Some(2);
    let running = ParallelConsumer::builder(cfg)
        .retry_policy(kbatch_consumer::ExponentialBackoff::new(
            Duration::from_millis(5),
            Duration::from_secs(30),
        ))
        .batch_handler(25, {
            let batches = batches.clone();
            move |rs: Vec<kbatch_core::ConsumedRecord>| {
                let batches = batches.clone();
                async move {
                    assert!(rs.len() <= 25);
                    if rs.iter().any(|r| common::seq(r) == 123) {
                        return Err(HandlerError::retriable("batch with 123 always fails"));
                    }
                    batches.lock().unwrap().push(rs);
                    Ok(())
                }
            }
        })
        .dead_letter_callback({
            let dead = dead.clone();
            move |r, e, attempts| {
                let dead = dead.clone();
                async move {
                    dead.lock()
                        .unwrap()
                        .push((common::seq(&r), e.to_string(), attempts));
                    Ok(())
                }
            }
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    eventually(60, "all records handled or dead-lettered", || {
        let ok: usize = batches.lock().unwrap().iter().map(Vec::len).sum();
        ok + dead.lock().unwrap().len() >= N as usize
    })
    .await;
    // The callback runs before the consumer counts its dead letter: wait for the count.
    eventually(60, "every dead letter counted", || {
        running.stats().dead_lettered as usize >= dead.lock().unwrap().len()
    })
    .await;
    let stats = running.stats();
    running.shutdown(ShutdownMode::Drain).await.unwrap();
    let batches = batches.lock().unwrap();
    assert!(
        batches.iter().any(|b| b.len() > 1),
        "records really arrive in batches"
    );
    // Within a batch and across batches, each key's records keep their offset order.
    let mut last: std::collections::HashMap<(i32, Vec<u8>), i64> = Default::default();
    for b in batches.iter() {
        for r in b {
            let k = (r.partition, r.key.clone().unwrap().to_vec());
            if let Some(prev) = last.insert(k, r.offset.0) {
                assert!(prev < r.offset.0);
            }
        }
    }
    let dead = dead.lock().unwrap();
    assert!(
        dead.iter()
            .any(|(s, e, n)| *s == 123 && e.contains("always fails") && *n == 2),
        "{dead:?}"
    );
    assert_eq!(stats.dead_lettered as usize, dead.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_stops_intake_and_resume_restarts_it_and_metrics_are_published() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();
    const N: u64 = 2_000;
    // One record per broker batch: Kafka returns whole batches, so small ones keep fetches small.
    let topic = unique_name("pc-pause");
    kbatch_testkit::create_topic(&topic, 1).await;
    let mut pcfg = kbatch_testkit::producer_config();
    pcfg.batch_records = 1;
    pcfg.linger = Duration::ZERO;
    let records: Vec<kbatch_core::Record> = (0..N)
        .map(|i| {
            kbatch_core::Record::new(topic.as_str(), format!("v:{i}"))
                .with_key(format!("key-{}", i % 20))
        })
        .collect();
    assert!(
        tokio::task::block_in_place(|| kbatch_testkit::produce(&pcfg, &records))
            .iter()
            .all(Result::is_ok)
    );
    let group = unique_name("pc-pause-g");
    let ledger = Ledger::default();
    let mut cfg = config(&group, &[&topic], ProcessingOrder::Key);
    cfg.max_records = 200;
    cfg.kafka.prefetch_bytes = 4 << 10;
    cfg.kafka.max_partition_fetch_bytes = 4 << 10;
    let running = ParallelConsumer::builder(cfg)
        .handler({
            let ledger = ledger.clone();
            move |r| {
                let ledger = ledger.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    ledger.push(&r);
                    Ok(())
                }
            }
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    eventually(60, "some records processed", || ledger.len() > 50).await;
    running.pause().await;
    eventually(10, "the partition is paused", || {
        running.stats().paused_partitions == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // in-flight and buffered drain
    let at_pause = ledger.len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        ledger.len() <= at_pause + 200,
        "intake stopped: {at_pause} then {}",
        ledger.len()
    );
    assert!((ledger.len() as u64) < N, "not finished while paused");
    running.resume().await;
    eventually(60, "everything after resume", || ledger.len() >= N as usize).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = handle.render();
    running.shutdown(ShutdownMode::Drain).await.unwrap();
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&group))
            .map(str::to_owned)
    };
    let processed = line("kbatch_consumer_records_processed_total").unwrap_or_default();
    assert!(processed.ends_with(&format!(" {N}")), "{processed}\n{text}");
    assert!(
        line("kbatch_consumer_partition_committed_offset").is_some(),
        "{text}"
    );
    assert!(
        line("kbatch_consumer_partition_metadata_ratio").is_some(),
        "{text}"
    );
    assert!(text.contains("kbatch_consumer_handler_seconds"), "{text}");
}
