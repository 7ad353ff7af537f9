//! Request bodies into records: one JSON record, a JSON array of records, or NDJSON.
//!
//! A record is `{"key": <string|null>, "value": <any JSON>, "headers": {"name": "value"},
//! "partition": <int>, "timestamp": <ms>}`, every field optional:
//! - `value` is forwarded as its compact JSON text (key order kept as written); `null` or
//!   absent is a tombstone (no value). With `?format=binary`, `key` and `value` are base64
//!   strings of the bytes.
//! - `key` is the UTF-8 of the string (`null` or absent: no key); header values are UTF-8
//!   strings or `null`, in the order written.
//! - Unknown fields are refused, so a typo (`"vaule"`) is a 400, not a silent tombstone.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use kbatch_core::{Header, Record, Timestamp, Topic};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::error::RequestError;

/// How the body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// One JSON object, or a JSON array of them.
    Json,
    /// One JSON object per line (`application/x-ndjson`); blank lines are skipped.
    Ndjson,
}

/// How keys and values are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `value` is any JSON, `key` a string.
    Json,
    /// `key` and `value` are base64 strings (`?format=binary`).
    Binary,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRecord<'a> {
    /// Borrowed from the body unless it has escapes.
    #[serde(default, borrow)]
    key: Option<MaybeBorrowed<'a>>,
    #[serde(default, borrow)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    headers: Option<WireHeaders>,
    #[serde(default)]
    partition: Option<i32>,
    #[serde(default)]
    timestamp: Option<i64>,
}

/// A string borrowed from the body when it has no escapes. (serde's own `Cow<str>` borrows
/// only as a field of its own, not inside an `Option`.)
struct MaybeBorrowed<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeBorrowed<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeBorrowed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Headers in the order written (a map type would sort or dedupe them).
struct WireHeaders(Vec<(String, Option<String>)>);

impl<'de> Deserialize<'de> for WireHeaders {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireHeaders;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of header names to string or null values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireHeaders, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Option<String>>()? {
                    out.push(entry);
                }
                Ok(WireHeaders(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses `body` into records for `topic`. Fails on the first malformed or invalid record,
/// or as soon as more than `max_records` are seen.
pub(crate) fn parse_records(
    topic: &Topic,
    body: &Bytes,
    framing: Framing,
    encoding: Encoding,
    max_records: usize,
) -> Result<Vec<Record>, RequestError> {
    let wire = match framing {
        Framing::Json => parse_json(body, max_records)?,
        Framing::Ndjson => parse_ndjson(body, max_records)?,
    };
    wire.into_iter()
        .enumerate()
        .map(|(i, w)| to_record(topic, body, i, w, encoding))
        .collect()
}

fn parse_json(body: &[u8], max_records: usize) -> Result<Vec<WireRecord<'_>>, RequestError> {
    let first = body.iter().position(|b| !b.is_ascii_whitespace());
    let records = match first.map(|i| body[i]) {
        Some(b'[') => serde_json::from_slice::<Vec<WireRecord<'_>>>(body).map_err(json_error)?,
        Some(b'{') => vec![serde_json::from_slice::<WireRecord<'_>>(body).map_err(json_error)?],
        Some(_) => {
            let i = first.unwrap_or(0);
            let (line, column) = position(body, i);
            return Err(RequestError::MalformedJson {
                line,
                column,
                message: "expected a JSON object (one record) or an array of objects".into(),
            });
        }
        None => {
            return Err(RequestError::BadRequest(
                "empty body: expected a JSON record, an array of records, or NDJSON".into(),
            ));
        }
    };
    if records.is_empty() {
        return Err(RequestError::BadRequest(
            "no records: expected at least one record in the array".into(),
        ));
    }
    if records.len() > max_records {
        return Err(RequestError::TooManyRecords {
            count: records.len(),
            limit: max_records,
        });
    }
    Ok(records)
}

fn parse_ndjson(body: &[u8], max_records: usize) -> Result<Vec<WireRecord<'_>>, RequestError> {
    let mut records = Vec::new();
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if records.len() == max_records {
            // Stop here: parsing the rest of a body that is refused anyway is wasted work.
            return Err(RequestError::TooManyRecords {
                count: max_records + 1,
                limit: max_records,
            });
        }
        let record = serde_json::from_slice::<WireRecord<'_>>(line).map_err(|e| {
            let RequestError::MalformedJson {
                column, message, ..
            } = json_error(e)
            else {
                unreachable!("json_error returns MalformedJson")
            };
            RequestError::MalformedJson {
                line: n + 1,
                column,
                message,
            }
        })?;
        records.push(record);
    }
    if records.is_empty() {
        return Err(RequestError::BadRequest(
            "empty body: expected at least one NDJSON line".into(),
        ));
    }
    Ok(records)
}

