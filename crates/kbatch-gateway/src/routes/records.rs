//! `POST /topics/{topic}/records`: records in, one answer per record once the broker has
//! acknowledged them.
//!
//! ```text
//!  auth ─► latency budget (header / query, 400 if bad) ─► body (≤ max_body_bytes) ─► parse
//!    (≤ max_records_per_request) ─► partition count (cached) ─► adaptive: the request's
//!    records in one try_send_many (Full: all 429), one future; plain: Sink::try_send each
//!    record (Full: this and the rest 429) ─► await until the request deadline (later: 503
//!    for what is not acknowledged) ─► 200 / 207 / the failure's status
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kbatch_core::{Record, Topic};
use serde::Deserialize;
use tokio::time::Instant;

use super::body::{Encoding, Framing, parse_records};
use crate::error::{ErrorBody, RequestError, add_status_headers};
use crate::server::AppState;
use crate::sink::{self, SendFuture, Sent};
use kbatch_adaptive::SendOptions;

/// Query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProduceQuery {
    /// `json` (default) or `binary` (keys and values base64).
    #[serde(default)]
    format: Option<String>,
    /// The latency budget in ms (the `X-Latency-Budget-Ms` header wins); checked by
    /// [`super::budget`].
    #[serde(default)]
    latency_budget_ms: Option<String>,
}

/// One record's fate while the request is answered.
enum Outcome {
    Sent(SendFuture),
    Failed(RequestError),
}

pub(crate) async fn produce(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    query: Result<Query<ProduceQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let deadline = Instant::now() + state.config.request_timeout;
    produce_inner(&state, topic, query, &headers, request, deadline)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn produce_inner(
    state: &AppState,
    topic: String,
    query: Result<Query<ProduceQuery>, axum::extract::rejection::QueryRejection>,
    headers: &HeaderMap,
    request: Request,
    deadline: Instant,
) -> Result<Response, RequestError> {
    // Credentials first: an unauthenticated client's body is never read.
    let key = state.auth.authorize(headers, &topic)?;
    let query = query.map(|q| q.0);
    let budget = super::budget::from_request(
        headers,
        query
            .as_ref()
            .ok()
            .and_then(|q| q.latency_budget_ms.as_deref()),
        state.config.request_timeout,
    )?;
    let encoding = match query.map(|q| q.format) {
        Ok(None) => Encoding::Json,
        Ok(Some(f)) if f == "json" => Encoding::Json,
        Ok(Some(f)) if f == "binary" => Encoding::Binary,
        Ok(Some(f)) => {
            return Err(RequestError::BadRequest(format!(
                "format={f:?} is not supported: use format=json (default) or format=binary"
            )));
        }
        Err(e) => {
            return Err(RequestError::BadRequest(format!(
                "{}; the query parameters are format=json|binary and latency_budget_ms=<ms>",
                e.body_text()
            )));
        }
    };
    let framing = match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(ct) if ct.trim_start().starts_with("application/x-ndjson") => Framing::Ndjson,
        _ => Framing::Json,
    };
    let body = read_body(state, request).await?;
    let topic = Topic::from(topic);
    let records = parse_records(
        &topic,
        &body,
        framing,
        encoding,
        state.config.max_records_per_request,
    )?;
    let count = records.len();
    let outcomes = produce_all(state, &topic, records, deadline, budget).await?;
    crate::metrics::count_records(&outcomes);
    let mut results = Vec::with_capacity(count);
    let mut first_failure: Option<&RequestError> = None;
    let mut failed = 0usize;
    let mut any_full = false;
    for outcome in &outcomes {
        results.push(match outcome {
            // Packed topic: `index` is the record's place in the envelope at that offset.
            Ok(Sent {
                partition,
                offset,
                index,
                ..
            }) => Entry::Written {
                index: *index,
                offset: offset.0,
                partition: *partition,
            },
            Err(e) => {
                failed += 1;
                any_full |= matches!(e, RequestError::ProducerFull);
                first_failure.get_or_insert(e);
                Entry::Failed { error: e.body() }
            }
        });
    }
    tracing::debug!(topic = %topic, key = key.unwrap_or("-"), records = count, failed, "produce request answered");
    let (status, error) = match first_failure {
        None => (StatusCode::OK, None),
        Some(e) if failed == count => (e.status(), Some(e.body())),
        Some(_) => (StatusCode::MULTI_STATUS, None),
    };
    let body = Answer { error, results };
    let mut response = (status, axum::Json(body)).into_response();
    add_status_headers(status, &mut response);
    if any_full && status == StatusCode::MULTI_STATUS {
        // Some records were refused as full: tell the client when to retry those.
        add_status_headers(StatusCode::TOO_MANY_REQUESTS, &mut response);
    }
    Ok(response)
}

