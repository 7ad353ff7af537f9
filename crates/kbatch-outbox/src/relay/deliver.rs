//! Deliverers: where claimed entries go. [`KafkaDeliverer`] through the batching producer.

use std::future::Future;

use bytes::Bytes;
use kbatch_core::{Classify, ErrorClass, Header, Record};
use kbatch_producer::Producer;

use super::outcome::Attempt;
use crate::entry::{Destination, OutboxEntry};

/// The header carrying the entry id, so consumers can de-duplicate redeliveries.
pub const ID_HEADER: &str = "kbatch-outbox-id";

/// Delivers a batch of entries and reports one [`Attempt`] per entry, in order.
pub trait Deliverer: Send + Sync {
    /// Delivers `entries`; the result has exactly `entries.len()` attempts.
    fn deliver<'a>(
        &'a self,
        entries: &'a [&'a OutboxEntry],
    ) -> impl Future<Output = Vec<Attempt>> + Send + 'a;

    /// [`deliver`](Self::deliver), completing `handoff` as soon as every entry has been
    /// handed to its destination in order (for Kafka: enqueued in the producer), before the
    /// acknowledgements are awaited. The relay starts the next batch's delivery only then, so
    /// consecutive batches overlap while reaching the destination in claim order.
    ///
    /// The default completes `handoff` when the delivery is over: no overlap, which is
    /// always correct.
    fn deliver_with_handoff<'a>(
        &'a self,
        entries: &'a [&'a OutboxEntry],
        handoff: Handoff,
    ) -> impl Future<Output = Vec<Attempt>> + Send + 'a {
        async move {
            let attempts = self.deliver(entries).await;
            handoff.complete();
            attempts
        }
    }
}

/// Tells the relay a batch has been handed to its destination in order (see
/// [`Deliverer::deliver_with_handoff`]). Dropping it completes it too.
#[derive(Debug)]
pub struct Handoff(Option<tokio::sync::oneshot::Sender<()>>);

impl Handoff {
    /// A handoff and what its completion wakes.
    pub(crate) fn new() -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Self(Some(tx)), rx)
    }

    /// A handoff nobody waits for (a single batch, or a deliverer used on its own).
    pub fn detached() -> Self {
        Self(None)
    }

    /// Every entry of the batch is with its destination.
    pub fn complete(mut self) {
        if let Some(tx) = self.0.take() {
            // The relay may have stopped waiting (cancelled): nothing to tell then.
            let _ = tx.send(());
        }
    }
}

/// Kafka through [`Producer`]: fire every record of the batch, then await each delivery —
/// the batch travels in the producer's large requests instead of one round trip per entry
/// (Okapi's 115 → 5,000 msg/s change). Each record carries [`ID_HEADER`] and the entry's
/// `created_at` as its timestamp.
#[derive(Clone)]
pub struct KafkaDeliverer {
    producer: Producer,
}

impl std::fmt::Debug for KafkaDeliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDeliverer").finish_non_exhaustive()
    }
}

impl KafkaDeliverer {
    /// Delivers through `producer` (its delivery timeout bounds each batch).
    pub fn new(producer: Producer) -> Self {
        Self { producer }
    }

    /// The producer.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }
}

fn record_of(entry: &OutboxEntry, topic: &str) -> Record {
    let mut record = Record::new(topic, entry.payload.clone()).with_timestamp(entry.created_at);
    if let Some(key) = &entry.key {
        record = record.with_key(Bytes::copy_from_slice(key.as_bytes()));
    }
    record.headers.clone_from(&entry.headers);
    record.headers.push(Header {
        key: ID_HEADER.to_owned(),
        value: Some(Bytes::from(entry.id.to_string())),
    });
    record
}

impl Deliverer for KafkaDeliverer {
    fn deliver<'a>(
        &'a self,
        entries: &'a [&'a OutboxEntry],
    ) -> impl Future<Output = Vec<Attempt>> + Send + 'a {
        self.deliver_with_handoff(entries, Handoff::detached())
    }

    async fn deliver_with_handoff(
        &self,
        entries: &[&OutboxEntry],
        handoff: Handoff,
    ) -> Vec<Attempt> {
        // Fire: every record enqueued before any is awaited.
        let mut fired = Vec::with_capacity(entries.len());
        for entry in entries {
            fired.push(match &entry.destination {
                Destination::Kafka { topic } => self
                    .producer
                    .send(record_of(entry, topic))
                    .await
                    .map_err(|e| Attempt::failed(e.class(), format!("not enqueued: {e}"))),
                Destination::Http { url } => Err(Attempt::failed(
                    ErrorClass::Permanent,
                    format!("HTTP destination {url} but this relay delivers to Kafka only"),
                )),
            });
        }
        // The producer keeps its queue's order per partition: the next batch may be fired now.
        handoff.complete();
        // Await each: the futures resolve as the producer's batches are acknowledged.
        let mut attempts = Vec::with_capacity(fired.len());
        for f in fired {
            attempts.push(match f {
                Ok(delivery) => match delivery.await {
                    Ok(_) => Attempt::Delivered,
                    Err(e) => Attempt::failed(e.class(), e.to_string()),
                },
                Err(failed) => failed,
            });
        }
        attempts
    }
}

/// Kafka entries to one deliverer, HTTP entries to another, both at once; the attempts come
/// back in the batch's order. A table holding both kinds needs one of these.
#[derive(Clone, Debug)]
pub struct Routed<K, H> {
    kafka: K,
    http: H,
}

impl<K: Deliverer, H: Deliverer> Routed<K, H> {
    /// Kafka destinations to `kafka`, HTTP ones to `http`.
    pub fn new(kafka: K, http: H) -> Self {
        Self { kafka, http }
    }
}

impl<K: Deliverer, H: Deliverer> Deliverer for Routed<K, H> {
    fn deliver<'a>(
        &'a self,
        entries: &'a [&'a OutboxEntry],
    ) -> impl Future<Output = Vec<Attempt>> + Send + 'a {
        self.deliver_with_handoff(entries, Handoff::detached())
    }

    async fn deliver_with_handoff(
        &self,
        entries: &[&OutboxEntry],
        handoff: Handoff,
    ) -> Vec<Attempt> {
        let (to_kafka, to_http): (Vec<(usize, &OutboxEntry)>, Vec<_>) = entries
            .iter()
            .copied()
            .enumerate()
            .partition(|(_, e)| matches!(e.destination, Destination::Kafka { .. }));
        let kafka_entries: Vec<&OutboxEntry> = to_kafka.iter().map(|(_, e)| *e).collect();
        let http_entries: Vec<&OutboxEntry> = to_http.iter().map(|(_, e)| *e).collect();
        // Handed off when both halves are.
        let (kafka_handoff, kafka_handed) = Handoff::new();
        let (http_handoff, http_handed) = Handoff::new();
        let (kafka, http, ()) = tokio::join!(
            self.kafka
                .deliver_with_handoff(&kafka_entries, kafka_handoff),
            self.http.deliver_with_handoff(&http_entries, http_handoff),
            async move {
                // An error only means the sender was dropped: handed off as well.
                let _ = kafka_handed.await;
                let _ = http_handed.await;
                handoff.complete();
            }
        );
        let mut out: Vec<Option<Attempt>> = vec![None; entries.len()];
        for ((i, _), a) in to_kafka.iter().zip(kafka).chain(to_http.iter().zip(http)) {
            out[*i] = Some(a);
        }
        out.into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Attempt::failed(ErrorClass::Fatal, "deliverer returned too few attempts")
                })
            })
            .collect()
    }
}
