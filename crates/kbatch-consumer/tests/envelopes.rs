//! Packed envelopes through the consumer's driver, without a broker (`kbatch-testkit`'s
//! in-memory source and sink): each event is ordered, run, retried and dead-lettered on its
//! own; the envelope's offset is committed once its last event is done; a malformed envelope
//! fails alone; a huge envelope is held a budget at a time; a restart redoes an unfinished
//! envelope whole and never a finished one.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kbatch_consumer::{
    FailureKind, HandlerError, HandlerResult, ParallelConfig, ProcessingOrder, Running,
    ShutdownMode,
};
use kbatch_core::envelope::{self, Event};
use kbatch_core::{ConsumedRecord, Header, Record, Timestamp, TopicPartition};
use kbatch_testkit::memory::MemoryBroker;

mod in_memory;

use in_memory::{Seams, until, within};

const TOPIC: &str = "packed";

fn tp(p: i32) -> TopicPartition {
    TopicPartition::new(TOPIC, p)
}

/// An event keyed `key`, its value the text of `value`, with one header of its own.
fn event(key: &str, value: impl ToString) -> Event {
    Event {
        key: Some(Bytes::from(key.to_owned())),
        value: Some(Bytes::from(value.to_string())),
        headers: vec![Header {
            key: "origin".into(),
            value: Some(Bytes::from_static(b"sensor")),
        }],
        timestamp: None,
    }
}

fn envelope_record(events: &[Event]) -> Record {
    let mut r = Record::new(TOPIC, envelope::encode(events));
    r.headers.push(envelope::envelope_header());
    r
}

/// A record that says it is an envelope and is not one.
fn malformed_record() -> Record {
    let mut r = Record::new(
        TOPIC,
        Bytes::from_static(b"KBEV\x01\x00\x00\x00\x00\x05\x01"),
    );
    r.headers.push(envelope::envelope_header());
    r
}

fn config(order: ProcessingOrder) -> ParallelConfig {
    in_memory::config(TOPIC, "packed", order)
}

fn seams(b: &MemoryBroker) -> Seams {
    Seams::new(b, TOPIC)
}

fn broker(partitions: i32) -> MemoryBroker {
    let b = MemoryBroker::new();
    b.create_topic(TOPIC, partitions);
    b
}

/// One handler call: partition, offset, index in the envelope (`None` for a record).
type Unit = (i32, i64, Option<u32>);

fn unit(r: &ConsumedRecord) -> Unit {
    (r.partition, r.offset.0, r.envelope.map(|e| e.index))
}

/// Every handler call, in call order.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<ConsumedRecord>>>);

