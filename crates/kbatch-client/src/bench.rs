//! Raw librdkafka producers that `kbatch bench producer` measures kbatch against, built from
//! the same [`KafkaProducerConfig`] so every contender runs with identical librdkafka settings.
//! Not a stable API (feature `unstable-bench`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer,
    ProducerContext,
};

use crate::config::KafkaProducerConfig;
use crate::error::{Error, Result};

/// One measured run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawRun {
    /// Records acknowledged.
    pub delivered: u64,
    /// Records that failed.
    pub failed: u64,
    /// From the first send to the last delivery report.
    pub seconds: f64,
}

/// The librdkafka properties `config` produces, for handing to another client (the Python
/// peer). Includes credentials: do not log.
pub fn librdkafka_properties(config: &KafkaProducerConfig) -> Vec<(String, String)> {
    config
        .to_rdkafka()
        .config_map()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

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

fn is_queue_full(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
}

/// `BaseProducer` with a counting delivery callback, polled from the sending thread: the
/// ceiling of what any layer over librdkafka can reach.
pub fn base_producer(
    config: &KafkaProducerConfig,
    topic: &str,
    records: u64,
    value: &[u8],
    keys: &[Vec<u8>],
) -> Result<RawRun> {
    let p: BaseProducer<Count> = config
        .to_rdkafka()
        .create_with_context(Count::default())
        .map_err(|e| Error::kafka("create BaseProducer", e))?;
    let start = Instant::now();
    for i in 0..records {
        let mut rec = BaseRecord::to(topic)
            .payload(value)
            .key(&keys[i as usize % keys.len()]);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((e, r)) if is_queue_full(&e) => {
                    p.poll(Duration::from_millis(1));
                    rec = r;
                }
                Err((e, _)) => return Err(Error::kafka("BaseProducer send", e)),
            }
        }
        if i % 1024 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(300))
        .map_err(|e| Error::kafka("BaseProducer flush", e))?;
    let seconds = start.elapsed().as_secs_f64();
    let c = p.context();
    Ok(RawRun {
        delivered: c.ok.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        seconds,
    })
}

/// `FutureProducer::send_result` awaiting every per-record future, at most `window`
/// outstanding (the oldest is awaited first).
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
    let mut pending = VecDeque::with_capacity(window + 1);
    let start = Instant::now();
    for i in 0..records {
        let mut rec = FutureRecord::to(topic)
            .payload(value)
            .key(&keys[i as usize % keys.len()]);
        loop {
            match p.send_result(rec) {
                Ok(f) => {
                    pending.push_back(f);
                    break;
                }
                Err((e, r)) if is_queue_full(&e) => {
                    rec = r;
                    match pending.pop_front() {
                        Some(f) => tally(f.await),
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((e, _)) => return Err(Error::kafka("FutureProducer send", e)),
            }
        }
        while pending.len() > window {
            if let Some(f) = pending.pop_front() {
                tally(f.await);
            }
        }
    }
    for f in pending {
        tally(f.await);
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(RawRun {
        delivered: ok,
        failed,
        seconds,
    })
}

/// `BaseConsumer` reading every partition of `topic` from the beginning until `records`
/// records arrived: the ceiling for any consumer over librdkafka. Times from the first record
/// to the last. With `commit_every` (and a group in `config`) it commits its position
/// asynchronously at that interval, as a deployed consumer does.
pub fn base_consumer(
    config: &crate::ConsumerConfig,
    topic: &str,
    records: u64,
    commit_every: Option<Duration>,
) -> Result<RawRun> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::message::Message;
    let c: BaseConsumer = config
        .to_rdkafka()
        .create()
        .map_err(|e| Error::kafka("create BaseConsumer", e))?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| Error::kafka("metadata", e))?;
    let parts = md
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .map_err(|e| Error::kafka("assign", e))?;
    }
    c.assign(&tpl).map_err(|e| Error::kafka("assign", e))?;
    if commit_every.is_some() && config.group_id.is_none() {
        return Err(Error::Invalid {
            what: "base_consumer".into(),
            why: "committing needs a group_id".into(),
        });
    }
    let (mut n, mut bytes, mut start) = (0u64, 0usize, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut next_commit = commit_every.map(|d| Instant::now() + d);
    while n < records && Instant::now() < deadline {
        if let (Some(at), Some(every)) = (next_commit, commit_every)
            && Instant::now() >= at
        {
            let pos = c.position().map_err(|e| Error::kafka("position", e))?;
            if pos.count() > 0 {
                c.commit(&pos, CommitMode::Async)
                    .map_err(|e| Error::kafka("commit", e))?;
            }
            next_commit = Some(at + every);
        }
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.map_err(|e| Error::kafka("poll", e))?;
            start.get_or_insert_with(Instant::now);
            // Touch the payload as a handler would.
            bytes += m.payload().map_or(0, <[u8]>::len);
            n += 1;
        }
    }
    let seconds = start.map_or(f64::NAN, |s| s.elapsed().as_secs_f64());
    std::hint::black_box(bytes);
    Ok(RawRun {
        delivered: n,
        failed: records.saturating_sub(n),
        seconds,
    })
}
