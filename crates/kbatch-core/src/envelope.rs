//! The packed-microbatch envelope: many small events carried as the value of one Kafka record.
//!
//! ```text
//!  events ──EnvelopeWriter::push──► one Vec<u8> ──finish──► Record value + header
//!                                                             "kbatch-envelope" = "1"
//!  ConsumedRecord value ──decode──► Vec<Event> (key/value slices of the record's Bytes)
//! ```
//!
//! A producer packs events that are individually too small to be worth a Kafka record into
//! one record (one batch entry, one compression frame, one offset), marked with the
//! [`ENVELOPE_HEADER`] header. The parallel consumer unpacks such a record back into its
//! events and hands them to handlers one by one.
//!
//! ```
//! use bytes::Bytes;
//! use kbatch_core::envelope::{self, EnvelopeWriter};
//! use kbatch_core::{Record, Timestamp};
//!
//! let mut w = EnvelopeWriter::new();
//! w.push(Some(b"car-7"), Some(b"fix 1"), &[], Some(Timestamp(1_700_000_000_000)));
//! w.push(None, Some(b"fix 2"), &[], None);
//! assert_eq!(w.len(), 2);
//! let packed = w.finish();
//!
//! let mut record = Record::new("positions", packed.clone());
//! record.headers.push(envelope::envelope_header());
//! assert!(envelope::is_envelope(&record.headers));
//!
//! let events = envelope::decode(&packed)?;
//! assert_eq!(events[0].key.as_deref(), Some(&b"car-7"[..]));
//! assert_eq!(events[1].value, Some(Bytes::from_static(b"fix 2")));
//! # Ok::<(), kbatch_core::envelope::EnvelopeError>(())
//! ```
//!
//! # Wire format, version 1
//!
//! The format is public and versioned: other writers may produce it, and a record whose
//! `kbatch-envelope` header names a version this decoder does not know is rejected, not
//! guessed at. All multi-byte integers of the fixed header are big-endian; every other
//! integer is LEB128 (unsigned, 7 bits per byte, least significant group first).
//!
//! ```text
//! offset  field
//! 0       magic  b"KBEV" (4 bytes)
//! 4       version u8 = 1
//! 5       flags  u8 = 0 (reserved; nonzero is an error in v1)
//! 6       count  u32 big-endian: the number of events
//! 10      count events, each:
//!           body_len  LEB128, then body_len bytes of body:
//!             attrs   u8: bit 0 key present, bit 1 value present, bit 2 timestamp present;
//!                     bits 3-7 must be 0
//!             [timestamp  zigzag LEB128 i64, milliseconds since the Unix epoch]  if bit 2
//!             [key        LEB128 length, then the key bytes]                     if bit 0
//!             [value      LEB128 length, then the value bytes]                   if bit 1
//!             header_count LEB128; each header:
//!               name   LEB128 length, then UTF-8 bytes
//!               value  LEB128 (length + 1), 0 meaning a null value, then the value bytes
//! end     nothing: no trailing bytes
//! ```
//!
//! A present key or value may be empty (length 0); an absent one is Kafka's null. Each event's
//! fields must consume its body exactly, and the events must end exactly at the end of the
//! value. The encoding is canonical: varints are minimal (no redundant `0x80`… `0x00`
//! groups), so one list of events has exactly one encoding and
//! `encode(&decode(b)?) == b` for every `b` that decodes.
//!
//! # Decoding untrusted input
//!
//! [`decode`] never panics and never allocates more than its input justifies: preallocation is
//! capped by the bytes that remain (an event takes at least 3 bytes, a header 2). Every
//! malformation is an [`EnvelopeError`] naming the event (when inside one) and the byte
//! offset, what was found and what v1 requires.

use std::fmt;

use bytes::Bytes;

use crate::{Classify, ErrorClass, Header, Headers, Timestamp};

/// Name of the Kafka header that marks a record as an envelope; its value is the format
/// version in ASCII (`"1"`).
pub const ENVELOPE_HEADER: &str = "kbatch-envelope";

/// The wire-format version this module writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

