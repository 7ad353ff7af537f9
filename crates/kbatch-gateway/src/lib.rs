//! kbatch's HTTP ingest gateway: events over HTTP into Kafka, answered only once the broker
//! has acknowledged them (the producer's default `acks = all`, idempotent).
//!
//! ```text
//!  client ──HTTP[S]──► serve loop (connection bound, header timeout, header count, TLS)
//!    ──► axum routes (metrics, timeout, body limit, load shedding) ──auth──► parse body
//!                                                                            │ records, budget
//!  200 / 207 / 4xx / 5xx  ◄── one result per record ◄── ack future ◄── AdaptiveProducer (default)
//!                                                                       | packed AdaptiveProducer
//!                                                                       | Producer (plain)
//! ```
//!
//! # Routes
//!
//! | Method and path | What it does |
//! |---|---|
//! | `POST /topics/{topic}/records` | Produce one JSON record, a JSON array of records, or NDJSON (`Content-Type: application/x-ndjson`); `?format=binary` for base64 keys and values; `X-Latency-Budget-Ms` / `?latency_budget_ms=` (see below) |
//! | `POST /topics/{topic}` | Confluent REST Proxy v2 produce (`application/vnd.kafka.json.v2+json` or `…binary.v2+json`, body `{"records":[…]}`), answered in its shape (`offsets` with `error_code`/`error`); see below |
//! | `POST /v3/clusters/{cluster_id}/topics/{topic}/records` | Confluent REST Proxy v3 produce (`application/json`): one `ProduceRequest` or many concatenated (streaming mode), one answer object per record; see below |
//! | `GET /v3/clusters`, `GET /v3/clusters/{cluster_id}` | REST Proxy v3 cluster discovery: the broker's cluster id |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when the broker answers a metadata request within 2 s, else 503 |
//! | `GET /metrics` | Prometheus text (unless `metrics = false`); see [Metrics](#metrics) |
//!
//! A record is `{"key": <string|null>, "value": <any JSON>, "headers": {"name": "value"},
//! "partition": <int>, "timestamp": <ms since epoch>}`, every field optional. The value is
//! sent as its compact JSON text; `null` or absent is a tombstone. With `?format=binary`, key
//! and value are base64 strings of the bytes.
//!
//! # Answers
//!
//! The answer comes only after every record of the request was acknowledged by the broker,
//! failed, or outlived the request timeout. `results` has one entry per record, in request
//! order: `{"partition": p, "offset": o}` (for a packed topic `{"partition": p, "offset": o,
//! "index": i}`: event `i` of the envelope at that offset), or `{"error": {"code": "…",
//! "message": "…"}}`.
//!
//! - **200** `{"results": [...]}`: every record is in Kafka.
//! - **207** `{"results": [...]}`: some records are in Kafka, the others failed; each failed
//!   entry carries its error in its place. Retry only those (with `Retry-After: 1` when some
//!   were refused because the producer was full).
//! - Every record failed: the status of the first failure, with `{"error": {...},
//!   "results": [...]}`.
//!
//! Request-level errors are `{"error": {"code": "…", "message": "…"}}`:
//!
//! | Status | `code` | When |
//! |---|---|---|
//! | 400 | `malformed_json` | the body is not JSON / NDJSON; the message names line and column (for NDJSON, the body's line) |
//! | 400 | `invalid_record`, `bad_request` | a record has a negative partition, bad base64, an unknown field…; an unknown `format` |
//! | 400 | `invalid_latency_budget` | `X-Latency-Budget-Ms` / `latency_budget_ms` is not whole milliseconds in 1..=3,600,000; the message names the value |
//! | 401 | `unauthorized` | no valid `Authorization: Bearer <token>` or `X-API-Key: <token>` (with `WWW-Authenticate: Bearer`) |
//! | 403 | `forbidden` | the topic matches none of the key's patterns, or starts with `__` (always) |
//! | 404 | `unknown_topic` | the topic does not exist (asked of the broker, remembered for `topic_cache_ttl`) |
//! | 404 | `unknown_partition` | per record: a partition the topic does not have |
//! | 413 | `body_too_large`, `too_many_records` | over `max_body_bytes` or `max_records_per_request` |
//! | 408 | `request_timeout` | the body did not arrive within the request timeout (a trickling client); nothing was sent |
//! | 429 | `overloaded` | `max_concurrent_requests` produce requests are being handled already; nothing was read or sent: retry after `Retry-After: 1` |
//! | 431 | (no body) | more than `max_headers` headers; the connection is closed |
//! | 429 | `producer_full` | the producer holds its bound of pending records or bytes (adaptive: its intake is full); nothing waits: retry after `Retry-After: 1`. Records of the request handed in before it filled up are still awaited and reported |
//! | 400 / 503 | `record_rejected` / `broker_unavailable` | per record, packed topics: the envelope holding it failed for good / retriably |
//! | 503 | `not_acknowledged` | per record: no acknowledgement within the request timeout (it may still be written: a retry can duplicate it) |
//! | 503 | `broker_unavailable` | the broker did not answer the topic lookup in time, or failed the record with a retriable error |
//!
//! # Producers and latency budgets
//!
//! By default (`producer = "adaptive"`) records go through a
//! `kbatch_adaptive::AdaptiveProducer`, each its own Kafka record: its pressure level (from
//! the request rate) decides how long records may gather into batches, and a lone record
//! goes at once instead of waiting out a linger. `producer = "plain"` sends through the
//! [`Producer`](kbatch_producer::Producer) given to [`Gateway::bind`], with its own linger.
//! That `Producer` answers the topic lookups (404, bad partitions) and `/readyz` either way.
//!
//! A request may cap how long its records wait in a batch with the header
//! `X-Latency-Budget-Ms: <ms>` or the query parameter `?latency_budget_ms=<ms>` (the header
//! wins), on the native and the REST Proxy v2 route: whole milliseconds, 1..=3,600,000,
//! clamped to `request_timeout`; anything else is 400 `invalid_latency_budget` naming the
//! value. Without one, the level decides. The plain producer ignores budgets (they are still
//! checked). The budget bounds the wait in a batch, not the broker's round trip.
//!
//! Topics matching `packed_topics` (the `*` patterns of API keys) go through a second
//! adaptive producer that packs each microbatch per partition into one Kafka record, an
//! envelope (`kbatch_core::envelope`): **consumers must unpack it** (kbatch's consumers do;
//! others see one record with the `kbatch-envelope` header). Native answers then carry each
//! record's `index` in its envelope; REST Proxy answers keep REST Proxy's shape (the
//! envelope's partition and offset). Keyed records keep their order per key either way.
//!
//! The adaptive producers remember what they learn in SQLite under the profiles `gateway`
//! and `gateway-packed` (`calibration_path`, default the adaptive producer's file); tune
//! them with [`Gateway::bind_with_adaptive`].
//!
//! # REST Proxy v2
//!
//! Clients of Confluent's REST Proxy switch by changing the host: the same bodies, content
//! types and response shape (`{"key_schema_id":null,"value_schema_id":null,"offsets":[{"partition":0,
//! "offset":0,"error_code":null,"error":null}]}`, content type `application/vnd.kafka.v2+json`),
//! also answered only after the broker's acknowledgement. JSON keys and values are stored as
//! JSON text, as REST Proxy does; binary ones are base64. As in REST Proxy, a partly failed
//! request is a 200 whose failed entries have `error_code` 1 (not retriable) or 2 (retriable);
//! when all failed, the failure's status. Request-level errors are `{"error_code": …,
//! "message": …}` with REST Proxy's codes (40101, 40301, 40401, 40402, 50002) or the HTTP
//! status. Schema-registry formats (Avro, Protobuf, JSON Schema) are 415.
//!
//! # REST Proxy v3
//!
//! `POST /v3/clusters/{cluster_id}/topics/{topic}/records` takes REST Proxy v3's
//! `ProduceRequest` objects: `{"partition_id": 1, "headers": [{"name": "h", "value":
//! <base64|null>}], "key": {"type": "BINARY"|"JSON"|"STRING", "data": …}, "value": {…},
//! "timestamp": "2021-02-05T19:14:42Z"}`, every field optional. BINARY data is base64, JSON
//! data is stored as its compact JSON text, STRING as its UTF-8 bytes. `cluster_id` must be the
//! broker's own (from its metadata; `GET /v3/clusters` lists it), else 404.
//!
//! Several objects may be concatenated in one body (streaming mode, usually sent chunked;
//! whitespace between them is skipped). The body is read as it arrives: each record is handed
//! to the producer once its object is complete, and its answer is written as soon as the
//! broker acknowledged it, in request order — a client may send one record, read its answer,
//! then send the next on the same request. As in REST Proxy, the status is then 200 and each
//! answer carries its own `error_code`: `{"error_code":200,"cluster_id":…,"topic_name":…,
//! "partition_id":…,"offset":…,"timestamp":…,"key":{"type":…,"size":…},"value":{…}}`
//! (`timestamp`, `key`, `value` left out when absent), or `{"error_code":…,"message":…}`.
//! A well-formed object that is not a valid request gets its error and the stream goes on
//! (42206 for a schema-registry format or a missing `type`, as REST Proxy without a Schema
//! Registry answers); malformed JSON, an object over `max_body_bytes` (413) or a record past
//! `max_records_per_request` (413) get an error object and end the stream. A record the
//! producer has no room for waits (reading pauses) until the request timeout, then 429 ends
//! the stream. At most 1,024 answers wait to be written; past that, the body is not read.
//! Each record must arrive complete within `request_timeout` of the one before, else an error
//! object with 408 (REST Proxy's code for a stream held too long) closes the stream; shutdown
//! closes open streams with 503 after answering the records already read.
//! Request-level errors (401 40101, 403 40301, 404 unknown cluster or topic, 415 a content
//! type other than `application/json`) are answered with their status before any record.
//!
//! # Idempotency-Key
//!
//! A produce request with an `Idempotency-Key` header (1..=255 characters) that is retried by
//! the same credentials to the same route within `idempotency_window` (default 10 min) gets
//! the original answer again (`Idempotent-Replayed: true`) and produces nothing: the broker
//! holds one copy. The same key with another body is 422 `idempotency_key_reused`; a retry
//! while the first is still being answered is 409 `idempotency_key_in_flight`. Answers that
//! leave the outcome open (408, 429, 5xx) are not kept, so a retry runs again. The store is
//! bounded (`idempotency_max_entries`, `idempotency_max_bytes`).
//!
//! # Limits and TLS
//!
//! The gateway serves HTTP/1.1 itself (hyper, not `axum::serve`) so that no client can hold
//! it:
//!
//! - `header_read_timeout` (default 10 s): a request's headers must arrive within it, or the
//!   connection is closed (slow-loris). Its clock starts whenever the connection waits for a
//!   request, so it is also the idle timeout of keep-alive connections, and it bounds the TLS
//!   handshake.
//! - The body must arrive within `request_timeout`, else 408; it is at most `max_body_bytes`
//!   (413 from the `Content-Length` or, chunked, as soon as the limit is passed).
//! - `max_headers` (default 100): more get 431.
//! - `max_connections` (default 10,000): past it the gateway stops accepting, so new
//!   connections wait in the kernel's listen backlog until one closes (rather than being
//!   accepted and dropped, which would tell the client nothing).
//! - `max_concurrent_requests` (default 1,024), shared by every produce route: past it a
//!   request is answered 429 `overloaded` with `Retry-After: 1` at once (tower's
//!   `ConcurrencyLimit` + `LoadShed`), never queued. Health and metrics are not limited.
//!
//! With `tls_cert` and `tls_key` (PEM files) the gateway serves HTTPS only, with rustls on the
//! aws-lc-rs provider; a missing or unusable file is an [`Error::Tls`] at
//! [`Gateway::bind`], naming the file.
//!
//! # Metrics
//!
//! `GET /metrics` renders the process's Prometheus recorder, which the gateway installs once
//! ([`install_metrics_recorder`]); the producer's own `metrics` counters show up there too:
//!
//! | Metric | Type | Labels |
//! |---|---|---|
//! | `kbatch_gateway_requests_total` | counter | `route` (the pattern, `unmatched` for 404s), `status` |
//! | `kbatch_gateway_request_duration_seconds` | histogram | `route` |
//! | `kbatch_gateway_records_produced_total` | counter | |
//! | `kbatch_gateway_records_failed_total` | counter | `code` |
//! | `kbatch_gateway_records_per_request` | histogram | |
//! | `kbatch_gateway_requests_in_flight` | gauge | |
//! | `kbatch_gateway_open_connections` | gauge | |
//! | `kbatch_gateway_pressure_level` | gauge | the producer's pressure level, 0 without levels |
//!
//! No credential or record content is in any of them.
//!
//! # Security
//!
//! The config stores the SHA-256 of each token, never the token; the presented token's hash is
//! compared with every stored hash in constant time. Each key may write to its topic
//! patterns (`*` matches any run of characters). Topics starting with `__` are never writable.
//! Starting without keys needs `insecure_no_auth`, which is logged as a WARN at start-up.
//!
//! # Shutdown
//!
//! When the [`CancellationToken`](tokio_util::sync::CancellationToken) given to
//! [`Gateway::run`] is cancelled, the server stops accepting connections, answers the requests
//! in flight, then closes the producers: the adaptive ones send what they hold and wait for
//! their acknowledgements (their reports are logged), then the plain one (its report is
//! returned).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use kbatch_gateway::{ApiKey, Gateway, GatewayConfig};
//! use kbatch_producer::{Producer, ProducerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! let producer = Producer::new(ProducerConfig::for_brokers("127.0.0.1:9092"))?;
//! let config = GatewayConfig::default().with_api_key(ApiKey::new(
//!     "orders-service",
//!     "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", // sha256("test")
//!     ["orders-*"],
//! ));
//! let shutdown = CancellationToken::new();
//! let report = Gateway::serve(config, producer, shutdown.clone()).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod auth;
mod config;
mod error;
mod idempotency;
mod limits;
mod listener;
mod metrics;
mod routes;
mod server;
mod sink;
mod topics;

