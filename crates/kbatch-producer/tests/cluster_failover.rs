//! Leader failover on a real three-node Kafka cluster while the idempotent, acks=all producer
//! sends without pause: the leader of a busy partition is SIGKILLed mid-stream and restarted
//! later (after which the cluster moves leadership back to it: a second leader change).
//!
//! ```text
//!  sender ──send()──► Producer ──► 3 nodes, RF 3, min ISR 2      ──► read back with an
//!    │                   │            kill leader(p0) · restart      independent consumer
//!    └──(seq, future)──► acker: every future's result, by sequence number
//! ```
//!
//! What must hold: every delivery future resolves; every acknowledged record is in the log,
//! once, at the offset its future reported; nothing else is in the log; each partition holds
//! its records in the order they were sent.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kbatch_client::{Acks, Delivered, Isolation};
use kbatch_core::{ConsumedRecord, Record};
use kbatch_producer::{DeliveryFuture, Producer, ProducerConfig};
use kbatch_testkit::{cluster, consume_all_from, unique_name, wait_until};
use tokio::sync::mpsc;

const PARTITIONS: i32 = 3;
const KEYS: u64 = 60;
/// The busy partition whose leader is killed (every partition is equally busy).
const VICTIM: i32 = 0;
/// Generous: a node is fenced after 4 s and restarts in about 10 s on a busy 2-core machine.
const LIMIT: Duration = Duration::from_secs(120);

/// Every delivery result so far, by sequence number; the highest sequence number acknowledged
/// per partition, to tell when records sent after a fault get through.
#[derive(Default)]
struct Deliveries {
    sent: AtomicU64,
    results: Mutex<BTreeMap<u64, Result<Delivered, String>>>,
    highest_acked: Mutex<BTreeMap<i32, u64>>,
}

impl Deliveries {
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
    fn resolved(&self) -> usize {
        self.results.lock().unwrap().len()
    }
    /// Has a record sent at or after `seq` been acknowledged on `partition`?
    fn acked_since(&self, partition: i32, seq: u64) -> bool {
        self.highest_acked
            .lock()
            .unwrap()
            .get(&partition)
            .is_some_and(|h| *h >= seq)
    }
}

