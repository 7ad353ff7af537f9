//! Handler and dead-letter jobs: started on the driver, spawned only when they wait.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use kbatch_core::{ConsumedRecord, Header, Record};
use kbatch_producer::Producer;

use super::{Done, Driver, Loop};
use crate::engine::Work;
use crate::handler::{DeadLetterFn, HandlerError, HandlerResult, panic_text};

/// Where records that failed for good go.
pub(crate) enum DeadLetter {
    /// Nowhere: they are logged, counted and skipped.
    Skip,
    /// A topic, written through kbatch's producer with origin and error in headers; the
    /// client settings let the driver check at start that the topic exists.
    Topic(Producer, String, kbatch_client::ClientConfig),
    /// The user's callback.
    Callback(DeadLetterFn),
}

impl Driver {
    /// Fails when the dead-letter topic does not exist: records failing for good would
    /// otherwise retry their write forever (or create the topic by accident, where the
    /// cluster auto-creates topics on produce).
    pub(super) async fn check_dead_letter_topic(&self) -> crate::error::Result<()> {
        let DeadLetter::Topic(_, topic, client) = &self.dead_letter else {
            return Ok(());
        };
        let admin = kbatch_client::Admin::new(client)?;
        match admin.describe_topic(topic).await {
            Ok(_) => Ok(()),
            Err(kbatch_client::Error::UnknownTopic(_)) => {
                Err(crate::error::Error::DeadLetter(format!(
                    "dead-letter topic {topic:?} does not exist: create it before starting the consumer"
                )))
            }
            Err(e) => {
                tracing::warn!(error = %e, topic, "cannot check that the dead-letter topic exists");
                Ok(())
            }
        }
    }

    /// Starts a job. Polls it once here: a handler that finishes without waiting (cache hit,
    /// no-op, filter) completes with no task, no channel, no wake-up, and its result is
    /// returned. One that waits is spawned under the task tracker — cancelled if the consumer
    /// stops before it ends — and reports through the done channel.
    pub(super) fn start(
        &self,
        l: &Loop,
        id: u64,
        records: Vec<ConsumedRecord>,
        work: Work,
    ) -> Option<(HandlerResult, Duration)> {
        let mut fut = match work {
            Work::Handle => Arc::clone(&self.process).process(records),
            Work::DeadLetter { error, attempts } => {
                self.dead_letter_future(records, error, attempts)
            }
        };
        let t = Instant::now();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
            Ok(std::task::Poll::Ready(result)) => return Some((result, t.elapsed())),
            Err(p) => return Some((Err(HandlerError::panicked(panic_text(&*p))), t.elapsed())),
            Ok(std::task::Poll::Pending) => {}
        }
        let (tx, cancel) = (l.done_tx.clone(), l.cancel.clone());
        l.tasks.spawn(async move {
            let t = Instant::now();
            let result = tokio::select! {
                r = AssertUnwindSafe(fut).catch_unwind() => {
                    r.unwrap_or_else(|p| Err(HandlerError::panicked(panic_text(&*p))))
                }
                () = cancel.cancelled() => return,
            };
            let _ = tx
                .send(Done {
                    id,
                    result,
                    elapsed: t.elapsed(),
                })
                .await;
        });
        None
    }

    fn dead_letter_future(
        &self,
        records: Vec<ConsumedRecord>,
        error: HandlerError,
        attempts: u32,
    ) -> BoxFuture<'static, HandlerResult> {
        match &self.dead_letter {
            DeadLetter::Callback(cb) => {
                let cb = Arc::clone(cb);
                Box::pin(async move {
                    for r in records {
                        cb(r, error.clone(), attempts).await?;
                    }
                    Ok(())
                })
            }
            DeadLetter::Topic(p, topic, _) => {
                let (p, topic) = (p.clone(), topic.clone());
                Box::pin(async move {
                    let out: Vec<Record> = records
                        .iter()
                        .map(|r| dead_letter_record(&topic, r, &error, attempts))
                        .collect();
                    for result in p.send_batch(out).await {
                        result.map_err(|e| {
                            HandlerError::retriable(format!(
                                "dead-letter write to {topic:?} failed: {e}"
                            ))
                        })?;
                    }
                    Ok(())
                })
            }
            // The engine only dead-letters with a target; nothing to write otherwise.
            DeadLetter::Skip => Box::pin(async { Ok(()) }),
        }
    }
}

