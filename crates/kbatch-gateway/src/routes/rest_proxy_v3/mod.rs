//! Confluent REST Proxy v3 produce, so its clients switch without code changes:
//! `POST /v3/clusters/{cluster_id}/topics/{topic_name}/records` (`Content-Type:
//! application/json`), one `ProduceRequest` or many concatenated (streaming mode), and
//! `GET /v3/clusters[/{cluster_id}]` to discover the cluster id.
//!
//! ```text
//!  auth, content type, cluster id, topic ─(any fails: its status, {"error_code","message"})
//!      │ 200, application/json, chunked
//!      ▼
//!  body chunks ─► ObjectSplitter ─► parse ─► hand_in (producer, in order)
//!      └──► bounded queue of pending answers (PIPELINE_DEPTH: reading pauses when full)
//!               └──► await each ack in order ─► one ProduceResponse / error object per record
//! ```
//!
//! As in REST Proxy's `StreamingResponse`, once the request is accepted the status is 200 and
//! each record is answered in order with its own `error_code` (200 for success). A record
//! that is well-formed JSON but not a valid `ProduceRequest` gets its error object and the
//! stream goes on; malformed JSON, an object over `max_body_bytes`, or records past
//! `max_records_per_request` get one error object and end the stream (the records before
//! them are answered and in Kafka). Each answer is written as soon as its record is
//! acknowledged, so a client can send one record, read its answer, then send the next.
//! A stream is closed with an error object when the next record does not arrive complete
//! within `request_timeout` (408) or when the server shuts down (503).

