//! The adaptive producer against the real broker: every event delivered once, in order per
//! key, where its future says; packed envelopes on the partition the key would have had; the
//! level follows the load; what was learned survives a restart.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kbatch_adaptive::calibration::{CalibrationStore, LevelRecord};
use kbatch_adaptive::{
    AdaptiveConfig, AdaptiveProducer, BatchSettings, ControllerConfig, LevelId, PathConfig,
    SendOptions, Shape, TrySendError, TrySendManyError,
};
use kbatch_client::Isolation;
use kbatch_core::envelope::{decode, is_envelope};
use kbatch_core::{ConsumedRecord, Record};
use kbatch_producer::{Producer, ProducerConfig};
use kbatch_testkit::{consume_all, create_topic, producer_config, unique_name};

const IDLE: Duration = Duration::from_secs(3);
const KEYS: u64 = 50;

fn config(shape: Shape) -> AdaptiveConfig {
    AdaptiveConfig::new(ProducerConfig::default().with_kafka(producer_config()))
        .with_shape(shape)
        .without_calibration()
        .with_epoch(Duration::from_millis(200))
        .with_seed(7)
}

fn event(topic: &str, i: u64) -> Record {
    let k = format!("k{}", i % KEYS);
    Record::new(topic, format!("{k}:{i}")).with_key(k)
}

/// Per partition, in log order: each event's key, sequence, record offset and envelope index.
type Placed = BTreeMap<i32, Vec<(String, u64, i64, Option<u32>)>>;

/// (key, sequence) of every event in `got`, per partition in log order; envelopes unpacked.
fn events(got: &BTreeMap<i32, Vec<ConsumedRecord>>) -> Placed {
    let mut out = BTreeMap::new();
    for (p, recs) in got {
        let v: &mut Vec<_> = out.entry(*p).or_default();
        for r in recs {
            if is_envelope(&r.headers) {
                for (i, e) in decode(r.value.as_ref().unwrap())
                    .unwrap()
                    .into_iter()
                    .enumerate()
                {
                    let s = std::str::from_utf8(e.value.as_deref().unwrap()).unwrap();
                    let (k, n) = s.split_once(':').unwrap();
                    assert_eq!(e.key.as_deref(), Some(k.as_bytes()));
                    v.push((k.to_owned(), n.parse().unwrap(), r.offset.0, Some(i as u32)));
                }
            } else {
                let s = std::str::from_utf8(r.value.as_deref().unwrap()).unwrap();
                let (k, n) = s.split_once(':').unwrap();
                v.push((k.to_owned(), n.parse().unwrap(), r.offset.0, None));
            }
        }
    }
    out
}

/// Every sequence 0..n exactly once, each key's sequences rising, each key on one partition.
fn assert_once_in_key_order(ev: &Placed, n: u64) {
    let mut seen = vec![false; n as usize];
    let mut last: HashMap<&str, (i32, u64)> = HashMap::new();
    for (p, v) in ev {
        for (k, s, _, _) in v {
            assert!(
                !std::mem::replace(&mut seen[*s as usize], true),
                "event {s} twice"
            );
            if let Some((lp, ls)) = last.insert(k, (*p, *s)) {
                assert_eq!(lp, *p, "key {k} on two partitions");
                assert!(ls < *s, "key {k}: {ls} before {s}");
            }
        }
    }
    let missing = seen.iter().filter(|s| !**s).count();
    assert_eq!(missing, 0, "{missing} events lost");
}

/// Most of `n` events were encoded where they were handed in (once the driver knew the
/// topic), not one by one by the driver.
fn assert_mostly_packed_at_hand_in(packed_at_hand_in: u64, n: u64) {
    assert!(
        packed_at_hand_in > n / 2,
        "{packed_at_hand_in} of {n} packed at hand-in"
    );
}

/// Each event's future reported the partition, offset and envelope index it was read at.
fn assert_futures_said_where(ev: &Placed, delivered: &[kbatch_adaptive::EventDelivered]) {
    for (p, v) in ev {
        for (_, s, off, idx) in v {
            let d = delivered[*s as usize];
            assert_eq!(
                (d.partition, d.offset.0, d.index),
                (*p, *off, *idx),
                "event {s}"
            );
        }
    }
}

/// How the test hands events in.
#[derive(Clone, Copy)]
enum HandIn {
    /// `send`, a future per event.
    Each,
    /// `send_many`, this many events per call.
    Many(usize),
    /// This many events per step, by `send` and `send_many` in turn; in `send`'s steps every
    /// other event goes with a budget of its own (packed, that one goes through the intake
    /// queue, behind the open pieces single sends share: see `crate::open`).
    Mixed(usize),
}

/// A task's first `send_many` call is awaited before it goes on: by then the packed driver
/// has learned the topic's partitions, so the later calls encode their events where they
/// hand them in (before it, every call went one by one) and both ways are tested.
async fn settled_if_first(
    f: kbatch_adaptive::ManyFuture,
    first: bool,
) -> futures::future::Either<
    futures::future::Ready<kbatch_adaptive::ManyResults>,
    kbatch_adaptive::ManyFuture,