/// A produce answer: typed rather than built as `serde_json::Value`s, which cost a map and
/// its keys' allocations per record. Fields in alphabetical order, as the maps wrote them.
#[derive(serde::Serialize)]
struct Answer {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
    results: Vec<Entry>,
}

/// One record's result.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Entry {
    Written {
        #[serde(skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
        offset: i64,
        partition: i32,
    },
    Failed {
        error: ErrorBody,
    },
}

/// The body, at most `max_body_bytes` (413 past it), within the request timeout (408 past
/// it: a client trickling its body must not hold a concurrency slot for longer).
pub(super) async fn read_body(state: &AppState, request: Request) -> Result<Bytes, RequestError> {
    let timeout = state.config.request_timeout;
    let read = tokio::time::timeout(timeout, Bytes::from_request(request, &()));
    read.await
        .map_err(|_| RequestError::BodyTimeout(timeout))?
        .map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                RequestError::BodyTooLarge {
                    limit: state.config.max_body_bytes,
                }
            } else {
                RequestError::BadRequest(format!("could not read the body: {}", e.body_text()))
            }
        })
}

/// Hands every record to the producer and awaits each acknowledgement until `deadline`;
/// one outcome per record, in order. Fails as a whole only when the topic is unknown or
/// cannot be looked up. No record waits in an adaptive batch longer than `budget` (`None`: as
/// the pressure level decides).
///
/// # Cancellation
/// Dropping the future (the client went away) drops the delivery futures, not the records:
/// those handed in are still delivered; they are just not reported to anyone.
pub(super) async fn produce_all(
    state: &AppState,
    topic: &Topic,
    records: Vec<Record>,
    deadline: Instant,
    budget: Option<Duration>,
) -> Result<Vec<Result<Sent, RequestError>>, RequestError> {
    let partitions = state
        .topics
        .partitions(&state.producer, topic, deadline)
        .await?;
    // The request's records keep their order, whatever their keys, as they do in one producer.
    let mut options = SendOptions::default().in_sequence(sink::sequence());
    if let Some(b) = budget {
        options = options.with_budget(b);
    }
    if let Some(adaptive) = state.sink.adaptive_for(topic) {
        return Ok(produce_together(
            state, adaptive, topic, records, deadline, options, partitions,
        )
        .await);
    }
    let mut outcomes = Vec::with_capacity(records.len());
    let mut full = false;
    for record in records {
        let outcome = if full {
            // Once the producer is full, later records are not handed in either: a record
            // must not overtake an earlier one of its key that was refused.
            Outcome::Failed(RequestError::ProducerFull)
        } else if let Err(e) = check_partition(topic, &record, partitions) {
            Outcome::Failed(e)
        } else {
            match state.sink.try_send(record, options) {
                Ok(f) => Outcome::Sent(f),
                Err(RequestError::ProducerFull) => {
                    full = true;
                    Outcome::Failed(RequestError::ProducerFull)
                }
                Err(e) => Outcome::Failed(e),
            }
        };
        outcomes.push(outcome);
    }
    // Every handed-in record is awaited, even after the deadline has passed for others: a
    // future already resolved still reports its offset.
    let mut results = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        results.push(match outcome {
            Outcome::Sent(f) => await_delivery(state, f, deadline).await,
            Outcome::Failed(e) => Err(e),
        });
    }
    Ok(results)
}

