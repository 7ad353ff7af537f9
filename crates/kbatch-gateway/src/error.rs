//! The gateway's errors: [`Error`] for starting and serving, [`RequestError`] for what one
//! request (or one record of it) is answered with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kbatch_client::ErrorCode;
use kbatch_core::{Classify, ConfigError, ErrorClass};
use kbatch_producer::ProduceError;
use serde::Serialize;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the gateway could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of range; the message names it.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TOML config file could not be read or parsed.
    #[error("config file {path:?}: {why}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What was wrong, with line and column for a parse error.
        why: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be read or used.
    #[error("TLS {what} {path:?}: {why}")]
    Tls {
        /// `tls_cert` or `tls_key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// The server failed while serving.
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// An adaptive producer (config `producer = "adaptive"` or `packed_topics`) could not start.
    #[error("the gateway's adaptive producer could not start: {0}")]
    Adaptive(#[source] kbatch_adaptive::AdaptiveError),
}

/// What a request, or one record of it, is answered with. Each becomes an HTTP status and a
/// JSON body `{"error":{"code":"…","message":"…"}}` ([`RequestError::status`],
/// [`RequestError::code`]); the message says what was wrong and what would be right.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No credentials, or none that match a configured key (401).
    #[error(
        "missing or invalid credentials: send `Authorization: Bearer <token>` or `X-API-Key: <token>`"
    )]
    Unauthorized,
    /// The credentials may not write to this topic (403).
    #[error("may not write to topic {topic:?}: {why}")]
    Forbidden {
        /// The topic.
        topic: String,
        /// Why not.
        why: &'static str,
    },
    /// The body is not valid JSON / NDJSON (400). Line and column are the body's, from 1.
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    MalformedJson {
        /// Line in the body.
        line: usize,
        /// Column in that line.
        column: usize,
        /// The parser's complaint.
        message: String,
    },
    /// A record is well-formed JSON but not a valid record (400).
    #[error("record {index}: {message}")]
    InvalidRecord {
        /// The record's place in the request, from 0.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The request is wrong in another way (400).
    #[error("{0}")]
    BadRequest(String),
    /// The `Content-Type` is not one the route takes (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is larger than allowed (413).
    #[error("request body larger than the limit of {limit} bytes: split it into smaller requests")]
    BodyTooLarge {
        /// `max_body_bytes`.
        limit: usize,
    },
    /// More records than allowed in one request (413).
    #[error(
        "{count} records in one request, more than the limit of {limit}: split it into smaller requests"
    )]
    TooManyRecords {
        /// Records sent (at least; counting stops past the limit for NDJSON).
        count: usize,
        /// `max_records_per_request`.
        limit: usize,
    },
    /// No such route (404).
    #[error("{0}")]
    NotFound(String),
    /// The topic does not exist (404).
    #[error("topic {0:?} does not exist; topics are not created by the gateway")]
    UnknownTopic(String),
    /// The record names a partition the topic does not have (404, that record only).
    #[error("topic {topic:?} has no partition {partition} (it has {partitions}: 0..={})", partitions - 1)]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: i32,
        /// Partitions the topic has.
        partitions: i32,
    },
    /// The producer holds as many records as it may: retry after the `Retry-After` delay
    /// (429). The record was not sent.
    #[error("the gateway's producer is full; this record was not sent: retry after 1 s")]
    ProducerFull,
    /// The broker did not answer in time (503).
    #[error("{0}")]
    Unavailable(String),
    /// The broker did not acknowledge the record within the request timeout (503). It may
    /// still be written later: a retry can duplicate it.
    #[error(
        "not acknowledged by the broker within the request timeout of {0:?}; it may still be written, so a retry can duplicate it"
    )]
    NotAcknowledged(Duration),
    /// The producer or broker failed the record.
    #[error("{0}")]
    Produce(ProduceError),
    /// A request with the same `Idempotency-Key` is still being answered (409).
    #[error("{0}")]
    IdempotencyConflict(String),
    /// The `Idempotency-Key` was used for a different request body (422).
    #[error("{0}")]
    IdempotencyReused(String),
    /// The idempotency store holds as many requests in flight as it may (429).
    #[error("too many requests with an Idempotency-Key in flight: retry after 1 s")]
    IdempotencyStoreFull,
    /// The gateway handles `max_concurrent_requests` produce requests already (429): retry
    /// after the `Retry-After` delay. Nothing of this request was read or sent.
    #[error(
        "the gateway is handling its limit of {limit} produce requests at once; nothing of this request was sent: retry after 1 s"
    )]
    Overloaded {
        /// `max_concurrent_requests`.
        limit: usize,
    },
    /// The body did not arrive within the request timeout (408). Nothing was sent.
    #[error(
        "the request body did not arrive within the request timeout of {0:?}; nothing was sent"
    )]
    BodyTimeout(Duration),
    /// The gateway failed answering (500).
    #[error("{0}")]
    Internal(String),
    /// `X-Latency-Budget-Ms` / `latency_budget_ms` is not a whole number of milliseconds in
    /// range (400).
    #[error("{0}")]
    InvalidLatencyBudget(String),
    /// A packed record's envelope, or its partition lookup, failed for good (400).
    #[error("{0}")]
    Rejected(String),
}

