//! Faults a real broker cannot easily produce, injected through librdkafka's mock cluster
//! (`DevBroker`): retriable and possibly-persisted produce errors, dropped connections with
//! requests in flight, a broker down past the delivery timeout, a slow broker.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::time::Duration;

use common::assert_exactly_once_in_order;
use kbatch_client::{ClientConfig, DevBroker, InjectedError, Isolation};
use kbatch_core::{Classify, ErrorClass, Record};
use kbatch_producer::{DeliveryFuture, ProduceError, Producer, ProducerConfig, TrySendError};
use kbatch_testkit::consume_all_from;

fn dev_producer(dev: &DevBroker, tweak: impl FnOnce(&mut ProducerConfig)) -> Producer {
    let mut cfg = ProducerConfig::new(ClientConfig::new(dev.bootstrap_servers()));
    tweak(&mut cfg);
    Producer::new(cfg).unwrap()
}

fn rec(topic: &str, i: u64) -> Record {
    Record::new(topic, format!("v:{i}")).with_key(format!("key-{}", i % 50))
}

/// A record of exactly 1,000 bytes (value only) whose last 8 bytes are `i`.
fn rec_1000(topic: &str, i: u64) -> Record {
    Record::new(
        topic,
        vec![b'x'; 1000 - 8]
            .into_iter()
            .chain(format!("{i:>8}").bytes())
            .collect::<Vec<u8>>(),
    )
}