const MAGIC: &[u8; 4] = b"KBEV";
/// Magic, version, flags and the event count.
const HEADER_LEN: usize = 10;
const COUNT_AT: usize = 6;
const ATTR_KEY: u8 = 1;
const ATTR_VALUE: u8 = 1 << 1;
const ATTR_TIMESTAMP: u8 = 1 << 2;
const ATTR_KNOWN: u8 = ATTR_KEY | ATTR_VALUE | ATTR_TIMESTAMP;
/// The smallest event: a one-byte body length, attrs, a zero header count.
const MIN_EVENT_LEN: usize = 3;
/// The smallest header: an empty name and a null value.
const MIN_HEADER_LEN: usize = 2;
/// A u64 needs at most 10 LEB128 bytes.
const MAX_VARINT_LEN: usize = 10;

/// One event of an envelope: what a record would carry, without topic, partition or offset
/// (those are the envelope's).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// Event key; `None` is a null key.
    pub key: Option<Bytes>,
    /// Event value; `None` is a null value.
    pub value: Option<Bytes>,
    /// Headers, in order; repeated names and null values are allowed, as in Kafka.
    pub headers: Headers,
    /// The event's own timestamp, when it has one.
    pub timestamp: Option<Timestamp>,
}

/// Appends events into one growing buffer; [`finish`](Self::finish) hands it out as the
/// envelope record's value.
///
/// Each event is written once, straight into the buffer (its body length is computed first),
/// so [`encoded_len`](Self::encoded_len) is exact at every point: a batcher can stop at a
/// byte limit before it is passed.
#[derive(Clone, Debug)]
pub struct EnvelopeWriter {
    buf: Vec<u8>,
    count: u32,
}

impl Default for EnvelopeWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvelopeWriter {
    /// An empty envelope.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty envelope whose buffer has room for `bytes` bytes (the 10-byte fixed header
    /// included) before it grows.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes.max(HEADER_LEN));
        buf.extend_from_slice(MAGIC);
        buf.push(ENVELOPE_VERSION);
        buf.push(0);
        buf.extend_from_slice(&0u32.to_be_bytes());
        Self { buf, count: 0 }
    }

    /// Appends one event.
    ///
    /// # Panics
    ///
    /// When the envelope already holds `u32::MAX` events (the count field's limit; at three
    /// bytes an event, that is a 12 GiB value, far past any broker's record size limit).
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
        timestamp: Option<Timestamp>,
    ) {
        self.count = self
            .count
            .checked_add(1)
            .expect("an envelope holds at most u32::MAX events");
        let zigzag = timestamp.map(|t| zigzag(t.millis()));
        let body_len = body_len(key, value, headers, zigzag);
        self.buf.reserve(varint_len(body_len as u64) + body_len);
        put_varint(&mut self.buf, body_len as u64);
        let mut attrs = 0;
        for (present, bit) in [
            (key.is_some(), ATTR_KEY),
            (value.is_some(), ATTR_VALUE),
            (zigzag.is_some(), ATTR_TIMESTAMP),
        ] {
            if present {
                attrs |= bit;
            }
        }
        self.buf.push(attrs);
        if let Some(z) = zigzag {
            put_varint(&mut self.buf, z);
        }
        for field in [key, value].into_iter().flatten() {
            put_varint(&mut self.buf, field.len() as u64);
            self.buf.extend_from_slice(field);
        }
        put_varint(&mut self.buf, headers.len() as u64);
        for h in headers {
            put_varint(&mut self.buf, h.key.len() as u64);
            self.buf.extend_from_slice(h.key.as_bytes());
            match &h.value {
                None => put_varint(&mut self.buf, 0),
                Some(v) => {
                    put_varint(&mut self.buf, v.len() as u64 + 1);
                    self.buf.extend_from_slice(v);
                }
            }
        }
    }

    /// Appends every event of `other`, in order, after this writer's: the same bytes as
    /// pushing them here one by one, for events encoded elsewhere (a producer's callers encode
    /// their events where they hand them in, and the batcher joins their pieces into one
    /// envelope with a copy per piece).
    ///
    /// # Panics
    ///
    /// When the two together hold more than `u32::MAX` events (see [`push`](Self::push)).
    pub fn append(&mut self, other: &EnvelopeWriter) {
        self.count = self
            .count
            .checked_add(other.count)
            .expect("an envelope holds at most u32::MAX events");
        self.buf.extend_from_slice(&other.buf[HEADER_LEN..]);
    }

    /// Events pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when no event was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes that [`finish`](Self::finish) would return now.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// The encoded envelope: the value of the record to send with [`envelope_header`].
    pub fn finish(mut self) -> Bytes {
        self.buf[COUNT_AT..HEADER_LEN].copy_from_slice(&self.count.to_be_bytes());
        Bytes::from(self.buf)
    }
}

