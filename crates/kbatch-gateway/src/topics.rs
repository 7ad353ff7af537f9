//! Which topics exist, and their partition counts: asked of the broker once per topic and
//! remembered for `topic_cache_ttl`, so a stream of requests does not cost a metadata round
//! trip each (and a stream to a missing topic does not hammer the broker).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kbatch_producer::Producer;
use tokio::time::Instant;

use crate::error::RequestError;

/// Most topics remembered; past it, expired answers are dropped, then all of them.
const MAX_ENTRIES: usize = 10_000;

/// Longest a lookup waits for the broker, even when the request could wait longer.
const MAX_LOOKUP: Duration = Duration::from_secs(10);

/// Partition counts (`None`: the topic does not exist) and when they were learned.
pub(crate) struct TopicCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Option<i32>)>>,
}

impl TopicCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The partition count of `topic`, from the cache or the broker; waits for the broker at
    /// most until `deadline`. An unknown topic is 404; no answer in time is 503 (not cached:
    /// the next request asks again).
    pub(crate) async fn partitions(
        &self,
        producer: &Producer,
        topic: &str,
        deadline: Instant,
    ) -> Result<i32, RequestError> {
        if let Some(known) = self.cached(topic) {
            return known.ok_or_else(|| RequestError::UnknownTopic(topic.to_owned()));
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(MAX_LOOKUP);
        match producer.partition_count(topic, wait).await {
            Ok(n) => {
                self.remember(topic, Some(n));
                Ok(n)
            }
            Err(kbatch_client::Error::UnknownTopic(_)) => {
                self.remember(topic, None);
                Err(RequestError::UnknownTopic(topic.to_owned()))
            }
            Err(e) => Err(RequestError::Unavailable(format!(
                "the broker did not describe topic {topic:?} within {wait:?}: {e}"
            ))),
        }
    }

    fn cached(&self, topic: &str) -> Option<Option<i32>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(topic)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, n)| *n)
    }

    fn remember(&self, topic: &str, partitions: Option<i32>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(topic.to_owned(), (Instant::now(), partitions));
    }
}
