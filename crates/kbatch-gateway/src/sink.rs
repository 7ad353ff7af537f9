//! What the handlers send through: the adaptive producer (default), the plain batching
//! `Producer`, and — for the topics configured as packed — a second adaptive producer that
//! packs events into envelopes.
//!
//! ```text
//!  try_send(record, budget) ─► topic matches packed_topics? ─► packed AdaptiveProducer
//!                             │                                 (profile gateway-packed)
//!                             ├─ producer = "adaptive" (default) ─► AdaptiveProducer
//!                             │                                 (profile gateway; budget honoured)
//!                             └─ producer = "plain" ─► Producer (its linger; budget ignored)
//!  try_send: Full ─► RequestError::ProducerFull (429), nothing waits
//!  send (a v3 stream): waits for room, woken when it frees; the caller bounds the wait
//! ```
//!
//! The plain `Producer` given to the gateway is kept in every mode: the topic cache and
//! `/readyz` ask it for metadata, so a 404 or a bad partition is answered before any record
//! is handed in.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use kbatch_adaptive::{
    AdaptiveConfig, AdaptiveError, AdaptiveProducer, CalibrationSetting, EventDelivered,
    EventFuture, SendOptions, Shape,
};
use kbatch_core::{Classify, ErrorClass, Offset, Record, Timestamp};
use kbatch_producer::{CloseReport, DeliveryFuture, ProduceError, Producer};
use serde::Deserialize;

use crate::auth::topic_matches;
use crate::config::GatewayConfig;
use crate::error::RequestError;

/// Calibration profile of the gateway's per-event adaptive producer.
pub(crate) const PROFILE: &str = "gateway";
/// Calibration profile of the gateway's packed adaptive producer: packed batches learn apart,
/// their costs differ.
pub(crate) const PACKED_PROFILE: &str = "gateway-packed";

/// What sends the gateway's records (config `producer`, CLI `--producer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ProducerKind {
    /// `kbatch_adaptive::AdaptiveProducer`, per-event records: batches sized by the pressure
    /// level, a lone record sent at once, `X-Latency-Budget-Ms` honoured. The default.
    #[default]
    Adaptive,
    /// The `kbatch_producer::Producer` given to the gateway, with its own linger; latency
    /// budgets are ignored.
    Plain,
}

impl FromStr for ProducerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "adaptive" => Ok(Self::Adaptive),
            "plain" => Ok(Self::Plain),
            other => Err(format!(
                "producer {other:?} is not known: use \"adaptive\" (default) or \"plain\""
            )),
        }
    }
}

/// Where a record was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Partition of the Kafka record holding it.
    pub(crate) partition: i32,
    /// Offset of that Kafka record.
    pub(crate) offset: Offset,
    /// Its place inside the envelope, for a packed topic; `None` for a record of its own.
    pub(crate) index: Option<u32>,
    /// The Kafka record's timestamp as stored.
    pub(crate) timestamp: Option<Timestamp>,
}

/// A new sequence id: the records of one request, or of one stream, keep their order.
pub(crate) fn sequence() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What a record an adaptive producer refused is answered with: 429 `producer_full` when it
/// is full, else the producer is closed. One mapping for single hand-ins and whole requests.
pub(crate) fn refused(full: bool) -> RequestError {
    if full {
        RequestError::ProducerFull
    } else {
        RequestError::Produce(ProduceError::Closed { record: None })
    }
}

/// The gateway's producers. Cheap to clone (every producer inside is a handle).
#[derive(Clone, Debug)]
pub(crate) struct Sink {
    plain: Producer,
    /// The per-event adaptive producer; `None` with `producer = "plain"`.
    adaptive: Option<AdaptiveProducer>,
    /// Started only when some pattern is configured: an idle producer still holds a client.
    packed: Option<AdaptiveProducer>,
    packed_topics: Vec<String>,
}

