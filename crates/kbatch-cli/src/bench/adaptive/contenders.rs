//! The contenders, the data they all send, and how one run of one of them is made: a topic of
//! its own, the client started, the load driven, the client closed, the topic deleted.

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::Map;
use kbatch_client::{Admin, Delivered, KafkaProducerConfig, NewTopic};
use kbatch_core::{Record, Topic};
use kbatch_producer::{DeliveryFuture, ProduceError, Producer, ProducerConfig};
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;

use kbatch_adaptive::Shape;

use super::adapter::{self, Adaptive};
use super::load::{self, Ack, Measured, Plan, Target};

/// kbatch's plain `Producer` with fixed batching: flush a partition's batch at `linger`,
/// `batch_records` or `batch_bytes`, whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(super) struct StaticBatching {
    pub(super) linger_ms: u64,
    pub(super) batch_records: usize,
    pub(super) batch_bytes: usize,
}

impl std::str::FromStr for StaticBatching {
    type Err = String;
    /// `LINGER_MS:BATCH_RECORDS:BATCH_BYTES`, e.g. `5:10000:1048576`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("{s:?} is not LINGER_MS:BATCH_RECORDS:BATCH_BYTES, e.g. 5:10000:1048576");
        let mut it = s.split(':').map(|p| p.trim().parse::<u64>());
        let (Some(Ok(l)), Some(Ok(r)), Some(Ok(b)), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(bad());
        };
        Ok(Self {
            linger_ms: l,
            batch_records: usize::try_from(r).map_err(|_| bad())?,
            batch_bytes: usize::try_from(b).map_err(|_| bad())?,
        })
    }
}

/// One measured configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Contender {
    /// kbatch-adaptive's `AdaptiveProducer` in this shape, awaiting every event's future.
    Adaptive(Shape),
    /// kbatch's `Producer` with these batch settings, awaiting every record's future.
    Static(StaticBatching),
    /// N events serialized into one envelope per Kafka record by the sender, each envelope
    /// sent with kbatch's `Producer::send` and its future awaited.
    Bulk(u32),
    /// kbatch-adaptive's `AdaptiveProducer`, packed, handed N events per
    /// `AdaptiveProducer::send_many` call (as many as BULK's sender packs per send), awaiting
    /// each call's future (an outcome per event).
    PackedMany(u32),
}

impl Contender {
    /// Its name in the report and the JSON.
    pub(super) fn key(self) -> String {
        match self {
            Contender::Adaptive(Shape::PerEvent) => "adaptive_per_event".into(),
            Contender::Adaptive(Shape::Packed) => "adaptive_packed".into(),
            Contender::Static(b) => format!("static_linger_{}ms", b.linger_ms),
            Contender::Bulk(n) => format!("bulk_envelope_{n}"),
            Contender::PackedMany(n) => format!("adaptive_packed_many_{n}"),
        }
    }

    /// What it is, for the table.
    pub(super) fn describe(self) -> String {
        match self {
            Contender::Adaptive(Shape::PerEvent) => {
                "adaptive, per-event (Shape::PerEvent; crate defaults, calibration off)".into()
            }
            Contender::Adaptive(Shape::Packed) => {
                "adaptive, packed (Shape::Packed; crate defaults, calibration off)".into()
            }
            Contender::Static(b) => format!(
                "static Producer, linger {} ms, batch {} records / {} B",
                b.linger_ms, b.batch_records, b.batch_bytes
            ),
            Contender::Bulk(n) => {
                format!("BULK: {n} events per envelope, one Producer::send per envelope")
            }
            Contender::PackedMany(n) => format!(
                "adaptive, packed, {n} events per send_many call (a result per event; crate \
                 defaults, calibration off)"
            ),
        }
    }
}

/// What every contender sends: the same keys and values in the same order.
pub(super) struct Data {
    keys: Vec<Bytes>,
    values: Vec<Bytes>,
    pub(super) partitions: i32,
}

/// Distinct values cycled through: random alphanumeric bytes, so lz4 finds what it would in
/// text-like payloads rather than one repeated byte.
const VALUE_POOL: usize = 1_024;

