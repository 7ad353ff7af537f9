//! The consumer's driver without a broker: `kbatch-testkit`'s in-memory source and sink stand
//! in for Kafka, so revocation, back-pressure, retries, dead letters, panics, commit failures
//! and shutdown are tested on their own, fast, with the rebalances under the test's control.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kbatch_consumer::{
    ExponentialBackoff, FailureKind, Handler, HandlerError, HandlerResult, ParallelConfig,
    ParallelConsumer, ProcessingOrder, ShutdownMode,
};
use kbatch_core::{CommitReason, ConsumedRecord, Offset, TopicPartition};
use kbatch_testkit::memory::MemoryBroker;

mod in_memory;

use in_memory::{Seams, fast_retries, until, within};

const TOPIC: &str = "events";

fn broker(partitions: i32, per_partition: usize) -> MemoryBroker {
    let b = MemoryBroker::new();
    b.create_topic(TOPIC, partitions);
    for p in 0..partitions {
        for i in 0..per_partition {
            b.produce(
                &TopicPartition::new(TOPIC, p),
                Some(&format!("k{}", i % 7)),
                format!("{p}:{i}"),
            );
        }
    }
    b
}

fn config(order: ProcessingOrder) -> ParallelConfig {
    in_memory::config(TOPIC, "memory", order)
}

fn seams(b: &MemoryBroker) -> Seams {
    Seams::new(b, TOPIC)
}

/// Records every record handled, in order.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<Vec<(i32, i64)>>>);

