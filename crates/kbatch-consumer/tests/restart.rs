//! Per-record acks that survive restarts: the commit never passes an in-flight record, the
//! metadata carries what completed beyond it, and a restart processes exactly the rest —
//! from kbatch's metadata (both encodings) and from Confluent Parallel Consumer's.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use common::{Ledger, committed, config, eventually, filled_topic, kafka};
use kbatch_client::{KafkaConsumer, OffsetCommit};
use kbatch_consumer::{ParallelConfig, ParallelConsumer, ProcessingOrder, ShutdownMode};
use kbatch_core::{Offset, Record, TopicPartition};
use kbatch_testkit::{produce, producer_config, unique_name};

/// Runs a consumer whose handler never finishes the records `stuck` selects (they stay in
/// flight) and completes the rest; stops it without finishing them, as a crash would leave them.
async fn run_with_stuck(
    cfg: ParallelConfig,
    n: u64,
    stuck: fn(u64) -> bool,
) -> (Option<i64>, String) {
    let (topic, group) = (cfg.topics[0].clone(), cfg.kafka.group_id.clone().unwrap());
    let done = Ledger::default();
    let mut cfg = cfg;
    cfg.shutdown_timeout = Duration::from_millis(300);
    let running = ParallelConsumer::builder(cfg)
        .handler({
            let done = done.clone();
            move |r| {
                let done = done.clone();
                async move {
                    if stuck(common::seq(&r)) {
                        std::future::pending::<()>().await;
                    }
                    done.push(&r);
                    Ok(())
                }
            }
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    let expected = (0..n).filter(|s| !stuck(*s)).count();
    eventually(60, "all but the stuck records processed", || {
        done.len() >= expected
    })
    .await;
    let first_stuck = (0..n).find(|s| stuck(*s)).unwrap() as i64;
    // Commits happen every 50 ms; whatever is committed must stop at the first stuck record.
    let (t, g) = (topic.clone(), group.clone());
    eventually(20, "commit with metadata", || {
        let (off, meta) = committed(&g, &t, 0);
        off == Some(first_stuck) && !meta.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        committed(&group, &topic, 0).0,
        Some(first_stuck),
        "never past an in-flight record"
    );
    let report = running.shutdown(ShutdownMode::Quick).await.unwrap();
    assert_eq!(report.processed, expected as u64);
    committed(&group, &topic, 0)
}

/// Starts a fresh consumer on the group and returns the sequence numbers it processes.
async fn restart_and_collect(cfg: ParallelConfig, expect: usize) -> Vec<u64> {
    let seen = Ledger::default();
    let running = common::start_recording(cfg, &seen, Duration::ZERO);
    eventually(60, "the restarted consumer catches up", || {
        seen.len() >= expect
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // anything extra would show up now
    running.shutdown(ShutdownMode::Drain).await.unwrap();
    let mut s = seen.seqs();
    s.sort_unstable();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_reprocesses_only_incompletes_sparse_and_dense_patterns() {
    const N: u64 = 400;
    // Sparse incompletes favour run-length, dense alternating ones favour the bitset.
    let patterns: [fn(u64) -> bool; 2] = [|s| s % 37 == 5, |s| s % 2 == 1 && s > 20];
    for stuck in patterns {
        let topic = filled_topic("pc-restart", 1, N, 50).await;
        let group = unique_name("pc-restart-g");
        let cfg = || config(&group, &[&topic], ProcessingOrder::Unordered).with_concurrency(500);
        let (off, meta) = run_with_stuck(cfg(), N, stuck).await;
        assert!(meta.starts_with("kb:"), "kbatch metadata: {meta}");
        assert!(meta.len() < 4096);
        let want: Vec<u64> = (0..N).filter(|s| stuck(*s)).collect();
        assert_eq!(off, Some(want[0] as i64));
        let got = restart_and_collect(cfg(), want.len()).await;
        assert_eq!(got, want, "exactly the records that were not completed");
        assert_eq!(committed(&group, &topic, 0).0, Some(N as i64));
    }
}

fn pc_metadata(magic: u8, payload: &[u8], compress: bool) -> String {
    let body = if compress {
        zstd::bulk::compress(payload, 3).unwrap()
    } else {
        payload.to_vec()
    };
    let mut b = vec![magic];
    b.extend(body);
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_consumer_metadata_of_every_encoding_is_honoured() {
    const N: u64 = 60;
    // PC committed offset 10 with offsets 10..40 described: incomplete {10, 13, 14, 30..33}.
    let incomplete: BTreeSet<u64> = [10, 13, 14, 30, 31, 32].into();
    let flags: Vec<bool> = (10..40).map(|o| !incomplete.contains(&o)).collect(); // true = completed
    let mut bits = vec![0u8; flags.len().div_ceil(8)];
    for (i, f) in flags.iter().enumerate() {
        if *f {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    let mut runs: Vec<i32> = Vec::new();
    let (mut cur, mut len) = (false, 0);
    for f in &flags {
        if *f == cur {
            len += 1
        } else {
            runs.push(len);
            cur = *f;
            len = 1
        }
    }
    runs.push(len);
    let bitset = |v2: bool| {
        let mut p = if v2 {
            (flags.len() as i32).to_be_bytes().to_vec()
        } else {
            (flags.len() as i16).to_be_bytes().to_vec()
        };
        p.extend(&bits);
        p
    };
    let rle = |v2: bool| -> Vec<u8> {
        runs.iter()
            .flat_map(|r| {
                if v2 {
                    r.to_be_bytes().to_vec()
                } else {
                    (*r as i16).to_be_bytes().to_vec()
                }
            })
            .collect()
    };
    let cases = [
        (b'l', bitset(false), false),
        (b'a', bitset(false), true),
        (b'o', bitset(true), false),
        (b's', bitset(true), true),
        (b'n', rle(false), false),
        (b'J', rle(false), true),
        (b'e', rle(true), false),
        (b'p', rle(true), true),
    ];
    for (magic, payload, compress) in cases {
        let topic = filled_topic("pc-migrate", 1, N, 7).await;
        let group = unique_name("pc-migrate-g");
        let c = KafkaConsumer::new(&kafka(&group)).unwrap();
        let tp = TopicPartition::new(topic.as_str(), 0);
        c.commit(
            &[OffsetCommit {
                tp,
                offset: Offset(10),
                metadata: Some(pc_metadata(magic, &payload, compress)),
            }],
            true,
        )
        .unwrap();
        drop(c);
        let want: Vec<u64> = incomplete.iter().copied().chain(40..N).collect();
        let got =
            restart_and_collect(config(&group, &[&topic], ProcessingOrder::Key), want.len()).await;
        assert_eq!(
            got, want,
            "PC encoding {:?}: only PC's incomplete records and those it never saw",
            magic as char
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_metadata_fails_fast_or_is_ignored_by_policy() {
    const N: u64 = 30;
    let topic = filled_topic("pc-corrupt", 1, N, 3).await;
    let group = unique_name("pc-corrupt-g");
    let c = KafkaConsumer::new(&kafka(&group)).unwrap();
    let tp = TopicPartition::new(topic.as_str(), 0);
    c.commit(
        &[OffsetCommit {
            tp,
            offset: Offset(5),
            metadata: Some("kb:not-valid-at-all".into()),
        }],
        true,
    )
    .unwrap();
    drop(c);
    let running = ParallelConsumer::builder(config(&group, &[&topic], ProcessingOrder::Key))
        .handler(|_| async { Ok(()) })
        .build()
        .unwrap()
        .start()
        .unwrap();
    // The timeout is a hang guard: the consumer must stop by itself on the corrupt metadata.
    let err = tokio::time::timeout(Duration::from_secs(60), running.join())
        .await
        .expect("the consumer never stopped on the corrupt metadata")
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&topic) && text.contains("metadata"), "{text}");
    assert_eq!(
        committed(&group, &topic, 0).0,
        Some(5),
        "nothing committed after the failure"
    );

    let mut cfg = config(&group, &[&topic], ProcessingOrder::Key);
    cfg.metadata_policy = kbatch_consumer::MetadataPolicy::Ignore;
    let got = restart_and_collect(cfg, (N - 5) as usize).await;
    assert_eq!(
        got,
        (5..N).collect::<Vec<_>>(),
        "ignored: everything from the committed offset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn committed_offset_moved_externally_is_followed() {
    const FIRST: u64 = 30;
    const N: u64 = 50;
    let topic = filled_topic("pc-moved", 1, FIRST, 5).await;
    let group = unique_name("pc-moved-g");
    let cfg = || config(&group, &[&topic], ProcessingOrder::Key);
    assert_eq!(
        restart_and_collect(cfg(), FIRST as usize).await,
        (0..FIRST).collect::<Vec<_>>()
    );
    assert_eq!(committed(&group, &topic, 0).0, Some(FIRST as i64));
    // More records arrive while no consumer runs: the group stands at 30, 30..50 unprocessed.
    let more: Vec<Record> = (FIRST..N)
        .map(|i| Record::new(topic.as_str(), format!("v:{i}")).with_key(format!("key-{}", i % 5)))
        .collect();
    let sent = tokio::task::block_in_place(|| produce(&producer_config(), &more));
    assert!(sent.iter().all(Result::is_ok));
    let set = |o: i64| {
        let c = KafkaConsumer::new(&kafka(&group)).unwrap();
        c.commit(
            &[OffsetCommit {
                tp: TopicPartition::new(topic.as_str(), 0),
                offset: Offset(o),
                metadata: None,
            }],
            true,
        )
        .unwrap();
    };
    set(45); // raised past records the group never processed: 30..45 are skipped
    assert_eq!(
        restart_and_collect(cfg(), 5).await,
        (45..N).collect::<Vec<_>>()
    );
    set(20); // lowered below what it processed: 20..50 again
    assert_eq!(
        restart_and_collect(cfg(), 30).await,
        (20..N).collect::<Vec<_>>()
    );
    kbatch_testkit::admin_delete_group(&group).await; // deleted: auto.offset.reset = earliest
    assert_eq!(
        restart_and_collect(cfg(), N as usize).await,
        (0..N).collect::<Vec<_>>()
    );
}