impl RequestError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::Unauthorized => StatusCode::UNAUTHORIZED,
            RequestError::Forbidden { .. } => StatusCode::FORBIDDEN,
            RequestError::MalformedJson { .. }
            | RequestError::InvalidRecord { .. }
            | RequestError::BadRequest(_)
            | RequestError::InvalidLatencyBudget(_)
            | RequestError::Rejected(_) => StatusCode::BAD_REQUEST,
            RequestError::BodyTooLarge { .. } | RequestError::TooManyRecords { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            RequestError::NotFound(_)
            | RequestError::UnknownTopic(_)
            | RequestError::UnknownPartition { .. } => StatusCode::NOT_FOUND,
            RequestError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RequestError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            RequestError::ProducerFull
            | RequestError::IdempotencyStoreFull
            | RequestError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            RequestError::IdempotencyConflict(_) => StatusCode::CONFLICT,
            RequestError::IdempotencyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            RequestError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RequestError::Unavailable(_) | RequestError::NotAcknowledged(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RequestError::Produce(e) => match produce_code(e) {
                Some(ErrorCode::UnknownPartition) => StatusCode::NOT_FOUND,
                Some(ErrorCode::MessageSizeTooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
                _ => match e.class() {
                    ErrorClass::Permanent => StatusCode::BAD_REQUEST,
                    // Retriable (timeouts, leader changes) and fatal (closed producer) alike:
                    // the service cannot take it now.
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                },
            },
        }
    }

    /// A stable, machine-readable name of the error, e.g. `unknown_topic`.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::Unauthorized => "unauthorized",
            RequestError::Forbidden { .. } => "forbidden",
            RequestError::MalformedJson { .. } => "malformed_json",
            RequestError::InvalidRecord { .. } => "invalid_record",
            RequestError::BadRequest(_) => "bad_request",
            RequestError::BodyTooLarge { .. } => "body_too_large",
            RequestError::TooManyRecords { .. } => "too_many_records",
            RequestError::NotFound(_) => "not_found",
            RequestError::UnknownTopic(_) => "unknown_topic",
            RequestError::UnknownPartition { .. } => "unknown_partition",
            RequestError::UnsupportedMediaType(_) => "unsupported_media_type",
            RequestError::ProducerFull => "producer_full",
            RequestError::IdempotencyStoreFull => "idempotency_store_full",
            RequestError::IdempotencyConflict(_) => "idempotency_key_in_flight",
            RequestError::IdempotencyReused(_) => "idempotency_key_reused",
            RequestError::Internal(_) => "internal",
            RequestError::InvalidLatencyBudget(_) => "invalid_latency_budget",
            RequestError::Rejected(_) => "record_rejected",
            RequestError::Overloaded { .. } => "overloaded",
            RequestError::BodyTimeout(_) => "request_timeout",
            RequestError::Unavailable(_) => "broker_unavailable",
            RequestError::NotAcknowledged(_) => "not_acknowledged",
            RequestError::Produce(e) => match produce_code(e) {
                Some(ErrorCode::UnknownPartition) => "unknown_partition",
                Some(ErrorCode::MessageSizeTooLarge) => "record_too_large",
                _ => match e.class() {
                    ErrorClass::Permanent => "record_rejected",
                    ErrorClass::Fatal => "producer_closed",
                    _ => "broker_unavailable",
                },
            },
        }
    }

    /// The JSON error object, `{"code":"…","message":"…"}`.
    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code(),
            message: self.to_string(),
        }
    }
}

fn produce_code(e: &ProduceError) -> Option<ErrorCode> {
    e.code()
}

/// The `error` object of a response.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

#[derive(Serialize)]
struct Envelope {
    error: ErrorBody,
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, axum::Json(Envelope { error: self.body() })).into_response();
        add_status_headers(status, &mut response);
        response
    }
}

/// Headers a status needs: how to authenticate after a 401, when to retry after a 429.
pub(crate) fn add_status_headers(status: StatusCode, response: &mut Response) {
    let headers = response.headers_mut();
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
}

#[cfg(test)]
mod tests {
    use kbatch_core::Record;

    use super::*;

    #[test]
    fn produce_errors_map_by_code_then_class() {
        let r = Box::new(Record::new("t", "v").with_partition(9));
        let e = RequestError::Produce(ProduceError::Enqueue {
            code: ErrorCode::UnknownPartition,
            record: r.clone(),
        });
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::NOT_FOUND, "unknown_partition")
        );
        let e = RequestError::Produce(ProduceError::Closed { record: None });
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let e = RequestError::Produce(ProduceError::Invalid {
            reason: "negative partition".into(),
            record: r,
        });
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("negative partition"));
    }
}