/// serde_json's error, with its position as fields and the message without it.
pub(super) fn json_error(e: serde_json::Error) -> RequestError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    RequestError::MalformedJson {
        line: e.line(),
        column: e.column(),
        message,
    }
}

/// 1-based line and column of byte `i`.
fn position(body: &[u8], i: usize) -> (usize, usize) {
    let before = &body[..i];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = i - before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1)
        + 1;
    (line, column)
}

fn to_record(
    topic: &Topic,
    body: &Bytes,
    index: usize,
    w: WireRecord<'_>,
    encoding: Encoding,
) -> Result<Record, RequestError> {
    let invalid = |message: String| RequestError::InvalidRecord { index, message };
    let key = match (w.key, encoding) {
        (None, _) => None,
        (Some(MaybeBorrowed(Cow::Borrowed(k))), Encoding::Json) => Some(slice_of(body, k)),
        (Some(MaybeBorrowed(Cow::Owned(k))), Encoding::Json) => Some(Bytes::from(k)),
        (Some(k), Encoding::Binary) => Some(decode_base64(&k.0).map_err(|e| {
            invalid(format!(
                "key is not valid base64 ({e}); with format=binary keys and values are base64"
            ))
        })?),
    };
    let value = match (w.value, encoding) {
        (None, _) => None,
        (Some(raw), Encoding::Json) => Some(json_bytes(body, raw.get())),
        (Some(raw), Encoding::Binary) => {
            let s: String = serde_json::from_str(raw.get()).map_err(|_| {
                invalid("with format=binary, value must be a base64 string or null".into())
            })?;
            Some(decode_base64(&s).map_err(|e| {
                invalid(format!(
                    "value is not valid base64 ({e}); with format=binary keys and values are base64"
                ))
            })?)
        }
    };
    if w.partition.is_some_and(|p| p < 0) {
        return Err(invalid(format!(
            "partition {} is negative; omit it to let the key choose",
            w.partition.unwrap_or_default()
        )));
    }
    if w.timestamp.is_some_and(|t| t < 0) {
        return Err(invalid(format!(
            "timestamp {} is negative; expected milliseconds since the Unix epoch",
            w.timestamp.unwrap_or_default()
        )));
    }
    let headers = w
        .headers
        .map(|h| {
            h.0.into_iter()
                .map(|(key, value)| Header {
                    key,
                    value: value.map(Bytes::from),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Record {
        topic: Topic::clone(topic),
        partition: w.partition,
        key,
        value,
        headers,
        timestamp: w.timestamp.map(Timestamp),
    })
}

pub(super) fn decode_base64(s: &str) -> Result<Bytes, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(Bytes::from)
}

/// `text`, a part of `body`, as a slice of it (no copy); a copy when it is not part of it.
fn slice_of(body: &Bytes, text: &str) -> Bytes {
    // Addresses only compared, never dereferenced: a borrowed string points into the body.
    let start = (text.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    if start <= body.len() && text.len() <= body.len() - start {
        body.slice(start..start + text.len())
    } else {
        Bytes::copy_from_slice(text.as_bytes())
    }
}

/// A JSON value's compact text: a slice of the body when it is written compact already
/// (most are), else a compacted copy.
pub(super) fn json_bytes(body: &Bytes, json: &str) -> Bytes {
    if is_compact(json.as_bytes()) {
        slice_of(body, json)
    } else {
        Bytes::from(compact_json(json))
    }
}

/// True when no whitespace lies between `json`'s tokens (inside strings it may).
fn is_compact(json: &[u8]) -> bool {
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            return false;
        }
    }
    true
}

/// Valid JSON text without the whitespace between tokens; strings are kept byte for byte.
/// (Bytes, not chars: JSON's whitespace and quotes are ASCII, which never occurs inside a
/// UTF-8 sequence, so every multi-byte character is copied whole.)
pub(super) fn compact_json(json: &str) -> String {
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in json.as_bytes() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            out.push(b);
        }
    }
    // Only ASCII bytes outside strings were left out: still valid UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        body: &str,
        framing: Framing,
        encoding: Encoding,
    ) -> Result<Vec<Record>, RequestError> {
        parse_records(
            &Topic::from("t"),
            &Bytes::copy_from_slice(body.as_bytes()),
            framing,
            encoding,
            3,
        )
    }

    fn value(r: &Record) -> &[u8] {
        r.value.as_deref().unwrap()
    }

    #[test]
    fn single_array_and_ndjson_give_the_same_records() {
        let one = r#"{"key":"k1","value":{"b": 1, "a": [1, 2]},"headers":{"z":"1","a":null},"partition":2,"timestamp":1700000000000}"#;
        let single = parse(one, Framing::Json, Encoding::Json).unwrap();
        let array = parse(&format!("[{one}, {one}]"), Framing::Json, Encoding::Json).unwrap();
        let nd = parse(
            &format!("{one}\n\n{one}\n"),
            Framing::Ndjson,
            Encoding::Json,
        )
        .unwrap();
        assert_eq!(single.len(), 1);
        assert_eq!(array, nd);
        assert_eq!(array[0], single[0]);
        let r = &single[0];
        assert_eq!(r.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(value(r), br#"{"b":1,"a":[1,2]}"#, "compact, key order kept");
        assert_eq!(r.partition, Some(2));
        assert_eq!(r.timestamp, Some(Timestamp(1_700_000_000_000)));
        assert_eq!(
            r.headers,
            vec![
                Header {
                    key: "z".into(),
                    value: Some(Bytes::from("1"))
                },
                Header {
                    key: "a".into(),
                    value: None
                },
            ]
        );
    }

    #[test]
    fn values_keep_string_whitespace_and_null_is_a_tombstone() {
        let r = parse(r#"{"value": " a  b\" c "}"#, Framing::Json, Encoding::Json).unwrap();
        assert_eq!(value(&r[0]), br#"" a  b\" c ""#);
        let r = parse(r#"{"key":"k","value":null}"#, Framing::Json, Encoding::Json).unwrap();
        assert_eq!(r[0].value, None);
        let r = parse(r#"{"value": 42}"#, Framing::Json, Encoding::Json).unwrap();
        assert_eq!((value(&r[0]), r[0].key.as_ref()), (&b"42"[..], None));
    }

    #[test]
    fn binary_format_decodes_base64() {
        let r = parse(
            r#"{"key":"AP8=","value":"aGVsbG8="}"#,
            Framing::Json,
            Encoding::Binary,
        )
        .unwrap();
        assert_eq!(r[0].key.as_deref(), Some(&[0u8, 255][..]));
        assert_eq!(value(&r[0]), b"hello");
        let e = parse(
            r#"[{"value":"aGk="},{"value":"not base64!"}]"#,
            Framing::Json,
            Encoding::Binary,
        )
        .unwrap_err();
        assert!(
            matches!(e, RequestError::InvalidRecord { index: 1, .. }),
            "{e:?}"
        );
        let e = parse(r#"{"value":{"a":1}}"#, Framing::Json, Encoding::Binary).unwrap_err();
        assert!(e.to_string().contains("base64 string"), "{e}");
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let e = parse(
            "[\n {\"value\": 1},\n {\"value\": }\n]",
            Framing::Json,
            Encoding::Json,
        )
        .unwrap_err();
        let RequestError::MalformedJson {
            line,
            column,
            message,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!((*line, *column), (3, 12), "{message}");
        assert!(
            !message.contains("at line"),
            "position is in the fields: {message}"
        );
        // NDJSON: the line is the body's line, not the line within the record.
        let e = parse(
            "{\"value\":1}\n\n{\"value\":1,}\n",
            Framing::Ndjson,
            Encoding::Json,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                RequestError::MalformedJson {
                    line: 3,
                    column: 12,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("malformed JSON at line 3, column 12: "),
            "{e}"
        );
        let e = parse("  \n 7", Framing::Json, Encoding::Json).unwrap_err();
        assert!(
            matches!(
                e,
                RequestError::MalformedJson {
                    line: 2,
                    column: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = parse(r#"{"vaule": 1}"#, Framing::Json, Encoding::Json).unwrap_err();
        assert!(e.to_string().contains("unknown field `vaule`"), "{e}");
    }

    #[test]
    fn record_count_is_bounded() {
        let four = r#"[{"value":1},{"value":2},{"value":3},{"value":4}]"#;
        assert!(matches!(
            parse(four, Framing::Json, Encoding::Json),
            Err(RequestError::TooManyRecords { count: 4, limit: 3 })
        ));
        let nd = "{}\n{}\n{}\n{}\n";
        assert!(matches!(
            parse(nd, Framing::Ndjson, Encoding::Json),
            Err(RequestError::TooManyRecords { limit: 3, .. })
        ));
        assert_eq!(
            parse("{}\n{}\n{}\n", Framing::Ndjson, Encoding::Json)
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn bad_numbers_and_empty_bodies_are_refused() {
        for body in ["", "  ", "[]"] {
            let e = parse(body, Framing::Json, Encoding::Json).unwrap_err();
            assert!(matches!(e, RequestError::BadRequest(_)), "{body:?}: {e:?}");
        }
        assert!(parse(r#"{"partition":-1}"#, Framing::Json, Encoding::Json).is_err());
        assert!(parse(r#"{"timestamp":-5}"#, Framing::Json, Encoding::Json).is_err());
        assert!(parse("\n\n", Framing::Ndjson, Encoding::Json).is_err());
    }

    #[test]
    fn compact_keys_and_values_are_slices_of_the_body_and_others_copies() {
        let body = Bytes::from_static(
            br#"{"key":"k1","value":{"a":[1,2],"s":"x y"}}
{"key":"k\u0032","value":{ "a" : 1 }}
"#,
        );
        let rs =
            parse_records(&Topic::from("t"), &body, Framing::Ndjson, Encoding::Json, 3).unwrap();
        let inside = |b: &Bytes| {
            let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
            (start..end).contains(&(b.as_ptr() as usize))
        };
        let (k0, v0) = (rs[0].key.as_ref().unwrap(), rs[0].value.as_ref().unwrap());
        assert_eq!(
            (&k0[..], &v0[..]),
            (&b"k1"[..], &br#"{"a":[1,2],"s":"x y"}"#[..])
        );
        assert!(inside(k0) && inside(v0), "compact and unescaped: no copy");
        let (k1, v1) = (rs[1].key.as_ref().unwrap(), rs[1].value.as_ref().unwrap());
        assert_eq!((&k1[..], &v1[..]), (&b"k2"[..], &br#"{"a":1}"#[..]));
        assert!(
            !inside(k1) && !inside(v1),
            "escaped key, spaced value: copies"
        );
    }

    #[test]
    fn compacting_keeps_strings_and_multibyte_characters_whole() {
        let json = "{ \"é ü\" : [ \"\\\" a\" , 1 ] , \"日本\":\t2 }";
        assert_eq!(compact_json(json), "{\"é ü\":[\"\\\" a\",1],\"日本\":2}");
        assert!(!is_compact(json.as_bytes()));
        assert!(is_compact(compact_json(json).as_bytes()));
    }
}
