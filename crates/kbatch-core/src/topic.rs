//! Topic names and topic-partitions.

use std::fmt;
use std::sync::Arc;

/// A topic name. Shared (`Arc<str>`) because millions of records point at a handful of topics:
/// cloning it is a reference-count increment, not an allocation.
pub type Topic = Arc<str>;

/// One partition of one topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Topic,
    /// Partition number, `0..partition_count`.
    pub partition: i32,
}

impl TopicPartition {
    /// A topic-partition from anything that converts into a topic name.
    pub fn new(topic: impl Into<Topic>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    /// Formats as Kafka's tools do: `topic-partition`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}
