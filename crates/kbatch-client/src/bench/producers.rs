//! rdkafka's own producers, driven as their documentation suggests, each bounded by the same
//! in-flight window: librdkafka's `queue.buffering.max.messages` for the callback producers
//! (librdkafka counts a record until its delivery report has been served), the number of
//! outstanding futures for `FutureProducer`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer,
    ProducerContext, ThreadedProducer,
};

use super::RawRun;
use crate::config::KafkaProducerConfig;
use crate::error::{Error, Result};

/// How long a sender waits for room when librdkafka's queue is full. A full queue holds the
/// whole window (100,000 records by default, some 200 ms of traffic), so waiting a
/// millisecond never lets the broker run dry.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

#[derive(Default)]
struct Count {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Count {}

impl ProducerContext for Count {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let c = if r.is_ok() { &self.ok } else { &self.failed };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl Count {
    fn run(&self, seconds: f64) -> RawRun {
        RawRun {
            delivered: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            seconds,
        }
    }
}

/// The records of one run, keyed round-robin over `keys`, through `send`; while librdkafka's
/// queue is full, `when_full` and try again; `after(i)` once record `i` is enqueued.
#[allow(
    clippy::too_many_arguments,
    reason = "one call per contender, each argument named"
)]
fn send_all<'a>(
    topic: &'a str,
    records: u64,
    value: &'a [u8],
    keys: &'a [Vec<u8>],
    what: &str,
    mut send: impl FnMut(
        BaseRecord<'a, Vec<u8>, [u8]>,
    ) -> std::result::Result<(), (KafkaError, BaseRecord<'a, Vec<u8>, [u8]>)>,
    mut when_full: impl FnMut(),
    mut after: impl FnMut(u64),
) -> Result<()> {
    for i in 0..records {
        let mut rec = BaseRecord::to(topic)
            .payload(value)
            .key(&keys[i as usize % keys.len()]);
        loop {
            match send(rec) {
                Ok(()) => break,
                Err((e, r)) if is_queue_full(&e) => {
                    when_full();
                    rec = r;
                }
                Err((e, _)) => return Err(Error::kafka(what, e)),
            }
        }
        after(i);
    }
    Ok(())
}

fn is_queue_full(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
}

/// `BaseProducer` with a counting delivery callback, polled by the sending thread itself
/// every `poll_every` sends (`poll(0)`), and for up to a millisecond whenever librdkafka's
/// queue is full. Its window is the config's `queue_records`.
#[allow(
    clippy::result_large_err,
    reason = "rdkafka hands a refused record back by value; boxing it would cost this contender an allocation"
)]
pub fn base_producer(
    config: &KafkaProducerConfig,
    topic: &str,
    records: u64,
    value: &[u8],
    keys: &[Vec<u8>],
    poll_every: u64,
) -> Result<RawRun> {
    if poll_every == 0 {
        return Err(Error::Invalid {
            what: "poll_every".into(),
            why: "0; poll at least every 1 send".into(),
        });
    }
    let p: BaseProducer<Count> = config
        .to_rdkafka()
        .create_with_context(Count::default())
        .map_err(|e| Error::kafka("create BaseProducer", e))?;
    let start = Instant::now();
    send_all(
        topic,
        records,
        value,
        keys,
        "BaseProducer send",
        |r| p.send(r),
        // Waiting in poll serves the delivery reports that make room.
        || {
            p.poll(QUEUE_FULL_WAIT);
        },
        |i| {
            if (i + 1) % poll_every == 0 {
                p.poll(Duration::ZERO);
            }
        },
    )?;
    p.flush(Duration::from_secs(300))
        .map_err(|e| Error::kafka("BaseProducer flush", e))?;
    Ok(p.context().run(start.elapsed().as_secs_f64()))
}

/// `ThreadedProducer` (a `BaseProducer` whose own thread polls it) with a counting delivery
/// callback: the sender never polls, and waits a millisecond whenever librdkafka's queue is
/// full. Its window is the config's `queue_records`.
#[allow(
    clippy::result_large_err,
    reason = "rdkafka hands a refused record back by value; boxing it would cost this contender an allocation"
)]
pub fn threaded_producer(
    config: &KafkaProducerConfig,
    topic: &str,
    records: u64,
    value: &[u8],
    keys: &[Vec<u8>],
) -> Result<RawRun> {
    let p: ThreadedProducer<Count> = config
        .to_rdkafka()
        .create_with_context(Count::default())
        .map_err(|e| Error::kafka("create ThreadedProducer", e))?;
    let start = Instant::now();
    send_all(
        topic,
        records,
        value,
        keys,
        "ThreadedProducer send",
        |r| p.send(r),
        // Its own thread serves the delivery reports that make room.
        || std::thread::sleep(QUEUE_FULL_WAIT),
        |_| {},
    )?;
    p.flush(Duration::from_secs(300))
        .map_err(|e| Error::kafka("ThreadedProducer flush", e))?;
    Ok(p.context().run(start.elapsed().as_secs_f64()))
}

/// `FutureProducer::send_result` awaiting every per-record future, oldest first, with at most
/// `window` futures outstanding: the oldest is awaited before a send that would exceed it.
pub async fn future_producer(
    config: &KafkaProducerConfig,
    topic: &str,
    records: u64,
    value: &[u8],
    keys: &[Vec<u8>],
    window: usize,
) -> Result<RawRun> {
    let p: FutureProducer = config
        .to_rdkafka()
        .create()
        .map_err(|e| Error::kafka("create FutureProducer", e))?;
    let (mut ok, mut failed) = (0u64, 0u64);
    type Outcome = std::result::Result<
        std::result::Result<
            rdkafka::producer::future_producer::Delivery,
            (KafkaError, rdkafka::message::OwnedMessage),
        >,
        futures::channel::oneshot::Canceled,
    >;
    let mut tally = |r: Outcome| match r {
        Ok(Ok(_)) => ok += 1,
        _ => failed += 1,
    };
    let mut pending = VecDeque::with_capacity(window);
    let start = Instant::now();
    for i in 0..records {
        while pending.len() >= window.max(1) {
            if let Some(f) = pending.pop_front() {
                tally(f.await);
            }
        }
        let mut rec = FutureRecord::to(topic)
            .payload(value)
            .key(&keys[i as usize % keys.len()]);
        loop {
            match p.send_result(rec) {
                Ok(f) => {
                    pending.push_back(f);
                    break;
                }
                // Rare while the window is at most librdkafka's queue: librdkafka counts a
                // record until its delivery report has been served, a moment after its
                // future resolved. Then wait for the next-oldest, as the window would.
                Err((e, r)) if is_queue_full(&e) => {
                    rec = r;
                    match pending.pop_front() {
                        Some(f) => tally(f.await),
                        None => tokio::time::sleep(QUEUE_FULL_WAIT).await,
                    }
                }
                Err((e, _)) => return Err(Error::kafka("FutureProducer send", e)),
            }
        }
    }
    for f in pending {
        tally(f.await);
    }
    Ok(RawRun {
        delivered: ok,
        failed,
        seconds: start.elapsed().as_secs_f64(),
    })
}