mod framing;
mod wire;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::sink::SendFuture;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt as _;
use kbatch_core::Topic;
use serde_json::{Value, json};
use tokio::sync::{OnceCell, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::framing::ObjectSplitter;
use self::wire::{DataInfo, ParseError, SCHEMA_REGISTRY_CODE, SCHEMA_REGISTRY_MESSAGE};
use super::records::{await_delivery, hand_in};
use crate::error::{RequestError, add_status_headers};
use crate::server::AppState;

/// Records handed in whose answers are not written yet; past it, the body is not read until
/// the oldest is answered (back-pressure instead of an unbounded queue).
const PIPELINE_DEPTH: usize = 1024;

/// Longest wait for the broker's cluster id.
const CLUSTER_ID_LOOKUP: Duration = Duration::from_secs(10);

/// What the v3 routes share: the cluster id, asked of the broker once, and the server's
/// shutdown, which ends open streams (a streaming client could otherwise hold the server
/// open for as long as it keeps sending).
pub(crate) struct V3State {
    cluster_id: OnceCell<String>,
    shutdown: CancellationToken,
}

impl V3State {
    pub(crate) fn new(shutdown: CancellationToken) -> Self {
        Self {
            cluster_id: OnceCell::new(),
            shutdown,
        }
    }
}

/// One record's place in the answer stream.
enum Pending {
    /// Handed to the producer; answered when acknowledged.
    Sent {
        future: SendFuture,
        deadline: Instant,
        key: Option<DataInfo>,
        value: Option<DataInfo>,
    },
    /// Already decided: `{"error_code", "message"}`.
    Failed { error_code: u32, message: String },
}

/// `POST /v3/clusters/{cluster_id}/topics/{topic_name}/records`.
pub(crate) async fn produce_v3(
    State(state): State<Arc<AppState>>,
    Path((cluster_id, topic)): Path<(String, String)>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let deadline = Instant::now() + state.config.request_timeout;
    if let Err(e) = accept(&state, &cluster_id, &topic, &headers, deadline).await {
        return error_response(&e);
    }
    let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
    // The reader stops when the body ends or the answer stream is dropped (client gone);
    // records it handed in are still delivered by the producer.
    tokio::spawn(read_records(
        Arc::clone(&state),
        Topic::from(topic.as_str()),
        request.into_body(),
        tx,
    ));
    let answers = futures::stream::unfold(
        (rx, state, cluster_id, topic),
        |(mut rx, state, cluster_id, topic)| async move {
            let pending = rx.recv().await?;
            let mut line = answer(&state, &cluster_id, &topic, pending)
                .await
                .to_string();
            // Whitespace between concatenated JSON objects is allowed; a newline makes the
            // stream readable with curl.
            line.push('\n');
            Some((
                Ok::<_, Infallible>(Bytes::from(line)),
                (rx, state, cluster_id, topic),
            ))
        },
    );
    let mut response = Response::new(Body::from_stream(answers));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The request-level checks, answered with their own status before any record is read.
async fn accept(
    state: &AppState,
    cluster_id: &str,
    topic: &str,
    headers: &HeaderMap,
    deadline: Instant,
) -> Result<(), RequestError> {
    state.auth.authorize(headers, topic)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return Err(RequestError::UnsupportedMediaType(format!(
            "Content-Type {content_type:?} is not supported here: REST Proxy v3 produce takes application/json"
        )));
    }
    check_cluster(state, cluster_id, deadline).await?;
    state
        .topics
        .partitions(&state.producer, topic, deadline)
        .await
        .map(drop)
}

/// 404 unless `cluster_id` is the broker's cluster id.
async fn check_cluster(
    state: &AppState,
    cluster_id: &str,
    deadline: Instant,
) -> Result<String, RequestError> {
    let ours = cluster_id_of(state, deadline).await?;
    if ours == cluster_id {
        Ok(ours)
    } else {
        Err(RequestError::NotFound(format!(
            "Cluster {cluster_id} cannot be found: this gateway serves cluster {ours} (GET /v3/clusters lists it)"
        )))
    }
}

async fn cluster_id_of(state: &AppState, deadline: Instant) -> Result<String, RequestError> {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .min(CLUSTER_ID_LOOKUP);
    state
        .v3
        .cluster_id
        .get_or_try_init(|| async {
            state.producer.cluster_id(wait).await.map_err(|e| {
                RequestError::Unavailable(format!(
                    "the broker did not report its cluster id within {wait:?}: {e}"
                ))
            })
        })
        .await
        .cloned()
}

/// Reads the body as it arrives, hands each record in, queues its pending answer.
async fn read_records(
    state: Arc<AppState>,
    topic: Topic,
    body: Body,
    answers: mpsc::Sender<Pending>,
) {
    let max_records = state.config.max_records_per_request;
    let mut splitter = ObjectSplitter::new(state.config.max_body_bytes);
    let mut chunks = body.into_data_stream();
    let mut index = 0usize;
    // The stream's records keep their order in the producer, whatever their keys.
    let sequence = crate::sink::sequence();
    // Each record must arrive complete within the request timeout of the one before (of the
    // request's start, for the first): a client that stalls mid-stream, or trickles bytes,
    // does not hold a connection and this task forever.
    let mut record_deadline = Instant::now() + state.config.request_timeout;
    // The error that ends the stream, if any.
    let last = loop {
        match splitter.next_object() {
            Ok(Some(_)) if index >= max_records => {
                break Some(failed(&RequestError::TooManyRecords {
                    count: index + 1,
                    limit: max_records,
                }));
            }
            Ok(Some(object)) => {
                let (pending, ends) = record(&state, &topic, index, sequence, &object).await;
                index += 1;
                if answers.send(pending).await.is_err() {
                    return; // nobody reads the answers any more
                }
                // From here: time spent waiting for room in the queue is not the client's.
                record_deadline = Instant::now() + state.config.request_timeout;
                if ends {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                let error_code = match e {
                    framing::FrameError::TooLarge { .. } => 413,
                    _ => 400,
                };
                break Some(Pending::Failed {
                    error_code,
                    message: format!("record {index}: {e}"),
                });
            }
        }
        let next = tokio::select! {
            next = tokio::time::timeout_at(record_deadline, chunks.next()) => next,
            () = state.v3.shutdown.cancelled() => {
                break Some(Pending::Failed {
                    error_code: 503,
                    message: format!("the gateway is shutting down: records from {index} on were not read; the ones before are answered"),
                });
            }
        };
        let Ok(next) = next else {
            // REST Proxy answers a stream held open too long with 408 too.
            break Some(Pending::Failed {
                error_code: 408,
                message: format!(
                    "record {index} did not arrive complete within the request timeout of {:?}; the stream is closed",
                    state.config.request_timeout
                ),
            });
        };
        match next {
            Some(Ok(chunk)) => splitter.push(&chunk),
            Some(Err(e)) => {
                break Some(failed(&RequestError::BadRequest(format!(
                    "could not read the body: {e}"
                ))));
            }
            None => {
                let e = match splitter.finish() {
                    Err(e) => format!("record {index}: {e}"),
                    Ok(()) if index == 0 => "no records: send one or more ProduceRequest objects, e.g. {\"value\":{\"type\":\"JSON\",\"data\":1}}".into(),
                    Ok(()) => return,
                };
                break Some(failed(&RequestError::BadRequest(e)));
            }
        }
    };
    if let Some(last) = last {
        // Ignored when the client is gone: nobody to tell.
        let _ = answers.send(last).await;
    }
}

/// The splitting and parsing of [`read_records`] without a producer, for the fuzz target:
/// each record's code (200 parsed, else its error code), and the code that ended the stream.
#[cfg(feature = "unstable-fuzz")]
pub(crate) fn parse_stream_for_fuzz(body: &[u8], chunk: usize) -> (Vec<u32>, Option<u32>) {
    let topic = Topic::from("fuzz");
    let mut splitter = ObjectSplitter::new(4096);
    let mut codes = Vec::new();
    for piece in body.chunks(chunk.max(1)) {
        splitter.push(piece);
        loop {
            match splitter.next_object() {
                Ok(Some(object)) => match wire::parse(&topic, codes.len(), &object) {
                    Ok(_) => codes.push(200),
                    Err(ParseError::Invalid(e)) => codes.push(error_code(&e)),
                    Err(ParseError::NeedsSchemaRegistry) => codes.push(SCHEMA_REGISTRY_CODE),
                    Err(ParseError::Syntax(e)) => return (codes, Some(error_code(&e))),
                },
                Ok(None) => break,
                Err(framing::FrameError::TooLarge { .. }) => return (codes, Some(413)),
                Err(_) => return (codes, Some(400)),
            }
        }
    }
    let end = splitter.finish().err().map(|_| 400);
    (codes, end)
}

/// One object: its pending answer, and whether the stream ends after it.
async fn record(
    state: &AppState,
    topic: &Topic,
    index: usize,
    sequence: u64,
    object: &[u8],
) -> (Pending, bool) {
    let parsed = match wire::parse(topic, index, object) {
        Ok(p) => p,
        Err(ParseError::Syntax(e)) => return (failed(&e), true),
        Err(ParseError::Invalid(e)) => return (failed(&e), false),
        Err(ParseError::NeedsSchemaRegistry) => {
            return (
                Pending::Failed {
                    error_code: SCHEMA_REGISTRY_CODE,
                    message: SCHEMA_REGISTRY_MESSAGE.into(),
                },
                false,
            );
        }
    };
    let deadline = Instant::now() + state.config.request_timeout;
    match hand_in(state, topic, parsed.record, sequence, deadline).await {
        Ok(future) => (
            Pending::Sent {
                future,
                deadline,
                key: parsed.key,
                value: parsed.value,
            },
            false,
        ),
        // Full past the record's deadline: later records must not overtake it.
        Err(e @ RequestError::ProducerFull) => (failed(&e), true),
        Err(e) => (failed(&e), false),
    }
}

fn failed(e: &RequestError) -> Pending {
    Pending::Failed {
        error_code: error_code(e),
        message: e.to_string(),
    }
}

/// `outcome`, counted on /metrics.
fn counted<T>(outcome: Result<T, RequestError>) -> Result<T, RequestError> {
    crate::metrics::count_record(&outcome);
    outcome
}

/// The answer object of one record.
async fn answer(state: &AppState, cluster_id: &str, topic: &str, pending: Pending) -> Value {
    match pending {
        Pending::Failed {
            error_code,
            message,
        } => json!({"error_code": error_code, "message": message}),
        Pending::Sent {
            future,
            deadline,
            key,
            value,
        } => match counted(await_delivery(state, future, deadline).await) {
            Ok(d) => wire::produce_response(
                cluster_id,
                topic,
                d.partition,
                d.offset.0,
                d.timestamp,
                key,
                value,
            ),
            Err(e) => json!({"error_code": error_code(&e), "message": e.to_string()}),
        },
    }
}

/// REST Proxy's codes where it has one, else the HTTP status.
fn error_code(e: &RequestError) -> u32 {
    match e.code() {
        "unauthorized" => 40101,
        "forbidden" => 40301,
        "unknown_partition" => 40402,
        _ if e.status() == StatusCode::SERVICE_UNAVAILABLE => 50002,
        _ => u32::from(e.status().as_u16()),
    }
}

/// A request-level error: its status, v3's `{"error_code", "message"}`.
fn error_response(e: &RequestError) -> Response {
    let status = e.status();
    let mut response = (
        status,
        axum::Json(json!({"error_code": error_code(e), "message": e.to_string()})),
    )
        .into_response();
    add_status_headers(status, &mut response);
    response
}

/// `GET /v3/clusters`: the one cluster this gateway writes to.
pub(crate) async fn list_clusters(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Response {
    let deadline = Instant::now() + state.config.request_timeout;
    if !state.auth.authenticated(&headers) {
        return error_response(&RequestError::Unauthorized);
    }
    match cluster_id_of(&state, deadline).await {
        Ok(id) => {
            let base = base_url(&headers);
            axum::Json(json!({
                "kind": "KafkaClusterList",
                "metadata": {"self": format!("{base}/v3/clusters"), "next": null},
                "data": [cluster(&base, &id)],
            }))
            .into_response()
        }
        Err(e) => error_response(&e),
    }
}

/// `GET /v3/clusters/{cluster_id}`.
pub(crate) async fn get_cluster(
    State(state): State<Arc<AppState>>,
    Path(cluster_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let deadline = Instant::now() + state.config.request_timeout;
    if !state.auth.authenticated(&headers) {
        return error_response(&RequestError::Unauthorized);
    }
    match check_cluster(&state, &cluster_id, deadline).await {
        Ok(id) => axum::Json(cluster(&base_url(&headers), &id)).into_response(),
        Err(e) => error_response(&e),
    }
}

/// A `KafkaCluster` resource as REST Proxy lists it, with the links this gateway serves.
fn cluster(base: &str, id: &str) -> Value {
    json!({
        "kind": "KafkaCluster",
        "metadata": {
            "self": format!("{base}/v3/clusters/{id}"),
            "resource_name": format!("crn:///kafka={id}"),
        },
        "cluster_id": id,
        "topics": {"related": format!("{base}/v3/clusters/{id}/topics")},
    })
}

/// `http://<Host>` for the `self` links (REST Proxy builds them from the request too).
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}