/// Encodes `events` as one envelope (the same bytes as pushing each into an
/// [`EnvelopeWriter`]).
pub fn encode(events: &[Event]) -> Bytes {
    let bytes = HEADER_LEN
        + events
            .iter()
            .map(|e| {
                let len = body_len(
                    e.key.as_deref(),
                    e.value.as_deref(),
                    &e.headers,
                    e.timestamp.map(|t| zigzag(t.millis())),
                );
                varint_len(len as u64) + len
            })
            .sum::<usize>();
    let mut w = EnvelopeWriter::with_capacity(bytes);
    for e in events {
        w.push(
            e.key.as_deref(),
            e.value.as_deref(),
            &e.headers,
            e.timestamp,
        );
    }
    w.finish()
}

/// Decodes an envelope. Keys and values are slices of `value` (no copy); header names are
/// copied into `String`s.
///
/// # Errors
///
/// Any deviation from the [v1 wire format](self#wire-format-version-1): a bad magic, version
/// or flags, a truncated or non-minimal varint, a length past the end of its event, reserved
/// attribute bits, a header name that is not UTF-8, an event body not consumed exactly, fewer
/// events than the count says, or bytes after the last event.
pub fn decode(value: &Bytes) -> Result<Vec<Event>, EnvelopeError> {
    let count = decode_header(value)?;
    let mut r = Reader {
        buf: value,
        pos: HEADER_LEN,
        end: value.len(),
        scope: "envelope",
    };
    // A hostile count must not reserve memory the input cannot back.
    let mut events = Vec::with_capacity((count as usize).min(r.remaining() / MIN_EVENT_LEN));
    for index in 0..count {
        let at = |e: Malformed| e.into_error(Some(index));
        if r.remaining() == 0 {
            return Err(EnvelopeError::new(
                Some(index),
                r.pos,
                format!(
                    "the envelope ends after {index} events but its header declares {count}; \
                     the count must equal the number of events that follow"
                ),
            ));
        }
        let body_len = r.len_within("event body length").map_err(at)?;
        let mut body = Reader {
            buf: value,
            pos: r.pos,
            end: r.pos + body_len,
            scope: "event",
        };
        events.push(body.event().map_err(at)?);
        r.pos = body.end;
    }
    if r.remaining() != 0 {
        return Err(EnvelopeError::new(
            None,
            r.pos,
            format!(
                "{} trailing bytes after the {count} events the header declares; \
                 an envelope must end with its last event",
                r.remaining()
            ),
        ));
    }
    Ok(events)
}

/// True when `headers` carry the [`ENVELOPE_HEADER`] (whatever its value: a version this
/// decoder does not read is still an envelope, and must fail as one rather than reach a
/// handler as an ordinary record).
pub fn is_envelope(headers: &[Header]) -> bool {
    headers.iter().any(|h| h.key == ENVELOPE_HEADER)
}

/// The header to put on an envelope record: [`ENVELOPE_HEADER`] = `"1"`.
pub fn envelope_header() -> Header {
    Header {
        key: ENVELOPE_HEADER.to_owned(),
        value: Some(Bytes::from_static(b"1")),
    }
}

/// A malformed envelope: where, and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct EnvelopeError {
    /// The event being decoded, counted from 0; `None` for the fixed header and trailing bytes.
    pub event_index: Option<u32>,
    /// Offset in the envelope's value where the problem was found.
    pub byte_offset: usize,
    /// What was found and what the format requires.
    pub reason: String,
}

