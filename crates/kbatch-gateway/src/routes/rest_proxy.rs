//! Confluent REST Proxy v2 produce, so its clients can switch without changing code:
//! `POST /topics/{topic}` with `Content-Type: application/vnd.kafka.json.v2+json` (keys and
//! values are JSON, stored as their compact JSON text, as REST Proxy's JSON serializer does)
//! or `application/vnd.kafka.binary.v2+json` (base64 strings of the bytes).
//!
//! ```text
//!  {"records":[{"key":…,"value":…,"partition":…}]}
//!      ─► the native pipeline (auth, limits, topic lookup, try_send, await every ack) ─►
//!  200 application/vnd.kafka.v2+json
//!  {"key_schema_id":null,"value_schema_id":null,
//!   "offsets":[{"partition":0,"offset":7,"error_code":null,"error":null}, …]}
//! ```
//!
//! As REST Proxy does, a request where some records failed is a 200 whose failed entries
//! carry `partition: null, offset: null`, `error_code` 1 (not retriable) or 2 (retriable:
//! full, timed out, broker unavailable) and the `error` message. When every record failed,
//! the status is the first failure's, with the same body plus `error_code` and `message`.
//! Request-level errors are `{"error_code": …, "message": "…"}` with REST Proxy's codes where
//! it has one — 40101 unauthorized, 40301 forbidden, 40401 topic not found, 40402 partition
//! not found, 50002 retriable Kafka error — and the HTTP status otherwise (400, 413, 415, 429).
//! Avro, Protobuf and JSON Schema embedded formats (which need a Schema Registry) are 415.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kbatch_core::{Record, Topic};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::body::{compact_json, decode_base64, json_error};
use super::records::{produce_all, read_body};
use crate::error::{RequestError, add_status_headers};
use crate::server::AppState;

/// REST Proxy's response content type.
const V2_CONTENT_TYPE: &str = "application/vnd.kafka.v2+json";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Embedded {
    Json,
    Binary,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V2Body<'a> {
    #[serde(borrow)]
    records: Vec<V2Record<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V2Record<'a> {
    #[serde(default, borrow)]
    key: Option<&'a RawValue>,
    #[serde(default, borrow)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    partition: Option<i32>,
}

pub(crate) async fn produce_v2(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let deadline = Instant::now() + state.config.request_timeout;
    inner(&state, topic, &headers, request, deadline)
        .await
        .unwrap_or_else(|e| {
            let status = e.status();
            v2_response(
                status,
                json!({"error_code": v2_error_code(&e), "message": e.to_string()}),
            )
        })
}

async fn inner(
    state: &AppState,
    topic: String,
    headers: &HeaderMap,
    request: Request,
    deadline: Instant,
) -> Result<Response, RequestError> {
    state.auth.authorize(headers, &topic)?;
    // REST Proxy has no latency budget; ours is an extension its clients may add.
    let budget = super::budget::from_request(
        headers,
        super::budget::query_value(request.uri().query()),
        state.config.request_timeout,
    )?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let embedded = match content_type.split(';').next().unwrap_or("").trim() {
        "application/vnd.kafka.json.v2+json" => Embedded::Json,
        "application/vnd.kafka.binary.v2+json" => Embedded::Binary,
        other => {
            return Err(RequestError::UnsupportedMediaType(format!(
                "Content-Type {other:?} is not supported here: use application/vnd.kafka.json.v2+json or application/vnd.kafka.binary.v2+json (schema-registry formats are not served)"
            )));
        }
    };
    let body = read_body(state, request).await?;
    let topic = Topic::from(topic);
    let records = parse_v2(
        &topic,
        &body,
        embedded,
        state.config.max_records_per_request,
    )?;
    let outcomes = produce_all(state, &topic, records, deadline, budget).await?;
    crate::metrics::count_records(&outcomes);
    let offsets: Vec<Value> = outcomes
        .iter()
        .map(|o| match o {
            Ok(d) => json!({"partition": d.partition, "offset": d.offset.0, "error_code": null, "error": null}),
            Err(e) => json!({
                "partition": null,
                "offset": null,
                "error_code": if retriable(e) { 2 } else { 1 },
                "error": e.to_string(),
            }),
        })
        .collect();
    let mut body = json!({"key_schema_id": null, "value_schema_id": null, "offsets": offsets});
    let first_failure = outcomes.iter().find_map(|o| o.as_ref().err());
    let status = match first_failure {
        Some(e) if outcomes.iter().all(Result::is_err) => {
            body["error_code"] = json!(v2_error_code(e));
            body["message"] = json!(e.to_string());
            e.status()
        }
        _ => StatusCode::OK,
    };
    Ok(v2_response(status, body))
}

fn v2_response(status: StatusCode, body: Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(V2_CONTENT_TYPE),
    );
    add_status_headers(status, &mut response);
    response
}

