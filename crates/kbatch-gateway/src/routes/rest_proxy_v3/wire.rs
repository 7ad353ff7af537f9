//! REST Proxy v3's `ProduceRequest` in, `ProduceResponse` and error objects out (field names
//! and omissions as kafka-rest's `entities/v3/ProduceRequest.java` / `ProduceResponse.java`).

use bytes::Bytes;
use kbatch_core::{Header, Record, Timestamp, Topic};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::super::body::{compact_json, decode_base64};
use crate::error::RequestError;

/// REST Proxy's answer when a record needs a Schema Registry (code and text of kafka-rest's
/// `SchemaManagerThrowing`, `Errors.invalidPayloadException`).
pub(super) const SCHEMA_REGISTRY_CODE: u32 = 42206;
pub(super) const SCHEMA_REGISTRY_MESSAGE: &str =
    "Payload error. Schema Registry must be configured when using schemas.";

/// One `ProduceRequest`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProduceRequest<'a> {
    #[serde(default)]
    partition_id: Option<i32>,
    #[serde(default)]
    headers: Option<Vec<WireHeader>>,
    #[serde(default, borrow)]
    key: Option<Data<'a>>,
    #[serde(default, borrow)]
    value: Option<Data<'a>>,
    #[serde(default)]
    timestamp: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHeader {
    name: String,
    #[serde(default)]
    value: Option<String>,
}

/// `{"type": …, "data": …}`; the schema fields are accepted only to be refused as REST Proxy
/// without a Schema Registry refuses them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Data<'a> {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    subject: Option<Value>,
    #[serde(default)]
    subject_name_strategy: Option<Value>,
    #[serde(default)]
    schema_id: Option<Value>,
    #[serde(default)]
    schema_version: Option<Value>,
    #[serde(default)]
    schema: Option<Value>,
}

/// The embedded formats served without a Schema Registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Binary,
    Json,
    String,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Binary => "BINARY",
            Format::Json => "JSON",
            Format::String => "STRING",
        }
    }
}

/// What the answer reports of a key or value: its format and serialized size.
#[derive(Debug, Clone, Copy)]
pub(super) struct DataInfo {
    format: Format,
    size: usize,
}

/// A parsed record and what its answer reports of it.
pub(super) struct Parsed {
    pub(super) record: Record,
    pub(super) key: Option<DataInfo>,
    pub(super) value: Option<DataInfo>,
}

/// Why one object is not a record: the stream goes on after it (the object was well-formed
/// JSON), except after `Syntax`.
pub(super) enum ParseError {
    /// Not valid JSON: the stream cannot be trusted past it.
    Syntax(RequestError),
    /// Valid JSON, not a valid `ProduceRequest` (400).
    Invalid(RequestError),
    /// A schema-registry format, or no `type` (422, 42206).
    NeedsSchemaRegistry,
}

/// Parses object `index` of the stream into a record for `topic`.
pub(super) fn parse(topic: &Topic, index: usize, object: &[u8]) -> Result<Parsed, ParseError> {
    let invalid =
        |message: String| ParseError::Invalid(RequestError::InvalidRecord { index, message });
    let request: ProduceRequest<'_> = serde_json::from_slice(object).map_err(|e| {
        let as_error = RequestError::InvalidRecord {
            index,
            message: format!(
                "not a ProduceRequest: {e} (line and column within this record's object)"
            ),
        };
        if e.is_data() {
            ParseError::Invalid(as_error)
        } else {
            ParseError::Syntax(as_error)
        }
    })?;
    if let Some(p) = request.partition_id.filter(|p| *p < 0) {
        return Err(invalid(format!(
            "partition_id {p} is negative; omit it to let the key choose"
        )));
    }
    let (key, key_info) = data(request.key, "key").map_err(|e| e.at(index))?;
    let (value, value_info) = data(request.value, "value").map_err(|e| e.at(index))?;
    let headers = request
        .headers
        .unwrap_or_default()
        .into_iter()
        .map(|h| {
            let value = match h.value {
                None => None,
                Some(v) => Some(decode_base64(&v).map_err(|e| {
                    invalid(format!(
                        "header {:?}: value is not valid base64 ({e}); header values are base64 or null",
                        h.name
                    ))
                })?),
            };
            Ok(Header { key: h.name, value })
        })
        .collect::<Result<Vec<_>, ParseError>>()?;
    let timestamp = match request.timestamp {
        None => None,
        Some(t) => Some(Timestamp(parse_rfc3339_ms(&t).ok_or_else(|| {
            invalid(format!(
                "timestamp {t:?} is not an ISO-8601 instant such as \"2021-02-05T19:14:42.123Z\""
            ))
        })?)),
    };
    Ok(Parsed {
        record: Record {
            topic: Topic::clone(topic),
            partition: request.partition_id,
            key,
            value,
            headers,
            timestamp,
        },
        key: key_info,
        value: value_info,
    })
}

