//! Smoke tests proving the test broker is a faithful Kafka: each property here failed on an
//! alternative we tried (see shared/FINDINGS.md), and every later test relies on them.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use kbatch_client::{Delivered, DeliveryError};
use kbatch_client::{
    DeliverySink, ErrorCode, Isolation, KafkaConsumer, KafkaProducer, OffsetCommit,
};
use kbatch_core::{Offset, Record, TopicPartition};
use kbatch_testkit::{
    consume_all, consumer_config, create_topic, produce, producer_config, unique_name,
};

/// Client timeouts and the wait for records: a hang guard (it names what never came), not a
/// speed target; every step here takes well under a second.
const T: Duration = Duration::from_secs(30);

fn seq_of(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn keyed_records_keep_their_order_per_partition() {
    const N: u64 = 100_000;
    let topic = unique_name("fidelity-order");
    create_topic(&topic, 8).await;
    let records: Vec<Record> = (0..N)
        .map(|i| {
            Record::new(topic.as_str(), format!("k{}:{i}", i % 1000))
                .with_key(format!("k{}", i % 1000))
        })
        .collect();
    let results = tokio::task::block_in_place(|| produce(&producer_config(), &records));
    let delivered: Vec<Delivered> = results
        .into_iter()
        .map(|r| r.expect("every record delivered"))
        .collect();

    let got = tokio::task::block_in_place(|| {
        consume_all(&topic, Isolation::ReadCommitted, Some(N as usize), T)
    });
    let total: usize = got.values().map(Vec::len).sum();
    assert_eq!(
        total, N as usize,
        "every produced record is read back exactly once"
    );
    assert_eq!(got.len(), 8, "keys spread over all 8 partitions");

    let mut key_partition: HashMap<Vec<u8>, i32> = HashMap::new();
    let mut seen = vec![false; N as usize];
    for (p, recs) in &got {
        let mut last_seq: Option<u64> = None;
        for (i, r) in recs.iter().enumerate() {
            if i > 0 {
                assert!(
                    r.offset > recs[i - 1].offset,
                    "offsets increase in partition {p}"
                );
            }
            let seq = seq_of(r.value.as_ref().unwrap());
            assert!(
                last_seq.is_none_or(|l| seq > l),
                "partition {p}: seq {seq} after {last_seq:?}"
            );
            last_seq = Some(seq);
            assert!(
                !std::mem::replace(&mut seen[seq as usize], true),
                "seq {seq} read twice"
            );
            let d = delivered[seq as usize];
            assert_eq!(
                (d.partition, d.offset),
                (*p, r.offset),
                "delivery report matches the log"
            );
            let k = r.key.clone().unwrap().to_vec();
            assert_eq!(
                *key_partition.entry(k).or_insert(*p),
                *p,
                "one key, one partition"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_metadata_of_3000_bytes_round_trips_and_the_4096_limit_is_enforced() {
    let topic = unique_name("fidelity-meta");
    let group = unique_name("fidelity-meta-group");
    create_topic(&topic, 1).await;
    tokio::task::block_in_place(|| {
        let c = KafkaConsumer::new(&consumer_config().with_group(&group)).unwrap();
        let tp = TopicPartition::new(topic.as_str(), 0);
        let metadata: String = (0..3000)
            .map(|i| char::from(b'A' + (i % 26) as u8))
            .collect();
        c.commit(
            &[OffsetCommit {
                tp: tp.clone(),
                offset: Offset(17),
                metadata: Some(metadata.clone()),
            }],
            true,
        )
        .unwrap();
        let back = c.committed(std::slice::from_ref(&tp), T).unwrap();
        assert_eq!(back[0].offset, Some(Offset(17)));
        assert_eq!(back[0].metadata.len(), 3000);
        assert_eq!(back[0].metadata, metadata);

        // A real broker enforces offset.metadata.max.bytes (4096 by default).
        let too_big = "x".repeat(5000);
        let err = c
            .commit(
                &[OffsetCommit {
                    tp: tp.clone(),
                    offset: Offset(18),
                    metadata: Some(too_big),
                }],
                true,
            )
            .expect_err("metadata over 4096 bytes must be refused");
        assert_eq!(err.code(), Some(ErrorCode::OffsetMetadataTooLarge), "{err}");
        assert_eq!(
            c.committed(&[tp], T).unwrap()[0].offset,
            Some(Offset(17)),
            "refused commit changed nothing"
        );
    });
}

/// Counts delivery reports; transactions are checked through what consumers see.
#[derive(Default)]
struct Count(std::sync::atomic::AtomicUsize);
impl DeliverySink for Count {
    fn on_delivery(&self, _: usize, r: Result<Delivered, DeliveryError>) {
        r.expect("transactional record delivered");
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn values(got: &BTreeMap<i32, Vec<kbatch_core::ConsumedRecord>>) -> Vec<String> {
    got.values()
        .flatten()
        .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn read_committed_sees_committed_transactions_only() {
    let topic = unique_name("fidelity-txn");
    create_topic(&topic, 2).await;
    tokio::task::block_in_place(|| {
        let p = KafkaProducer::new(
            &producer_config().with_transactional_id(unique_name("txn")),
            Count::default(),
        )
        .unwrap();
        p.init_transactions(T).unwrap();
        for (tag, commit) in [
            ("committed", true),
            ("aborted", false),
            ("committed-too", true),
        ] {
            p.begin_transaction().unwrap();
            for i in 0..50 {
                p.send(
                    &Record::new(topic.as_str(), format!("{tag}-{i}")).with_key(format!("{i}")),
                    0,
                )
                .unwrap();
            }
            p.flush(T).unwrap();
            if commit {
                p.commit_transaction(T).unwrap()
            } else {
                p.abort_transaction(T).unwrap()
            }
        }
        assert_eq!(p.sink().0.load(std::sync::atomic::Ordering::Relaxed), 150);

        let committed = values(&consume_all(
            &topic,
            Isolation::ReadCommitted,
            None,
            Duration::from_secs(3),
        ));
        assert_eq!(
            committed.len(),
            100,
            "only the two committed transactions: {committed:?}"
        );
        assert!(
            committed.iter().all(|v| v.starts_with("committed")),
            "no aborted record visible"
        );

        let everything = values(&consume_all(
            &topic,
            Isolation::ReadUncommitted,
            Some(150),
            Duration::from_secs(10),
        ));
        assert_eq!(
            everything.len(),
            150,
            "aborted records were written, just hidden"
        );
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_sent_to_a_transaction_become_the_groups_committed_offsets() {
    let input = unique_name("fidelity-eos-in");
    let output = unique_name("fidelity-eos-out");
    let group = unique_name("fidelity-eos-group");
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    let seed: Vec<Record> = (0..10)
        .map(|i| Record::new(input.as_str(), format!("in-{i}")))
        .collect();
    tokio::task::block_in_place(|| {
        assert!(produce(&producer_config(), &seed).iter().all(Result::is_ok));
        let c = KafkaConsumer::new(&consumer_config().with_group(&group)).unwrap();
        c.subscribe(&[&input]).unwrap();
        let deadline = Instant::now() + T;
        let mut read = Vec::new();
        while read.len() < 10 {
            assert!(
                Instant::now() < deadline,
                "group consumer got {} of 10 records",
                read.len()
            );
            c.poll_batch(&mut read, 10, Duration::from_millis(200))
                .unwrap();
        }
        let p = KafkaProducer::new(
            &producer_config().with_transactional_id(unique_name("eos")),
            Count::default(),
        )
        .unwrap();
        p.init_transactions(T).unwrap();
        let tp = TopicPartition::new(input.as_str(), 0);
        let gm = c
            .group_metadata()
            .expect("group metadata of a subscribed consumer");

        // Consume-transform-produce: the first 6 records' offsets commit with the transaction.
        p.begin_transaction().unwrap();
        p.send(&Record::new(output.as_str(), "out-0..6"), 0)
            .unwrap();
        p.send_offsets_to_transaction(&[(tp.clone(), read[5].offset.next())], &gm, T)
            .unwrap();
        p.commit_transaction(T).unwrap();
        let committed = c.committed(std::slice::from_ref(&tp), T).unwrap();
        assert_eq!(
            committed[0].offset,
            Some(Offset(6)),
            "committed with the transaction"
        );

        // Offsets of an aborted transaction are not committed.
        p.begin_transaction().unwrap();
        p.send(&Record::new(output.as_str(), "out-6..10"), 0)
            .unwrap();
        p.send_offsets_to_transaction(&[(tp.clone(), read[9].offset.next())], &gm, T)
            .unwrap();
        p.abort_transaction(T).unwrap();
        assert_eq!(
            c.committed(&[tp], T).unwrap()[0].offset,
            Some(Offset(6)),
            "abort leaves the offset"
        );
    });
}