/// The body parsers, for fuzzing (`fuzz/fuzz_targets/gateway_body.rs`); not a stable API.
#[cfg(feature = "unstable-fuzz")]
pub mod fuzz {
    use kbatch_core::Topic;

    /// Parses a native produce body (`POST /topics/{topic}/records`): the records' count, or
    /// the HTTP status its error would be answered with.
    pub fn parse_native(body: &[u8], ndjson: bool, binary: bool) -> Result<usize, u16> {
        use crate::routes::body::{Encoding, Framing, parse_records};
        let framing = if ndjson {
            Framing::Ndjson
        } else {
            Framing::Json
        };
        let encoding = if binary {
            Encoding::Binary
        } else {
            Encoding::Json
        };
        let body = bytes::Bytes::copy_from_slice(body);
        parse_records(&Topic::from("fuzz"), &body, framing, encoding, 10_000)
            .map(|r| r.len())
            .map_err(|e| e.status().as_u16())
    }

    /// Parses a REST Proxy v2 produce body (`POST /topics/{topic}`), JSON or binary embedded
    /// format: the records' count, or the HTTP status of its error.
    pub fn parse_rest_proxy_v2(body: &[u8], binary: bool) -> Result<usize, u16> {
        crate::routes::rest_proxy::parse_v2_for_fuzz(body, binary)
    }

    /// Splits and parses a REST Proxy v3 streaming body as the gateway does, fed in pieces
    /// of `chunk` bytes: the per-record error codes (200 for a record that parsed), then the
    /// code of the error that ended the stream, if one did.
    pub fn parse_rest_proxy_v3_stream(body: &[u8], chunk: usize) -> (Vec<u32>, Option<u32>) {
        crate::routes::rest_proxy_v3::parse_stream_for_fuzz(body, chunk)
    }
}

pub use auth::sha256_hex;
pub use config::{ApiKey, GatewayConfig};
pub use error::{Error, RequestError, Result};
pub use metrics::install_recorder as install_metrics_recorder;
pub use server::Gateway;
pub use sink::ProducerKind;
