//! The one place that speaks to code landing from other branches: `kbatch-adaptive`'s
//! `AdaptiveProducer` and `kbatch-core`'s envelope codec. Everything else in the bench uses
//! the types here.
//!
//! PLACEHOLDER until `git merge main` brings them: `start` and `envelope_record` fail with
//! [`NOT_MERGED`], and the bench skips the contenders that need them, saying so.

use kbatch_core::{Record, Topic};
use kbatch_producer::ProducerConfig;

use super::load::Ack;

/// Why the adaptive contenders cannot run yet; `None` once the code is merged.
pub(super) const NOT_MERGED: Option<&str> =
    Some("kbatch-adaptive's AdaptiveProducer and kbatch-core's envelope codec are not merged yet");

/// How the adaptive producer hands a flushed microbatch to Kafka.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    /// One Kafka record per event (`Shape::PerEvent`).
    PerEvent,
    /// One Kafka record per flushed microbatch and partition, an envelope (`Shape::Packed`).
    Packed,
}

/// A running adaptive producer.
pub(super) struct Adaptive {
    _shape: Shape,
}

/// Resolves when the event is acknowledged.
pub(super) type EventFuture = std::future::Ready<Result<Ack, String>>;

impl Adaptive {
    /// Starts one on `producer` (kbatch's `Producer` settings it drives), without calibration:
    /// every run starts from the crate's own bootstrap settings, none learned in another run.
    pub(super) fn start(_producer: ProducerConfig, shape: Shape) -> anyhow::Result<Self> {
        let _ = Self { _shape: shape };
        anyhow::bail!(NOT_MERGED.unwrap_or_default())
    }

    /// Hands `record` over, waiting while the intake is full.
    pub(super) async fn send(&self, _record: Record) -> anyhow::Result<EventFuture> {
        anyhow::bail!(NOT_MERGED.unwrap_or_default())
    }

    /// Its level and batch settings now, in words.
    pub(super) fn state(&self) -> String {
        String::new()
    }

    /// Closes it; its close report and counters, in words.
    pub(super) async fn close(self) -> String {
        String::new()
    }
}

/// One Kafka record holding `events` (key, value) in an envelope, with the envelope header,
/// for `partition` of `topic`.
pub(super) fn envelope_record<'a>(
    _topic: &Topic,
    _partition: i32,
    _events: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> anyhow::Result<Record> {
    anyhow::bail!(NOT_MERGED.unwrap_or_default())
}