impl Calls {
    fn push(&self, r: &ConsumedRecord) {
        self.0.lock().unwrap().push(r.clone());
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn all(&self) -> Vec<ConsumedRecord> {
        self.0.lock().unwrap().clone()
    }
    fn units(&self) -> Vec<Unit> {
        self.all().iter().map(unit).collect()
    }
}

async fn drain(running: Running) -> kbatch_consumer::ConsumerStats {
    within(10, "idle", running.until_idle()).await;
    let stats = running.stats();
    running.shutdown(ShutdownMode::Drain).await.unwrap();
    stats
}

fn expected_units(p: i32, offset: i64, events: u32) -> Vec<Unit> {
    (0..events).map(|i| (p, offset, Some(i))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_different_keys_run_concurrently_and_each_key_in_order() {
    let b = broker(1);
    // 60 events over 6 keys; every tenth carries its own timestamp, the others take the
    // envelope's. A record of key k0 follows the envelope.
    let events: Vec<Event> = (0..60)
        .map(|i| Event {
            timestamp: (i % 10 == 0).then_some(Timestamp(1_000 + i)),
            ..event(&format!("k{}", i % 6), i)
        })
        .collect();
    b.produce_record(
        &tp(0),
        envelope_record(&events).with_timestamp(Timestamp(77)),
    );
    b.produce(&tp(0), Some("k0"), "after");
    let s = seams(&b);
    let calls = Calls::default();
    let active: Arc<Mutex<HashMap<Bytes, usize>>> = Arc::default();
    let overlaps: Arc<Mutex<Vec<String>>> = Arc::default();
    let k1_started = Arc::new(AtomicBool::new(false));
    let running = s
        .builder(config(ProcessingOrder::Key))
        .handler({
            let (calls, active, overlaps, k1_started) = (
                calls.clone(),
                active.clone(),
                overlaps.clone(),
                k1_started.clone(),
            );
            move |r: ConsumedRecord| {
                let (calls, active, overlaps, k1_started) = (
                    calls.clone(),
                    active.clone(),
                    overlaps.clone(),
                    k1_started.clone(),
                );
                async move {
                    let key = r.key.clone().unwrap();
                    calls.push(&r);
                    {
                        let mut a = active.lock().unwrap();
                        let n = a.entry(key.clone()).or_default();
                        *n += 1;
                        if *n > 1 {
                            overlaps.lock().unwrap().push(format!("{:?}", unit(&r)));
                        }
                    }
                    if &key[..] == b"k1" {
                        k1_started.store(true, Ordering::SeqCst);
                    }
                    // The first event of k0 finishes only once an event of k1 has started:
                    // run one at a time, this would never end.
                    if r.envelope.map(|e| e.index) == Some(0) {
                        while !k1_started.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    *active.lock().unwrap().get_mut(&key).unwrap() -= 1;
                    Ok(())
                }
            }
        })
        .start()
        .unwrap();
    let stats = drain(running).await;
    let got = calls.all();
    let mut units: Vec<Unit> = got.iter().map(unit).collect();
    units.sort();
    let mut want = expected_units(0, 0, 60);
    want.push((0, 1, None));
    assert_eq!(
        units, want,
        "every event, and the record after, exactly once"
    );
    assert!(
        overlaps.lock().unwrap().is_empty(),
        "two events of one key ran at once: {:?}",
        overlaps.lock().unwrap()
    );
    let mut per_key: BTreeMap<Bytes, Vec<(i64, Option<u32>)>> = BTreeMap::new();
    for r in &got {
        per_key
            .entry(r.key.clone().unwrap())
            .or_default()
            .push((r.offset.0, r.envelope.map(|e| e.index)));
    }
    for (key, order) in &per_key {
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "key {key:?} out of order: {order:?}"
        );
    }
    assert_eq!(
        per_key[&Bytes::from_static(b"k0")].last(),
        Some(&(1, None)),
        "the record after the envelope comes after every k0 event"
    );
    for r in got.iter().filter(|r| r.offset.0 == 0) {
        let i = r.envelope.unwrap().index;
        assert_eq!(
            (&*r.topic, r.partition, r.envelope.unwrap().count),
            (TOPIC, 0, 60)
        );
        assert_eq!(r.value.as_deref(), Some(i.to_string().as_bytes()));
        assert_eq!(
            r.headers, events[i as usize].headers,
            "the event's own headers"
        );
        let ts = if i % 10 == 0 {
            1_000 + i64::from(i)
        } else {
            77
        };
        assert_eq!(
            r.timestamp,
            Some(Timestamp(ts)),
            "event {i}: its own timestamp, else the envelope's"
        );
    }
    assert_eq!((stats.processed, stats.envelopes_unpacked), (61, 1));
    assert_eq!(s.committed(0), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelopes_offset_is_committed_only_after_its_last_event() {
    let b = broker(1);
    b.produce(&tp(0), Some("a"), "first");
    let events: Vec<Event> = (0..5).map(|i| event(&format!("e{i}"), i)).collect();
    b.produce_record(&tp(0), envelope_record(&events));
    b.produce(&tp(0), Some("b"), "last");
    let s = seams(&b);
    let calls = Calls::default();
    let release = Arc::new(AtomicBool::new(false));
    let running = s
        .builder(config(ProcessingOrder::Unordered))
        .handler({
            let (calls, release) = (calls.clone(), release.clone());
            move |r: ConsumedRecord| {
                let (calls, release) = (calls.clone(), release.clone());
                async move {
                    // Event 3 of the envelope holds on until released.
                    while r.envelope.map(|e| e.index) == Some(3) && !release.load(Ordering::SeqCst)
                    {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    calls.push(&r);
                    Ok(())
                }
            }
        })
        .start()
        .unwrap();
    until(10, "all but event 3", || calls.len() >= 6).await;
    // Commits are made every 20 ms: give them ten intervals to (wrongly) pass the envelope.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (offset, metadata) = s.broker.committed(&tp(0)).unwrap();
    assert_eq!(
        offset.0, 1,
        "the envelope at offset 1 is not done while one of its events runs"
    );
    let map = kbatch_consumer::codec::decode(1, &metadata).unwrap();
    assert!(
        map.is_completed(2) && !map.is_completed(1),
        "the record after it is done, the envelope is not: {map:?}"
    );
    release.store(true, Ordering::SeqCst);
    until(10, "the envelope committed", || s.committed(0) == Some(3)).await;
    drain(running).await;
}

/// What the dead-letter callback got: the unit, its key and value, the error's kind and text,
/// the attempts made.
type DeadLettered = (Unit, Option<Bytes>, Option<Bytes>, FailureKind, String, u32);

fn dead_letters(
    b: kbatch_consumer::Builder,
) -> (kbatch_consumer::Builder, Arc<Mutex<Vec<DeadLettered>>>) {
    let dead: Arc<Mutex<Vec<DeadLettered>>> = Arc::default();
    let b = b.dead_letter_callback({
        let dead = dead.clone();
        move |r: ConsumedRecord, e: HandlerError, n: u32| {
            let dead = dead.clone();
            async move {
                dead.lock().unwrap().push((
                    unit(&r),
                    r.key.clone(),
                    r.value.clone(),
                    e.kind(),
                    e.to_string(),
                    n,
                ));
                Ok(())
            }
        }
    });
    (b, dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_is_retried_and_dead_lettered_alone() {
    let b = broker(1);
    let events: Vec<Event> = (0..10).map(|i| event(&format!("k{}", i % 3), i)).collect();
    b.produce_record(&tp(0), envelope_record(&events));
    b.produce(&tp(0), Some("k1"), "after");
    let s = seams(&b);
    let mut cfg = config(ProcessingOrder::Key);
    cfg.max_attempts = Some(3);
    let attempts: Arc<Mutex<BTreeMap<Unit, u32>>> = Arc::default();
    let (builder, dead) = dead_letters(s.builder(cfg));
    let running = builder
        .handler({
            let attempts = attempts.clone();
            move |r: ConsumedRecord| {
                let attempts = attempts.clone();
                async move {
                    let n = {
                        let mut a = attempts.lock().unwrap();
                        let n = a.entry(unit(&r)).or_default();
                        *n += 1;
                        *n
                    };
                    match (r.envelope.map(|e| e.index), n) {
                        (Some(4), ..3) => Err(HandlerError::retriable("busy")),
                        (Some(7), _) => Err(HandlerError::permanent("event 7 is bad")),
                        _ => Ok(()),
                    }
                }
            }
        })
        .start()
        .unwrap();
    let stats = drain(running).await;
    let a = attempts.lock().unwrap().clone();
    for (u, n) in &a {
        let want = if *u == (0, 0, Some(4)) { 3 } else { 1 };
        assert_eq!(*n, want, "attempts of {u:?}: only event 4 was retried");
    }
    assert_eq!(a.len(), 11, "every event and the record were handled");
    let d = dead.lock().unwrap().clone();
    assert_eq!(d.len(), 1, "{d:?}");
    let (u, key, value, kind, text, n) = &d[0];
    assert_eq!(*u, (0, 0, Some(7)), "event 7 alone is dead-lettered");
    assert_eq!(
        (key.as_deref(), value.as_deref()),
        (Some(&b"k1"[..]), Some(&b"7"[..]))
    );
    assert_eq!((*kind, *n), (FailureKind::Permanent, 1));
    assert!(text.contains("event 7 is bad"), "{text}");
    assert_eq!((stats.processed, stats.dead_lettered), (10, 1));
    assert_eq!(
        s.committed(0),
        Some(2),
        "a dead-lettered event counts as done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_envelope_fails_alone_and_the_others_go_on() {
    for with_dead_letters in [true, false] {
        let b = broker(1);
        b.produce_record(
            &tp(0),
            envelope_record(&[event("a", 0), event("b", 1), event("a", 2)]),
        );
        b.produce_record(&tp(0), malformed_record());
        b.produce_record(&tp(0), envelope_record(&[event("a", 3), event("c", 4)]));
        b.produce(&tp(0), Some("a"), "plain");
        let s = seams(&b);
        let calls = Calls::default();
        let builder = s.builder(config(ProcessingOrder::Key));
        let (builder, dead) = if with_dead_letters {
            dead_letters(builder)
        } else {
            (builder, Arc::default())
        };
        let running = builder
            .handler({
                let calls = calls.clone();
                move |r: ConsumedRecord| {
                    let calls = calls.clone();
                    async move {
                        calls.push(&r);
                        Ok(())
                    }
                }
            })
            .start()
            .unwrap();
        let stats = drain(running).await;
        let mut units = calls.units();
        units.sort();
        let mut want = expected_units(0, 0, 3);
        want.extend(expected_units(0, 2, 2));
        want.push((0, 3, None));
        assert_eq!(
            units, want,
            "dead letters {with_dead_letters}: the malformed one never reaches the handler, the rest all do"
        );
        assert_eq!(stats.malformed_envelopes, 1);
        assert_eq!(s.committed(0), Some(4), "dead letters {with_dead_letters}");
        if with_dead_letters {
            let d = dead.lock().unwrap().clone();
            assert_eq!(d.len(), 1, "{d:?}");
            let (u, _, value, kind, text, n) = &d[0];
            assert_eq!(*u, (0, 1, None), "the raw record, whole");
            assert_eq!(value.as_deref(), malformed_record().value.as_deref());
            assert_eq!((*kind, *n), (FailureKind::Permanent, 0));
            assert!(
                text.contains("malformed kbatch envelope (v1) in event 0 at byte 10"),
                "the decoder's message: {text}"
            );
            assert_eq!(stats.dead_lettered, 1);
        } else {
            assert_eq!(stats.skipped_failed, 1, "skipped and counted");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_larger_than_the_budget_is_held_a_budget_at_a_time() {
    const EVENTS: u32 = 2_000;
    let b = broker(2);
    for p in 0..2 {
        for n in 0..3 {
            let events: Vec<Event> = (0..EVENTS)
                .map(|i| event(&format!("k{}", i % 50), format!("{n}.{i}")))
                .collect();
            b.produce_record(&tp(p), envelope_record(&events));
            b.produce(&tp(p), Some("k1"), "between");
        }
    }
    let s = seams(&b);
    let mut cfg = config(ProcessingOrder::Unordered);
    cfg.max_records = 50;
    cfg.max_concurrency = 4;
    let calls = Calls::default();
    let (active, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let running = s
        .builder(cfg)
        .handler({
            let (calls, active, peak) = (calls.clone(), active.clone(), peak.clone());
            move |r: ConsumedRecord| {
                let (calls, active, peak) = (calls.clone(), active.clone(), peak.clone());
                async move {
                    peak.fetch_max(active.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    calls.push(&r);
                    active.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        })
        .start()
        .unwrap();
    let total = 2 * 3 * (EVENTS as usize + 1);
    let mut most = 0;
    within(60, "every event handled", async {
        while calls.len() < total {
            let st = running.stats();
            most = most.max(st.waiting + st.in_flight);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    drain(running).await;
    // Held events stay within the budget; besides them, only the records fetched before the
    // pause wait, each envelope counted once (the poll thread's batches: a quarter of it).
    assert!(most <= 50 + 13, "held {most} with a budget of 50 records");
    assert!(
        peak.load(Ordering::SeqCst) <= 4,
        "max_concurrency holds for events"
    );
    let distinct: BTreeSet<Unit> = calls.units().into_iter().collect();
    assert_eq!(
        (calls.len(), distinct.len()),
        (total, total),
        "each exactly once"
    );
    assert_eq!((s.committed(0), s.committed(1)), (Some(6), Some(6)));
}

/// The three shapes a handler comes in.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Async,
    Blocking,
    Batch,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handler_shape_gets_one_record_per_event() {
    for shape in [Shape::Async, Shape::Blocking, Shape::Batch] {
        let b = broker(1);
        let events: Vec<Event> = (0..20).map(|i| event(&format!("k{}", i % 4), i)).collect();
        b.produce_record(&tp(0), envelope_record(&events));
        b.produce(&tp(0), Some("k0"), "plain");
        let s = seams(&b);
        let calls = Calls::default();
        let builder = s.builder(config(ProcessingOrder::Key));
        let builder = match shape {
            Shape::Async => builder.handler({
                let calls = calls.clone();
                move |r: ConsumedRecord| {
                    calls.push(&r);
                    async { Ok(()) }
                }
            }),
            Shape::Blocking => builder.blocking_handler({
                let calls = calls.clone();
                move |r: ConsumedRecord| -> HandlerResult {
                    calls.push(&r);
                    Ok(())
                }
            }),
            Shape::Batch => builder.batch_handler(4, {
                let calls = calls.clone();
                move |rs: Vec<ConsumedRecord>| {
                    for r in &rs {
                        calls.push(r);
                    }
                    async { Ok(()) }
                }
            }),
        };
        let stats = drain(builder.start().unwrap()).await;
        let got = calls.all();
        let mut units: Vec<Unit> = got.iter().map(unit).collect();
        units.sort();
        let mut want = expected_units(0, 0, 20);
        want.push((0, 1, None));
        assert_eq!(units, want, "{shape:?}");
        assert!(
            got.iter().all(|r| !envelope::is_envelope(&r.headers)),
            "{shape:?}: no handler sees the envelope itself"
        );
        assert!(
            got.iter()
                .filter(|r| r.offset.0 == 0)
                .all(|r| r.envelope.map(|e| e.count) == Some(20)),
            "{shape:?}"
        );
        assert_eq!(stats.processed, 21, "{shape:?}");
        assert_eq!(s.committed(0), Some(2), "{shape:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_unpacking_off_the_handler_gets_the_envelope_record() {
    let b = broker(1);
    let events: Vec<Event> = (0..5).map(|i| event("k", i)).collect();
    b.produce_record(&tp(0), envelope_record(&events));
    let s = seams(&b);
    let calls = Calls::default();
    let running = s
        .builder(config(ProcessingOrder::Key).with_unpack_envelopes(false))
        .handler({
            let calls = calls.clone();
            move |r: ConsumedRecord| {
                calls.push(&r);
                async { Ok(()) }
            }
        })
        .start()
        .unwrap();
    let stats = drain(running).await;
    let got = calls.all();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope, None);
    assert!(envelope::is_envelope(&got[0].headers));
    assert_eq!(
        envelope::decode(got[0].value.as_ref().unwrap()).unwrap(),
        events
    );
    assert_eq!((stats.processed, stats.envelopes_unpacked), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_redoes_an_unfinished_envelope_whole_and_never_a_finished_one() {
    let b = broker(1);
    b.produce_record(
        &tp(0),
        envelope_record(&(0..4).map(|i| event("a", i)).collect::<Vec<_>>()),
    );
    b.produce_record(
        &tp(0),
        envelope_record(
            &(0..4)
                .map(|i| event(&format!("b{i}"), i))
                .collect::<Vec<_>>(),
        ),
    );
    b.produce(&tp(0), Some("c"), "plain");

    // Run 1: event 2 of the second envelope never finishes; the shutdown gives up on it.
    let s = seams(&b);
    let mut cfg = config(ProcessingOrder::Key);
    cfg.shutdown_timeout = Duration::from_millis(200);
    let first = Calls::default();
    let running = s
        .builder(cfg)
        .handler({
            let first = first.clone();
            move |r: ConsumedRecord| {
                let first = first.clone();
                async move {
                    if unit(&r) == (0, 1, Some(2)) {
                        std::future::pending::<()>().await;
                    }
                    first.push(&r);
                    Ok(())
                }
            }
        })
        .start()
        .unwrap();
    until(10, "all but the stuck event", || first.len() >= 8).await;
    let report = running.shutdown(ShutdownMode::Drain).await.unwrap();
    assert_eq!(
        report.committed,
        vec![(tp(0), kbatch_core::Offset(1))],
        "the unfinished envelope holds the commit"
    );

    // Run 2, a new consumer of the same group: the unfinished envelope again, all of it (its
    // events done in run 1 too: the commit is per envelope), nothing of the first envelope,
    // nor the record after it that the metadata marks done.
    let s = seams(&b);
    let second = Calls::default();
    let running = s
        .builder(config(ProcessingOrder::Key))
        .handler({
            let second = second.clone();
            move |r: ConsumedRecord| {
                second.push(&r);
                async { Ok(()) }
            }
        })
        .start()
        .unwrap();
    drain(running).await;
    let mut units = second.units();
    units.sort();
    assert_eq!(units, expected_units(0, 1, 4));
    assert!(
        second
            .all()
            .iter()
            .all(|r| r.envelope.map(|e| e.count) == Some(4)),
        "{:?}",
        second.all()
    );
    assert_eq!(s.committed(0), Some(3));
}