/// The dead-letter copy of `r`: same key, value, headers and timestamp, plus where it came from
/// and why it failed. An event of an envelope is written as a plain record of its own (its
/// key, value and headers), and its origin names the envelope record and the event's index.
fn dead_letter_record(topic: &str, r: &ConsumedRecord, e: &HandlerError, attempts: u32) -> Record {
    let mut headers = r.headers.clone();
    let h = |k: &str, v: String| Header {
        key: k.to_owned(),
        value: Some(Bytes::from(v)),
    };
    headers.push(h("kbatch.dlq.topic", r.topic.to_string()));
    headers.push(h("kbatch.dlq.partition", r.partition.to_string()));
    headers.push(h("kbatch.dlq.offset", r.offset.0.to_string()));
    headers.push(Header {
        key: "kbatch.dlq.key".into(),
        value: r.key.clone(),
    });
    if let Some(pos) = r.envelope {
        headers.push(h("kbatch.dlq.envelope.index", pos.index.to_string()));
        headers.push(h("kbatch.dlq.envelope.count", pos.count.to_string()));
    }
    headers.push(h("kbatch.dlq.error", e.to_string()));
    headers.push(h("kbatch.dlq.attempts", attempts.to_string()));
    Record {
        topic: topic.into(),
        partition: None,
        key: r.key.clone(),
        value: r.value.clone(),
        headers,
        timestamp: r.timestamp,
    }
}

#[cfg(test)]
mod tests {
    use kbatch_core::{EnvelopePosition, Offset, Timestamp};

    use super::*;

    fn header<'a>(r: &'a Record, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| std::str::from_utf8(h.value.as_deref()?).ok())
    }

    #[test]
    fn a_dead_lettered_event_is_a_plain_record_naming_its_envelope() {
        let event = ConsumedRecord {
            topic: "in".into(),
            partition: 3,
            offset: Offset(42),
            key: Some(Bytes::from_static(b"car-7")),
            value: Some(Bytes::from_static(b"fix")),
            headers: vec![Header {
                key: "origin".into(),
                value: Some(Bytes::from_static(b"sensor")),
            }],
            timestamp: Some(Timestamp(5)),
            envelope: Some(EnvelopePosition { index: 7, count: 9 }),
        };
        let d = dead_letter_record("dlq", &event, &HandlerError::permanent("bad fix"), 2);
        assert_eq!(
            (&*d.topic, &d.key, &d.value, d.timestamp),
            ("dlq", &event.key, &event.value, event.timestamp),
            "its own key, value and timestamp"
        );
        assert_eq!(d.headers[0], event.headers[0], "its own headers first");
        for (name, want) in [
            ("kbatch.dlq.topic", "in"),
            ("kbatch.dlq.partition", "3"),
            ("kbatch.dlq.offset", "42"),
            ("kbatch.dlq.envelope.index", "7"),
            ("kbatch.dlq.envelope.count", "9"),
            ("kbatch.dlq.attempts", "2"),
            ("kbatch.dlq.error", "permanent: bad fix"),
        ] {
            assert_eq!(header(&d, name), Some(want), "{name}");
        }
        assert!(
            !kbatch_core::envelope::is_envelope(&d.headers),
            "a plain record, not an envelope"
        );
        let plain = ConsumedRecord {
            envelope: None,
            ..event
        };
        let d = dead_letter_record("dlq", &plain, &HandlerError::permanent("bad fix"), 2);
        assert_eq!(header(&d, "kbatch.dlq.envelope.index"), None);
    }
}