impl Sink {
    /// Starts the producers `config` asks for. `template` is the adaptive producers' config;
    /// its shape and profile are set here, its calibration file when `calibration_path` is.
    pub(crate) fn start(
        config: &GatewayConfig,
        plain: Producer,
        template: AdaptiveConfig,
    ) -> Result<Self, AdaptiveError> {
        let configure = |shape, profile: &str| {
            let mut c = template.clone().with_shape(shape).with_profile(profile);
            if let Some(path) = &config.calibration_path {
                c.calibration = CalibrationSetting::Path(path.clone());
            }
            c
        };
        let adaptive = match config.producer {
            ProducerKind::Adaptive => Some(AdaptiveProducer::start(configure(
                Shape::PerEvent,
                PROFILE,
            ))?),
            ProducerKind::Plain => None,
        };
        let packed = if config.packed_topics.is_empty() {
            None
        } else {
            Some(AdaptiveProducer::start(configure(
                Shape::Packed,
                PACKED_PROFILE,
            ))?)
        };
        Ok(Self {
            plain,
            adaptive,
            packed,
            packed_topics: config.packed_topics.clone(),
        })
    }

    /// True when records to `topic` are packed into envelopes.
    pub(crate) fn is_packed(&self, topic: &str) -> bool {
        self.packed.is_some() && self.packed_topics.iter().any(|p| topic_matches(p, topic))
    }

    /// Hands `record` in without waiting. `options.budget` caps how long it may wait in an
    /// adaptive batch, and records of one `options.sequence` (a request's, a stream's) keep
    /// their order in an adaptive producer, as they do in the plain one (which ignores both). A full producer is
    /// [`RequestError::ProducerFull`]; the record is then not sent.
    pub(crate) fn try_send(
        &self,
        record: Record,
        options: SendOptions,
    ) -> Result<SendFuture, RequestError> {
        match self.adaptive_for(&record.topic) {
            Some(a) => a
                .try_send_with(record, options)
                .map(SendFuture::Adaptive)
                .map_err(|e| refused(matches!(e, kbatch_adaptive::TrySendError::Full(_)))),
            None => match self.plain.try_send(record) {
                Ok(f) => Ok(SendFuture::Plain(f)),
                Err(kbatch_producer::TrySendError::Full(_)) => Err(RequestError::ProducerFull),
                Err(kbatch_producer::TrySendError::Failed(e)) => Err(RequestError::Produce(e)),
                Err(e) => Err(RequestError::BadRequest(e.to_string())),
            },
        }
    }

    /// As [`try_send`](Self::try_send), waiting while the producer is full — for a caller
    /// that would rather wait for room than refuse (a v3 stream, which stops reading its body
    /// meanwhile). It wakes when room frees; the caller bounds the wait.
    ///
    /// # Cancellation
    /// Dropping the future while it waits drops the record: it was not handed in.
    pub(crate) async fn send(
        &self,
        record: Record,
        options: SendOptions,
    ) -> Result<SendFuture, RequestError> {
        match self.adaptive_for(&record.topic) {
            Some(a) => a
                .send_with(record, options)
                .await
                .map(SendFuture::Adaptive)
                // Its only refusal: closed.
                .map_err(|_| refused(false)),
            None => self
                .plain
                .send(record)
                .await
                .map(SendFuture::Plain)
                .map_err(RequestError::Produce),
        }
    }

    /// The adaptive producer that takes records to `topic`; `None` with the plain producer.
    pub(crate) fn adaptive_for(&self, topic: &str) -> Option<&AdaptiveProducer> {
        if self.is_packed(topic) {
            self.packed.as_ref()
        } else {
            self.adaptive.as_ref()
        }
    }

    /// The per-event adaptive producer's current pressure level (1..=10); `None` with the
    /// plain producer. For `/metrics`.
    pub(crate) fn pressure_level(&self) -> Option<u8> {
        self.adaptive.as_ref().map(|a| a.level().0)
    }

