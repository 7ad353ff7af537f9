//! Splits a body of concatenated JSON objects (`{…} {…}\n{…}`) into one object at a time, as
//! the bytes arrive: REST Proxy v3's streaming mode, where a client may send one record, wait
//! for its answer, then send the next on the same request.
//!
//! ```text
//!  chunk ─► push ─► buffer ─► next_object: Some(bytes of one {…}) | None (need more) | Err
//! ```
//!
//! Only the object's extent is found here (braces outside strings); whether the bytes are
//! valid JSON is serde_json's to say. The scan resumes where it stopped, so a record trickled
//! in many chunks is scanned once, and the buffer never holds more than one object past
//! `max_object_bytes`.

use bytes::{Buf, Bytes, BytesMut};

/// Why the body cannot be split further; the stream ends with this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Something other than `{` where the next object should start.
    NotAnObject {
        /// The byte found, as a character.
        found: char,
    },
    /// An object longer than the limit (or its incomplete start already is).
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body ended inside an object.
    Truncated,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::NotAnObject { found } => write!(
                f,
                "expected a JSON object starting with '{{', found {found:?}: send ProduceRequest objects one after another, optionally separated by whitespace"
            ),
            FrameError::TooLarge { limit } => write!(
                f,
                "a record's JSON object is larger than the limit of {limit} bytes"
            ),
            FrameError::Truncated => {
                f.write_str("the body ended inside a JSON object: the last record is incomplete")
            }
        }
    }
}

/// The incremental splitter: bytes in, complete objects out.
#[derive(Debug)]
pub(crate) struct ObjectSplitter {
    buf: BytesMut,
    max_object_bytes: usize,
    /// Bytes of `buf` already scanned (all belong to the current object once it started).
    scanned: usize,
    /// Inside an object: nesting depth (0 between objects).
    depth: u32,
    in_string: bool,
    escaped: bool,
}

impl ObjectSplitter {
    pub(crate) fn new(max_object_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_object_bytes,
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
        }
    }

    /// Appends bytes received.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete object, `None` when more bytes are needed.
    pub(crate) fn next_object(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.depth == 0 {
            // Between objects: whitespace is skipped (and dropped), anything but '{' is wrong.
            let skip = self
                .buf
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(self.buf.len());
            self.buf.advance(skip);
            match self.buf.first() {
                None => return Ok(None),
                Some(b'{') => {}
                Some(&b) => {
                    return Err(FrameError::NotAnObject {
                        found: char::from(b),
                    });
                }
            }
            self.scanned = 0;
        }
        while self.scanned < self.buf.len() {
            if self.scanned >= self.max_object_bytes {
                return Err(FrameError::TooLarge {
                    limit: self.max_object_bytes,
                });
            }
            let b = self.buf[self.scanned];
            self.scanned += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                // A stray closer at depth 0 cannot happen: depth 0 only before the first '{'.
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let object = self.buf.split_to(self.scanned).freeze();
                        self.scanned = 0;
                        return Ok(Some(object));
                    }
                }
                _ => {}
            }
        }
        if self.buf.len() > self.max_object_bytes {
            return Err(FrameError::TooLarge {
                limit: self.max_object_bytes,
            });
        }
        Ok(None)
    }

    /// At the end of the body: an error when an object was left incomplete (call after
    /// [`next_object`](Self::next_object) returned `None`).
    pub(crate) fn finish(&self) -> Result<(), FrameError> {
        if self.buf.iter().all(u8::is_ascii_whitespace) {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(body: &[u8], chunk: usize) -> (Vec<Bytes>, Result<(), FrameError>) {
        let mut s = ObjectSplitter::new(1024);
        let mut out = Vec::new();
        for c in body.chunks(chunk.max(1)) {
            s.push(c);
            loop {
                match s.next_object() {
                    Ok(Some(o)) => out.push(o),
                    Ok(None) => break,
                    Err(e) => return (out, Err(e)),
                }
            }
        }
        let end = s.finish();
        (out, end)
    }

    #[test]
    fn objects_are_found_whatever_the_chunking() {
        let body = br#" {"value":{"type":"JSON","data":{"a":"}{\"x"}}}
{"key":{"type":"STRING","data":"k]"}}{"value":{"data":[1,{"b":[]}]}}  "#;
        for chunk in [1, 2, 3, 7, 64, body.len()] {
            let (objects, end) = split_all(body, chunk);
            assert_eq!(end, Ok(()), "chunk {chunk}");
            assert_eq!(objects.len(), 3, "chunk {chunk}");
            assert_eq!(
                &objects[0][..],
                &br#"{"value":{"type":"JSON","data":{"a":"}{\"x"}}}"#[..]
            );
            assert_eq!(
                &objects[1][..],
                &br#"{"key":{"type":"STRING","data":"k]"}}"#[..]
            );
            for o in &objects {
                serde_json::from_slice::<serde_json::Value>(o).unwrap();
            }
        }
    }

    /// A JSON value whose strings hold the characters that could fool a brace counter.
    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            "[{}\\[\\]\"\\\\a-z ]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z{}\"]{0,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_objects_any_whitespace_any_chunking(
            objects in proptest::collection::vec(
                proptest::collection::btree_map("[a-z]{1,3}", json_value(), 0..4), 0..6),
            gaps in proptest::collection::vec("[ \t\r\n]{0,3}", 6),
            chunk in 1usize..40,
        ) {
            let texts: Vec<String> = objects
                .iter()
                .map(|m| serde_json::to_string(m).unwrap())
                .collect();
            let mut body = String::new();
            for (t, gap) in texts.iter().zip(&gaps) {
                body.push_str(t);
                body.push_str(gap);
            }
            let (found, end) = split_all(body.as_bytes(), chunk);
            proptest::prop_assert_eq!(end, Ok(()));
            let found: Vec<String> = found
                .iter()
                .map(|o| String::from_utf8(o.to_vec()).unwrap())
                .collect();
            proptest::prop_assert_eq!(found, texts);
        }
    }

    #[test]
    fn garbage_truncation_and_size_are_errors_after_the_good_objects() {
        let (objects, end) = split_all(b"{\"a\":1} [1]", 4);
        assert_eq!(objects.len(), 1);
        assert_eq!(end, Err(FrameError::NotAnObject { found: '[' }));
        let (objects, end) = split_all(b"{\"a\":1}\n{\"b\":", 3);
        assert_eq!((objects.len(), end), (1, Err(FrameError::Truncated)));
        let big = format!("{{\"a\":1}} {{\"v\":\"{}\"}}", "x".repeat(2000));
        let (objects, end) = split_all(big.as_bytes(), 100);
        assert_eq!(objects.len(), 1);
        assert_eq!(end, Err(FrameError::TooLarge { limit: 1024 }));
    }
}
