//! The producer against the real broker: ordering, per-record results, bad input, headers,
//! compression, transactions and close.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{assert_exactly_once_in_order, producer};
use kbatch_client::{Compression, ErrorCode, Isolation};
use kbatch_core::{Classify, ErrorClass, Record, Timestamp};
use kbatch_producer::{ProduceError, Producer, ProducerConfig};
use kbatch_testkit::{consume_all, create_topic, producer_config, unique_name};

const IDLE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread")]
async fn every_future_resolves_to_the_records_place_in_the_log() {
    const N: u64 = 30_000;
    let topic = unique_name("prod-order");
    create_topic(&topic, 8).await;
    let p = producer();
    let mut futures = Vec::with_capacity(N as usize);
    for i in 0..N {
        let r = Record::new(topic.as_str(), format!("k{}:{i}", i % 100))
            .with_key(format!("k{}", i % 100));
        futures.push(p.send(r).await.unwrap());
    }
    let mut delivered = Vec::with_capacity(N as usize);
    for f in futures {
        delivered.push(f.await.unwrap());
    }
    let got = tokio::task::block_in_place(|| {
        consume_all(&topic, Isolation::ReadCommitted, Some(N as usize), IDLE)
    });
    assert_exactly_once_in_order(&got, N);
    for recs in got.values() {
        for r in recs {
            let d = delivered[common::seq(r) as usize];
            assert_eq!(
                (d.partition, d.offset),
                (r.partition, r.offset),
                "future reports where the record landed"
            );
        }
    }
    let c = p.counters();
    assert_eq!(
        (c.sent, c.delivered, c.pending_records, c.pending_bytes),
        (N, N, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_record_fails_alone_with_a_clear_error() {
    let topic = unique_name("prod-bad");
    let missing = unique_name("prod-missing");
    create_topic(&topic, 2).await;
    let mut cfg = ProducerConfig::default().with_kafka(producer_config());
    cfg.kafka.max_record_bytes = 10_000;
    cfg.kafka
        .client
        .extra
        .insert("topic.metadata.propagation.max.ms".into(), "1000".into());
    let p = Producer::new(cfg).unwrap();
    let ok = |i: u32| Record::new(topic.as_str(), format!("ok:{i}")).with_key(format!("key-{i}"));
    let batch = vec![
        ok(0),
        Record::new(topic.as_str(), vec![0u8; 20_000]).with_key("too-big"),
        ok(1),
        Record::new(topic.as_str(), "x")
            .with_key("bad-partition")
            .with_partition(99),
        ok(2),
        Record::new(missing.as_str(), "x").with_key("no-such-topic"),
        ok(3),
        Record::new(topic.as_str(), "x")
            .with_key("negative")
            .with_partition(-3),
    ];
    let results = p.send_batch(batch).await;
    assert_eq!(results.len(), 8, "one result per record");
    for i in [0, 2, 4, 6] {
        assert!(results[i].is_ok(), "record {i}: {:?}", results[i]);
    }
    let err = |i: usize| results[i].as_ref().unwrap_err();
    let too_big = err(1);
    assert_eq!(too_big.code(), Some(ErrorCode::MessageSizeTooLarge));
    assert_eq!(too_big.class(), ErrorClass::Permanent);
    assert!(
        too_big.to_string().contains("\"too-big\"") && too_big.to_string().contains(&topic),
        "{too_big}"
    );
    assert_eq!(
        too_big.record().unwrap().value.as_ref().unwrap().len(),
        20_000,
        "record handed back intact"
    );

    let bad_partition = err(3);
    assert_eq!(
        bad_partition.code(),
        Some(ErrorCode::UnknownPartition),
        "{bad_partition}"
    );
    assert_eq!(bad_partition.class(), ErrorClass::Permanent);
    assert!(
        bad_partition.to_string().contains("partition 99"),
        "{bad_partition}"
    );

    let no_topic = err(5);
    assert!(
        matches!(
            no_topic.code(),
            Some(ErrorCode::UnknownTopic | ErrorCode::UnknownTopicOrPartition)
        ),
        "{no_topic}"
    );
    assert_eq!(no_topic.class(), ErrorClass::Permanent);
    assert!(no_topic.to_string().contains(&missing), "{no_topic}");

    assert!(matches!(err(7), ProduceError::Invalid { .. }), "{}", err(7));
    assert!(err(7).to_string().contains("negative"), "{}", err(7));

    let got = tokio::task::block_in_place(|| {
        consume_all(&topic, Isolation::ReadCommitted, Some(4), IDLE)
    });
    let mut values: Vec<String> = got
        .values()
        .flatten()
        .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
        .collect();
    values.sort();
    assert_eq!(
        values,
        ["ok:0", "ok:1", "ok:2", "ok:3"],
        "only the good records reached the topic"
    );
    assert!(
        !kbatch_testkit::admin()
            .list_topics()
            .await
            .unwrap()
            .contains(&missing),
        "no topic auto-created"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_timestamps_partitions_and_compression_round_trip() {
    for codec in [Compression::Lz4, Compression::Zstd] {
        let topic = unique_name("prod-codec");
        create_topic(&topic, 4).await;
        let cfg = ProducerConfig::default().with_kafka(producer_config().with_compression(codec));
        let p = Producer::new(cfg).unwrap();
        let ts = Timestamp(1_700_000_000_123);
        let records: Vec<Record> = (0..200)
            .map(|i| {
                Record::new(
                    topic.as_str(),
                    "compressible ".repeat(50) + &format!(":{i}"),
                )
                .with_key(format!("{i}"))
                .with_partition(i % 4)
                .with_header("trace", format!("t-{i}"))
                .with_header("empty", Bytes::new())
                .with_timestamp(ts)
            })
            .collect();
        let results = p.send_batch(records).await;
        for (i, r) in results.iter().enumerate() {
            let d = r.as_ref().unwrap();
            assert_eq!(
                d.partition,
                i as i32 % 4,
                "explicit partition honoured ({codec:?})"
            );
            assert_eq!(d.timestamp, Some(ts));
        }
        let got = tokio::task::block_in_place(|| {
            consume_all(&topic, Isolation::ReadCommitted, Some(200), IDLE)
        });
        assert_eq!(got.values().map(Vec::len).sum::<usize>(), 200);
        for r in got.values().flatten() {
            let i = common::seq(r);
            assert_eq!(r.partition, i as i32 % 4);
            assert_eq!(r.timestamp, Some(ts));
            assert_eq!(
                r.header("trace").unwrap().value.as_deref(),
                Some(format!("t-{i}").as_bytes())
            );
            assert_eq!(r.header("empty").unwrap().value.as_deref(), Some(&b""[..]));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_pass_through() {
    let topic = unique_name("prod-txn");
    create_topic(&topic, 1).await;
    let cfg = ProducerConfig::default()
        .with_kafka(producer_config().with_transactional_id(unique_name("txn")));
    let p = Producer::new(cfg).unwrap();
    let t = Duration::from_secs(30);
    p.init_transactions(t).await.unwrap();
    for (tag, commit) in [("a", true), ("b", false), ("c", true)] {
        p.begin_transaction().unwrap();
        let rs = p
            .send_batch((0..10).map(|i| Record::new(topic.as_str(), format!("{tag}:{i}"))))
            .await;
        assert!(
            rs.iter().all(Result::is_ok),
            "delivered (not yet committed)"
        );
        if commit {
            p.commit_transaction(t).await.unwrap()
        } else {
            p.abort_transaction(t).await.unwrap()
        }
    }
    let got =
        tokio::task::block_in_place(|| consume_all(&topic, Isolation::ReadCommitted, None, IDLE));
    let values: Vec<String> = got
        .values()
        .flatten()
        .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(values.len(), 20);
    assert!(values.iter().all(|v| !v.starts_with('b')), "{values:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn close_flushes_records_in_flight_then_refuses_new_ones() {
    const N: u64 = 20_000;
    let topic = unique_name("prod-close");
    create_topic(&topic, 4).await;
    let p = producer();
    let mut futures = Vec::new();
    for i in 0..N {
        futures.push(
            p.send(Record::new(topic.as_str(), format!("c:{i}")).with_key(format!("{}", i % 10)))
                .await
                .unwrap(),
        );
    }
    let report = p.close().await;
    assert!(report.flushed, "{report:?}");
    assert_eq!(report.failed, 0);
    for f in futures {
        f.await.unwrap();
    }
    let err = p
        .send(Record::new(topic.as_str(), "late").with_key("late"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProduceError::Closed { record: Some(_) }),
        "{err}"
    );
    assert_eq!(
        err.into_record().unwrap().key_for_display(),
        "\"late\"",
        "record handed back"
    );
    let got = tokio::task::block_in_place(|| {
        consume_all(&topic, Isolation::ReadCommitted, Some(N as usize), IDLE)
    });
    assert_exactly_once_in_order(&got, N);
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_last_handle_delivers_what_was_sent() {
    const N: u64 = 5_000;
    let topic = unique_name("prod-drop");
    create_topic(&topic, 2).await;
    let p = producer();
    let mut futures = Vec::new();
    for i in 0..N {
        futures.push(
            p.send(Record::new(topic.as_str(), format!("d:{i}")).with_key(format!("{}", i % 3)))
                .await
                .unwrap(),
        );
    }
    // Dropping inside async code is fine: the flush runs on a blocking thread.
    drop(p);
    for f in futures {
        f.await.unwrap();
    }
    let got = tokio::task::block_in_place(|| {
        consume_all(&topic, Isolation::ReadCommitted, Some(N as usize), IDLE)
    });
    assert_exactly_once_in_order(&got, N);
}

/// Every record is sent before any future is awaited: the caller ends up holding 50 times
/// the pending bound in futures. Delivery, not the caller's await, frees the budget, so this
/// must neither deadlock nor exceed the bound.
#[tokio::test(flavor = "multi_thread")]
async fn fire_fifty_times_the_pending_bound_then_await_each() {
    const BOUND: u64 = 1_000;
    const N: u64 = 50 * BOUND;
    let topic = unique_name("prod-fire-all");
    create_topic(&topic, 4).await;
    let cfg = ProducerConfig::default()
        .with_kafka(producer_config())
        .with_pending_limits(BOUND as usize, 1 << 20);
    let p = Producer::new(cfg).unwrap();
    let mut futures = Vec::with_capacity(N as usize);
    for i in 0..N {
        futures.push(
            p.send(Record::new(topic.as_str(), format!("f:{i}")).with_key(format!("{}", i % 16)))
                .await
                .unwrap(),
        );
        assert!(p.counters().pending_records <= BOUND);
    }
    assert_eq!(
        p.counters().outstanding_futures,
        N,
        "every future is held, none awaited yet"
    );
    for f in futures {
        f.await.unwrap();
    }
    // A resolved future is counted before it resolves.
    assert_eq!(p.counters().delivered, N);
    // The budget and the slots come back on the poll thread just after it resolves each
    // future; close() waits for it to be done with every report.
    p.close().await;
    let c = p.counters();
    assert_eq!((c.outstanding_futures, c.pending_records), (0, 0));
}
