//! Failing records: retries with backoff, dead-lettering with origin headers, a poison record
//! that blocks only its own key while memory stays bounded, metadata pressure that pauses
//! instead of failing commits.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Ledger, committed, config, eventually, filled_topic};
use kbatch_client::Isolation;
use kbatch_consumer::{
    ExponentialBackoff, HandlerError, ParallelConsumer, ProcessingOrder, ShutdownMode,
};
use kbatch_testkit::{consume_all, create_topic, unique_name};

fn fast_retries() -> ExponentialBackoff {
    ExponentialBackoff::new(Duration::from_millis(5), Duration::from_millis(50)).with_jitter(0.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retriable_failures_retry_and_permanent_ones_are_dead_lettered() {
    const N: u64 = 300;
    let topic = filled_topic("pc-fail", 2, N, 10).await;
    let dlq = unique_name("pc-fail-dlq");
    create_topic(&dlq, 1).await;
    let group = unique_name("pc-fail-g");
    let ok = Ledger::default();
    let attempts: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let cfg = config(&group, &[&topic], ProcessingOrder::Key).with_dead_letter(&dlq, 3);
    let running = ParallelConsumer::builder(cfg)
        .retry_policy(fast_retries())
        .handler({
            let (ok, attempts) = (ok.clone(), attempts.clone());
            move |r| {
                let (ok, attempts) = (ok.clone(), attempts.clone());
                async move {
                    let s = common::seq(&r);
                    let n = {
                        let mut a = attempts.lock().unwrap();
                        let n = a.entry(s).or_default();
                        *n += 1;
                        *n
                    };
                    match s % 10 {
                        1 => Err(HandlerError::permanent(format!("bad record {s}"))),
                        2 if n < 3 => Err(HandlerError::retriable("downstream busy")),
                        4 => Err(HandlerError::retriable("always times out")),
                        _ => {
                            ok.push(&r);
                            Ok(())
                        }
                    }
                }
            }
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    let expect_ok = (0..N).filter(|s| !matches!(s % 10, 1 | 4)).count();
    eventually(60, "good and retried records processed", || {
        ok.len() >= expect_ok
    })
    .await;
    let dead = (0..N).filter(|s| matches!(s % 10, 1 | 4)).count();
    let got = tokio::task::block_in_place(|| {
        consume_all(
            &dlq,
            Isolation::ReadCommitted,
            Some(dead),
            Duration::from_secs(20),
        )
    });
    // A dead letter is counted once its write's acknowledgement is back in the consumer,
    // which may be just after the reader above saw the record in the topic.
    eventually(60, "every dead letter counted", || {
        running.stats().dead_lettered >= dead as u64
    })
    .await;
    let stats = running.stats();
    let report = running.shutdown(ShutdownMode::Drain).await.unwrap();
    assert_eq!(report.processed, expect_ok as u64);
    assert_eq!(stats.dead_lettered, dead as u64, "counted once each");
    let a = attempts.lock().unwrap().clone();
    for s in 0..N {
        let want = match s % 10 {
            1 => 1, // permanent: no retry
            2 | 4 => 3,
            _ => 1,
        };
        assert_eq!(a[&s], want, "attempts of record {s}");
    }
    let dead_records: Vec<_> = got.values().flatten().collect();
    assert_eq!(dead_records.len(), dead);
    for d in dead_records {
        let s = common::seq(d);
        let h = |k: &str| {
            String::from_utf8(d.header(k).unwrap().value.clone().unwrap().to_vec()).unwrap()
        };
        assert_eq!(h("kbatch.dlq.topic"), topic);
        assert_eq!(
            h("kbatch.dlq.attempts"),
            if s % 10 == 1 { "1" } else { "3" }
        );
        assert!(h("kbatch.dlq.error").contains(if s % 10 == 1 {
            "bad record"
        } else {
            "always times out"
        }));
        assert_eq!(
            d.key,
            d.header("kbatch.dlq.key").unwrap().value,
            "original key kept"
        );
        let off: i64 = h("kbatch.dlq.offset").parse().unwrap();
        let part: i32 = h("kbatch.dlq.partition").parse().unwrap();
        assert!(off >= 0 && (0..2).contains(&part));
    }
    let total: i64 = (0..2)
        .map(|p| committed(&group, &topic, p).0.unwrap())
        .sum();
    assert_eq!(total, N as i64, "dead-lettered records count as done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_record_retried_forever_blocks_only_its_key_and_memory_stays_flat() {
    const N: u64 = 2_000;
    const KEYS: u64 = 20;
    const BUDGET: u64 = 500;
    let topic = filled_topic("pc-poison", 1, N, KEYS).await;
    let group = unique_name("pc-poison-g");
    let ok = Ledger::default();
    let mut cfg = config(&group, &[&topic], ProcessingOrder::Key);
    cfg.max_records = BUDGET as usize;
    cfg.shutdown_timeout = Duration::from_millis(300);
    let running = ParallelConsumer::builder(cfg)
        .retry_policy(fast_retries())
        .handler({
            let ok = ok.clone();
            move |r| {
                let ok = ok.clone();
                async move {
                    if common::seq(&r) == 5 {
                        return Err(HandlerError::retriable("poison"));
                    }
                    ok.push(&r);
                    Ok(())
                }
            }
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    // key-5 holds records 5, 25, 45, ...: all wait behind the poison. Everything else flows.
    let others = (0..N).filter(|s| s % KEYS != 5).count();
    let blocked = N / KEYS;
    let held = |s: &kbatch_consumer::ConsumerStats| s.waiting + s.in_flight;
    // Sampled all along, while the poison blocks its key: first while the other keys flow,
    // then while it is retried again and again with nothing else left to do.
    let mut max_held = 0;
    eventually(60, "every other key processed", || {
        max_held = max_held.max(held(&running.stats()));
        ok.len() >= others
    })
    .await;
    // The budget plus what the poll thread may fetch beyond a full one (a quarter of it).
    assert!(
        max_held <= BUDGET + BUDGET / 4,
        "held work bounded by the budget while the others flowed: {max_held}"
    );
    // `Progress` is published whole (the stats' counters are stored one by one), so its
    // `held` is exact: the blocked key's records, no more, however often the poison is retried.
    let progress = running.progress();
    let retried_then = running.stats().retried;
    eventually(60, "20 more retries of the poison record", || {
        let p = progress.borrow().clone();
        if p.processed < others as u64 {
            return false; // published before the last of the others completed
        }
        assert_eq!(
            p.held, blocked,
            "exactly the blocked key's records are held, and retrying adds nothing: {p:?}"
        );
        running.stats().retried >= retried_then + 20
    })
    .await;
    assert!(
        ok.seqs().iter().all(|s| s % KEYS != 5),
        "nothing behind the poison in its key ran"
    );
    assert_eq!(
        committed(&group, &topic, 0).0,
        Some(5),
        "commit held at the poison record"
    );
    running.shutdown(ShutdownMode::Quick).await.unwrap();
}

/// A well-mixed hash (splitmix64): stuck records scattered so their metadata does not compress.
fn stuck(s: u64) -> bool {
    let mut z = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).is_multiple_of(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_near_the_limit_pauses_the_partition_instead_of_failing_commits() {
    const N: u64 = 150_000;
    let topic = filled_topic("pc-overflow", 1, N, 0).await;
    let group = unique_name("pc-overflow-g");
    let ok = Ledger::default();
    let mut cfg = config(&group, &[&topic], ProcessingOrder::Unordered).with_concurrency(1_000);
    cfg.max_records = 1_000_000;
    cfg.kafka.prefetch_bytes = 64 << 10;
    cfg.kafka.max_partition_fetch_bytes = 64 << 10;
    cfg.shutdown_timeout = Duration::from_millis(300);
    // Scattered records keep failing, waiting an hour between attempts: incompletes pile up.
    let running = ParallelConsumer::builder(cfg)
        .retry_policy(
            ExponentialBackoff::new(Duration::from_secs(3600), Duration::from_secs(3600))
                .with_multiplier(1.0)
                .with_jitter(0.0),
        )
        .handler({
            let ok = ok.clone();
            move |r| {
                let ok = ok.clone();
                async move {
                    if stuck(common::seq(&r)) {
                        return Err(HandlerError::retriable("not yet"));
                    }
                    ok.push(&r);
                    Ok(())
                }
            }
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    eventually(60, "the partition is paused by metadata pressure", || {
        running.stats().paused_partitions == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen_then = ok.len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        ok.len() <= seen_then + 2_000,
        "intake stopped: {} then {}",
        seen_then,
        ok.len()
    );
    assert!(
        (ok.len() as u64) < N * 2 / 3,
        "not everything was taken in: {}",
        ok.len()
    );
    let first_stuck = (0..N).find(|s| stuck(*s)).unwrap() as i64;
    let (off, meta) = committed(&group, &topic, 0);
    assert_eq!(off, Some(first_stuck));
    assert!(
        meta.len() > 3072 * 9 / 10 && meta.len() <= 4096,
        "commits keep succeeding within the limit: {} bytes",
        meta.len()
    );
    assert_eq!(
        running.stats().failed,
        running.stats().retried,
        "every failure is waiting to retry, none dropped"
    );
    running.shutdown(ShutdownMode::Quick).await.unwrap();
}
