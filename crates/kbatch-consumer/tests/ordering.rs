//! Ordering guarantees and concurrency against the real broker, for records and for the
//! events of packed envelopes.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Ledger, config, eventually, filled_topic};
use kbatch_client::Compression;
use kbatch_consumer::{ParallelConsumer, ProcessingOrder, ShutdownMode};
use kbatch_core::Record;
use kbatch_core::envelope::{EnvelopeWriter, envelope_header};
use kbatch_producer::{Producer, ProducerConfig};
use kbatch_testkit::{create_topic, producer_config, unique_name};

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

/// A key within one partition.
type PartitionKey = (i32, Vec<u8>);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn packed_envelopes_reach_the_handler_as_events_exactly_once_in_key_order() {
    const PARTITIONS: i32 = 3;
    const ENVELOPES: u64 = 40;
    const PER_ENVELOPE: u64 = 250;
    const N: u64 = ENVELOPES * PER_ENVELOPE;
    let topic = unique_name("pc-packed");
    create_topic(&topic, PARTITIONS).await;
    // Through kbatch's producer, lz4-compressed, as an application would send them: event
    // `seq` is keyed `key-{seq % 37}`, so every envelope mixes keys and every key spans
    // envelopes.
    let producer = Producer::new(
        ProducerConfig::default()
            .with_kafka(producer_config())
            .with_compression(Compression::Lz4),
    )
    .unwrap();
    let records = (0..ENVELOPES).map(|e| {
        let mut w = EnvelopeWriter::new();
        for seq in e * PER_ENVELOPE..(e + 1) * PER_ENVELOPE {
            let key = format!("key-{}", seq % 37);
            let value = format!("v:{seq}");
            w.push(Some(key.as_bytes()), Some(value.as_bytes()), &[], None);
        }
        let mut r = Record::new(topic.as_str(), w.finish()).with_partition((e % 3) as i32);
        r.headers.push(envelope_header());
        r
    });
    let sent = producer.send_batch(records).await;
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");
    producer.close().await;

    let group = unique_name("pc-packed-g");
    let ledger = Ledger::default();
    let running = ParallelConsumer::builder(
        config(&group, &[&topic], ProcessingOrder::Key).with_concurrency(64),
    )
    .handler({
        let ledger = ledger.clone();
        move |r| {
            let ledger = ledger.clone();
            async move {
                // Recorded when done, after 0-2 ms: events of one key that ran at once would
                // finish out of order.
                let pause = common::seq(&r) % 3;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                ledger.push(&r);
                Ok(())
            }
        }
    })
    .build()
    .unwrap()
    .start()
    .unwrap();
    eventually(120, "every event handled", || ledger.len() >= N as usize).await;
    let idle = tokio::time::timeout(Duration::from_secs(60), running.until_idle())
        .await
        .expect("idle: every envelope committed");
    let report = running.shutdown(ShutdownMode::Drain).await.unwrap();
    assert_eq!(report.processed, N);
    let mut seqs = ledger.seqs();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..N).collect::<Vec<_>>(), "each event exactly once");
    let calls = ledger.0.lock().unwrap().clone();
    let mut per_key: BTreeMap<PartitionKey, Vec<(i64, u32)>> = BTreeMap::new();
    for r in &calls {
        let pos = r.envelope.expect("every record is an event of an envelope");
        assert_eq!(pos.count, PER_ENVELOPE as u32);
        let seq = common::seq(r);
        assert_eq!(
            (r.key.as_deref(), u64::from(pos.index)),
            (
                Some(format!("key-{}", seq % 37).as_bytes()),
                seq % PER_ENVELOPE
            ),
            "the event's own key, at its index"
        );
        per_key
            .entry((r.partition, r.key.as_ref().unwrap().to_vec()))
            .or_default()
            .push((r.offset.0, pos.index));
    }
    for ((p, key), order) in &per_key {
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "key {} of partition {p} out of order: {order:?}",
            String::from_utf8_lossy(key)
        );
    }
    for p in 0..PARTITIONS {
        let envelopes = (0..ENVELOPES).filter(|e| (e % 3) as i32 == p).count() as i64;
        assert_eq!(
            common::committed(&group, &topic, p).0,
            Some(envelopes),
            "partition {p}: every envelope committed"
        );
    }
    assert_eq!(idle.processed, N);
}