impl Data {
    pub(super) fn new(keys: u64, value_bytes: usize, partitions: i32) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b62_6174_6368);
        Self {
            keys: (0..keys).map(|k| Bytes::from(format!("key-{k}"))).collect(),
            values: (0..VALUE_POOL)
                .map(|_| {
                    (0..value_bytes)
                        .map(|_| rng.sample(rand::distr::Alphanumeric))
                        .collect::<Vec<u8>>()
                        .into()
                })
                .collect(),
            partitions,
        }
    }

    fn key(&self, i: u64) -> &Bytes {
        &self.keys[(i % self.keys.len() as u64) as usize]
    }

    fn value(&self, i: u64) -> &Bytes {
        &self.values[(i % self.values.len() as u64) as usize]
    }

    /// Event `i` as a keyed record (the default partitioner places it by key).
    fn record(&self, topic: &Topic, i: u64) -> Record {
        Record {
            key: Some(self.key(i).clone()),
            ..Record::new(Arc::clone(topic), self.value(i).clone())
        }
    }
}

/// The settings every run starts from, and what each contender changes in them.
pub(super) struct Settings {
    /// acks, idempotence, compression, queue, timeouts: the same for everyone.
    pub(super) base: KafkaProducerConfig,
    /// kbatch's own bounds (records, bytes) for every `Producer`, the adaptive one's included.
    pub(super) pending: (usize, usize),
    /// The batch limits of the client under the adaptive contenders and under BULK (its
    /// linger is 0: the adaptive producer sets it so, and BULK runs the same client).
    pub(super) inner: BatchLimits,
}

/// A client's batch limits without its linger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(super) struct BatchLimits {
    pub(super) batch_records: usize,
    pub(super) batch_bytes: usize,
}

impl std::str::FromStr for BatchLimits {
    type Err = String;
    /// `BATCH_RECORDS:BATCH_BYTES`, e.g. `10000:1048576`.
    fn from_str(s: &str) -> Result<Self, String> {
        let b: StaticBatching = format!("0:{s}")
            .parse()
            .map_err(|_| format!("{s:?} is not BATCH_RECORDS:BATCH_BYTES, e.g. 10000:1048576"))?;
        Ok(Self {
            batch_records: b.batch_records,
            batch_bytes: b.batch_bytes,
        })
    }
}

impl Settings {
    /// The `Producer` settings of `c`'s client, as it runs (the adaptive producer's linger
    /// as `AdaptiveProducer::start` sets it).
    pub(super) fn producer(&self, c: Contender) -> ProducerConfig {
        let b = self.batching(c);
        let mut k = self.base.clone();
        k.linger = std::time::Duration::from_millis(b.linger_ms);
        k.batch_records = b.batch_records;
        k.batch_bytes = b.batch_bytes;
        ProducerConfig::default()
            .with_kafka(k)
            .with_pending_limits(self.pending.0, self.pending.1)
    }
}

impl Settings {
    /// The client batching of `c`.
    pub(super) fn batching(&self, c: Contender) -> StaticBatching {
        match c {
            Contender::Static(b) => b,
            Contender::Adaptive(_) | Contender::Bulk(_) | Contender::PackedMany(_) => {
                StaticBatching {
                    linger_ms: adapter::client_linger().as_millis() as u64,
                    batch_records: self.inner.batch_records,
                    batch_bytes: self.inner.batch_bytes,
                }
            }
        }
    }
}

type ToAck = fn(Result<Delivered, ProduceError>) -> Result<Ack, String>;

fn to_ack(r: Result<Delivered, ProduceError>) -> Result<Ack, String> {
    r.map(|d| Ack {
        partition: d.partition,
        offset: d.offset.0,
        more: Vec::new(),
    })
    .map_err(|e| e.to_string())
}

/// kbatch's `Producer`, one record per event.
struct PerRecord<'a> {
    p: &'a Producer,
    topic: Topic,
    data: &'a Data,
}

impl Target for PerRecord<'_> {
    type Fut = Map<DeliveryFuture, ToAck>;
    fn events_per_send(&self) -> u32 {
        1
    }
    async fn send(&self, n: u64) -> anyhow::Result<Self::Fut> {
        let f = self.p.send(self.data.record(&self.topic, n)).await?;
        Ok(f.map(to_ack as ToAck))
    }
}

/// The BULK baseline: the sender packs `per` events into one envelope and sends that record,
/// to the partitions in turn.
struct Bulk<'a> {
    p: &'a Producer,
    topic: Topic,
    data: &'a Data,
    per: u32,
}

impl Target for Bulk<'_> {
    type Fut = Map<DeliveryFuture, ToAck>;
    fn events_per_send(&self) -> u32 {
        self.per
    }
    async fn send(&self, n: u64) -> anyhow::Result<Self::Fut> {
        let first = n * u64::from(self.per);
        let events = (first..first + u64::from(self.per))
            .map(|i| (self.data.key(i).as_ref(), self.data.value(i).as_ref()));
        let partition = (n % self.data.partitions as u64) as i32;
        let r = adapter::envelope_record(&self.topic, partition, events);
        Ok(self.p.send(r).await?.map(to_ack as ToAck))
    }
}

