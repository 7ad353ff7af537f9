//! What the broker-free consumer tests share: `kbatch-testkit`'s in-memory source and sink
//! wired into a consumer with fast retries, and waits that fail with a name.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::sync::Arc;
use std::time::Duration;

use kbatch_client::ConsumerConfig;
use kbatch_consumer::{
    Builder, ExponentialBackoff, Handler, ParallelConfig, ParallelConsumer, ProcessingOrder,
    Running,
};
use kbatch_core::TopicPartition;
use kbatch_testkit::memory::{MemoryBroker, MemorySink, MemorySource};

/// A consumer of `topic` in `group`: 16 in flight, commits every 20 ms.
pub(crate) fn config(topic: &str, group: &str, order: ProcessingOrder) -> ParallelConfig {
    let mut c = ParallelConfig::new(ConsumerConfig::default().with_group(group), [topic])
        .with_ordering(order)
        .with_concurrency(16);
    c.commit_interval = Duration::from_millis(20);
    c
}

/// Retries after 5, 10, 20 ms: no jitter, so a test's timing is its own.
pub(crate) fn fast_retries() -> ExponentialBackoff {
    ExponentialBackoff::new(Duration::from_millis(5), Duration::from_millis(20)).with_jitter(0.0)
}

/// The in-memory broker and the source and sink a consumer of `topic` uses.
pub(crate) struct Seams {
    pub(crate) broker: MemoryBroker,
    pub(crate) source: Arc<MemorySource>,
    pub(crate) sink: Arc<MemorySink>,
    topic: &'static str,
}

impl Seams {
    pub(crate) fn new(broker: &MemoryBroker, topic: &'static str) -> Self {
        Self {
            broker: broker.clone(),
            source: Arc::new(MemorySource::new(broker)),
            sink: Arc::new(MemorySink::new(broker)),
            topic,
        }
    }

    /// A consumer reading through these seams, with fast retries.
    pub(crate) fn builder(&self, cfg: ParallelConfig) -> Builder {
        ParallelConsumer::builder(cfg)
            .source(self.source.clone(), self.sink.clone())
            .retry_policy(fast_retries())
    }

    /// It, started with `handler`.
    pub(crate) fn start(&self, cfg: ParallelConfig, handler: impl Handler) -> Running {
        self.builder(cfg)
            .with_handler(handler)
            .start()
            .unwrap_or_else(|e| panic!("the consumer did not start: {e}"))
    }

    /// The offset committed for partition `p`.
    pub(crate) fn committed(&self, p: i32) -> Option<i64> {
        self.broker
            .committed(&TopicPartition::new(self.topic, p))
            .map(|c| c.0.0)
    }
}

/// `f`, failing after `secs` naming `what`.
pub(crate) async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Waits until `cond` holds, looking every few milliseconds; fails after `secs` naming `what`.
pub(crate) async fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    within(secs, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}