    /// Closes the adaptive producers (each sends what it holds and waits for the
    /// acknowledgements), then the plain one; logs the adaptive reports and returns the plain
    /// producer's.
    pub(crate) async fn close(&self) -> CloseReport {
        for (name, p) in [(PROFILE, &self.adaptive), (PACKED_PROFILE, &self.packed)] {
            let Some(p) = p else { continue };
            let r = p.close().await;
            if r.failed_at_close > 0 || r.calibration_warning.is_some() {
                tracing::warn!(
                    producer = name,
                    delivered = r.stats.delivered,
                    failed = r.stats.failed,
                    failed_at_close = r.failed_at_close,
                    calibration_warning = r.calibration_warning.as_deref().unwrap_or("-"),
                    "adaptive producer closed with failures"
                );
            } else {
                tracing::info!(
                    producer = name,
                    delivered = r.stats.delivered,
                    failed = r.stats.failed,
                    "adaptive producer closed"
                );
            }
        }
        self.plain.close().await
    }
}

/// One record's acknowledgement, from whichever producer took it.
#[derive(Debug)]
pub(crate) enum SendFuture {
    /// Taken by the plain producer.
    Plain(DeliveryFuture),
    /// Taken by an adaptive producer.
    Adaptive(EventFuture),
}

impl Future for SendFuture {
    type Output = Result<Sent, RequestError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            SendFuture::Plain(f) => Pin::new(f).poll(cx).map(|r| {
                r.map(|d| Sent {
                    partition: d.partition,
                    offset: d.offset,
                    index: None,
                    timestamp: d.timestamp,
                })
                .map_err(RequestError::Produce)
            }),
            SendFuture::Adaptive(f) => Pin::new(f).poll(cx).map(adaptive_outcome),
        }
    }
}

/// An adaptive producer's per-event outcome as the gateway answers it.
pub(crate) fn adaptive_outcome(
    r: Result<EventDelivered, AdaptiveError>,
) -> Result<Sent, RequestError> {
    r.map(|d| Sent {
        partition: d.partition,
        offset: d.offset,
        index: d.index,
        timestamp: d.timestamp,
    })
    .map_err(adaptive_error)
}

/// An adaptive producer's per-event failure as the gateway answers it.
fn adaptive_error(e: AdaptiveError) -> RequestError {
    match e {
        AdaptiveError::Produce(e) => RequestError::Produce(e),
        AdaptiveError::Closed { .. } => {
            RequestError::Produce(ProduceError::Closed { record: None })
        }
        // A packed envelope or a packed event's partition lookup failed: retriable ones are
        // the broker's state (503), the others the record's (400).
        e @ (AdaptiveError::Envelope { .. } | AdaptiveError::Metadata { .. }) => {
            if e.class() == ErrorClass::Retriable {
                RequestError::Unavailable(e.to_string())
            } else {
                RequestError::Rejected(e.to_string())
            }
        }
        e => RequestError::Internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_failures_map_by_class_and_closed_is_503() {
        let envelope = |class| AdaptiveError::Envelope {
            topic: "t".into(),
            partition: 0,
            events: 3,
            index: 1,
            class,
            message: "MessageSizeTooLarge".into(),
            record: Box::new(Record::new("t", "v")),
        };
        let e = adaptive_error(envelope(ErrorClass::Retriable));
        assert_eq!((e.status().as_u16(), e.code()), (503, "broker_unavailable"));
        let e = adaptive_error(envelope(ErrorClass::Permanent));
        assert_eq!((e.status().as_u16(), e.code()), (400, "record_rejected"));
        assert!(e.to_string().contains("MessageSizeTooLarge"), "{e}");
        let e = adaptive_error(AdaptiveError::Closed { record: None });
        assert_eq!((e.status().as_u16(), e.code()), (503, "producer_closed"));
    }

    #[test]
    fn producer_kind_parses_and_names_the_choices() {
        assert_eq!("plain".parse::<ProducerKind>(), Ok(ProducerKind::Plain));
        assert_eq!(
            "adaptive".parse::<ProducerKind>(),
            Ok(ProducerKind::Adaptive)
        );
        let e = "fast".parse::<ProducerKind>().unwrap_err();
        assert!(e.contains("\"fast\"") && e.contains("plain"), "{e}");
    }
}