/// A field's error before its record's index is known.
enum DataError {
    Invalid(String),
    NeedsSchemaRegistry,
}

impl DataError {
    fn at(self, index: usize) -> ParseError {
        match self {
            DataError::Invalid(message) => {
                ParseError::Invalid(RequestError::InvalidRecord { index, message })
            }
            DataError::NeedsSchemaRegistry => ParseError::NeedsSchemaRegistry,
        }
    }
}

type DataResult = Result<(Option<Bytes>, Option<DataInfo>), DataError>;

/// The bytes of a key or value and what the answer reports; absent is a null key / value
/// and is not reported.
fn data(d: Option<Data<'_>>, what: &str) -> DataResult {
    let Some(d) = d else { return Ok((None, None)) };
    let schema_fields = d.subject.is_some()
        || d.subject_name_strategy.is_some()
        || d.schema_id.is_some()
        || d.schema_version.is_some()
        || d.schema.is_some();
    let format = match d.kind.as_deref().map(str::to_ascii_uppercase).as_deref() {
        _ if schema_fields => return Err(DataError::NeedsSchemaRegistry),
        Some("BINARY") => Format::Binary,
        Some("JSON") => Format::Json,
        Some("STRING") => Format::String,
        // REST Proxy looks a schema up when the type is absent, or one of these.
        None | Some("AVRO" | "PROTOBUF" | "JSONSCHEMA") => {
            return Err(DataError::NeedsSchemaRegistry);
        }
        Some(other) => {
            return Err(DataError::Invalid(format!(
                "{what}.type {other:?} is not one of BINARY, JSON, STRING (AVRO, PROTOBUF, JSONSCHEMA need a Schema Registry)"
            )));
        }
    };
    let bytes = match (d.data, format) {
        (None, _) => None,
        (Some(raw), Format::Json) => Some(Bytes::from(compact_json(raw.get()))),
        (Some(raw), Format::Binary | Format::String) => {
            let s: String = serde_json::from_str(raw.get()).map_err(|_| {
                DataError::Invalid(format!(
                    "{what}.data must be a JSON string (or null) with type {}",
                    format.name()
                ))
            })?;
            Some(if format == Format::Binary {
                decode_base64(&s).map_err(|e| {
                    DataError::Invalid(format!("{what}.data is not valid base64 ({e})"))
                })?
            } else {
                Bytes::from(s)
            })
        }
    };
    let size = bytes.as_ref().map_or(0, Bytes::len);
    Ok((bytes, Some(DataInfo { format, size })))
}

/// A `ProduceResponse` with `error_code` 200; `timestamp`, `key`, `value` are left out when
/// absent, as REST Proxy's `@JsonInclude(NON_ABSENT)` does.
pub(super) fn produce_response(
    cluster_id: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    timestamp: Option<Timestamp>,
    key: Option<DataInfo>,
    value: Option<DataInfo>,
) -> Value {
    let mut r = json!({
        "error_code": 200,
        "cluster_id": cluster_id,
        "topic_name": topic,
        "partition_id": partition,
        "offset": offset,
    });
    if let Some(t) = timestamp {
        r["timestamp"] = json!(format_rfc3339_ms(t.0));
    }
    for (name, info) in [("key", key), ("value", value)] {
        if let Some(i) = info {
            r[name] = json!({"type": i.format.name(), "size": i.size});
        }
    }
    r
}