impl Ledger {
    fn push(&self, r: &ConsumedRecord) {
        self.0.lock().unwrap().push((r.partition, r.offset.0));
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A handler of our own: state shared through `&self`, nothing cloned per record.
struct Recorder {
    ledger: Ledger,
    delay: Duration,
}

impl Handler for Recorder {
    async fn handle(&self, r: ConsumedRecord) -> HandlerResult {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.ledger.push(&r);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_everything_and_commits_to_the_sink() {
    let s = seams(&broker(3, 200));
    let ledger = Ledger::default();
    let running = s.start(
        config(ProcessingOrder::Key),
        Recorder {
            ledger: ledger.clone(),
            delay: Duration::from_millis(1),
        },
    );
    let p = within(30, "idle", running.until_idle()).await;
    assert_eq!(p.processed, 600);
    assert_eq!(ledger.len(), 600);
    for part in 0..3 {
        assert_eq!(p.committed[&TopicPartition::new(TOPIC, part)], Offset(200));
        assert_eq!(s.committed(part), Some(200), "the sink has it");
    }
    let report = running.shutdown(ShutdownMode::Drain).await.unwrap();
    assert_eq!(report.processed, 600);
    assert!(report.not_committed.is_empty());
    assert!(
        s.sink
            .log()
            .iter()
            .any(|(r, _, ok)| r.reason == CommitReason::Periodic && *ok),
        "progress was committed while running, not only at the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_waits_for_in_flight_work_then_commits_only_what_is_done() {
    let s = seams(&broker(2, 50));
    let mut cfg = config(ProcessingOrder::Unordered);
    cfg.revoke_timeout = Duration::from_millis(300);
    let release = Arc::new(AtomicBool::new(false));
    let done = Ledger::default();
    let running = s.start(cfg, {
        let (release, done) = (release.clone(), done.clone());
        move |r: ConsumedRecord| {
            let (release, done) = (release.clone(), done.clone());
            async move {
                // Offset 10 of partition 0 hangs until released.
                while r.partition == 0 && r.offset.0 == 10 && !release.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                done.push(&r);
                Ok(())
            }
        }
    });
    until(10, "all but the stuck record", || done.len() >= 99).await;
    let p0 = TopicPartition::new(TOPIC, 0);
    let t = Instant::now();
    s.source.revoke(std::slice::from_ref(&p0), false);
    until(10, "the revocation ends", || {
        !s.source.assignment().contains(&p0)
    })
    .await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "it waited for the stuck record: {took:?}"
    );
    let (offset, metadata) = s.broker.committed(&p0).unwrap();
    assert_eq!(
        offset,
        Offset(10),
        "the commit stops at the record still in flight"
    );
    assert!(
        metadata.starts_with("kb:"),
        "completed ones beyond it travel in the metadata"
    );
    release.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        s.committed(0),
        Some(10),
        "the stuck record finishing after the revocation changes nothing"
    );
    let report = running.shutdown(ShutdownMode::Drain).await.unwrap();
    assert!(
        report.committed.iter().all(|(tp, _)| *tp != p0),
        "p0 is not ours any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_commit_queued_behind_a_slow_one_never_overwrites_a_revocation_commit() {
    // A slow coordinator: the first periodic commit waits unanswered, so the next one is
    // queued behind it. The revocation's commit is newer than the queued one; sending the
    // queued one after it would move the group's offset back, and whoever owns the partition
    // next would redo what lies between.
    let s = seams(&broker(2, 50));
    let mut cfg = config(ProcessingOrder::Unordered);
    cfg.commit_interval = Duration::from_millis(50);
    cfg.revoke_timeout = Duration::from_secs(5);
    // Gates: 10.. wait for gates[0]; 40.. of p0 for gates[1] (opened at the revocation);
    // 40.. of p1 for gates[2] (opened after it, so a later periodic commit is made).
    let gates: Arc<[AtomicBool; 3]> = Arc::default();
    let done = Ledger::default();
    s.sink.hold();
    let running = s.start(cfg, {
        let (gates, done) = (gates.clone(), done.clone());
        move |r: ConsumedRecord| {
            let (gates, done) = (gates.clone(), done.clone());
            async move {
                let gate = match (r.partition, r.offset.0) {
                    (_, ..10) => None,
                    (_, 10..40) => Some(0),
                    (0, _) => Some(1),
                    _ => Some(2),
                };
                while gate.is_some_and(|g| !gates[g].load(Ordering::Acquire)) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                done.push(&r);
                Ok(())
            }
        }
    });
    let handled = |n: usize| {
        let done = done.clone();
        async move { until(10, "records handled", || done.len() >= n).await }
    };
    until(10, "a first commit under way", || s.sink.waiting() != 0).await;
    gates[0].store(true, Ordering::Release);
    handled(80).await;
    // A few commit intervals: the engine asks for 40 on both, queued behind the first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.sink.waiting(), 1, "one commit at a time is made");
    let p0 = TopicPartition::new(TOPIC, 0);
    s.source.revoke(std::slice::from_ref(&p0), false);
    gates[1].store(true, Ordering::Release);
    handled(90).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.sink.release();
    until(10, "the revocation ends", || {
        !s.source.assignment().contains(&p0)
    })
    .await;
    assert_eq!(s.committed(0), Some(50), "the revocation commits all of p0");
    gates[2].store(true, Ordering::Release);
    handled(100).await;
    until(10, "a periodic commit of p1", || s.committed(1) == Some(50)).await;
    let report = running.shutdown(ShutdownMode::Drain).await.unwrap();
    assert_eq!(
        s.committed(0),
        Some(50),
        "no older commit of p0 was sent after the revocation"
    );
    assert!(report.not_committed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_pauses_partitions_and_memory_stays_bounded() {
    let s = seams(&broker(4, 500));
    let mut cfg = config(ProcessingOrder::Unordered);
    cfg.max_records = 100;
    cfg.max_concurrency = 4;
    let ledger = Ledger::default();
    let running = s.start(
        cfg,
        Recorder {
            ledger: ledger.clone(),
            delay: Duration::from_millis(2),
        },
    );
    let mut most = 0;
    while ledger.len() < 2000 {
        let st = running.stats();
        most = most.max(st.waiting + st.in_flight);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // When it fills, what was already fetched (the batches in the channel and the poll
    // thread's hand, a quarter of the budget at most) is taken in.
    assert!(most <= 100 + 25, "held {most}");
    assert!(
        s.source.pause_calls() > 0,
        "full: partitions were paused at the source"
    );
    within(10, "idle", running.until_idle()).await;
    running.shutdown(ShutdownMode::Drain).await.unwrap();
    assert_eq!(ledger.len(), 2000, "and every record was processed");
}

/// What the dead-letter callback got: offset, error kind, attempts, the error's source.
type DeadLettered = (i64, FailureKind, u32, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_policy_and_failures_for_good_reach_the_dead_letter_callback() {
    let s = seams(&broker(1, 30));
    let mut cfg = config(ProcessingOrder::Key);
    cfg.max_attempts = Some(3);
    let attempts: Arc<Mutex<BTreeMap<i64, Vec<Instant>>>> = Arc::default();
    let dead: Arc<Mutex<Vec<DeadLettered>>> = Arc::default();
    let running = ParallelConsumer::builder(cfg)
        .source(s.source.clone(), s.sink.clone())
        .retry_policy(
            ExponentialBackoff::new(Duration::from_millis(40), Duration::from_secs(1))
                .with_jitter(0.0),
        )
        .dead_letter_callback({
            let dead = dead.clone();
            move |r: ConsumedRecord, e: HandlerError, n: u32| {
                let dead = dead.clone();
                async move {
                    let source = std::error::Error::source(&e)
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    dead.lock().unwrap().push((r.offset.0, e.kind(), n, source));
                    Ok(())
                }
            }
        })
        .handler({
            let attempts = attempts.clone();
            move |r: ConsumedRecord| {
                let attempts = attempts.clone();
                async move {
                    let n = {
                        let mut a = attempts.lock().unwrap();
                        let v = a.entry(r.offset.0).or_default();
                        v.push(Instant::now());
                        v.len()
                    };
                    match r.offset.0 {
                        3 if n < 3 => Err(HandlerError::retriable("busy")),
                        7 => Err(HandlerError::permanent(std::io::Error::other("malformed"))),
                        9 => Err(HandlerError::retriable("always down")),
                        _ => Ok(()),
                    }
                }
            }
        })
        .start()
        .unwrap();
    let p = within(10, "idle", running.until_idle()).await;
    running.shutdown(ShutdownMode::Drain).await.unwrap();
    assert_eq!(p.processed, 28, "all but 7 and 9");
    let a = attempts.lock().unwrap();
    assert_eq!(a[&3].len(), 3, "retried until it succeeded");
    let gaps: Vec<Duration> = a[&3].windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] >= Duration::from_millis(40) && gaps[1] >= Duration::from_millis(80),
        "backoff 40 ms, then 80 ms: {gaps:?}"
    );
    assert_eq!(a[&7].len(), 1, "permanent: no retry");
    assert_eq!(a[&9].len(), 3, "max_attempts");
    let mut d = dead.lock().unwrap().clone();
    d.sort_by_key(|x| x.0);
    assert_eq!(d.len(), 2);
    assert_eq!((d[0].0, d[0].1, d[0].2), (7, FailureKind::Permanent, 1));
    assert_eq!(d[0].3, "malformed", "the handler's own error is the source");
    assert_eq!((d[1].0, d[1].1, d[1].2), (9, FailureKind::Retriable, 3));
    assert_eq!(
        s.committed(0),
        Some(30),
        "dead-lettered records count as done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_retried_and_the_consumer_keeps_running() {
    let s = seams(&broker(1, 20));
    let panics = Arc::new(AtomicU64::new(0));
    let ledger = Ledger::default();
    let running = s.start(config(ProcessingOrder::Key), {
        let (panics, ledger) = (panics.clone(), ledger.clone());
        move |r: ConsumedRecord| {
            let (panics, ledger) = (panics.clone(), ledger.clone());
            async move {
                if r.offset.0 == 5 && panics.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("handler bug on offset 5");
                }
                ledger.push(&r);
                Ok(())
            }
        }
    });
    let p = within(10, "idle", running.until_idle()).await;
    let st = running.stats();
    running.shutdown(ShutdownMode::Drain).await.unwrap();
    assert_eq!(p.processed, 20);
    assert_eq!(
        panics.load(Ordering::SeqCst),
        3,
        "panicked twice, then succeeded"
    );
    assert_eq!(st.failed, 2);
    assert_eq!(st.retried, 2);
}

/// The three shapes a handler comes in.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Async,
    Blocking,
    Batch,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_in_async_blocking_and_batch_handlers_are_classified_and_retried_per_policy() {
    for shape in [Shape::Async, Shape::Blocking, Shape::Batch] {
        let s = seams(&broker(1, 20));
        let mut cfg = config(ProcessingOrder::Partition);
        cfg.max_attempts = Some(3);
        let attempts: Arc<Mutex<BTreeMap<i64, usize>>> = Arc::default();
        let dead: Arc<Mutex<Vec<DeadLettered>>> = Arc::default();
        // Offset 5 panics twice, then succeeds; offset 12 always panics (dead-lettered after
        // max_attempts). A batch holds both with its neighbours, so a batch is retried whole.
        let step = {
            let attempts = attempts.clone();
            move |r: &ConsumedRecord| -> HandlerResult {
                let n = {
                    let mut a = attempts.lock().unwrap();
                    let n = a.entry(r.offset.0).or_default();
                    *n += 1;
                    *n
                };
                match (r.offset.0, n) {
                    (5, ..3) => panic!("bug on offset 5, attempt {n}"),
                    (12, _) => panic!("bug on offset 12 for good"),
                    _ => Ok(()),
                }
            }
        };
        let builder = ParallelConsumer::builder(cfg)
            .source(s.source.clone(), s.sink.clone())
            .retry_policy(fast_retries())
            .dead_letter_callback({
                let dead = dead.clone();
                move |r: ConsumedRecord, e: HandlerError, n: u32| {
                    let dead = dead.clone();
                    async move {
                        dead.lock()
                            .unwrap()
                            .push((r.offset.0, e.kind(), n, e.to_string()));
                        Ok(())
                    }
                }
            });
        let builder = match shape {
            Shape::Async => builder.handler(move |r: ConsumedRecord| {
                let step = step.clone();
                async move { step(&r) }
            }),
            Shape::Blocking => builder.blocking_handler(move |r: ConsumedRecord| step(&r)),
            Shape::Batch => builder.batch_handler(4, move |rs: Vec<ConsumedRecord>| {
                let step = step.clone();
                async move { rs.iter().try_for_each(&step) }
            }),
        };
        let running = builder.start().unwrap();
        let p = within(10, "idle", running.until_idle()).await;
        let st = running.stats();
        running.shutdown(ShutdownMode::Drain).await.unwrap();
        let a = attempts.lock().unwrap();
        assert_eq!(a[&5], 3, "{shape:?}: panicked twice, then succeeded");
        assert_eq!(a[&12], 3, "{shape:?}: retried up to max_attempts");
        let d = dead.lock().unwrap().clone();
        let (offsets, kinds): (Vec<i64>, Vec<FailureKind>) = d.iter().map(|x| (x.0, x.1)).unzip();
        let twelve = d.iter().find(|x| x.0 == 12).expect("12 dead-lettered");
        assert!(
            kinds.iter().all(|k| *k == FailureKind::Panicked) && twelve.2 == 3,
            "{shape:?}: classified as a panic after 3 attempts: {d:?}"
        );
        assert!(
            twelve.3.contains("bug on offset 12"),
            "{shape:?}: the panic's message is kept: {}",
            twelve.3
        );
        match shape {
            // A batch fails whole: its other records go with it.
            Shape::Batch => assert!(offsets.contains(&12) && offsets.len() <= 4, "{d:?}"),
            _ => assert_eq!(offsets, vec![12], "{shape:?}"),
        }
        assert_eq!(
            p.processed as usize + offsets.len(),
            20,
            "{shape:?}: the consumer kept going past both"
        );
        assert!(
            st.failed >= 4,
            "{shape:?}: every panic counted: {}",
            st.failed
        );
        assert_eq!(s.committed(0), Some(20), "{shape:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commits_are_counted_and_made_again_and_a_failed_final_commit_is_reported() {
    let s = seams(&broker(1, 50));
    s.sink.fail_next(3);
    let ledger = Ledger::default();
    let running = s.start(
        config(ProcessingOrder::Unordered),
        Recorder {
            ledger: ledger.clone(),
            delay: Duration::ZERO,
        },
    );
    within(10, "idle", running.until_idle()).await;
    until(10, "committed after the failures", || {
        s.committed(0) == Some(50)
    })
    .await;
    assert!(
        running.stats().commit_failures >= 3,
        "{:?}",
        running.stats()
    );
    // More records; the final commit fails.
    for i in 0..5 {
        s.broker
            .produce(&TopicPartition::new(TOPIC, 0), None, format!("late {i}"));
    }
    until(10, "late records", || ledger.len() >= 55).await;
    running.pause().await; // nothing commits the late ones before the shutdown
    s.sink.fail_next(100);
    let report = running.shutdown(ShutdownMode::Drain).await.unwrap();
    assert!(report.committed.is_empty(), "{report:?}");
    assert_eq!(report.not_committed.len(), 1, "{report:?}");
    assert!(report.not_committed[0].2.contains("injected"), "{report:?}");
}

/// Dropped when the handler future is dropped: cancellation is observable.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_timeout_cancels_stuck_handlers_and_reports_what_is_left() {
    let s = seams(&broker(1, 100));
    let mut cfg = config(ProcessingOrder::Unordered);
    cfg.shutdown_timeout = Duration::from_millis(200);
    cfg.max_concurrency = 2;
    let cancelled = Arc::new(AtomicBool::new(false));
    let running = s.start(cfg, {
        let cancelled = cancelled.clone();
        move |r: ConsumedRecord| {
            let cancelled = cancelled.clone();
            async move {
                if r.offset.0 == 4 {
                    let _flag = DropFlag(cancelled);
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let report = within(10, "shutdown", running.shutdown(ShutdownMode::Drain))
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the stuck handler was cancelled, not left running"
    );
    assert!(report.left_unprocessed >= 1, "{report:?}");
    assert_eq!(
        report.committed,
        vec![(TopicPartition::new(TOPIC, 0), Offset(4))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_shuts_the_consumer_down() {
    let s = seams(&broker(1, 20));
    let ledger = Ledger::default();
    let running = s.start(
        config(ProcessingOrder::Key),
        Recorder {
            ledger: ledger.clone(),
            delay: Duration::ZERO,
        },
    );
    let mut progress = running.progress();
    within(10, "idle", running.until_idle()).await;
    drop(running);
    within(10, "stopped", progress.wait_for(|p| p.stopped))
        .await
        .unwrap();
    assert!(
        s.sink
            .log()
            .iter()
            .any(|(r, _, _)| r.reason == CommitReason::Final),
        "a final commit was made"
    );
}
