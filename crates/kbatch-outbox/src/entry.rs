//! What the outbox stores: one message to deliver, and its wire form in the table.

use bytes::Bytes;
use kbatch_core::{Header, Headers, Timestamp};
use uuid::Uuid;

/// Where an entry goes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// A Kafka topic; the entry's key becomes the record key.
    Kafka {
        /// Topic name.
        topic: String,
    },
    /// An HTTP endpoint (POST of the payload).
    Http {
        /// Absolute `http://` or `https://` URL.
        url: String,
    },
}

impl Destination {
    /// A Kafka topic.
    pub fn kafka(topic: impl Into<String>) -> Self {
        Destination::Kafka {
            topic: topic.into(),
        }
    }

    /// An HTTP endpoint.
    pub fn http(url: impl Into<String>) -> Self {
        Destination::Http { url: url.into() }
    }

    /// The stored kind code and target (`dest_kind`, `dest` columns).
    pub(crate) fn to_columns(&self) -> (i16, &str) {
        match self {
            Destination::Kafka { topic } => (KIND_KAFKA, topic),
            Destination::Http { url } => (KIND_HTTP, url),
        }
    }

    pub(crate) fn from_columns(kind: i16, dest: String) -> Option<Self> {
        match kind {
            KIND_KAFKA => Some(Destination::Kafka { topic: dest }),
            KIND_HTTP => Some(Destination::Http { url: dest }),
            _ => None,
        }
    }
}

const KIND_KAFKA: i16 = 0;
const KIND_HTTP: i16 = 1;

/// One message of the outbox, written with [`enqueue`](crate::enqueue) inside the caller's
/// transaction and delivered by the [`Relay`](crate::Relay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// UUIDv7: time-ordered, so the relay claims oldest first by id; it travels with the
    /// delivered message (header `kbatch-outbox-id`) so consumers can de-duplicate.
    pub id: Uuid,
    /// Aggregate id; the Kafka record key.
    pub key: Option<String>,
    /// Where it goes.
    pub destination: Destination,
    /// The message body.
    pub payload: Bytes,
    /// Headers delivered with it.
    pub headers: Headers,
    /// When it was created (the caller's clock).
    pub created_at: Timestamp,
}

impl OutboxEntry {
    /// A new entry with a fresh UUIDv7 id, created now.
    pub fn new(destination: Destination, payload: impl Into<Bytes>) -> Self {
        Self {
            id: Uuid::now_v7(),
            key: None,
            destination,
            payload: payload.into(),
            headers: Vec::new(),
            created_at: Timestamp::now(),
        }
    }

    /// Sets the key (aggregate id).
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: Some(value.into()),
        });
        self
    }
}

/// Headers in one column: `u32` count, then per header `u32` key length, key, `i32` value
/// length (`-1` for null), value; all big-endian. Binary rather than JSON because Kafka
/// header values are bytes, and the three databases agree on blobs but not on JSON.
pub(crate) fn encode_headers(headers: &Headers) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + headers.len() * 16);
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for h in headers {
        out.extend_from_slice(&(h.key.len() as u32).to_be_bytes());
        out.extend_from_slice(h.key.as_bytes());
        match &h.value {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

/// Inverse of [`encode_headers`]; `Err` says where the bytes stop making sense.
pub(crate) fn decode_headers(mut bytes: &[u8]) -> Result<Headers, String> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], String> {
        if bytes.len() < n {
            return Err(format!(
                "headers truncated: {what} needs {n} bytes, {} left",
                bytes.len()
            ));
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn be4(b: &[u8]) -> [u8; 4] {
        [b[0], b[1], b[2], b[3]]
    }
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let count = u32::from_be_bytes(be4(take(&mut bytes, 4, "count")?)) as usize;
    // Each header takes at least 8 bytes: a count beyond that is corrupt, not a huge alloc.
    if count > bytes.len() / 8 {
        return Err(format!(
            "headers claim {count} entries in {} bytes",
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let klen = u32::from_be_bytes(be4(take(&mut bytes, 4, "key length")?)) as usize;
        let key = std::str::from_utf8(take(&mut bytes, klen, "key")?)
            .map_err(|e| format!("header key is not UTF-8: {e}"))?
            .to_owned();
        let vlen = i32::from_be_bytes(be4(take(&mut bytes, 4, "value length")?));
        let value = match vlen {
            -1 => None,
            n if n < 0 => return Err(format!("header {key:?} has value length {n}")),
            n => Some(Bytes::copy_from_slice(take(
                &mut bytes, n as usize, "value",
            )?)),
        };
        out.push(Header { key, value });
    }
    if !bytes.is_empty() {
        return Err(format!("{} bytes after the last header", bytes.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> impl Strategy<Value = Header> {
        (
            ".{0,12}",
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
        )
            .prop_map(|(key, value)| Header {
                key,
                value: value.map(Bytes::from),
            })
    }

    proptest! {
        #[test]
        fn headers_round_trip(headers in proptest::collection::vec(header(), 0..8)) {
            prop_assert_eq!(decode_headers(&encode_headers(&headers)).unwrap(), headers);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_headers(&bytes);
        }
    }

    #[test]
    fn truncated_headers_are_an_error_naming_the_part() {
        let mut b = encode_headers(&vec![Header {
            key: "k".into(),
            value: Some(Bytes::from_static(b"value")),
        }]);
        b.truncate(b.len() - 2);
        let e = decode_headers(&b).unwrap_err();
        assert!(e.contains("value"), "{e}");
    }
}
