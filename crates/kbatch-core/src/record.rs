//! Records to produce and records consumed.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::{Offset, Topic, TopicPartition};

/// Milliseconds since the Unix epoch, Kafka's record timestamp unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Timestamp(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    /// Milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.0
    }
}

/// One record header. Kafka allows repeated keys and null values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub key: String,
    /// Header value; `None` is Kafka's null header value.
    pub value: Option<Bytes>,
}

/// Ordered record headers.
pub type Headers = Vec<Header>;

/// A record to produce: where it goes and what it carries.
///
/// Keys and values are [`Bytes`], so a record that must be retried or dead-lettered is cloned
/// without copying its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Destination topic.
    pub topic: Topic,
    /// Explicit partition; `None` lets the partitioner choose (by key hash when keyed).
    pub partition: Option<i32>,
    /// Record key; `None` is a null key.
    pub key: Option<Bytes>,
    /// Record value; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Headers,
    /// Create time; `None` lets the client stamp it when enqueued.
    pub timestamp: Option<Timestamp>,
}

impl Record {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<Topic>, value: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// A tombstone (null value) for `key`: deletes the key on a compacted topic.
    pub fn tombstone(topic: impl Into<Topic>, key: impl Into<Bytes>) -> Self {
        Self {
            value: None,
            ..Self::new(topic, Bytes::new())
        }
        .with_key(key)
    }

    /// Sets the key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Pins the record to a partition.
    #[must_use]
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Appends a header.
    #[must_use]
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: Some(value.into()),
        });
        self
    }

    /// Sets the create timestamp.
    #[must_use]
    pub fn with_timestamp(mut self, ts: Timestamp) -> Self {
        self.timestamp = Some(ts);
        self
    }

    /// Destination topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Bytes of key, value and headers: what the record costs in a bounded buffer.
    pub fn size_hint(&self) -> usize {
        payload_size(self.key.as_ref(), self.value.as_ref(), &self.headers)
    }

    /// The key rendered for error messages: UTF-8 when it is, hex otherwise, cut at 64 bytes.
    pub fn key_for_display(&self) -> String {
        display_bytes(self.key.as_deref())
    }
}

/// A record read from Kafka, with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Topic it was read from.
    pub topic: Topic,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: Offset,
    /// Record key.
    pub key: Option<Bytes>,
    /// Record value.
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Headers,
    /// Create or log-append time, when the broker reports one; for an event unpacked from an
    /// envelope, the event's own timestamp, else the envelope record's.
    pub timestamp: Option<Timestamp>,
    /// Set when this is one event of a packed envelope (see [`crate::envelope`]): its place
    /// in it. `topic`, `partition` and `offset` are then the envelope record's, shared by all
    /// its events; `None` for an ordinary record.
    pub envelope: Option<EnvelopePosition>,
}

/// Where an event sits in the packed envelope it was unpacked from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvelopePosition {
    /// The event's index in the envelope, from 0.
    pub index: u32,
    /// Events in the envelope.
    pub count: u32,
}

impl ConsumedRecord {
    /// The record's topic-partition.
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition {
            topic: self.topic.clone(),
            partition: self.partition,
        }
    }

    /// Payload bytes: key, value and headers (names and values) — what memory budgets count,
    /// the same measure as [`Record::size_hint`].
    pub fn size(&self) -> usize {
        payload_size(self.key.as_ref(), self.value.as_ref(), &self.headers)
    }

    /// First header with that name, if any.
    pub fn header(&self, key: &str) -> Option<&Header> {
        self.headers.iter().find(|h| h.key == key)
    }

    /// The key rendered for logs and error messages.
    pub fn key_for_display(&self) -> String {
        display_bytes(self.key.as_deref())
    }
}

/// Key, value and header bytes: the one measure of a record's size.
fn payload_size(key: Option<&Bytes>, value: Option<&Bytes>, headers: &[Header]) -> usize {
    key.map_or(0, Bytes::len)
        + value.map_or(0, Bytes::len)
        + headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
            .sum::<usize>()
}

/// Renders an optional byte string for humans: `null`, the UTF-8 text, or hex, cut at 64 bytes.
fn display_bytes(b: Option<&[u8]>) -> String {
    const MAX: usize = 64;
    let Some(b) = b else { return "null".to_owned() };
    let cut = &b[..b.len().min(MAX)];
    let more = if b.len() > MAX { "…" } else { "" };
    match std::str::from_utf8(cut) {
        Ok(s) => format!("{s:?}{more}"),
        Err(_) => {
            let hex: String = cut.iter().map(|x| format!("{x:02x}")).collect();
            format!("0x{hex}{more}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_hint_counts_key_value_and_headers() {
        let r = Record::new("t", vec![0u8; 100])
            .with_key("abc")
            .with_header("h", "xy");
        assert_eq!(r.size_hint(), 100 + 3 + 1 + 2);
        assert_eq!(Record::tombstone("t", "k").size_hint(), 1);
        assert_eq!(Record::tombstone("t", "k").value, None);
    }

    #[test]
    fn keys_display_readably() {
        assert_eq!(Record::new("t", "v").key_for_display(), "null");
        assert_eq!(
            Record::new("t", "v").with_key("user-1").key_for_display(),
            "\"user-1\""
        );
        assert_eq!(
            Record::new("t", "v")
                .with_key(vec![0xff, 0x00])
                .key_for_display(),
            "0xff00"
        );
        let long = Record::new("t", "v")
            .with_key(vec![b'a'; 100])
            .key_for_display();
        assert!(long.ends_with('…') && long.len() < 80, "{long}");
    }

    #[test]
    fn timestamp_now_is_after_2020() {
        assert!(Timestamp::now().millis() > 1_577_836_800_000);
    }
}