/// [`produce_all`] through an adaptive producer: the request's valid records go in as one
/// sequence, all or none (full: every one 429), with one future for all of them — a future
/// and an intake hand-over per record cost the adaptive gateway a third of its NDJSON
/// throughput. At the deadline, what was acknowledged is reported and the rest is 503.
async fn produce_together(
    state: &AppState,
    adaptive: &kbatch_adaptive::AdaptiveProducer,
    topic: &Topic,
    records: Vec<Record>,
    deadline: Instant,
    options: SendOptions,
    partitions: i32,
) -> Vec<Result<Sent, RequestError>> {
    let mut results: Vec<Option<Result<Sent, RequestError>>> = Vec::with_capacity(records.len());
    let mut batch = Vec::with_capacity(records.len());
    for record in records {
        match check_partition(topic, &record, partitions) {
            Ok(()) => {
                batch.push(record);
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let settled: Vec<Option<Result<Sent, RequestError>>> =
        match adaptive.try_send_many_with(batch, options) {
            Err(e) => {
                let full = matches!(e, kbatch_adaptive::TrySendManyError::Full(_));
                let n = e.into_records().len();
                (0..n).map(|_| Some(Err(sink::refused(full)))).collect()
            }
            Ok(mut many) => match tokio::time::timeout_at(deadline, &mut many).await {
                Ok(all) => all
                    .into_iter()
                    .map(|r| Some(sink::adaptive_outcome(r)))
                    .collect(),
                Err(_) => many
                    .into_settled()
                    .into_iter()
                    .map(|r| r.map(sink::adaptive_outcome))
                    .collect(),
            },
        };
    let timeout = state.config.request_timeout;
    let mut settled = settled.into_iter();
    results
        .into_iter()
        .map(|r| match r {
            Some(failed) => failed,
            None => settled
                .next()
                .flatten()
                .unwrap_or(Err(RequestError::NotAcknowledged(timeout))),
        })
        .collect()
}

/// The per-record sibling of [`produce_all`] for a stream (REST Proxy v3), where records arrive
/// one at a time: hands `record` to the producer now, so records enter it in the stream's
/// order, and returns its delivery future for [`await_delivery`]. Where `produce_all` fails a
/// record at once when the producer is full, a stream waits (up to `deadline`) instead:
/// reading of the body pauses meanwhile, which is the back-pressure a streaming client sees.
pub(super) async fn hand_in(
    state: &AppState,
    topic: &Topic,
    record: Record,
    sequence: u64,
    deadline: Instant,
) -> Result<SendFuture, RequestError> {
    let partitions = state
        .topics
        .partitions(&state.producer, topic, deadline)
        .await?;
    check_partition(topic, &record, partitions)?;
    let options = SendOptions::default().in_sequence(sequence);
    tokio::time::timeout_at(deadline, state.sink.send(record, options))
        .await
        .unwrap_or(Err(RequestError::ProducerFull))
}

/// 404 for a record naming a partition `topic` (with `partitions`) does not have.
fn check_partition(topic: &Topic, record: &Record, partitions: i32) -> Result<(), RequestError> {
    match record.partition {
        Some(p) if p >= partitions => Err(RequestError::UnknownPartition {
            topic: topic.to_string(),
            partition: p,
            partitions,
        }),
        _ => Ok(()),
    }
}

/// Awaits a record handed in by [`hand_in`] until `deadline` (later: 503, as `produce_all`).
pub(super) async fn await_delivery(
    state: &AppState,
    future: SendFuture,
    deadline: Instant,
) -> Result<Sent, RequestError> {
    match tokio::time::timeout_at(deadline, future).await {
        Ok(r) => r,
        Err(_) => Err(RequestError::NotAcknowledged(state.config.request_timeout)),
    }
}