async fn send_range(p: &Producer, topic: &str, range: std::ops::Range<u64>) -> Vec<DeliveryFuture> {
    let mut fs = Vec::new();
    for i in range {
        fs.push(p.send(rec(topic, i)).await.unwrap());
    }
    fs
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_retries_keep_order_and_never_duplicate() {
    const N: u64 = 20_000;
    let dev = DevBroker::start(1).unwrap();
    let topic = "faults-idempotence";
    dev.create_topic(topic, 4).unwrap();
    // Small batches and a short linger keep several produce requests in flight per connection.
    let p = dev_producer(&dev, |c| {
        c.kafka.linger = Duration::from_millis(1);
        c.kafka.batch_records = 200;
    });
    let mut futures = send_range(&p, topic, 0..N / 4).await;
    use InjectedError::*;
    dev.fail_next_produce_requests(&[
        NotEnoughReplicasAfterAppend,
        NotEnoughReplicasAfterAppend,
        Disconnect,
        NotEnoughReplicas,
        NotLeaderForPartition,
        NotEnoughReplicasAfterAppend,
        RequestTimedOut,
        Disconnect,
        NotEnoughReplicasAfterAppend,
    ]);
    futures.extend(send_range(&p, topic, N / 4..N).await);
    for (i, f) in futures.into_iter().enumerate() {
        f.await
            .unwrap_or_else(|e| panic!("record {i} failed despite retries: {e}"));
    }
    let bootstrap = dev.bootstrap_servers();
    let got = tokio::task::block_in_place(|| {
        consume_all_from(
            &bootstrap,
            topic,
            Isolation::ReadUncommitted,
            Some(N as usize),
            Duration::from_secs(5),
        )
    });
    assert_exactly_once_in_order(&got, N);
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_down_past_the_delivery_timeout_fails_retriable_then_recovers_in_order() {
    let dev = DevBroker::start(1).unwrap();
    let topic = "faults-down";
    dev.create_topic(topic, 2).unwrap();
    let p = dev_producer(&dev, |c| {
        c.kafka.delivery_timeout = Duration::from_secs(3);
        // Reconnect within the delivery timeout once the broker is back (default backoff: 10 s).
        c.kafka
            .client
            .extra
            .insert("reconnect.backoff.max.ms".into(), "200".into());
    });
    for f in send_range(&p, topic, 0..100).await {
        f.await.unwrap();
    }
    dev.broker_down(1).unwrap();
    let lost = send_range(&p, topic, 100..150).await;
    for f in lost {
        let e = f
            .await
            .expect_err("nothing can be delivered while the broker is down");
        assert_eq!(e.class(), ErrorClass::Retriable, "{e}");
        let r = e.record().expect("the record is handed back for a retry");
        assert!(r.value.as_deref().unwrap().starts_with(b"v:1"), "{e}");
    }
    dev.broker_up(1).unwrap();
    // A caller retries retriable failures: probe until the broker takes writes again.
    let mut probes = Vec::new();
    for k in 1000.. {
        if p.send(rec(topic, k)).await.unwrap().await.is_ok() {
            probes.push(k);
            break;
        }
    }
    for f in send_range(&p, topic, 2000..2150).await {
        f.await.unwrap();
    }
    let bootstrap = dev.bootstrap_servers();
    let got = tokio::task::block_in_place(|| {
        consume_all_from(
            &bootstrap,
            topic,
            Isolation::ReadUncommitted,
            Some(250),
            Duration::from_secs(5),
        )
    });
    let mut all: Vec<u64> = Vec::new();
    for recs in got.values() {
        let seqs: Vec<u64> = recs.iter().map(common::seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order kept: {seqs:?}");
        all.extend(seqs);
    }
    all.sort_unstable();
    let want: Vec<u64> = (0..100).chain(probes).chain(2000..2150).collect();
    assert_eq!(
        all, want,
        "the timed-out records are absent, everything else present once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_within_both_bounds() {
    let dev = DevBroker::start(1).unwrap();
    let topic = "faults-bounded";
    dev.create_topic(topic, 1).unwrap();
    let p = dev_producer(&dev, |c| {
        c.kafka.max_record_bytes = 10_000;
        c.max_pending_records = 200;
        c.max_pending_bytes = 20_000;
    });
    for f in send_range(&p, topic, 0..10).await {
        f.await.unwrap();
    }
    dev.broker_down(1).unwrap();
    // Records bound: exactly 200 accepted, the next handed back.
    let mut held = Vec::new();
    let small = move |i: u64| Record::new(topic, format!("{i:>50}"));
    for i in 0..200 {
        held.push(p.try_send(small(i)).unwrap());
    }
    match p.try_send(small(200)) {
        Err(TrySendError::Full(r)) => assert_eq!(r, small(200), "record handed back intact"),
        other => panic!("expected Full, got {other:?}"),
    }
    let c = p.counters();
    assert_eq!((c.pending_records, c.pending_bytes), (200, 200 * 50));
    // `send` waits (asynchronous back-pressure) instead of failing or buffering.
    let waiting = tokio::spawn({
        let p = p.clone();
        async move { p.send(small(201)).await.unwrap().await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "send waits while the producer is full"
    );
    assert_eq!(p.counters().pending_records, 200);
    dev.broker_up(1).unwrap();
    for f in held {
        f.await.unwrap();
    }
    waiting.await.unwrap().unwrap();

    // Bytes bound: 1,000-byte records, 20 fit in 20,000 bytes.
    dev.broker_down(1).unwrap();
    let big = move |i: u64| rec_1000(topic, i);
    let mut held = Vec::new();
    for i in 0..20 {
        held.push(p.try_send(big(i)).unwrap());
    }
    assert!(matches!(p.try_send(big(20)), Err(TrySendError::Full(_))));
    assert_eq!(p.counters().pending_bytes, 20_000);
    dev.broker_up(1).unwrap();
    for f in held {
        f.await.unwrap();
    }
}

/// The caller's own window (futures sent and not yet awaited) is far larger than either bound,
/// and the broker answers only every 200 ms: nothing but `send` holds records back, so the
/// bounds themselves are what the test pushes against, first the record bound (small records),
/// then the byte bound (1,000-byte records).
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_broker_never_lets_pending_work_exceed_the_bounds() {
    const MAX_RECORDS: u64 = 300;
    const MAX_BYTES: u64 = 16_000;
    const WINDOW: usize = 1_000;
    const SMALL: u64 = 2_000;
    const LARGE: u64 = 150;
    let dev = DevBroker::start(1).unwrap();
    let topic = "faults-slow";
    dev.create_topic(topic, 4).unwrap();
    dev.set_round_trip_time(1, Duration::from_millis(200))
        .unwrap();
    let p = dev_producer(&dev, |c| {
        c.kafka.max_record_bytes = 10_000;
        c.max_pending_records = MAX_RECORDS as usize;
        c.max_pending_bytes = MAX_BYTES as usize;
    });
    // About 12 bytes each: 300 of them are far below the byte bound.
    let small = |i: u64| rec(topic, i);
    // Exactly 1,000 bytes each: 16 fill the byte bound, far below the record bound.
    let large = |i: u64| rec_1000(topic, i);
    // (records, bytes) peaks while small records were sent, and while large ones were.
    let mut peak = [(0, 0); 2];
    let mut pending = std::collections::VecDeque::new();
    for i in 0..SMALL + LARGE {
        let (phase, r) = if i < SMALL {
            (0, small(i))
        } else {
            (1, large(i))
        };
        pending.push_back(p.send(r).await.unwrap());
        // Pending work only grows in `send`: reading right after each one sees every peak.
        let c = p.counters();
        peak[phase].0 = peak[phase].0.max(c.pending_records);
        peak[phase].1 = peak[phase].1.max(c.pending_bytes);
        while pending.len() > WINDOW {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for f in pending {
        f.await.unwrap();
    }
    assert_eq!(p.counters().delivered, SMALL + LARGE);
    for (records, bytes) in peak {
        assert!(records <= MAX_RECORDS, "record bound exceeded: {records}");
        assert!(bytes <= MAX_BYTES, "byte bound exceeded: {bytes}");
    }
    // The bounds, not the caller's window, held the records back: each was reached.
    assert_eq!(
        peak[0].0, MAX_RECORDS,
        "small records fill the record bound"
    );
    assert!(
        peak[1].1 > MAX_BYTES - 1_000,
        "large records fill the byte bound to within one record: {}",
        peak[1].1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn close_with_records_in_flight_resolves_every_future() {
    let dev = DevBroker::start(1).unwrap();
    let topic = "faults-close";
    dev.create_topic(topic, 2).unwrap();
    let p = dev_producer(&dev, |c| c.close_timeout = Duration::from_secs(1));
    for f in send_range(&p, topic, 0..10).await {
        f.await.unwrap();
    }
    dev.broker_down(1).unwrap();
    let stuck = send_range(&p, topic, 10..110).await;
    let report = p.close().await;
    assert_eq!(report.pending_at_close, 100);
    assert!(!report.flushed);
    assert_eq!(report.failed, 100);
    for f in stuck {
        let e = f.await.expect_err("undeliverable at close");
        assert!(
            matches!(e, ProduceError::Delivery(_) | ProduceError::Closed { .. }),
            "{e}"
        );
    }
    let c = p.counters();
    assert_eq!(
        (c.pending_records, c.pending_bytes),
        (0, 0),
        "nothing left hanging"
    );
    assert!(matches!(
        p.try_send(rec(topic, 0)),
        Err(TrySendError::Failed(ProduceError::Closed { .. }))
    ));
}