/// The load alone: each send builds its event's record as every per-event contender's does
/// and settles at once, where a contender would hand the record to its producer. Run at
/// saturation it says how many sends a second the bench itself can make and collect on
/// this machine, and what each costs the sending thread: the part of a per-event
/// contender's figures that is the load's, which BULK pays once per envelope.
pub(super) struct LoadAlone<'a> {
    pub(super) topic: Topic,
    pub(super) data: &'a Data,
}

impl Target for LoadAlone<'_> {
    type Fut = std::future::Ready<Result<Ack, String>>;
    fn events_per_send(&self) -> u32 {
        1
    }
    async fn send(&self, n: u64) -> anyhow::Result<Self::Fut> {
        // Built and dropped as a contender's send would have it built and take it: kept
        // from being optimised away, since building it is what is measured.
        drop(std::hint::black_box(self.data.record(&self.topic, n)));
        let partitions = self.data.partitions.max(1) as u64;
        Ok(std::future::ready(Ok(Ack {
            partition: (n % partitions) as i32,
            offset: (n / partitions) as i64,
            more: Vec::new(),
        })))
    }
}

/// kbatch-adaptive's producer, one `send` per event.
struct AdaptiveEvents<'a> {
    p: &'a Adaptive,
    topic: Topic,
    data: &'a Data,
}

impl Target for AdaptiveEvents<'_> {
    type Fut = adapter::EventFuture;
    fn events_per_send(&self) -> u32 {
        1
    }
    async fn send(&self, n: u64) -> anyhow::Result<Self::Fut> {
        self.p.send(self.data.record(&self.topic, n)).await
    }
}

/// kbatch-adaptive's producer, `per` events per `send_many` call.
struct AdaptiveMany<'a> {
    p: &'a Adaptive,
    topic: Topic,
    data: &'a Data,
    per: u32,
}

impl Target for AdaptiveMany<'_> {
    type Fut = adapter::ManyFuture;
    fn events_per_send(&self) -> u32 {
        self.per
    }
    async fn send(&self, n: u64) -> anyhow::Result<Self::Fut> {
        let first = n * u64::from(self.per);
        let records = (first..first + u64::from(self.per))
            .map(|i| self.data.record(&self.topic, i))
            .collect();
        Ok(self.p.send_many(records).await)
    }
}

/// A run's measurements and what the client said when it closed.
pub(super) struct Outcome {
    pub(super) measured: Measured,
    /// The adaptive producer's level and batch settings when the load ended.
    pub(super) end_state: Option<String>,
    /// The adaptive producer's level and settings at the end, its close report; the
    /// `Producer`'s close report.
    pub(super) client_note: String,
}

/// What every run needs besides its contender: the admin client that makes its topic, and a
/// producer of the bench's own that proves the topic writable before the contender starts.
pub(super) struct Bench<'a> {
    pub(super) admin: &'a Admin,
    pub(super) probe: &'a Producer,
}

/// Runs `c` once under `plan` on a topic of its own.
pub(super) async fn run_one(
    c: Contender,
    settings: &Settings,
    data: &Data,
    bench: &Bench<'_>,
    plan: &Plan,
    tag: &str,
) -> anyhow::Result<Outcome> {
    let topic = format!(
        "kbatch-bench-adaptive-{tag}-{:08x}",
        crate::cluster::random_suffix()
    );
    bench
        .admin
        .create_topics(&[NewTopic::new(&topic, data.partitions)])
        .await?;
    let t: Topic = topic.as_str().into();
    let result = match probe(bench.probe, &t, data.partitions).await {
        Ok(()) => run_on(c, settings.producer(c), data, plan, t).await,
        Err(e) => Err(e),
    };
    bench.admin.delete_topics(&[&topic]).await?;
    result
}

/// Writes one record to every partition of a new topic and waits for them: until the broker
/// has leaders for it and serves its metadata, a client backs off (100 ms up to 1 s) and its
/// first records wait, which would be counted against whichever contender came first.
async fn probe(p: &Producer, topic: &Topic, partitions: i32) -> anyhow::Result<()> {
    let mut sent = Vec::new();
    for partition in 0..partitions {
        let r =
            Record::new(Arc::clone(topic), Bytes::from_static(b"probe")).with_partition(partition);
        sent.push(p.send(r).await?);
    }
    for f in sent {
        f.await
            .map_err(|e| anyhow::anyhow!("the new topic {topic} is not writable: {e}"))?;
    }
    Ok(())
}