> {
    use futures::future::Either;
    if first {
        Either::Left(futures::future::ready(f.await))
    } else {
        Either::Right(f)
    }
}

async fn run(
    shape: Shape,
    topic: &str,
    n: u64,
    hand_in: HandIn,
) -> (AdaptiveProducer, Vec<kbatch_adaptive::EventDelivered>) {
    create_topic(topic, 4).await;
    let p = AdaptiveProducer::start(config(shape)).unwrap();
    // Several tasks send: each key is sent by one task, in order.
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let (p, topic) = (p.clone(), topic.to_owned());
            tokio::spawn(async move {
                let mine: Vec<u64> = (0..n).filter(|i| (i % KEYS) % 4 == t).collect();
                let mut out = Vec::new();
                match hand_in {
                    HandIn::Each => {
                        let mut futs = Vec::new();
                        for &i in &mine {
                            let f = p.send(event(&topic, i)).await.unwrap();
                            if futs.is_empty() {
                                // As `settled_if_first`: later sends of a packed producer
                                // then go into open pieces.
                                out.push((i, f.await.unwrap()));
                                futs.push((i, None));
                            } else {
                                futs.push((i, Some(f)));
                            }
                        }
                        for (i, f) in futs {
                            if let Some(f) = f {
                                out.push((i, f.await.unwrap()));
                            }
                        }
                    }
                    HandIn::Mixed(per) => {
                        let (mut each, mut many) = (Vec::new(), Vec::new());
                        for (step, chunk) in mine.chunks(per).enumerate() {
                            if step % 2 == 0 {
                                for &i in chunk {
                                    let f = if i % 2 == 0 {
                                        p.send(event(&topic, i)).await
                                    } else {
                                        p.send_with_budget(
                                            event(&topic, i),
                                            Duration::from_secs(60),
                                        )
                                        .await
                                    };
                                    each.push((i, f.unwrap()));
                                }
                            } else {
                                let records = chunk.iter().map(|&i| event(&topic, i)).collect();
                                let f = p.send_many(records).await;
                                many.push((
                                    chunk.to_vec(),
                                    settled_if_first(f, many.is_empty()).await,
                                ));
                            }
                        }
                        for (i, f) in each {
                            out.push((i, f.await.unwrap()));
                        }
                        for (ids, f) in many {
                            let results = f.await;
                            assert_eq!(results.len(), ids.len(), "one outcome per event");
                            for (i, r) in ids.into_iter().zip(results) {
                                out.push((i, r.unwrap()));
                            }
                        }
                    }
                    HandIn::Many(per) => {
                        let mut futs = Vec::new();
                        for chunk in mine.chunks(per) {
                            let records = chunk.iter().map(|&i| event(&topic, i)).collect();
                            let f = p.send_many(records).await;
                            futs.push((chunk.to_vec(), settled_if_first(f, futs.is_empty()).await));
                        }
                        for (ids, f) in futs {
                            let results = f.await;
                            assert_eq!(results.len(), ids.len(), "one outcome per event");
                            for (i, r) in ids.into_iter().zip(results) {
                                out.push((i, r.unwrap()));
                            }
                        }
                    }
                }
                out
            })
        })
        .collect();
    let mut delivered = vec![None; n as usize];
    for t in tasks {
        for (i, d) in t.await.unwrap() {
            delivered[i as usize] = Some(d);
        }
    }
    (p, delivered.into_iter().map(Option::unwrap).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn per_event_every_event_is_its_own_record_once_in_key_order() {
    const N: u64 = 20_000;
    let topic = unique_name("adaptive-each");
    let (p, delivered) = run(Shape::PerEvent, &topic, N, HandIn::Each).await;
    let report = p.close().await;
    assert_eq!(
        (
            report.stats.submitted,
            report.stats.delivered,
            report.stats.failed
        ),
        (N, N, 0)
    );
    assert_eq!(report.stats.records, N);
    let got = tokio::task::block_in_place(|| {
        consume_all(&topic, Isolation::ReadCommitted, Some(N as usize), IDLE)
    });
    let ev = events(&got);
    assert_once_in_key_order(&ev, N);
    assert_futures_said_where(&ev, &delivered);
}

#[tokio::test(flavor = "multi_thread")]
async fn packed_events_travel_in_envelopes_on_their_keys_partition() {
    const N: u64 = 20_000;
    let topic = unique_name("adaptive-packed");
    let (p, delivered) = run(Shape::Packed, &topic, N, HandIn::Each).await;
    let report = p.close().await;
    assert_eq!((report.stats.delivered, report.stats.failed), (N, 0));
    // Once the driver knew the topic, each `send` encoded its event into an open piece.
    assert_mostly_packed_at_hand_in(report.stats.packed_at_hand_in, N);
    assert!(
        report.stats.records < N / 10,
        "{} envelopes for {N} events",
        report.stats.records
    );
    let got =
        tokio::task::block_in_place(|| consume_all(&topic, Isolation::ReadCommitted, None, IDLE));
    assert_eq!(
        got.values().map(Vec::len).sum::<usize>() as u64,
        report.stats.records
    );
    let ev = events(&got);
    assert_once_in_key_order(&ev, N);
    assert_futures_said_where(&ev, &delivered);
    // The same keys sent as plain records by the plain producer land where packing put them.
    let plain = Producer::new(ProducerConfig::default().with_kafka(producer_config())).unwrap();
    let other = unique_name("adaptive-plain");
    create_topic(&other, 4).await;
    let mut where_packed = HashMap::new();
    for (p, v) in &ev {
        for (k, ..) in v {
            where_packed.insert(k.clone(), *p);
        }
    }
    for (k, p) in where_packed {
        let d = plain
            .send(Record::new(other.as_str(), "x").with_key(k.clone()))
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(d.partition, p, "key {k}");
    }
    plain.close().await;
}

/// `n` events handed in as `hand_in` says, in both shapes: each delivered once, in key
/// order, where its future said.
async fn once_in_key_order_in_both_shapes(name: &str, n: u64, hand_in: HandIn) {
    for shape in [Shape::Packed, Shape::PerEvent] {
        let topic = unique_name(name);
        let (p, delivered) = run(shape, &topic, n, hand_in).await;
        let report = p.close().await;
        assert_eq!(
            (
                report.stats.submitted,
                report.stats.delivered,
                report.stats.failed
            ),
            (n, n, 0),
            "{shape:?}"
        );
        let got = tokio::task::block_in_place(|| {
            consume_all(&topic, Isolation::ReadCommitted, None, IDLE)
        });
        let ev = events(&got);
        assert_once_in_key_order(&ev, n);
        assert_futures_said_where(&ev, &delivered);
        // Packed, once the driver knew the topic, `send` and `send_many` encoded their keyed
        // events themselves.
        let packed = report.stats.packed_at_hand_in;
        match shape {
            Shape::Packed => assert!(packed > n / 4, "{packed} of {n} packed at hand-in"),
            _ => assert_eq!(packed, 0, "{shape:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn send_many_settles_every_event_where_it_landed_in_both_shapes() {
    // 333 per call: calls end mid-envelope and mid-key-run.
    once_in_key_order_in_both_shapes("adaptive-many", 20_000, HandIn::Many(333)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn send_and_send_many_in_turn_keep_each_keys_order_in_both_shapes() {
    // A `send_many` call goes to the intake in chunks, one per shard its keys fall in: a
    // key's events must still come out after the ones `send` handed in before them.
    once_in_key_order_in_both_shapes("adaptive-mixed", 40_000, HandIn::Mixed(97)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn try_send_many_with_keeps_the_order_given_or_hands_every_record_back() {
    let topic = unique_name("adaptive-try-many");
    create_topic(&topic, 1).await;
    let p = AdaptiveProducer::start(config(Shape::PerEvent)).unwrap();
    // One sequence: the order given holds across keys (one partition shows it).
    let results = p
        .try_send_many_with(
            (0..500).map(|i| event(&topic, i)).collect(),
            SendOptions::default(),
        )
        .unwrap()
        .await;
    let offsets: Vec<i64> = results
        .iter()
        .map(|r| r.as_ref().unwrap().offset.0)
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets follow the order given: {offsets:?}"
    );
    p.close().await;
    match p.try_send_many_with(
        (0..3).map(|i| event(&topic, i)).collect(),
        SendOptions::default(),
    ) {
        Err(TrySendManyError::Closed(back)) => {
            let values: Vec<_> = back.iter().map(|r| r.value.clone().unwrap()).collect();
            assert_eq!(
                values,
                [b"k0:0", b"k1:1", b"k2:2"].map(|v| bytes::Bytes::from_static(v))
            );
        }
        other => panic!("expected Closed with the records, got {other:?}"),
    }
}

/// `send_with` waits for room in an intake of 8 events (2 per shard); with one sequence
/// the events keep the order given across keys, which go to different shards otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn send_with_a_sequence_waits_for_room_and_keeps_the_order_given() {
    let topic = unique_name("adaptive-send-with");
    create_topic(&topic, 1).await;
    let p = AdaptiveProducer::start(config(Shape::PerEvent).with_intake_capacity(8)).unwrap();
    let options = SendOptions::default().in_sequence(11);
    let mut futures = Vec::new();
    for i in 0..2_000 {
        futures.push(p.send_with(event(&topic, i), options).await.unwrap());
    }
    let mut offsets = Vec::new();
    for f in futures {
        offsets.push(f.await.unwrap().offset.0);
    }
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets follow the order given: {offsets:?}"
    );
    p.close().await;
}

/// Close right after a burst, in both shapes: the events still in the intake, in open pieces
/// (packed), the batcher and the hand-off to the sender task (per event) are all sent before
/// the client closes, each future answered with its place and every event in the topic once.
#[tokio::test(flavor = "multi_thread")]
async fn close_right_after_a_burst_sends_every_event_held() {
    const N: u64 = 30_000;
    for shape in [Shape::PerEvent, Shape::Packed] {
        let topic = unique_name("adaptive-close-burst");
        create_topic(&topic, 4).await;
        let p = AdaptiveProducer::start(config(shape)).unwrap();
        let mut futures = Vec::with_capacity(N as usize);
        for i in 0..N {
            futures.push(p.send(event(&topic, i)).await.unwrap());
        }
        let report = p.close().await;
        assert_eq!(report.failed_at_close, 0, "{shape:?}: {report:?}");
        assert_eq!(
            (report.stats.delivered, report.stats.failed),
            (N, 0),
            "{shape:?}"
        );
        for (i, f) in futures.into_iter().enumerate() {
            f.await
                .unwrap_or_else(|e| panic!("{shape:?}: event {i} was not delivered: {e}"));
        }
        let got = tokio::task::block_in_place(|| {
            consume_all(&topic, Isolation::ReadCommitted, Some(N as usize), IDLE)
        });
        assert_once_in_key_order(&events(&got), N);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn send_many_after_close_hands_every_record_back() {
    let topic = unique_name("adaptive-many-closed");
    create_topic(&topic, 1).await;
    let p = AdaptiveProducer::start(config(Shape::Packed)).unwrap();
    p.close().await;
    let results = p
        .send_many((0..3).map(|i| event(&topic, i)).collect())
        .await
        .await;
    assert_eq!(results.len(), 3);
    for (i, r) in results.into_iter().enumerate() {
        let e = r.unwrap_err();
        let back = e.into_record().expect("the record comes back");
        assert_eq!(back, event(&topic, i as u64));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_level_rises_with_a_burst_and_settles_when_it_stops() {
    let topic = unique_name("adaptive-level");
    create_topic(&topic, 2).await;
    let mut cfg = config(Shape::Packed).with_initial_level(LevelId(1));
    cfg.controller.min_dwell = Duration::from_millis(200);
    cfg.controller.window = Duration::from_secs(2);
    let p = AdaptiveProducer::start(cfg).unwrap();
    assert_eq!(p.level(), LevelId(1));
    let mut futs = Vec::new();
    for i in 0..50_000 {
        futs.push(p.send(event(&topic, i)).await.unwrap());
    }
    for f in futs {
        f.await.unwrap();
    }
    // The burst went into the intake at once; its events are all acknowledged now, so the
    // driver has counted them.
    let risen = p.level();
    assert!(
        risen >= LevelId(4),
        "50,000 events at once left the level at {risen}"
    );
    // Quiet: back to L1 once the 2 s window has forgotten the burst.
    kbatch_testkit::wait_until(Duration::from_secs(20), "the level back at L1", || async {
        p.level() == LevelId(1)
    })
    .await;
    let r = p.close().await;
    assert!(r.stats.level_changes >= 2, "{:?}", r.stats);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_begins_from_what_was_learned_and_a_corrupt_file_only_warns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calibration.sqlite3");
    let learned = BatchSettings {
        max_events: 777,
        linger: Duration::from_millis(33),
    };
    {
        let opened = CalibrationStore::open(&path);
        assert!(opened.warning.is_none());
        opened
            .store
            .save(
                "test",
                &[LevelRecord {
                    level: LevelId(5),
                    best: learned,
                    expected_throughput: 5_000.0,
                    p99: Duration::from_millis(20),
                    observations: 3,
                    updated_at: std::time::SystemTime::now(),
                }],
            )
            .unwrap();
    }
    let topic = unique_name("adaptive-calib");
    create_topic(&topic, 1).await;
    let cfg = config(Shape::Packed)
        .with_calibration_path(&path)
        .with_profile("test")
        .with_explore_share(0.0);
    let p = AdaptiveProducer::start(cfg.clone()).unwrap();
    assert_eq!(p.settings(), learned, "started from the stored best");
    let mut futs = Vec::new();
    for i in 0..2_000 {
        futs.push(p.send(event(&topic, i)).await.unwrap());
    }
    for f in futs {
        f.await.unwrap();
    }
    let report = p.close().await;
    assert_eq!(report.calibration_warning, None);
    // What this run learned was saved: observations at least as many as before.
    let stored = CalibrationStore::open(&path).store.load("test").unwrap();
    assert!(stored.iter().any(|r| r.observations >= 3), "{stored:?}");

    // A corrupt file: a warning, bootstrap settings, and the producer works.
    std::fs::write(&path, b"this is not a database, it is a test").unwrap();
    let p = AdaptiveProducer::start(cfg).unwrap();
    assert_ne!(p.settings(), learned);
    p.send(event(&topic, 0)).await.unwrap().await.unwrap();
    p.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_to_a_missing_partition_fails_alone_and_hands_the_event_back() {
    let topic = unique_name("adaptive-bad");
    create_topic(&topic, 2).await;
    let p = AdaptiveProducer::start(config(Shape::Packed)).unwrap();
    let good = p.send(event(&topic, 1)).await.unwrap();
    let bad = p.send(event(&topic, 2).with_partition(9)).await.unwrap();
    let e = bad.await.unwrap_err();
    assert!(e.to_string().contains("partition 9 does not exist"), "{e}");
    assert_eq!(e.into_record().unwrap().partition, Some(9));
    good.await.unwrap();
    let r = p.close().await;
    assert_eq!((r.stats.delivered, r.stats.failed), (1, 1));
}

/// Started at L10 without exploration: its bootstrap linger (15 s) holds for the whole test,
/// and the rate never moves the level down in time. `max_events` caps N (a full batch goes
/// whatever else is out).
fn start_pinned_at_l10(
    shape: Shape,
    flushes_in_flight: usize,
    max_events: Option<u32>,
) -> AdaptiveProducer {
    let mut cfg = config(shape)
        .with_initial_level(LevelId(10))
        .with_explore_share(0.0)
        .with_flushes_in_flight(flushes_in_flight);
    cfg.controller.min_dwell = Duration::from_secs(3_600);
    if let Some(n) = max_events {
        cfg.learner.max_batch_events = n;
    }
    let p = AdaptiveProducer::start(cfg).unwrap();
    assert!(
        p.settings().linger >= Duration::from_secs(10),
        "{}",
        p.settings()
    );
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_budget_per_send_overrides_a_long_linger() {
    let topic = unique_name("adaptive-budget");
    create_topic(&topic, 1).await;
    // Without the pipeline bound, which would send the lone event at once by itself: only
    // the budget can.
    let p = start_pinned_at_l10(Shape::Packed, 0, None);
    let started = std::time::Instant::now();
    let urgent = p
        .send_with_budget(event(&topic, 1), Duration::from_millis(10))
        .await
        .unwrap();
    // Without its own budget the event would wait out the 15 s linger; with it, it goes at
    // once. 5 s is a hang guard, not a speed claim.
    let d = tokio::time::timeout(Duration::from_secs(5), urgent)
        .await
        .expect("the 10 ms budget was not honoured: the event waited for the level's linger")
        .unwrap();
    assert_eq!(d.index, Some(0));
    assert!(started.elapsed() < Duration::from_secs(5));
    let r = p.close().await;
    assert_eq!(r.stats.delivered, 1);
}

/// A packed `send` of a topic the driver knows waits in an open piece (see `crate::open`):
/// the driver must take it within the producer's budget — far shorter than the level's
/// linger — not when more events come or the piece fills.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_piece_goes_within_the_producers_budget() {
    let topic = unique_name("adaptive-open-budget");
    create_topic(&topic, 1).await;
    let mut cfg = config(Shape::Packed)
        .with_initial_level(LevelId(10))
        .with_explore_share(0.0)
        .with_flushes_in_flight(0)
        .with_budget(Duration::from_millis(20));
    cfg.controller.min_dwell = Duration::from_secs(3_600);
    let p = AdaptiveProducer::start(cfg).unwrap();
    assert!(
        p.settings().linger >= Duration::from_secs(10),
        "{}",
        p.settings()
    );
    // The first event teaches the driver the topic's partitions; it goes the intake's way.
    p.send(event(&topic, 0)).await.unwrap().await.unwrap();
    assert_eq!(p.stats().packed_at_hand_in, 0);
    for i in 1..=3 {
        let f = p.send(event(&topic, i)).await.unwrap();
        assert_eq!(
            p.stats().packed_at_hand_in,
            i,
            "event {i} was not packed at hand-in"
        );
        // 5 s is a hang guard, not a speed claim: an open piece nobody takes waits until it
        // holds the level's N events, a batch for the level's 15 s linger.
        let d = tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .unwrap_or_else(|_| panic!("event {i} waited past its budget"))
            .unwrap();
        assert_eq!(d.index, Some(0));
    }
    let r = p.close().await;
    assert_eq!(r.stats.delivered, 4);
}

/// Sends events `mine` of `topic` through `p` in chunks of 50, every fourth chunk as one
/// `send_many` and the others one `send` each, all handed in before any is awaited; returns
/// each event's delivery.
async fn send_mixed(
    p: AdaptiveProducer,
    topic: String,
    mine: Vec<u64>,
) -> Vec<(u64, kbatch_adaptive::EventDelivered)> {
    let (mut each, mut many) = (Vec::new(), Vec::new());
    for (step, chunk) in mine.chunks(50).enumerate() {
        if step % 4 == 3 {
            let records = chunk.iter().map(|&i| event(&topic, i)).collect();
            many.push((chunk.to_vec(), p.send_many(records).await));
        } else {
            for &i in chunk {
                each.push((i, p.send(event(&topic, i)).await.unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    for (i, f) in each {
        out.push((i, f.await.unwrap()));
    }
    for (ids, f) in many {
        for (i, r) in ids.into_iter().zip(f.await) {
            out.push((i, r.unwrap()));
        }
    }
    out
}

/// Packed single sends into a tiny intake (a shard's share: 4 events): open pieces are sealed
/// every few events into queues that are mostly full, so senders wait for room, at sealing
/// and behind a `send_many` of the same shard — and every event still lands once, in key
/// order, where its future said, with no send left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_pieces_under_back_pressure_keep_every_event_once_in_key_order() {
    const N: u64 = 20_000;
    let topic = unique_name("adaptive-open-full");
    create_topic(&topic, 4).await;
    let p = AdaptiveProducer::start(config(Shape::Packed).with_intake_capacity(16)).unwrap();
    // The topic known first, so the rest can go into open pieces.
    let d0 = p.send(event(&topic, 0)).await.unwrap().await.unwrap();
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let (p, topic) = (p.clone(), topic.clone());
            let mine: Vec<u64> = (1..N).filter(|i| (i % KEYS) % 4 == t).collect();
            tokio::spawn(send_mixed(p, topic, mine))
        })
        .collect();
    let mut delivered = vec![None; N as usize];
    delivered[0] = Some(d0);
    for t in tasks {
        // A hang guard, not a speed claim.
        let out = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("a sender was left waiting for room")
            .unwrap();
        for (i, d) in out {
            delivered[i as usize] = Some(d);
        }
    }
    let report = p.close().await;
    assert_eq!((report.stats.delivered, report.stats.failed), (N, 0));
    assert_mostly_packed_at_hand_in(report.stats.packed_at_hand_in, N);
    let got =
        tokio::task::block_in_place(|| consume_all(&topic, Isolation::ReadCommitted, None, IDLE));
    let ev = events(&got);
    assert_once_in_key_order(&ev, N);
    let delivered: Vec<_> = delivered.into_iter().map(Option::unwrap).collect();
    assert_futures_said_where(&ev, &delivered);
}

/// Close while tasks are still sending, packed: a send that got a future — in an open piece,
/// in the intake or in a batch — is answered (delivered, or `Closed` with its record), never
/// left waiting, and every delivered event is in the topic once, in key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_while_sends_race_answers_every_future() {
    let topic = unique_name("adaptive-close-race");
    create_topic(&topic, 4).await;
    let p = AdaptiveProducer::start(config(Shape::Packed)).unwrap();
    // The topic known first, so the racing sends go into open pieces.
    p.send(event(&topic, 0)).await.unwrap().await.unwrap();
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let (p, topic) = (p.clone(), topic.clone());
            tokio::spawn(async move {
                let mut futs = Vec::new();
                // Each task its own keys (50 keys: i % 50 % 4 == t), numbered after event 0.
                for i in (1..).filter(|i: &u64| (i % KEYS) % 4 == t) {
                    match p.send(event(&topic, i)).await {
                        Ok(f) => futs.push((i, f)),
                        Err(e) => {
                            assert!(e.into_record().is_some(), "a refused send keeps its record");
                            break;
                        }
                    }
                    if i % 64 == t {
                        tokio::task::yield_now().await;
                    }
                }
                futs
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = p.close().await;
    let mut delivered = vec![0u64];
    let mut closed = 0u64;
    for t in tasks {
        for (i, f) in t.await.unwrap() {
            match tokio::time::timeout(Duration::from_secs(30), f)
                .await
                .unwrap_or_else(|_| panic!("event {i}'s future was never answered"))
            {
                Ok(_) => delivered.push(i),
                Err(e) => {
                    assert!(
                        matches!(e, kbatch_adaptive::AdaptiveError::Closed { .. }),
                        "event {i}: {e}"
                    );
                    closed += 1;
                }
            }
        }
    }
    assert_eq!(report.stats.delivered, delivered.len() as u64, "{report:?}");
    assert!(
        delivered.len() > 1_000,
        "only {} delivered",
        delivered.len()
    );
    let got =
        tokio::task::block_in_place(|| consume_all(&topic, Isolation::ReadCommitted, None, IDLE));
    let ev = events(&got);
    let mut last: HashMap<&str, u64> = HashMap::new();
    for v in ev.values() {
        for (k, i, ..) in v {
            if let Some(prev) = last.insert(k, *i) {
                assert!(prev < *i, "key {k}: {prev} before {i}");
            }
        }
    }
    let mut seen: Vec<u64> = ev
        .values()
        .flat_map(|v| v.iter().map(|(_, i, ..)| *i))
        .collect();
    seen.sort_unstable();
    delivered.sort_unstable();
    assert_eq!(seen, delivered, "{closed} answered Closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn try_send_with_budget_keeps_the_budget_and_hands_back_when_full() {
    let topic = unique_name("adaptive-try-budget");
    create_topic(&topic, 1).await;
    let p = start_pinned_at_l10(Shape::Packed, 0, None);
    let urgent = p
        .try_send_with_budget(event(&topic, 1), Duration::from_millis(10))
        .unwrap();
    // As with send_with_budget: without the budget, the 15 s linger. 5 s is a hang guard.
    let d = tokio::time::timeout(Duration::from_secs(5), urgent)
        .await
        .expect("try_send_with_budget ignored its 10 ms budget: the event waited for the linger")
        .unwrap();
    assert_eq!(d.index, Some(0));
    p.close().await;

    // A full intake hands the record back at once, budget or not. On this test's runtime the
    // driver may drain between two calls, so fill from one synchronous run of hand-ins.
    let mut cfg = config(Shape::PerEvent).with_intake_capacity(1);
    cfg.controller.min_dwell = Duration::from_secs(3_600);
    let small = AdaptiveProducer::start(cfg).unwrap();
    let mut taken = Vec::new();
    let mut full = 0;
    for i in 0..1_000 {
        match small.try_send_with_budget(event(&topic, i), Duration::from_millis(10)) {
            Ok(f) => taken.push(f),
            Err(TrySendError::Full(_)) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        full > 0,
        "1,000 hand-ins into an intake of 1 were all taken"
    );
    for f in taken {
        f.await.unwrap();
    }
    small.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn per_event_batches_go_at_once_while_the_pipeline_has_room() {
    let topic = unique_name("adaptive-pipeline");
    create_topic(&topic, 2).await;
    // Only the pipeline's room can send these events before the 15 s linger; N far above the
    // burst, so no batch goes because it is full (those go whatever is out, and would count).
    let p = start_pinned_at_l10(Shape::PerEvent, 2, Some(1_000_000));
    assert!(p.settings().max_events > 20_005, "{}", p.settings());
    // One at a time: nothing is in flight when each arrives, so none waits for the linger.
    // 5 s per event is a hang guard, not a speed claim.
    for i in 0..5 {
        let f = p.send(event(&topic, i)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .expect("an event waited for the level's linger although nothing was in flight")
            .unwrap();
    }
    // A burst: while flushes are out the rest gather, and each goes when one comes back.
    let mut futures = Vec::new();
    for i in 5..20_005 {
        futures.push(p.send(event(&topic, i)).await.unwrap());
    }
    for f in futures {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("a burst event waited for the level's linger")
            .unwrap();
    }
    let r = p.close().await;
    assert_eq!(r.stats.delivered, 20_005);
    // The burst filled the pipeline and never went beyond it.
    assert_eq!(
        r.stats.peak_flushes_in_flight, 2,
        "flushes out at once (2 allowed): {:?}",
        r.stats
    );
    let got =
        tokio::task::block_in_place(|| consume_all(&topic, Isolation::ReadCommitted, None, IDLE));
    assert_once_in_key_order(&events(&got), 20_005);
}

#[tokio::test(flavor = "multi_thread")]
async fn full_batches_go_past_the_pipeline_bound_without_counting_toward_it() {
    let topic = unique_name("adaptive-full");
    create_topic(&topic, 2).await;
    // N = 100 at L10 (15 s linger): a burst of 20,050 fills 200 batches, each of which goes the
    // moment it is full; only the 50 left over wait for room in the pipeline.
    let p = start_pinned_at_l10(Shape::PerEvent, 2, Some(100));
    assert_eq!(p.settings().max_events, 100, "{}", p.settings());
    let mut futures = Vec::new();
    for i in 0..20_050 {
        futures.push(p.send(event(&topic, i)).await.unwrap());
    }
    for f in futures {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("a burst event waited for the level's linger")
            .unwrap();
    }
    let r = p.close().await;
    assert_eq!(r.stats.delivered, 20_050);
    assert!(r.stats.batches >= 201, "{:?}", r.stats);
    // Counted, 200 full batches handed over back to back would have been out together far
    // beyond the bound of 2.
    assert!(
        (1..=2).contains(&r.stats.peak_flushes_in_flight),
        "partial flushes out at once (2 allowed, full ones not counted): {:?}",
        r.stats
    );
    let got =
        tokio::task::block_in_place(|| consume_all(&topic, Isolation::ReadCommitted, None, IDLE));
    assert_once_in_key_order(&events(&got), 20_050);
}

#[tokio::test(flavor = "multi_thread")]
async fn packed_events_to_a_missing_topic_each_fail_with_their_record_back() {
    const N: u64 = 50;
    let topic = unique_name("adaptive-missing");
    let p = AdaptiveProducer::start(config(Shape::Packed)).unwrap();
    let results = p
        .send_many((0..N).map(|i| event(&topic, i)).collect())
        .await
        .await;
    assert_eq!(results.len() as u64, N);
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Err(kbatch_adaptive::AdaptiveError::Metadata { record, .. }) => {
                assert_eq!(*record, event(&topic, i as u64));
            }
            other => panic!("event {i}: {other:?}"),
        }
    }
    let r = p.close().await;
    assert_eq!((r.stats.failed, r.stats.delivered), (N, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_envelope_the_broker_rejects_hands_each_event_its_own_record_back() {
    // The topic takes records of at most 2,000 bytes; each event has 2,500 random
    // (incompressible) bytes, so every envelope — however the events are grouped, one or all
    // 60 — is larger, and the broker refuses it. Every event fails with its envelope, and what
    // it hands back must be its record as given — key, value, headers, timestamp, a partition
    // only where the caller named one.
    use rand::{Rng as _, SeedableRng as _};
    const N: usize = 60;
    let topic = unique_name("adaptive-too-large");
    kbatch_testkit::admin()
        .create_topics(&[
            kbatch_client::NewTopic::new(&topic, 1).with_config("max.message.bytes", "2000")
        ])
        .await
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let sent: Vec<Record> = (0..N)
        .map(|i| {
            let mut value = vec![0u8; 2_500];
            rng.fill(&mut value[..]);
            let r = Record::new(topic.as_str(), value)
                .with_header("i", i.to_string())
                .with_timestamp(kbatch_core::Timestamp(1_700_000_000_000 + i as i64));
            match i % 3 {
                0 => r.with_key(format!("k{i}")).with_partition(0),
                1 => r.with_key(format!("k{i}")),
                _ => r,
            }
        })
        .collect();
    let p = AdaptiveProducer::start(config(Shape::Packed)).unwrap();
    // Twice: the first call goes one by one while the driver learns the topic's partitions,
    // the second packs its keyed events where it hands them in.
    for call in 0..2 {
        let results = p.send_many(sent.clone()).await.await;
        assert_eq!(results.len(), N);
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Err(e @ kbatch_adaptive::AdaptiveError::Envelope { .. }) => {
                    assert_eq!(
                        e.into_record().as_ref(),
                        Some(&sent[i]),
                        "call {call}, event {i}"
                    );
                }
                other => panic!("call {call}, event {i}: {other:?}"),
            }
        }
    }
    let r = p.close().await;
    assert_eq!((r.stats.failed, r.stats.delivered), (2 * N as u64, 0));
    assert_eq!(
        r.stats.packed_at_hand_in,
        (N / 3) as u64,
        "the keyed events of the second call"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn detached_events_are_delivered_and_counted_without_futures() {
    const N: u64 = 5_000;
    let topic = unique_name("adaptive-detached");
    create_topic(&topic, 4).await;
    let p = AdaptiveProducer::start(config(Shape::Packed)).unwrap();
    // Once the first is delivered the driver knows the topic, and the rest go into open
    // pieces (see `crate::open`) as `send`'s would.
    p.send_detached(event(&topic, 0)).await.unwrap();
    let waited = std::time::Instant::now();
    while p.stats().delivered == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "event 0 never delivered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 1..N {
        p.send_detached(event(&topic, i)).await.unwrap();
    }
    // A detached event to a partition that does not exist fails alone, counted.
    p.send_detached(event(&topic, N).with_partition(99))
        .await
        .unwrap();
    let r = p.close().await;
    assert_eq!(
        (r.stats.submitted, r.stats.delivered, r.stats.failed),
        (N + 1, N, 1)
    );
    assert_eq!(r.stats.packed_at_hand_in, N - 1);
    let got =
        tokio::task::block_in_place(|| consume_all(&topic, Isolation::ReadCommitted, None, IDLE));
    assert_once_in_key_order(&events(&got), N);
}

/// Bursts into a small intake send per-event events straight to the client, pauses bring
/// them back through the intake; `send` and `send_many` in turn, from four tasks. Across
/// every switch each event lands once, in its key's order, where its future says — which
/// needs a send to go straight to the client only after every event handed in before it
/// (that task's own, in the intake or the batcher) is in the client.
#[tokio::test(flavor = "multi_thread")]
async fn per_event_sends_keep_each_keys_order_across_path_switches() {
    const BURSTS: u64 = 5;
    const PER_BURST: u64 = 8_000;
    const N: u64 = BURSTS * PER_BURST;
    let topic = unique_name("adaptive-path");
    create_topic(&topic, 4).await;
    let mut c = config(Shape::PerEvent)
        .with_intake_capacity(256)
        .with_path(PathConfig {
            enabled: true,
            after: Duration::from_millis(20),
            back_below: 0.5,
            ..PathConfig::default()
        });
    // A short rate window, so a pause brings the rate down within the test's pauses.
    c.controller = ControllerConfig {
        window: Duration::from_secs(2),
        step_up_window: Duration::from_millis(200),
        bucket: Duration::from_millis(20),
        ..ControllerConfig::default()
    };
    let p = AdaptiveProducer::start(c).unwrap();
    let mut delivered = vec![None; N as usize];
    let mut switches = Vec::new();
    for burst in 0..BURSTS {
        let tasks: Vec<_> = (0..4u64)
            .map(|t| {
                let (p, topic) = (p.clone(), topic.clone());
                let mine: Vec<u64> = (burst * PER_BURST..(burst + 1) * PER_BURST)
                    .filter(|i| (i % KEYS) % 4 == t)
                    .collect();
                tokio::spawn(send_mixed(p, topic, mine))
            })
            .collect();
        for t in tasks {
            for (i, d) in t.await.unwrap() {
                delivered[i as usize] = Some(d);
            }
        }
        switches.push(p.stats().path_switches);
        // Quiet: the rate falls below half of the saturated one, and events take the intake.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let report = p.close().await;
    let s = report.stats;
    assert_eq!((s.submitted, s.delivered, s.failed), (N, N, 0));
    assert!(
        s.path_switches >= 4 && s.direct > 0 && s.direct < N,
        "the bursts did not move the path both ways: {switches:?} switches after each burst, \
         {} of {N} events sent straight to the client",
        s.direct
    );
    let got = tokio::task::block_in_place(|| {
        consume_all(&topic, Isolation::ReadCommitted, Some(N as usize), IDLE)
    });
    let ev = events(&got);
    assert_once_in_key_order(&ev, N);
    let delivered: Vec<_> = delivered.into_iter().map(Option::unwrap).collect();
    assert_futures_said_where(&ev, &delivered);
}