/// Sends records `0..` (value `v:<seq>`, one of `KEYS` keys) until `stop`, about 8,000 a
/// second, handing each future to the acker. A send that fails at once is a test failure.
async fn send_until_stopped(
    producer: Producer,
    topic: String,
    to_acker: mpsc::Sender<(u64, DeliveryFuture)>,
    stop: Arc<AtomicBool>,
    deliveries: Arc<Deliveries>,
) {
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        for _ in 0..80 {
            let r = Record::new(topic.as_str(), format!("v:{seq}"))
                .with_key(format!("key-{}", seq % KEYS));
            let f = producer
                .send(r)
                .await
                .unwrap_or_else(|e| panic!("send of record {seq} refused: {e}"));
            to_acker.send((seq, f)).await.unwrap();
            seq += 1;
            deliveries.sent.store(seq, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits every future handed over, in whatever order they finish, and files the results.
async fn await_deliveries(
    mut from_sender: mpsc::Receiver<(u64, DeliveryFuture)>,
    deliveries: Arc<Deliveries>,
) {
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            next = from_sender.recv(), if open => match next {
                Some((seq, f)) => pending.push(async move { (seq, f.await) }),
                None => open = false,
            },
            Some((seq, result)) = pending.next() => {
                if let Ok(d) = &result {
                    let mut h = deliveries.highest_acked.lock().unwrap();
                    let e = h.entry(d.partition).or_default();
                    *e = (*e).max(seq);
                }
                let result = result.map_err(|e| e.to_string());
                deliveries.results.lock().unwrap().insert(seq, result);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_partition_leader_mid_stream_loses_duplicates_and_reorders_nothing() {
    let cluster = cluster();
    let faults = cluster.faults().await;
    let topic = unique_name("failover");
    cluster.create_topic(&topic, PARTITIONS).await;

    let config = ProducerConfig::default().with_kafka(cluster.producer_config());
    assert!(
        config.kafka.idempotence && config.kafka.acks == Acks::All,
        "the defaults under test: idempotent, acks=all"
    );
    let producer = Producer::new(config).unwrap();
    let deliveries = Arc::new(Deliveries::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel(4096);
    let sender = tokio::spawn(send_until_stopped(
        producer.clone(),
        topic.clone(),
        tx,
        Arc::clone(&stop),
        Arc::clone(&deliveries),
    ));
    let acker = tokio::spawn(await_deliveries(rx, Arc::clone(&deliveries)));
    let d = &deliveries;

    wait_until(LIMIT, "records acknowledged on every partition", || async {
        (0..PARTITIONS).all(|p| d.acked_since(p, 1_000))
    })
    .await;

    let victim = cluster.leader(&topic, VICTIM).await;
    assert!(
        victim > 0,
        "partition {VICTIM} has a leader before the fault"
    );
    let sent_before_kill = d.sent();
    faults.kill(victim).await;
    wait_until(
        LIMIT,
        format!("a new leader for partition {VICTIM} after node {victim} was killed"),
        || async {
            let l = cluster.leader(&topic, VICTIM).await;
            l > 0 && l != victim
        },
    )
    .await;
    wait_until(
        LIMIT,
        format!("records sent after the kill acknowledged on partition {VICTIM}"),
        || async { d.acked_since(VICTIM, sent_before_kill) },
    )
    .await;

    faults.restart(victim).await;
    cluster.wait_fully_replicated(&[&topic], LIMIT).await;
    // The restarted node is the preferred leader of at least the partition it led: the
    // cluster hands that back within seconds (leader.imbalance.check.interval.seconds=5).
    let preferred = cluster.describe(&topic).await.unwrap().partitions[VICTIM as usize].replicas[0];
    wait_until(
        LIMIT,
        format!("partition {VICTIM} led by its preferred replica {preferred} again"),
        || async { cluster.leader(&topic, VICTIM).await == preferred },
    )
    .await;
    let sent_after_move_back = d.sent();
    wait_until(
        LIMIT,
        "records sent after the restart and the move back acknowledged on every partition",
        || async { (0..PARTITIONS).all(|p| d.acked_since(p, sent_after_move_back)) },
    )
    .await;

    stop.store(true, Ordering::SeqCst);
    sender.await.unwrap();
    let total = d.sent();
    if tokio::time::timeout(LIMIT, acker).await.is_err() {
        panic!(
            "only {} of {total} delivery futures resolved within {LIMIT:?}",
            d.resolved()
        );
    }
    let report = producer.close().await;
    eprintln!("{total} records sent; close: {report:?}");
    drop(faults);

    let results = std::mem::take(&mut *d.results.lock().unwrap());
    assert_eq!(
        results.len() as u64,
        total,
        "every delivery future resolved"
    );
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).take(5).collect();
    assert!(
        failed.is_empty(),
        "records failed despite idempotent retries within the delivery timeout: {failed:?}"
    );
    let acked: BTreeMap<u64, Delivered> = results
        .into_iter()
        .map(|(seq, r)| (seq, r.unwrap()))
        .collect();
    check_log(&topic, &acked).await;
}

/// Reads the topic back with an independent consumer and matches it against what was
/// acknowledged.
async fn check_log(topic: &str, acked: &BTreeMap<u64, Delivered>) {
    // All the log holds, acknowledged or not (a duplicate, a write nobody was told of).
    let in_log = cluster().watermarks(topic).await;
    let total: i64 = in_log.values().map(|(lo, hi)| hi - lo).sum();
    let brokers = cluster().brokers();
    let got = tokio::task::block_in_place(|| {
        consume_all_from(
            brokers,
            topic,
            Isolation::ReadUncommitted,
            Some(total as usize),
            Duration::from_secs(10),
        )
    });

    let seq = |r: &ConsumedRecord| -> u64 {
        let v = std::str::from_utf8(r.value.as_deref().unwrap()).unwrap();
        v.strip_prefix("v:").unwrap().parse().unwrap()
    };
    let mut at = BTreeMap::<(i32, i64), u64>::new();
    let mut seen = BTreeMap::<u64, (i32, i64)>::new();
    for (p, records) in &got {
        let mut last: Option<u64> = None;
        for r in records {
            let s = seq(r);
            if let Some(prev) = seen.insert(s, (r.partition, r.offset.0)) {
                panic!(
                    "record {s} is in the log twice: at {prev:?} and at ({p}, {})",
                    r.offset.0
                );
            }
            if let Some(l) = last {
                assert!(
                    l < s,
                    "partition {p} out of send order: record {l} before record {s} (offset {})",
                    r.offset.0
                );
            }
            last = Some(s);
            at.insert((r.partition, r.offset.0), s);
        }
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|(s, d)| at.get(&(d.partition, d.offset.0)) != Some(s))
        .map(|(s, d)| {
            (
                *s,
                d.partition,
                d.offset.0,
                at.get(&(d.partition, d.offset.0)),
            )
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records are not at the offset their future reported \
         (seq, partition, offset, seq found there), first 10: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let mut acked_per_partition = BTreeMap::<i32, i64>::new();
    for d in acked.values() {
        *acked_per_partition.entry(d.partition).or_default() += 1;
    }
    for (p, (lo, hi)) in in_log {
        let acked_here = acked_per_partition.get(&p).copied().unwrap_or(0);
        assert_eq!(
            hi - lo,
            acked_here,
            "partition {p} holds {} records, {acked_here} of them acknowledged",
            hi - lo
        );
    }
    eprintln!(
        "log checked: {} acknowledged records, each once, in order, where acknowledged",
        acked.len()
    );
}