/// `1612552482123` → `"2021-02-05T19:14:42.123Z"` (no fraction when it is zero), as Java's
/// `Instant.toString` writes milliseconds.
pub(super) fn format_rfc3339_ms(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (sod / 3600, sod % 3600 / 60, sod % 60);
    if milli == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{milli:03}Z")
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into milliseconds since the epoch
/// (fractions past milliseconds are truncated).
pub(super) fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 3)];
        millis = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_secs = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6
            && matches!(tz.as_bytes()[0], b'+' | b'-')
            && tz.as_bytes()[3] == b':' =>
        {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs) * 1000 + millis)
}

/// Howard Hinnant's `days_from_civil`: days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_as_java_instant_writes_them() {
        assert_eq!(format_rfc3339_ms(1_612_552_482_000), "2021-02-05T19:14:42Z");
        assert_eq!(
            format_rfc3339_ms(1_612_552_482_123),
            "2021-02-05T19:14:42.123Z"
        );
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse_rfc3339_ms("2021-02-05T19:14:42.000Z"),
            Some(1_612_552_482_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2021-02-05T20:14:42.5+01:00"),
            Some(1_612_552_482_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000)
        );
        for bad in [
            "2021-02-05 19:14:42Z",
            "2021-13-05T19:14:42Z",
            "yesterday",
            "2021-02-05T19:14:42",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
        for ms in [0, 1, 951_782_400_000, 1_709_164_800_999, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        }
    }

    #[test]
    fn the_three_formats_and_the_schema_registry_ones() {
        let t = Topic::from("t");
        let p = parse(
            &t,
            0,
            br#"{"partition_id":1,"headers":[{"name":"h","value":"dmFsdWU="},{"name":"n","value":null}],
                "key":{"type":"BINARY","data":"Zm9vYmFy"},"value":{"type":"JSON","data":{"foo" : "bar"}},
                "timestamp":"2021-02-05T19:14:42Z"}"#,
        )
        .ok()
        .unwrap();
        assert_eq!(p.record.partition, Some(1));
        assert_eq!(p.record.key.as_deref(), Some(&b"foobar"[..]));
        assert_eq!(p.record.value.as_deref(), Some(&br#"{"foo":"bar"}"#[..]));
        assert_eq!(p.record.headers[0].value.as_deref(), Some(&b"value"[..]));
        assert_eq!(p.record.headers[1].value, None);
        assert_eq!(p.record.timestamp, Some(Timestamp(1_612_552_482_000)));
        let r = produce_response("c", "t", 1, 7, None, p.key, p.value);
        assert_eq!(r["key"], json!({"type": "BINARY", "size": 6}));
        assert_eq!(r["value"], json!({"type": "JSON", "size": 13}));
        assert!(r.get("timestamp").is_none());
        let p = parse(
            &t,
            0,
            r#"{"value":{"type":"STRING","data":"héllo"}}"#.as_bytes(),
        )
        .ok()
        .unwrap();
        assert_eq!(p.record.value.as_deref(), Some("héllo".as_bytes()));
        assert!(p.key.is_none());
        for schema in [
            &br#"{"value":{"type":"AVRO","data":1}}"#[..],
            br#"{"value":{"data":"x"}}"#,
            br#"{"value":{"schema_id":1,"data":{}}}"#,
        ] {
            assert!(matches!(
                parse(&t, 0, schema),
                Err(ParseError::NeedsSchemaRegistry)
            ));
        }
        assert!(matches!(
            parse(&t, 3, br#"{"value":{"type":"XML"}}"#),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse(&t, 3, br#"{"valeu":1}"#),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse(&t, 3, br#"{"value": }"#),
            Err(ParseError::Syntax(_))
        ));
    }
}