/// Could the same record succeed later?
fn retriable(e: &RequestError) -> bool {
    matches!(
        e.status(),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    )
}

/// REST Proxy's error codes where it has one, else the HTTP status.
fn v2_error_code(e: &RequestError) -> u32 {
    match e.code() {
        "unauthorized" => 40101,
        "forbidden" => 40301,
        "unknown_topic" => 40401,
        "unknown_partition" => 40402,
        _ if e.status() == StatusCode::SERVICE_UNAVAILABLE => 50002,
        _ => u32::from(e.status().as_u16()),
    }
}

/// [`parse_v2`] for the fuzz target: the count, or the error's HTTP status.
#[cfg(feature = "unstable-fuzz")]
pub(crate) fn parse_v2_for_fuzz(body: &[u8], binary: bool) -> Result<usize, u16> {
    let embedded = if binary {
        Embedded::Binary
    } else {
        Embedded::Json
    };
    parse_v2(&Topic::from("fuzz"), body, embedded, 10_000)
        .map(|r| r.len())
        .map_err(|e| e.status().as_u16())
}

fn parse_v2(
    topic: &Topic,
    body: &[u8],
    embedded: Embedded,
    max_records: usize,
) -> Result<Vec<Record>, RequestError> {
    let parsed: V2Body<'_> = serde_json::from_slice(body).map_err(json_error)?;
    if parsed.records.is_empty() {
        return Err(RequestError::BadRequest(
            "no records: expected {\"records\": [{\"value\": …}, …]}".into(),
        ));
    }
    if parsed.records.len() > max_records {
        return Err(RequestError::TooManyRecords {
            count: parsed.records.len(),
            limit: max_records,
        });
    }
    parsed
        .records
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            let field = |raw: Option<&RawValue>, what: &str| -> Result<Option<Bytes>, RequestError> {
                let Some(raw) = raw else { return Ok(None) };
                match embedded {
                    Embedded::Json => Ok(Some(Bytes::from(compact_json(raw.get())))),
                    Embedded::Binary => {
                        let s: String = serde_json::from_str(raw.get()).map_err(|_| {
                            RequestError::InvalidRecord {
                                index,
                                message: format!("{what} must be a base64 string or null with the binary embedded format"),
                            }
                        })?;
                        decode_base64(&s).map(Some).map_err(|e| RequestError::InvalidRecord {
                            index,
                            message: format!("{what} is not valid base64: {e}"),
                        })
                    }
                }
            };
            if let Some(p) = r.partition.filter(|p| *p < 0) {
                return Err(RequestError::InvalidRecord {
                    index,
                    message: format!("partition {p} is negative"),
                });
            }
            Ok(Record {
                topic: Topic::clone(topic),
                partition: r.partition,
                key: field(r.key, "key")?,
                value: field(r.value, "value")?,
                headers: Vec::new(),
                timestamp: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys_and_values_are_stored_as_json_text() {
        let body = br#"{"records":[{"key":"somekey","value":{"foo": "bar"}},{"value":["foo","bar"],"partition":1},{"value":53.5}]}"#;
        let r = parse_v2(&Topic::from("t"), body, Embedded::Json, 10).unwrap();
        assert_eq!(r[0].key.as_deref(), Some(&br#""somekey""#[..]));
        assert_eq!(r[0].value.as_deref(), Some(&br#"{"foo":"bar"}"#[..]));
        assert_eq!((r[1].partition, r[1].key.as_ref()), (Some(1), None));
        assert_eq!(r[2].value.as_deref(), Some(&b"53.5"[..]));
    }

    #[test]
    fn binary_is_base64_and_errors_name_the_record() {
        let body = br#"{"records":[{"key":"a2V5","value":"Y29uZmx1ZW50"},{"value":"a2Fma2E=","partition":1}]}"#;
        let r = parse_v2(&Topic::from("t"), body, Embedded::Binary, 10).unwrap();
        assert_eq!(r[0].key.as_deref(), Some(&b"key"[..]));
        assert_eq!(r[0].value.as_deref(), Some(&b"confluent"[..]));
        assert_eq!(r[1].value.as_deref(), Some(&b"kafka"[..]));
        let e = parse_v2(
            &Topic::from("t"),
            br#"{"records":[{"value":"a2V5"},{"value":{"x":1}}]}"#,
            Embedded::Binary,
            10,
        )
        .unwrap_err();
        assert!(
            matches!(e, RequestError::InvalidRecord { index: 1, .. }),
            "{e:?}"
        );
        let e = parse_v2(
            &Topic::from("t"),
            b"{\"records\":[\n{\"value\": }]}",
            Embedded::Json,
            10,
        )
        .unwrap_err();
        assert!(
            matches!(e, RequestError::MalformedJson { line: 2, .. }),
            "{e:?}"
        );
    }
}
