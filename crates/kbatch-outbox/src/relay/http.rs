//! The HTTP deliverer: each entry POSTed to its URL, a bounded number at a time.
//!
//! ```text
//!  entries ──► buffered(concurrency) POST url, body = payload, kbatch-outbox-id header
//!                 2xx ─► Delivered   429 / 408 / 5xx / timeout / connect ─► Retriable
//!                 other 4xx, 3xx left after redirects, a bad URL or header ─► Permanent
//! ```

use std::time::Duration;

use futures::StreamExt as _;
use kbatch_core::ErrorClass;

use super::deliver::{Deliverer, ID_HEADER};
use super::outcome::Attempt;
use crate::entry::{Destination, OutboxEntry};
use crate::error::{Error, Result};

/// Settings of [`HttpDeliverer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Requests in flight at most, per batch. Default 32; 1..=1024.
    pub concurrency: usize,
    /// Whole-request timeout; a timeout is retriable. Default 10 s; 1 ms..=10 min.
    pub timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            timeout: Duration::from_secs(10),
        }
    }
}

impl HttpConfig {
    /// Checks every field against its documented range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(1..=1024).contains(&self.concurrency) {
            return Err(Error::Config(format!(
                "http.concurrency = {} is out of range; allowed: 1..=1024",
                self.concurrency
            )));
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(600)).contains(&self.timeout) {
            return Err(Error::Config(format!(
                "http.timeout = {:?} is out of range; allowed: 1ms..=10min",
                self.timeout
            )));
        }
        Ok(())
    }
}

/// POSTs each entry's payload to its [`Destination::Http`] URL with the entry's headers and
/// [`ID_HEADER`]; Kafka destinations fail as permanent.
#[derive(Clone, Debug)]
pub struct HttpDeliverer {
    client: reqwest::Client,
    concurrency: usize,
}

impl HttpDeliverer {
    /// A deliverer with its own connection pool.
    ///
    /// # Errors
    /// [`Error::Config`] for a field out of range or a client that cannot be built.
    pub fn new(config: HttpConfig) -> Result<Self> {
        config.validate()?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            concurrency: config.concurrency,
        })
    }

    async fn post(&self, entry: &OutboxEntry) -> Attempt {
        let url = match &entry.destination {
            Destination::Http { url } => url,
            Destination::Kafka { topic } => {
                return Attempt::failed(
                    ErrorClass::Permanent,
                    format!("Kafka destination {topic:?} but this relay delivers over HTTP only"),
                );
            }
        };
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/octet-stream")
            .header(ID_HEADER, entry.id.to_string())
            .body(entry.payload.clone());
        for h in &entry.headers {
            let value = h.value.as_deref().unwrap_or_default();
            match reqwest::header::HeaderValue::from_bytes(value) {
                Ok(v) if reqwest::header::HeaderName::from_bytes(h.key.as_bytes()).is_ok() => {
                    request = request.header(h.key.as_str(), v);
                }
                _ => {
                    return Attempt::failed(
                        ErrorClass::Permanent,
                        format!(
                            "header {:?} is not a valid HTTP header name and value",
                            h.key
                        ),
                    );
                }
            }
        }
        match request.send().await {
            Ok(response) => classify_status(response.status()),
            Err(e) => {
                let class = if e.is_timeout() || e.is_connect() || e.is_request() {
                    ErrorClass::Retriable
                } else {
                    ErrorClass::Permanent
                };
                Attempt::failed(class, format!("POST {url}: {e}"))
            }
        }
    }
}

/// 2xx delivered; 408, 429 and 5xx retriable; anything else permanent.
pub(crate) fn classify_status(status: reqwest::StatusCode) -> Attempt {
    let code = status.as_u16();
    match code {
        200..=299 => Attempt::Delivered,
        408 | 429 | 500..=599 => Attempt::failed(ErrorClass::Retriable, format!("HTTP {status}")),
        _ => Attempt::failed(ErrorClass::Permanent, format!("HTTP {status}")),
    }
}

impl Deliverer for HttpDeliverer {
    async fn deliver(&self, entries: &[&OutboxEntry]) -> Vec<Attempt> {
        // The futures are made up front (lazy until polled): a stream over a closure would
        // need the closure to be general over lifetimes, which Send checks cannot see.
        let posts: Vec<_> = entries.iter().map(|e| self.post(e)).collect();
        // `buffered` keeps input order and at most `concurrency` requests in flight.
        futures::stream::iter(posts)
            .buffered(self.concurrency)
            .collect()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_issue_says() {
        let class = |c: u16| match classify_status(reqwest::StatusCode::from_u16(c).unwrap()) {
            Attempt::Delivered => None,
            Attempt::Failed { class, .. } => Some(class),
        };
        for ok in [200, 201, 202, 204, 299] {
            assert_eq!(class(ok), None, "{ok}");
        }
        for retry in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(class(retry), Some(ErrorClass::Retriable), "{retry}");
        }
        for perm in [301, 400, 401, 403, 404, 409, 413, 422] {
            assert_eq!(class(perm), Some(ErrorClass::Permanent), "{perm}");
        }
    }

    #[test]
    fn config_ranges_are_named() {
        let e = HttpDeliverer::new(HttpConfig {
            concurrency: 0,
            ..HttpConfig::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("http.concurrency = 0"), "{e}");
    }
}
