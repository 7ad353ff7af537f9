//! Offsets with gaps, null keys, the same key on two topics, and instances joining and leaving
//! a group while records are processed.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Ledger, committed, config, eventually, filled_topic};
use kbatch_client::AssignmentStrategy;
use kbatch_consumer::{
    ExponentialBackoff, HandlerError, ParallelConsumer, ProcessingOrder, Running, ShutdownMode,
};
use kbatch_core::ConsumedRecord;
use kbatch_core::Record;
use kbatch_testkit::{create_topic, producer_config, unique_name};

fn start(cfg: kbatch_consumer::ParallelConfig, ledger: &Ledger) -> Running {
    common::start_recording(cfg, ledger, Duration::from_millis(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transaction_markers_and_aborted_records_do_not_hold_the_commit_back() {
    let topic = unique_name("pc-txn");
    create_topic(&topic, 1).await;
    let p = kbatch_producer::Producer::new(
        kbatch_producer::ProducerConfig::default()
            .with_kafka(producer_config().with_transactional_id(unique_name("pc-txn"))),
    )
    .unwrap();
    let t = Duration::from_secs(30);
    p.init_transactions(t).await.unwrap();
    for (tag, commit) in [("a", true), ("b", false), ("c", true)] {
        p.begin_transaction().unwrap();
        let sent = p
            .send_batch((0..10).map(|i| {
                Record::new(topic.as_str(), format!("{tag}:{i}")).with_key(format!("{i}"))
            }))
            .await;
        assert!(
            sent.iter().all(Result::is_ok),
            "written before the outcome, so aborted records occupy offsets"
        );
        if commit {
            p.commit_transaction(t).await.unwrap()
        } else {
            p.abort_transaction(t).await.unwrap()
        }
    }
    p.close().await;
    let group = unique_name("pc-txn-g");
    let ledger = Ledger::default();
    let running = start(config(&group, &[&topic], ProcessingOrder::Key), &ledger);
    eventually(60, "committed records processed", || ledger.len() >= 20).await;
    // Offsets: a 0..=9, marker 10, aborted b 11..=20, marker 21, c 22..=31, marker 32. The
    // commit passes the aborted records and the earlier markers although they are never seen;
    // it stops at 32 because librdkafka reports positions as "last record + 1", never past a
    // trailing marker (its own auto-commit stores the same). Nothing is read again from there.
    let (t, g) = (topic.clone(), group.clone());
    eventually(20, "commit past the aborted records", || {
        committed(&g, &t, 0).0 == Some(32)
    })
    .await;
    running.shutdown(ShutdownMode::Drain).await.unwrap();
    let values: BTreeSet<String> = ledger
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(values.len(), 20);
    assert!(values.iter().all(|v| !v.starts_with('b')));
    let again = Ledger::default();
    let running = start(config(&group, &[&topic], ProcessingOrder::Key), &again);
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.shutdown(ShutdownMode::Drain).await.unwrap();
    assert_eq!(
        again.len(),
        0,
        "a restart at the committed offset reads nothing again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn null_keys_and_the_same_key_on_two_topics() {
    const N: u64 = 400;
    let t1 = filled_topic("pc-two-a", 2, N, 5).await;
    let t2 = filled_topic("pc-two-b", 2, N, 5).await;
    let nulls = filled_topic("pc-nulls", 2, N, 0).await;
    let group = unique_name("pc-two-g");
    let ledger = Ledger::default();
    let running = start(
        config(&group, &[&t1, &t2, &nulls], ProcessingOrder::Key).with_concurrency(32),
        &ledger,
    );
    eventually(60, "all three topics processed", || {
        ledger.len() >= 3 * N as usize
    })
    .await;
    running.shutdown(ShutdownMode::Drain).await.unwrap();
    let all = ledger.0.lock().unwrap().clone();
    assert_eq!(all.len(), 3 * N as usize, "each record once");
    // Same key, two topics: each (topic, key) in offset order; the topics interleave freely.
    for topic in [&t1, &t2] {
        for k in 0..5 {
            let key = format!("key-{k}").into_bytes();
            let offs: Vec<i64> = all
                .iter()
                .filter(|r| *r.topic == **topic && r.key.as_deref() == Some(&key[..]))
                .map(|r| r.offset.0 + i64::from(r.partition) * 1_000_000)
                .collect();
            assert!(
                offs.windows(2).all(|w| w[0] < w[1]),
                "{topic} key-{k}: {offs:?}"
            );
        }
    }
    // Null keys: ordered per partition.
    for p in 0..2 {
        let offs: Vec<i64> = all
            .iter()
            .filter(|r| *r.topic == *nulls && r.partition == p)
            .map(|r| r.offset.0)
            .collect();
        assert!(
            offs.windows(2).all(|w| w[0] < w[1]),
            "null keys of partition {p}: {offs:?}"
        );
        assert!(!offs.is_empty());
    }
}

async fn within_secs<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

/// Who processed which record when: (seq, instance, ms since the start, partition, offset).
type Handled = (u64, usize, u128, i32, i64);

/// Six instances join one by one and then leave (quick or drain) while records flow, with
/// work in flight and records waiting in retry backoff at every handover. A graceful handover
/// commits what was done before the partitions move, so nothing is processed twice, and a
/// key's records are processed in offset order across instances.
async fn churn(strategy: AssignmentStrategy) {
    const PARTITIONS: i32 = 12;
    const N: u64 = 24_000;
    // Why a duplicate happened, should one.
    common::log_consumer_warnings();
    let t0 = std::time::Instant::now();
    let who: Arc<Mutex<Vec<Handled>>> = Arc::default();
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let topic = filled_topic("pc-churn", PARTITIONS, N, 300).await;
    let group = unique_name("pc-churn-g");
    let ledger = Ledger::default();
    // Every 40th record fails its first attempt: it waits 300 ms to retry, so some are in
    // backoff whenever partitions move.
    let failed_once: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let cfg = || {
        // Few at a time, so the work lasts through every join and leave.
        let mut c = config(&group, &[&topic], ProcessingOrder::Key).with_concurrency(2);
        c.kafka.assignment_strategy = strategy;
        c.revoke_timeout = Duration::from_secs(10);
        // A small budget: a draining instance finishes what it holds, not the topic.
        c.max_records = 200;
        c
    };
    let start = |instance: usize| {
        let (ledger, failed_once, who) = (ledger.clone(), failed_once.clone(), who.clone());
        ParallelConsumer::builder(cfg())
            .retry_policy(
                ExponentialBackoff::new(Duration::from_millis(300), Duration::from_millis(300))
                    .with_jitter(0.0),
            )
            .handler(move |r: ConsumedRecord| {
                let (ledger, failed_once, who) = (ledger.clone(), failed_once.clone(), who.clone());
                async move {
                    let s = common::seq(&r);
                    if s % 40 == 7 && failed_once.lock().unwrap().insert(s) {
                        return Err(HandlerError::retriable("first attempt fails"));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ledger.push(&r);
                    who.lock().unwrap().push((
                        s,
                        instance,
                        t0.elapsed().as_millis(),
                        r.partition,
                        r.offset.0,
                    ));
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    let distinct = || ledger.seqs().into_iter().collect::<BTreeSet<u64>>().len();
    // Each join moves partitions from busy instances to the new one; wait until it has them.
    let mut fleet: Vec<Running> = Vec::new();
    let mut handled = Vec::new();
    for instance in 0..6 {
        let new = start(instance);
        within_secs(
            120,
            "the new instance gets partitions",
            new.wait_for(|p| !p.assigned.is_empty()),
        )
        .await;
        events.lock().unwrap().push(format!(
            "{} ms: instance {instance} joined, assigned {:?}",
            t0.elapsed().as_millis(),
            new.progress().borrow().assigned
        ));
        fleet.push(new);
    }
    assert!(
        distinct() < N as usize * 3 / 4,
        "six instances run while most of the work is still ahead ({} of {N} done): make the work longer",
        distinct()
    );
    // Each leave moves its partitions to the others; wait until they have taken them on.
    for i in 0..5 {
        let r = fleet.remove(0);
        handled.push(r.stats().processed);
        let mode = if i % 2 == 0 {
            ShutdownMode::Quick
        } else {
            ShutdownMode::Drain
        };
        let report = r.shutdown(mode).await.unwrap();
        events.lock().unwrap().push(format!(
            "{} ms: instance {i} left ({mode:?}): {report:?}",
            t0.elapsed().as_millis()
        ));
        // The others take its partitions on.
        let fleet_ref = &fleet;
        eventually(120, "the others take the partitions over", || {
            let owned: usize = fleet_ref
                .iter()
                .map(|f| f.progress().borrow().assigned.len())
                .sum();
            owned == PARTITIONS as usize
        })
        .await;
    }
    assert!(
        distinct() < N as usize,
        "the last handover happened with work still to do"
    );
    eventually(300, "every record processed", || distinct() >= N as usize).await;
    for r in fleet {
        handled.push(r.stats().processed);
        r.shutdown(ShutdownMode::Drain).await.unwrap();
    }
    let seen: BTreeSet<u64> = ledger.seqs().into_iter().collect();
    assert_eq!(seen, (0..N).collect::<BTreeSet<_>>());
    let total: i64 = (0..PARTITIONS)
        .map(|p| committed(&group, &topic, p).0.unwrap_or(0))
        .sum();
    assert_eq!(total, N as i64, "final commits cover everything");
    let twice = ledger.len() - N as usize;
    if twice > 0 {
        let who = who.lock().unwrap();
        let mut seen = BTreeSet::new();
        let dup: BTreeSet<u64> = who
            .iter()
            .filter(|w| !seen.insert(w.0))
            .map(|w| w.0)
            .collect();
        for w in who.iter().filter(|w| dup.contains(&w.0)) {
            eprintln!(
                "twice: seq {} by instance {} at {} ms (partition {}, offset {})",
                w.0, w.1, w.2, w.3, w.4
            );
        }
        for e in events.lock().unwrap().iter() {
            eprintln!("{e}");
        }
    }
    assert_eq!(
        twice, 0,
        "{strategy:?}: {twice} records processed twice across graceful handovers"
    );
    for (key, offsets) in ledger.per_key() {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{strategy:?}: key {key:?} out of order across instances: {offsets:?}"
        );
    }
    eprintln!(
        "{strategy:?}: {N} records, none twice, keys in order; {} first attempts failed; per instance {handled:?}",
        failed_once.lock().unwrap().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eager_handovers_under_churn_process_nothing_twice_and_keep_key_order() {
    churn(AssignmentStrategy::Range).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cooperative_handovers_under_churn_process_nothing_twice_and_keep_key_order() {
    churn(AssignmentStrategy::CooperativeSticky).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compacted_topics_leave_gaps_that_do_not_hold_the_commit_back() {
    let topic = unique_name("pc-compact");
    let t = kbatch_client::NewTopic::new(&topic, 1)
        .with_config("cleanup.policy", "compact")
        .with_config("segment.ms", "100")
        .with_config("min.cleanable.dirty.ratio", "0.001")
        .with_config("min.compaction.lag.ms", "0");
    kbatch_testkit::admin().create_topics(&[t]).await.unwrap();
    // Three rounds over 20 keys, in separate segments; a last record rolls the final one.
    let p = kbatch_producer::Producer::new(
        kbatch_producer::ProducerConfig::default().with_kafka(producer_config()),
    )
    .unwrap();
    for round in 0..3 {
        let rs = p
            .send_batch((0..20).map(|k| {
                Record::new(topic.as_str(), format!("r{round}")).with_key(format!("k{k}"))
            }))
            .await;
        assert!(rs.iter().all(Result::is_ok));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        p.send_batch([Record::new(topic.as_str(), "end").with_key("end")])
            .await[0]
            .is_ok()
    );
    p.close().await;
    // Wait for the log cleaner: older values of each key disappear, leaving offset gaps.
    let mut survivors = Vec::new();
    for _ in 0..120 {
        let got = tokio::task::block_in_place(|| {
            kbatch_testkit::consume_all(
                &topic,
                kbatch_client::Isolation::ReadCommitted,
                None,
                Duration::from_millis(500),
            )
        });
        survivors = got.into_values().flatten().map(|r| r.offset.0).collect();
        // Fully compacted: the newest value of each of the 20 keys, and "end".
        if survivors.len() == 21 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        survivors.len() < 61,
        "the broker compacted the topic (offset gaps exist)"
    );
    let group = unique_name("pc-compact-g");
    let ledger = Ledger::default();
    let running = start(config(&group, &[&topic], ProcessingOrder::Key), &ledger);
    eventually(60, "every surviving record processed", || {
        ledger.len() >= survivors.len()
    })
    .await;
    let (tt, g) = (topic.clone(), group.clone());
    eventually(20, "commit past the gaps to the end", || {
        committed(&g, &tt, 0).0 == Some(61)
    })
    .await;
    running.shutdown(ShutdownMode::Drain).await.unwrap();
    let mut offs: Vec<i64> = ledger
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.offset.0)
        .collect();
    offs.sort_unstable();
    assert_eq!(
        offs, survivors,
        "exactly the records that survived compaction"
    );
}

/// A's handlers hold their records until B has processed one, so they are still running when
/// A's partitions are revoked (after a 50 ms wait) and their results come back afterwards. The
/// handlers then ran twice for those records (A late, and the new owner), but the group
/// accounts for each record once: the late results are neither counted nor committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_outliving_a_revocation_is_accounted_once() {
    const N: u64 = 40;
    let topic = filled_topic("pc-late", 2, N, 40).await;
    let group = unique_name("pc-late-g");
    let ledger = Ledger::default();
    let (b_done_one, b_done) = tokio::sync::watch::channel(false);
    let cfg = || {
        let mut c = config(&group, &[&topic], ProcessingOrder::Key).with_concurrency(64);
        c.revoke_timeout = Duration::from_millis(50);
        c
    };
    let start = |gated: bool| {
        let (ledger, b_done_one, b_done) = (ledger.clone(), b_done_one.clone(), b_done.clone());
        ParallelConsumer::builder(cfg())
            .handler(move |r| {
                let (ledger, b_done_one, mut b_done) =
                    (ledger.clone(), b_done_one.clone(), b_done.clone());
                async move {
                    if gated {
                        let _ = b_done.wait_for(|done| *done).await;
                    }
                    ledger.push(&r);
                    if !gated {
                        b_done_one.send_replace(true);
                    }
                    Ok(())
                }
            })
            .build()
            .unwrap()
            .start()
            .unwrap()
    };
    let a = start(true);
    eventually(60, "A has work in flight", || a.stats().in_flight > 0).await;
    let a_in_flight = a.stats().in_flight;
    let b = start(false);
    eventually(
        120,
        "the group processed as many records as the topic holds",
        || a.stats().processed + b.stats().processed >= N,
    )
    .await;
    eventually(60, "A's late handlers came back", || {
        ledger.len() >= N as usize + a_in_flight as usize
    })
    .await;
    // A's driver must still be healthy after the late completions came back.
    assert!(!a.is_finished(), "consumer A stopped: {:?}", a.stats());
    let ra = a
        .shutdown(ShutdownMode::Drain)
        .await
        .expect("A shuts down cleanly");
    let rb = b
        .shutdown(ShutdownMode::Drain)
        .await
        .expect("B shuts down cleanly");
    let seen: BTreeSet<u64> = ledger.seqs().into_iter().collect();
    assert_eq!(
        seen,
        (0..N).collect::<BTreeSet<_>>(),
        "every record processed"
    );
    assert!(
        ledger.len() > N as usize,
        "some handlers ran twice (A's late ones): {} calls for {N} records",
        ledger.len()
    );
    assert_eq!(
        ra.processed + rb.processed,
        N,
        "each record accounted once across the group (A {}, B {}), late results ignored",
        ra.processed,
        rb.processed
    );
    let total: i64 = (0..2)
        .map(|p| committed(&group, &topic, p).0.unwrap_or(0))
        .sum();
    assert_eq!(total, N as i64, "final commits cover every record once");
}