async fn run_on(
    c: Contender,
    config: ProducerConfig,
    data: &Data,
    plan: &Plan,
    t: Topic,
) -> anyhow::Result<Outcome> {
    match c {
        Contender::Static(_) | Contender::Bulk(_) => {
            let p = Producer::new(config)?;
            let m = match c {
                Contender::Bulk(per) => {
                    let b = Bulk {
                        p: &p,
                        topic: t,
                        data,
                        per,
                    };
                    load::drive(&b, plan).await
                }
                _ => {
                    let s = PerRecord {
                        p: &p,
                        topic: t,
                        data,
                    };
                    load::drive(&s, plan).await
                }
            };
            let report = p.close().await;
            m.map(|measured| Outcome {
                measured,
                end_state: None,
                client_note: format!("{report:?}"),
            })
        }
        Contender::Adaptive(_) | Contender::PackedMany(_) => {
            let shape = match c {
                Contender::Adaptive(shape) => shape,
                _ => Shape::Packed,
            };
            let p = Adaptive::start(adapter::config(config, shape))?;
            let m = match c {
                Contender::PackedMany(per) => {
                    let a = AdaptiveMany {
                        p: &p,
                        topic: t,
                        data,
                        per,
                    };
                    load::drive(&a, plan).await
                }
                _ => {
                    let a = AdaptiveEvents {
                        p: &p,
                        topic: t,
                        data,
                    };
                    load::drive(&a, plan).await
                }
            };
            let state = p.state();
            let report = p.close().await;
            m.map(|measured| Outcome {
                measured,
                end_state: Some(state),
                client_note: report,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_batching_parses_and_names_the_format_when_wrong() {
        let b: StaticBatching = "5:10000:1048576".parse().unwrap();
        assert_eq!(
            b,
            StaticBatching {
                linger_ms: 5,
                batch_records: 10_000,
                batch_bytes: 1_048_576
            }
        );
        for bad in ["5:10000", "5:x:1", "1:2:3:4", ""] {
            let e = bad.parse::<StaticBatching>().unwrap_err();
            assert!(e.contains("LINGER_MS:BATCH_RECORDS:BATCH_BYTES"), "{e}");
        }
    }

    /// The load alone settles every send it makes, each where a record of its key's run of
    /// offsets would land, so its sends/s is what the load can make and collect.
    #[tokio::test]
    async fn the_load_alone_settles_every_send_it_counts() {
        let data = Data::new(100, 100, 4);
        let alone = LoadAlone {
            topic: "t".into(),
            data: &data,
        };
        let plan = Plan {
            load: load::Load::Saturation,
            settle: std::time::Duration::ZERO,
            measure: std::time::Duration::from_millis(50),
            min_events: 1_000,
            window: 10_000,
        };
        let m = load::drive(&alone, &plan).await.unwrap();
        assert!(m.sent >= 1_000, "{}", m.sent);
        assert_eq!((m.acked, m.failed), (m.sent, 0));
        assert_eq!(m.partitions_seen, 4);
        assert_eq!(m.records, m.sent, "contiguous offsets per partition");
        assert!(m.seconds > 0.0);
    }

    #[test]
    fn every_contender_sends_the_same_events() {
        let a = Data::new(10_000, 100, 8);
        let b = Data::new(10_000, 100, 8);
        let t: Topic = "t".into();
        for i in [0, 1, 9_999, 10_000, 123_456] {
            assert_eq!(a.record(&t, i), b.record(&t, i));
            assert_eq!(a.value(i).len(), 100);
        }
        assert_ne!(a.value(0), a.value(1), "distinct values, not one repeated");
        assert_eq!(a.key(10_000), a.key(0), "10,000 keys in turn");
    }

    #[test]
    fn only_batching_differs_between_the_contenders_settings() {
        let s = Settings {
            base: KafkaProducerConfig::default(),
            pending: (100_000, 256 << 20),
            inner: "10000:1048576".parse().unwrap(),
        };
        let st = "100:100000:1048576".parse().unwrap();
        let a = s.producer(Contender::Static(st));
        let b = s.producer(Contender::Adaptive(Shape::PerEvent));
        assert_eq!(a.kafka.linger.as_millis(), 100);
        assert_eq!(
            b.kafka.linger.as_millis(),
            0,
            "as AdaptiveProducer::start sets it"
        );
        assert_eq!(
            s.producer(Contender::Bulk(1_000)),
            b,
            "BULK runs the adaptive client"
        );
        let mut a2 = a.clone();
        a2.kafka.linger = b.kafka.linger;
        a2.kafka.batch_records = b.kafka.batch_records;
        a2.kafka.batch_bytes = b.kafka.batch_bytes;
        assert_eq!(a2, b);
    }
}
