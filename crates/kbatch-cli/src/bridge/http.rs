//! The `--http` bridge: POSTs each record's value over one shared HTTP client.
//!
//! ```text
//!  record ─► POST URL ─► keep-alive pool ─► 2xx: done
//!            value as body,  (one Client,      408, 429, 5xx, timeout, no connection: retriable
//!            X-Kafka-* headers  all handlers)  other status (4xx, 3xx): permanent
//! ```
//!
//! The request carries the value as its body (empty for a tombstone) with
//! `Content-Type: application/octet-stream`, and the headers `X-Kafka-Topic`,
//! `X-Kafka-Partition`, `X-Kafka-Offset` (for an event of a packed envelope, the envelope's,
//! with `X-Kafka-Envelope-Index` and `X-Kafka-Envelope-Count` naming its place) and the key:
//! - `X-Kafka-Key: KEY` when every byte of the key is printable ASCII (space to `~`) and it
//!   neither starts nor ends with a space, so that it arrives unchanged;
//! - otherwise (UTF-8 beyond ASCII, control characters, binary) `X-Kafka-Key-Base64`, the key
//!   in standard padded base64, and no `X-Kafka-Key`;
//! - neither header for a null key (an empty key is `X-Kafka-Key` with an empty value).
//!
//! A permanent failure sends the record to the dead-letter topic (or skips it without one).
//! Redirects are not followed: a 3xx is permanent, and says where the URL moved.
//! On 429 and 503 a `Retry-After` (seconds or an HTTP date) is honoured by waiting that long,
//! at most the request timeout, before the failure is reported; the consumer's retry backoff
//! comes on top.
//!
//! One client serves every handler: HTTP/1.1 connections are kept alive and reused (idle ones
//! close after 90 s), `https://` goes over rustls with the system's root certificates. The
//! connect timeout is 10 s (at most the request timeout); the request timeout
//! (`--http-timeout-ms`, default 30 s) covers connecting, sending and reading the response.

use std::error::Error as _;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use base64::Engine as _;
use kbatch_consumer::HandlerError;
use kbatch_core::ConsumedRecord;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{StatusCode, Url};

/// Longest wait for a TCP (and TLS) connection, when the request timeout is longer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// An unused pooled connection is closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Bytes of a response body quoted in an error message.
const BODY_IN_ERROR: usize = 200;
/// A response body is read to its end (so the connection can be reused) up to this size;
/// past it the connection is dropped instead.
const MAX_DRAINED_BODY: usize = 1 << 20;

const X_KAFKA_TOPIC: HeaderName = HeaderName::from_static("x-kafka-topic");
const X_KAFKA_PARTITION: HeaderName = HeaderName::from_static("x-kafka-partition");
const X_KAFKA_OFFSET: HeaderName = HeaderName::from_static("x-kafka-offset");
const X_KAFKA_ENVELOPE_INDEX: HeaderName = HeaderName::from_static("x-kafka-envelope-index");
const X_KAFKA_ENVELOPE_COUNT: HeaderName = HeaderName::from_static("x-kafka-envelope-count");
const X_KAFKA_KEY: HeaderName = HeaderName::from_static("x-kafka-key");
const X_KAFKA_KEY_BASE64: HeaderName = HeaderName::from_static("x-kafka-key-base64");

/// Parses `--http`: an absolute `http://` or `https://` URL with a host.
pub(crate) fn parse_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| {
        format!("{s:?} is not a URL ({e}); expected http://host[:port]/path or https://…")
    })?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "{s:?}: scheme {other:?} is not supported; use http:// or https://"
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?}: no host"));
    }
    Ok(url)
}

/// The request's headers for `r`: content type, origin, the event's place in its envelope,
/// the key.
fn request_headers(r: &ConsumedRecord) -> Result<HeaderMap, HandlerError> {
    let mut headers = HeaderMap::with_capacity(7);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let topic = HeaderValue::from_str(&r.topic).map_err(|_| {
        HandlerError::permanent(format!(
            "topic name {:?} cannot be sent in a header",
            r.topic
        ))
    })?;
    headers.insert(X_KAFKA_TOPIC, topic);
    headers.insert(X_KAFKA_PARTITION, HeaderValue::from(r.partition));
    headers.insert(X_KAFKA_OFFSET, HeaderValue::from(r.offset.0));
    if let Some(pos) = r.envelope {
        headers.insert(X_KAFKA_ENVELOPE_INDEX, HeaderValue::from(pos.index));
        headers.insert(X_KAFKA_ENVELOPE_COUNT, HeaderValue::from(pos.count));
    }
    if let Some(key) = &r.key {
        let (name, value) = key_header(key);
        headers.insert(name, value);
    }
    Ok(headers)
}