impl EnvelopeError {
    fn new(event_index: Option<u32>, byte_offset: usize, reason: String) -> Self {
        Self {
            event_index,
            byte_offset,
            reason,
        }
    }
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed kbatch envelope (v{ENVELOPE_VERSION}) ")?;
        if let Some(i) = self.event_index {
            write!(f, "in event {i} ")?;
        }
        write!(f, "at byte {}: {}", self.byte_offset, self.reason)
    }
}

impl Classify for EnvelopeError {
    /// The same bytes fail the same way every time.
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// The fixed header: checks magic, version and flags, returns the count.
fn decode_header(value: &[u8]) -> Result<u32, EnvelopeError> {
    let fail = |at: usize, reason: String| Err(EnvelopeError::new(None, at, reason));
    if value.len() < HEADER_LEN {
        return fail(
            value.len(),
            format!(
                "the value is {} bytes, shorter than the {HEADER_LEN}-byte envelope header \
                 (magic \"KBEV\", version, flags, count)",
                value.len()
            ),
        );
    }
    if &value[..4] != MAGIC {
        return fail(
            0,
            format!(
                "magic is {}, expected \"KBEV\" (4b 42 45 56)",
                hex(&value[..4])
            ),
        );
    }
    if value[4] != ENVELOPE_VERSION {
        return fail(
            4,
            format!(
                "version is {}, this decoder reads version {ENVELOPE_VERSION}",
                value[4]
            ),
        );
    }
    if value[5] != 0 {
        return fail(
            5,
            format!(
                "flags are {:#04x}, version {ENVELOPE_VERSION} defines none: they must be 0",
                value[5]
            ),
        );
    }
    let mut count = [0u8; 4];
    count.copy_from_slice(&value[COUNT_AT..HEADER_LEN]);
    Ok(u32::from_be_bytes(count))
}

/// A decoding failure before it knows which event it is in.
struct Malformed {
    at: usize,
    reason: String,
}

impl Malformed {
    fn into_error(self, event_index: Option<u32>) -> EnvelopeError {
        EnvelopeError::new(event_index, self.at, self.reason)
    }
}

/// A cursor over `buf[pos..end]`; `end` is the envelope's end or the current event body's.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
    /// "envelope" or "event", for messages.
    scope: &'static str,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    fn fail<T>(&self, at: usize, reason: String) -> Result<T, Malformed> {
        Err(Malformed { at, reason })
    }

    /// One event's body, which must be consumed exactly.
    fn event(&mut self) -> Result<Event, Malformed> {
        let attrs = self.byte("attributes")?;
        if attrs & !ATTR_KNOWN != 0 {
            return self.fail(
                self.pos - 1,
                format!(
                    "attributes are {attrs:#04x}; version {ENVELOPE_VERSION} defines only bits \
                     0-2 (key, value, timestamp present: at most 0x07)"
                ),
            );
        }
        let timestamp = if attrs & ATTR_TIMESTAMP != 0 {
            Some(Timestamp(unzigzag(self.varint("timestamp")?)))
        } else {
            None
        };
        let key = if attrs & ATTR_KEY != 0 {
            Some(self.bytes("key", "key length")?)
        } else {
            None
        };
        let value = if attrs & ATTR_VALUE != 0 {
            Some(self.bytes("value", "value length")?)
        } else {
            None
        };
        let header_at = self.pos;
        let header_count = self.varint("header count")?;
        // Each header takes at least 2 bytes: a count past that is a lie, caught before any
        // allocation.
        if header_count > (self.remaining() / MIN_HEADER_LEN) as u64 {
            return self.fail(
                header_at,
                format!(
                    "header count is {header_count} but only {} bytes of the event remain \
                     (a header takes at least {MIN_HEADER_LEN})",
                    self.remaining()
                ),
            );
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let name_at = self.pos;
            let name = self.bytes("header name", "header name length")?;
            let name = match std::str::from_utf8(&name) {
                Ok(s) => s.to_owned(),
                Err(e) => {
                    return self.fail(
                        name_at,
                        format!(
                            "header name {} is not valid UTF-8 ({e}); names must be UTF-8",
                            hex(&name[..name.len().min(32)])
                        ),
                    );
                }
            };
            let value_at = self.pos;
            let value = match self.varint("header value length")? {
                0 => None,
                n => Some(self.take(n - 1, "header value", value_at)?),
            };
            headers.push(Header { key: name, value });
        }
        if self.remaining() != 0 {
            return self.fail(
                self.pos,
                format!(
                    "{} unread bytes after the event's last field; its body length must \
                     cover exactly its fields",
                    self.remaining()
                ),
            );
        }
        Ok(Event {
            key,
            value,
            headers,
            timestamp,
        })
    }

    fn byte(&mut self, what: &str) -> Result<u8, Malformed> {
        match self.buf.get(self.pos) {
            Some(&b) if self.pos < self.end => {
                self.pos += 1;
                Ok(b)
            }
            _ => self.fail(
                self.pos,
                format!("the event ends where its {what} byte should be"),
            ),
        }
    }

    /// A minimal LEB128 u64 within `end`.
    fn varint(&mut self, what: &str) -> Result<u64, Malformed> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..MAX_VARINT_LEN {
            let Some(&b) = self.buf.get(self.pos).filter(|_| self.pos < self.end) else {
                let within = self.scope;
                let reason = if i == 0 {
                    format!("the {within} ends where its {what} should be")
                } else {
                    format!(
                        "the {what} varint is cut off after {i} bytes: the last one has its \
                         continuation bit (0x80) set and the {within} ends there"
                    )
                };
                return self.fail(start, reason);
            };
            self.pos += 1;
            let group = u64::from(b & 0x7f);
            if i == MAX_VARINT_LEN - 1 && b > 1 {
                return self.fail(
                    start,
                    format!(
                        "the {what} varint overflows 64 bits (10th byte is {b:#04x}, at most 0x01)"
                    ),
                );
            }
            v |= group << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return self.fail(
                        start,
                        format!(
                            "the {what} varint is not minimal ({} bytes ending in 0x00); \
                             version {ENVELOPE_VERSION} requires the shortest LEB128 encoding",
                            i + 1
                        ),
                    );
                }
                return Ok(v);
            }
        }
        self.fail(
            start,
            format!("the {what} varint is longer than {MAX_VARINT_LEN} bytes (a u64 needs at most {MAX_VARINT_LEN})"),
        )
    }

    /// A varint length that must fit in what remains of this reader.
    fn len_within(&mut self, what: &str) -> Result<usize, Malformed> {
        let at = self.pos;
        let n = self.varint(what)?;
        if n > self.remaining() as u64 {
            return self.fail(
                at,
                format!(
                    "{what} is {n} but only {} bytes of the {} remain after it",
                    self.remaining(),
                    self.scope
                ),
            );
        }
        Ok(n as usize)
    }

    /// A length-prefixed byte string, sliced from the input without copying.
    fn bytes(&mut self, what: &str, len_what: &str) -> Result<Bytes, Malformed> {
        let at = self.pos;
        let n = self.varint(len_what)?;
        self.take(n, what, at)
    }

    fn take(&mut self, n: u64, what: &str, at: usize) -> Result<Bytes, Malformed> {
        if n > self.remaining() as u64 {
            return self.fail(
                at,
                format!(
                    "{what} length is {n} but only {} bytes of the {} remain after it",
                    self.remaining(),
                    self.scope
                ),
            );
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(self.buf.slice(start..self.pos))
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn varint_len(v: u64) -> usize {
    // 1 byte for 0..=127, one more per further 7 bits.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Bytes of one event's body (everything after its body length).
fn body_len(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[Header],
    zigzag_ts: Option<u64>,
) -> usize {
    let field = |b: &[u8]| varint_len(b.len() as u64) + b.len();
    1 + zigzag_ts.map_or(0, varint_len)
        + key.map_or(0, field)
        + value.map_or(0, field)
        + varint_len(headers.len() as u64)
        + headers
            .iter()
            .map(|h| {
                field(h.key.as_bytes())
                    + h.value
                        .as_ref()
                        .map_or(1, |v| varint_len(v.len() as u64 + 1) + v.len())
            })
            .sum::<usize>()
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
