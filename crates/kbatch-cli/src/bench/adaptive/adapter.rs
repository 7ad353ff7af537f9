//! The adaptive producer and the envelope codec as the bench uses them: started without
//! calibration, every future mapped to where its event landed, and the BULK baseline's
//! envelope record.

use std::time::Duration;

use futures::FutureExt as _;
use futures::future::Map;
use kbatch_adaptive::{
    AdaptiveConfig, AdaptiveError, AdaptiveProducer, EventDelivered, ManyResults, Shape,
};
use kbatch_core::envelope::{EnvelopeWriter, envelope_header};
use kbatch_core::{Record, Topic};
use kbatch_producer::ProducerConfig;

use super::load::Ack;

/// The adaptive producer's settings for a run: the crate's defaults around `producer`, in
/// `shape`, without calibration, so every run starts from the crate's own bootstrap settings
/// and none learns from another.
pub(super) fn config(producer: ProducerConfig, shape: Shape) -> AdaptiveConfig {
    AdaptiveConfig::new(producer)
        .with_shape(shape)
        .without_calibration()
}

/// What `AdaptiveProducer::start` does to the client settings it is given: the intake
/// lingers, so the client sends each flush at once. Mirrored here so the settings check and
/// the BULK baseline see the client the adaptive contenders really run.
pub(super) fn client_linger() -> Duration {
    Duration::ZERO
}

type ToAck = fn(Result<EventDelivered, AdaptiveError>) -> Result<Ack, String>;

fn to_ack(r: Result<EventDelivered, AdaptiveError>) -> Result<Ack, String> {
    r.map(|d| Ack {
        partition: d.partition,
        offset: d.offset.0,
        more: Vec::new(),
    })
    .map_err(|e| e.to_string())
}

/// Resolves when the event is acknowledged.
pub(super) type EventFuture = Map<kbatch_adaptive::EventFuture, ToAck>;

type ManyToAck = fn(ManyResults) -> Result<Ack, String>;

/// A `send_many` call's outcomes as one acknowledgement: every distinct Kafka record its
/// events landed in, or the first failure.
fn many_to_ack(results: ManyResults) -> Result<Ack, String> {
    let mut landed = Vec::with_capacity(results.len());
    for r in results.iter() {
        let d = r.map_err(|e| e.to_string())?;
        landed.push((d.partition, d.offset.0));
    }
    landed.dedup();
    let (partition, offset) = landed
        .pop()
        .ok_or_else(|| "send_many of no events".to_owned())?;
    Ok(Ack {
        partition,
        offset,
        more: landed,
    })
}

/// Resolves when every event of a `send_many` call is acknowledged.
pub(super) type ManyFuture = Map<kbatch_adaptive::ManyFuture, ManyToAck>;

/// A running adaptive producer.
pub(super) struct Adaptive {
    p: AdaptiveProducer,
}

impl Adaptive {
    /// Starts one (inside the runtime: it spawns its driver).
    pub(super) fn start(config: AdaptiveConfig) -> anyhow::Result<Self> {
        Ok(Self {
            p: AdaptiveProducer::start(config)?,
        })
    }

    /// Hands `record` over, waiting while the intake is full.
    pub(super) async fn send(&self, record: Record) -> anyhow::Result<EventFuture> {
        Ok(self.p.send(record).await?.map(to_ack as ToAck))
    }

    /// Hands `records` over in one call, waiting while the intake is full.
    pub(super) async fn send_many(&self, records: Vec<Record>) -> ManyFuture {
        self.p
            .send_many(records)
            .await
            .map(many_to_ack as ManyToAck)
    }

    /// Its level and batch settings now, in words.
    pub(super) fn state(&self) -> String {
        format!("{} {}", self.p.level(), self.p.settings())
    }

    /// Closes it; its counters and what it learned, in words.
    pub(super) async fn close(self) -> String {
        let r = self.p.close().await;
        let s = r.stats;
        format!(
            "{} batches, {} records ({} sent straight to the client, {} path switches), {} level \
             changes, {} budget overruns, {} regressions, {} failed at close; learned at {} \
             level(s): {}",
            s.batches,
            s.records,
            s.direct,
            s.path_switches,
            s.level_changes,
            s.budget_overruns,
            s.regressions,
            r.failed_at_close,
            r.learned.len(),
            r.learned
                .iter()
                .map(|l| format!("{} {}", l.level, l.best))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// One Kafka record holding `events` (key, value) in an envelope, with the envelope header,
/// for `partition` of `topic`.
pub(super) fn envelope_record<'a>(
    topic: &Topic,
    partition: i32,
    events: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Record {
    let mut w = EnvelopeWriter::new();
    for (k, v) in events {
        w.push(Some(k), Some(v), &[], None);
    }
    let mut r = Record::new(std::sync::Arc::clone(topic), w.finish()).with_partition(partition);
    r.headers.push(envelope_header());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bulk_envelope_holds_every_event_in_order() {
        let t: Topic = "t".into();
        let events = [(&b"k1"[..], &b"v1"[..]), (&b"k2"[..], &b"v2"[..])];
        let r = envelope_record(&t, 3, events.into_iter());
        assert_eq!(r.partition, Some(3));
        assert!(kbatch_core::envelope::is_envelope(&r.headers));
        let decoded = kbatch_core::envelope::decode(r.value.as_ref().unwrap()).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[1].key.as_deref(), Some(&b"k2"[..]));
        assert_eq!(decoded[1].value.as_deref(), Some(&b"v2"[..]));
    }
}