/// What a response status means for the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Done,
    Retriable,
    Permanent,
}

fn classify(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Done,
        408 | 429 | 500..=599 => Verdict::Retriable,
        _ => Verdict::Permanent,
    }
}

/// The header that carries `key` (see the module docs for the rule).
fn key_header(key: &[u8]) -> (HeaderName, HeaderValue) {
    let plain = key.iter().all(|b| (b' '..=b'~').contains(b))
        && key.first() != Some(&b' ')
        && key.last() != Some(&b' ');
    if plain && let Ok(v) = HeaderValue::from_bytes(key) {
        return (X_KAFKA_KEY, v);
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(key);
    // Base64 is printable ASCII: always a valid header value.
    let v = HeaderValue::try_from(encoded).unwrap_or_else(|_| HeaderValue::from_static(""));
    (X_KAFKA_KEY_BASE64, v)
}

/// How long `Retry-After` asks to wait, from `now`; `None` when absent or unreadable.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// POSTs records to one URL over one pooled client. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct HttpBridge {
    client: reqwest::Client,
    url: Url,
    timeout: Duration,
}

impl HttpBridge {
    /// A bridge to `url` whose requests each take at most `timeout`.
    pub(crate) fn new(url: Url, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kbatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            client,
            url,
            timeout,
        })
    }

    /// POSTs one record and classifies the outcome.
    pub(crate) async fn post(&self, r: ConsumedRecord) -> Result<(), HandlerError> {
        let about = || {
            format!(
                "topic {}, partition {}, offset {}, key {}",
                r.topic,
                r.partition,
                r.offset,
                r.key_for_display()
            )
        };
        let headers = request_headers(&r)?;
        let sent = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(r.value.clone().unwrap_or_default())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Err(self.request_failed(e, about())),
        };
        let status = response.status();
        let verdict = classify(status);
        let wait = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                retry_after(response.headers(), SystemTime::now()).map(|d| d.min(self.timeout))
            }
            _ => None,
        };
        let moved_to = response
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|l| format!(" (moved to {l:?}; point --http there)"))
            .filter(|_| status.is_redirection())
            .unwrap_or_default();
        let body = read_body(response).await;
        let failure = || {
            let body = if body.is_empty() {
                String::new()
            } else {
                format!(": {body}")
            };
            format!(
                "POST {} answered {status}{moved_to} for {}{body}",
                self.url,
                about()
            )
        };
        match verdict {
            Verdict::Done => Ok(()),
            Verdict::Permanent => Err(HandlerError::permanent(failure())),
            Verdict::Retriable => {
                let mut message = failure();
                if let Some(wait) = wait {
                    // The server said when to come back: hold this slot that long (bounded).
                    tokio::time::sleep(wait).await;
                    message.push_str(&format!(" (waited {wait:?} as Retry-After asked)"));
                }
                Err(HandlerError::retriable(message))
            }
        }
    }

    fn request_failed(&self, e: reqwest::Error, about: String) -> HandlerError {
        // The URL is named once, up front.
        let e = e.without_url();
        let mut message = if e.is_timeout() {
            format!(
                "POST {} for {about} timed out after {:?}",
                self.url, self.timeout
            )
        } else {
            format!("POST {} for {about} failed: {e}", self.url)
        };
        // reqwest's message leaves out the cause (refused, reset, certificate…): name it.
        let mut cause = e.source();
        while let Some(c) = cause {
            message.push_str(&format!(": {c}"));
            cause = c.source();
        }
        if e.is_builder() {
            HandlerError::permanent(message)
        } else {
            HandlerError::retriable(message)
        }
    }
}

/// Reads the response body to its end, so that the connection goes back to the pool, and
/// returns its start as text for error messages. A body longer than [`MAX_DRAINED_BODY`] is
/// left unread: its connection is closed.
async fn read_body(mut response: reqwest::Response) -> String {
    let mut kept = Vec::new();
    let mut read = 0usize;
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = BODY_IN_ERROR.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..room.min(chunk.len())]);
        read += chunk.len();
        if read > MAX_DRAINED_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&kept).trim().to_owned()
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
