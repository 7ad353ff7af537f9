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
//! `X-Kafka-Partition`, `X-Kafka-Offset` and the key:
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
        let mut headers = HeaderMap::with_capacity(5);
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
        if let Some(key) = &r.key {
            let (name, value) = key_header(key);
            headers.insert(name, value);
        }
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
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use bytes::Bytes;
    use kbatch_core::{Classify, Offset};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    use super::*;

    fn record(key: Option<&'static [u8]>) -> ConsumedRecord {
        ConsumedRecord {
            topic: "gps".into(),
            partition: 1,
            offset: Offset(42),
            key: key.map(Bytes::from_static),
            value: Some(Bytes::from_static(b"fix")),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// A keep-alive HTTP/1.1 server on loopback that answers every request with `response`
    /// (or never, when it is `None`); counts the connections it accepted.
    async fn server(response: Option<&'static str>) -> (Url, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/in", listener.local_addr().unwrap())).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (rd, mut wr) = s.into_split();
                    let mut rd = BufReader::new(rd);
                    loop {
                        let mut len = 0usize;
                        loop {
                            let mut line = String::new();
                            if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let line = line.trim_end().to_ascii_lowercase();
                            if line.is_empty() {
                                break;
                            }
                            if let Some(v) = line.strip_prefix("content-length:") {
                                len = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; len];
                        rd.read_exact(&mut body).await.unwrap();
                        match response {
                            Some(r) => wr.write_all(r.as_bytes()).await.unwrap(),
                            None => std::future::pending().await,
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    #[test]
    fn urls_parse_with_clear_errors() {
        let u = parse_http_url("http://127.0.0.1:8080/gps/fix").unwrap();
        assert_eq!(
            (u.host_str(), u.port_or_known_default(), u.path()),
            (Some("127.0.0.1"), Some(8080), "/gps/fix")
        );
        let u = parse_http_url("https://ingest.example.com").unwrap();
        assert_eq!((u.port_or_known_default(), u.path()), (Some(443), "/"));
        let e = parse_http_url("ftp://h/x").unwrap_err();
        assert!(e.contains("\"ftp\"") && e.contains("https://"), "{e}");
        let e = parse_http_url("http://h:99999/").unwrap_err();
        assert!(e.contains("not a URL") && e.contains("port"), "{e}");
        assert!(parse_http_url("localhost:8080").is_err());
    }

    #[test]
    fn statuses_are_classified() {
        let v = |c: u16| classify(StatusCode::from_u16(c).unwrap());
        for c in [200, 201, 204, 299] {
            assert_eq!(v(c), Verdict::Done, "{c}");
        }
        for c in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(v(c), Verdict::Retriable, "{c}");
        }
        for c in [301, 302, 307, 308, 400, 401, 403, 404, 409, 413, 422] {
            assert_eq!(v(c), Verdict::Permanent, "{c}");
        }
    }

    #[test]
    fn keys_go_verbatim_when_they_survive_a_header_else_base64() {
        let h = |k: &[u8]| {
            let (name, value) = key_header(k);
            (name.as_str().to_owned(), value.to_str().unwrap().to_owned())
        };
        let plain = |v: &str| ("x-kafka-key".to_owned(), v.to_owned());
        let b64 = |v: &str| ("x-kafka-key-base64".to_owned(), v.to_owned());
        assert_eq!(h(b"user-7"), plain("user-7"));
        assert_eq!(h(b"a b~{}"), plain("a b~{}"));
        assert_eq!(h(b""), plain(""));
        assert_eq!(h("café".as_bytes()), b64("Y2Fmw6k="));
        assert_eq!(h(b"line\r\nX-Evil: 1"), b64("bGluZQ0KWC1FdmlsOiAx"));
        assert_eq!(h(b" padded"), b64("IHBhZGRlZA=="));
        assert_eq!(h(b"tab\t"), b64("dGFiCQ=="));
        assert_eq!(h(&[0, 159, 255]), b64("AJ//"));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 30 Nov 2025 10:00:00 GMT").unwrap();
        let at = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_static(v));
            retry_after(&h, now)
        };
        assert_eq!(at("7"), Some(Duration::from_secs(7)));
        assert_eq!(at(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            at("Sun, 30 Nov 2025 10:01:30 GMT"),
            Some(Duration::from_secs(90))
        );
        assert_eq!(at("Sun, 30 Nov 2025 09:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(at("soon"), None);
        assert_eq!(at("-3"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[tokio::test]
    async fn sequential_posts_reuse_one_connection() {
        let (url, accepted) = server(Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
        let bridge = HttpBridge::new(url, Duration::from_secs(5)).unwrap();
        for _ in 0..20 {
            bridge.post(record(Some(b"k"))).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_client_error_is_permanent_and_quotes_the_body() {
        let (url, _) = server(Some(
            "HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: 13\r\n\r\nbad lat/long\n",
        ))
        .await;
        let bridge = HttpBridge::new(url, Duration::from_secs(5)).unwrap();
        let e = bridge.post(record(Some(b"car-1"))).await.unwrap_err();
        assert!(!e.is_retriable(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("422") && msg.contains("offset 42") && msg.contains("bad lat/long"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_names_the_new_place() {
        let (url, _) = server(Some(
            "HTTP/1.1 308 Permanent Redirect\r\nLocation: http://elsewhere/in\r\nContent-Length: 0\r\n\r\n",
        ))
        .await;
        let bridge = HttpBridge::new(url, Duration::from_secs(5)).unwrap();
        let e = bridge.post(record(None)).await.unwrap_err();
        assert!(!e.is_retriable(), "{e}");
        assert!(e.to_string().contains("http://elsewhere/in"), "{e}");
    }

    #[tokio::test]
    async fn retry_after_is_waited_for_but_never_past_the_timeout() {
        let (url, _) = server(Some(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n",
        ))
        .await;
        let bridge = HttpBridge::new(url, Duration::from_secs(5)).unwrap();
        let started = Instant::now();
        let e = bridge.post(record(None)).await.unwrap_err();
        let took = started.elapsed();
        assert!(e.is_retriable(), "{e}");
        assert!(took >= Duration::from_secs(1), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");

        let (url, _) = server(Some(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3600\r\nContent-Length: 0\r\n\r\n",
        ))
        .await;
        let bridge = HttpBridge::new(url, Duration::from_millis(300)).unwrap();
        let started = Instant::now();
        let e = bridge.post(record(None)).await.unwrap_err();
        let took = started.elapsed();
        assert!(e.is_retriable(), "{e}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "an hour asked, the timeout waited: {took:?}"
        );
    }

    #[tokio::test]
    async fn no_answer_times_out_as_retriable() {
        let (url, _) = server(None).await;
        let bridge = HttpBridge::new(url, Duration::from_millis(200)).unwrap();
        let started = Instant::now();
        let e = bridge.post(record(None)).await.unwrap_err();
        assert!(e.is_retriable(), "{e}");
        assert!(e.to_string().contains("timed out after 200ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn no_server_is_retriable_and_names_the_cause() {
        // Bind, then close: nothing listens on the port.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let bridge = HttpBridge::new(url, Duration::from_secs(5)).unwrap();
        let e = bridge.post(record(None)).await.unwrap_err();
        assert!(e.is_retriable(), "{e}");
        assert!(e.to_string().to_lowercase().contains("refused"), "{e}");
    }

    #[tokio::test]
    async fn https_urls_are_spoken_to_in_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("https://{}/in", listener.local_addr().unwrap())).unwrap();
        let first_bytes = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 3];
            s.read_exact(&mut b).await.unwrap();
            b
        });
        let bridge = HttpBridge::new(url, Duration::from_secs(5)).unwrap();
        let e = bridge.post(record(None)).await.unwrap_err();
        // A TLS handshake record (0x16), protocol major version 3: a ClientHello, not HTTP.
        assert_eq!(first_bytes.await.unwrap()[..2], [0x16, 0x03]);
        assert!(e.is_retriable(), "the server hung up mid-handshake: {e}");
    }
}
