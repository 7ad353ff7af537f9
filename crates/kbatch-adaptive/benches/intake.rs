//! The intake alone, no Kafka: events handed in by 1 or 2 submitting threads and taken out
//! by the one driver thread, as the adaptive producer does. Two event sizes: a bare `u64`
//! (what the seed system's 35–40 M items/s figure moves) and an event as the producer holds
//! it (a `Record` with a 100-byte value, its arrival time and budget).
//!
//! Submitters use `try_push` and yield when the intake is full: the bench measures the
//! hand-over, not an async runtime. `u64` goes to the submitter's own shard (no order hint);
//! `u64_ordered` and `event` carry a key's order hint, so they go to the key's shard, as the
//! adaptive producer's keyed events do. On a 2-core machine the 2-submitter cases run three
//! busy threads on two cores.

#![allow(
    missing_docs,
    reason = "criterion's macros generate undocumented items"
)]
#![allow(clippy::unwrap_used, reason = "a bench fails by panicking")]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kbatch_adaptive::{Intake, PushError};
use kbatch_core::{Record, Topic};

const CAPACITY: usize = 65_536;

/// Moves `n` items made by `make` through an intake from `threads` submitters to one
/// drainer; returns the wall time.
fn run<E: Send + 'static>(threads: usize, n: u64, make: fn(u64) -> E, order: bool) -> Duration {
    let q = Arc::new(Intake::<E>::new(CAPACITY, 4));
    let done = Arc::new(AtomicBool::new(false));
    let drainer = {
        let (q, done) = (Arc::clone(&q), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut buf = Vec::with_capacity(4_096);
            let mut got = 0u64;
            while got < n {
                let k = q.pop_into(&mut buf, 4_096);
                got += k as u64;
                black_box(&buf);
                buf.clear();
                if k == 0 {
                    std::hint::spin_loop();
                }
            }
            done.store(true, Ordering::Release);
        })
    };
    let start = Instant::now();
    let per = n / threads as u64;
    let submitters: Vec<_> = (0..threads as u64)
        .map(|t| {
            let q = Arc::clone(&q);
            let count = if t == threads as u64 - 1 {
                n - per * t
            } else {
                per
            };
            std::thread::spawn(move || {
                for i in 0..count {
                    let mut e = make(i);
                    // Ordered: the hint is the key's, as the producer gives it.
                    let hint =
                        order.then(|| u64::from(crc32fast::hash(&(i % 10_000).to_le_bytes())));
                    loop {
                        match q.try_push(hint, e) {
                            Ok(()) => break,
                            Err(PushError::Full(back)) => {
                                e = back;
                                std::thread::yield_now();
                            }
                            Err(PushError::Closed(_)) => unreachable!(),
                        }
                    }
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    drainer.join().unwrap();
    assert!(done.load(Ordering::Acquire));
    start.elapsed()
}

/// An event as the producer holds it.
struct Event {
    _record: Record,
    _arrived: Instant,
    _budget: Duration,
}

/// Topic and keys made once: making an event costs what the producer's caller pays anyway
/// (clones of shared bytes, a clock read), not allocations the bench would add.
fn pool() -> &'static (Topic, Vec<Bytes>) {
    static POOL: OnceLock<(Topic, Vec<Bytes>)> = OnceLock::new();
    POOL.get_or_init(|| {
        let keys = (0..10_000).map(|k| Bytes::from(format!("k{k}"))).collect();
        (Topic::from("events"), keys)
    })
}

fn event(i: u64) -> Event {
    static VALUE: [u8; 100] = [b'x'; 100];
    let (topic, keys) = pool();
    let key = keys[(i % 10_000) as usize].clone();
    Event {
        _record: Record::new(Arc::clone(topic), Bytes::from_static(&VALUE)).with_key(key),
        _arrived: Instant::now(),
        _budget: Duration::from_millis(100),
    }
}

fn intake(c: &mut Criterion) {
    let mut g = c.benchmark_group("intake");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    for threads in [1usize, 2] {
        g.bench_with_input(BenchmarkId::new("u64", threads), &threads, |b, &t| {
            b.iter_custom(|iters| run(t, iters.max(1), |i| i, false));
        });
        g.bench_with_input(
            BenchmarkId::new("u64_ordered", threads),
            &threads,
            |b, &t| b.iter_custom(|iters| run(t, iters.max(1), |i| i, true)),
        );
        g.bench_with_input(BenchmarkId::new("event", threads), &threads, |b, &t| {
            b.iter_custom(|iters| run(t, iters.max(1), event, true));
        });
    }
    g.finish();
}

criterion_group!(benches, intake);
criterion_main!(benches);
