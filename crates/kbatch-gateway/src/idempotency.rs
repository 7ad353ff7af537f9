//! `Idempotency-Key`: a retried produce request with the same key, from the same credentials,
//! to the same route, within the window, gets the original answer instead of producing again.
//!
//! ```text
//!  request + Idempotency-Key ─► scope = sha256(credentials) · method · path?query · key
//!     unknown  ─► InFlight; the request runs in a task of its own (a client that disconnects
//!                 does not cancel it) ─► its answer stored (2xx, and 4xx but 408/429) ─► answer
//!     InFlight ─► 409 idempotency_key_in_flight, Retry-After: 1
//!     stored, same body ─► the stored answer again, `Idempotent-Replayed: true`
//!     stored, other body ─► 422 idempotency_key_reused
//! ```
//!
//! Answers that leave the outcome open — 408, 429 (nothing was sent) and 5xx (a 503 for an
//! unacknowledged record may still be written) — are not stored: a retry runs again. The store
//! is bounded in entries and bytes; the oldest stored answers go first, and when only requests
//! in flight are left the new request is refused with 429.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::{RequestError, add_status_headers};
use crate::server::AppState;

/// The request header.
pub(crate) const HEADER: &str = "idempotency-key";
/// Set on a replayed answer.
const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The longest key accepted (as Stripe's and the IETF draft's examples).
const MAX_KEY_LEN: usize = 255;

/// A stored answer.
#[derive(Clone)]
struct Stored {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
    /// SHA-256 of the request body it answered.
    fingerprint: [u8; 32],
}

enum Entry {
    InFlight,
    Done(Stored),
}

/// The bounded store. See the [module docs](self).
pub(crate) struct Store {
    window: Duration,
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, (Instant, Entry)>,
    /// Insertion order, for expiry and eviction (stale names are skipped).
    order: VecDeque<(Instant, String)>,
    bytes: usize,
}

/// What the store says about a request.
enum Verdict {
    Run,
    Replay(Stored),
    InFlight,
    Reused,
    Full,
}

impl Store {
    pub(crate) fn new(window: Duration, max_entries: usize, max_bytes: usize) -> Self {
        Self {
            window,
            max_entries,
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin(&self, scope: &str, fingerprint: [u8; 32], now: Instant) -> Verdict {
        let mut g = self.lock();
        g.expire(now, self.window);
        match g.entries.get(scope) {
            Some((_, Entry::InFlight)) => return Verdict::InFlight,
            Some((_, Entry::Done(s))) if s.fingerprint == fingerprint => {
                return Verdict::Replay(s.clone());
            }
            Some((_, Entry::Done(_))) => return Verdict::Reused,
            None => {}
        }
        if !g.make_room(self.max_entries.saturating_sub(1), self.max_bytes) {
            return Verdict::Full;
        }
        g.entries.insert(scope.to_owned(), (now, Entry::InFlight));
        g.order.push_back((now, scope.to_owned()));
        // Slots of forgotten answers (408, 429, 5xx) stay in `order` until the window passes
        // them; a stream of such retries would grow it without bound: drop them once they
        // outnumber the live entries.
        if g.order.len() > 2 * self.max_entries {
            g.compact();
        }
        Verdict::Run
    }

    /// Stores the answer of the request that ran under `scope`, or forgets it (`None`).
    fn finish(&self, scope: &str, answer: Option<Stored>) {
        let mut g = self.lock();
        match answer {
            None => {
                g.entries.remove(scope);
            }
            Some(s) => {
                let size = scope.len() + s.body.len();
                if let Some((_, e)) = g.entries.get_mut(scope) {
                    *e = Entry::Done(s);
                    g.bytes += size;
                }
                let (entries, bytes) = (self.max_entries, self.max_bytes);
                g.make_room(entries, bytes);
            }
        }
    }
}

impl Inner {
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < window {
                break;
            }
            let Some((at, name)) = self.order.pop_front() else {
                break;
            };
            // Only the entry this order slot was made for (not a newer one of the same name),
            // and never a request still in flight: it is answered first.
            if matches!(self.entries.get(&name), Some((t, Entry::Done(_))) if *t == at) {
                self.remove(&name);
            } else if matches!(self.entries.get(&name), Some((t, Entry::InFlight)) if *t == at) {
                self.order.push_back((at, name));
                break;
            }
        }
    }

    /// Keeps only the order slots of entries that are still there.
    fn compact(&mut self) {
        let entries = &self.entries;
        self.order
            .retain(|(at, name)| matches!(entries.get(name), Some((t, _)) if t == at));
    }

    fn remove(&mut self, name: &str) {
        if let Some((_, Entry::Done(s))) = self.entries.remove(name) {
            self.bytes = self.bytes.saturating_sub(name.len() + s.body.len());
        }
    }

    /// Evicts the oldest stored answers until at most `entries` entries and `bytes` bytes are
    /// held; false when requests in flight alone are too many.
    fn make_room(&mut self, entries: usize, bytes: usize) -> bool {
        let mut kept = VecDeque::new();
        while self.entries.len() > entries || self.bytes > bytes {
            let Some((at, name)) = self.order.pop_front() else {
                break;
            };
            match self.entries.get(&name) {
                Some((t, Entry::Done(_))) if *t == at => self.remove(&name),
                Some((t, Entry::InFlight)) if *t == at => kept.push_back((at, name)),
                _ => {}
            }
        }
        while let Some(k) = kept.pop_back() {
            self.order.push_front(k);
        }
        self.entries.len() <= entries && self.bytes <= bytes
    }
}

/// Whose request it is: a hash of the credentials it presented (never stored in clear).
fn credentials(headers: &HeaderMap) -> String {
    let mut h = Sha256::new();
    for name in [header::AUTHORIZATION.as_str(), "x-api-key"] {
        if let Some(v) = headers.get(name) {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
    }
    hex::encode(h.finalize())
}

/// The middleware: see the [module docs](self).
pub(crate) async fn layer(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = request
        .headers()
        .get(HEADER)
        .filter(|_| request.method() == axum::http::Method::POST)
    else {
        return next.run(request).await;
    };
    // Without valid credentials the handler answers 401 without reading the body; so must
    // this layer, which would otherwise read and hash it for anyone.
    if !state.auth.authenticated(request.headers()) {
        return next.run(request).await;
    }
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= MAX_KEY_LEN => k.to_owned(),
        _ => {
            return RequestError::BadRequest(format!(
                "the Idempotency-Key header must be 1..={MAX_KEY_LEN} visible ASCII characters"
            ))
            .into_response();
        }
    };
    let scope = format!(
        "{}\u{0}{}\u{0}{}\u{0}{key}",
        credentials(request.headers()),
        request.method(),
        request.uri()
    );
    let (parts, body) = request.into_parts();
    let bytes = match to_bytes(body, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return RequestError::BodyTooLarge {
                limit: state.config.max_body_bytes,
            }
            .into_response();
        }
    };
    let fingerprint: [u8; 32] = Sha256::digest(&bytes).into();
    let store = &state.idempotency;
    match store.begin(&scope, fingerprint, Instant::now()) {
        Verdict::Run => {}
        Verdict::Replay(s) => return replay(s),
        Verdict::InFlight => {
            let mut r = RequestError::IdempotencyConflict(format!(
                "a request with Idempotency-Key {key:?} is still being answered; retry it later"
            ))
            .into_response();
            add_status_headers(StatusCode::TOO_MANY_REQUESTS, &mut r);
            return r;
        }
        Verdict::Reused => {
            return RequestError::IdempotencyReused(format!(
                "Idempotency-Key {key:?} was used for a different request body within the \
                 idempotency window; use a new key for a new request"
            ))
            .into_response();
        }
        Verdict::Full => {
            let mut r = RequestError::IdempotencyStoreFull.into_response();
            add_status_headers(StatusCode::TOO_MANY_REQUESTS, &mut r);
            return r;
        }
    }
    // Its own task: a client that goes away does not cancel the request half-way, so a retry
    // finds its answer instead of producing the records again.
    let request = Request::from_parts(parts, Body::from(bytes));
    let state2 = Arc::clone(&state);
    let task = tokio::spawn(async move {
        let response = next.run(request).await;
        let status = response.status();
        let keep = (status.is_success() || status.is_client_error())
            && status != StatusCode::REQUEST_TIMEOUT
            && status != StatusCode::TOO_MANY_REQUESTS;
        if !keep {
            state2.idempotency.finish(&scope, None);
            return response;
        }
        let (parts, body) = response.into_parts();
        let body = to_bytes(body, usize::MAX).await.unwrap_or_default();
        state2.idempotency.finish(
            &scope,
            Some(Stored {
                status,
                content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
                body: body.clone(),
                fingerprint,
            }),
        );
        Response::from_parts(parts, Body::from(body))
    });
    match task.await {
        Ok(r) => r,
        Err(e) => RequestError::Internal(format!("the request failed: {e}")).into_response(),
    }
}

fn replay(s: Stored) -> Response {
    let mut r = Response::new(Body::from(s.body));
    *r.status_mut() = s.status;
    if let Some(ct) = s.content_type {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    r.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(body: &'static str, fp: u8) -> Stored {
        Stored {
            status: StatusCode::OK,
            content_type: None,
            body: Bytes::from_static(body.as_bytes()),
            fingerprint: [fp; 32],
        }
    }

    #[test]
    fn a_key_runs_once_then_replays_and_refuses_another_body() {
        let s = Store::new(Duration::from_secs(60), 10, 1 << 20);
        let t = Instant::now();
        assert!(matches!(s.begin("a", [1; 32], t), Verdict::Run));
        assert!(matches!(s.begin("a", [1; 32], t), Verdict::InFlight));
        s.finish("a", Some(stored("x", 1)));
        assert!(matches!(s.begin("a", [1; 32], t), Verdict::Replay(r) if r.body == "x"));
        assert!(matches!(s.begin("a", [2; 32], t), Verdict::Reused));
        // Past the window it runs again.
        assert!(matches!(
            s.begin("a", [1; 32], t + Duration::from_secs(61)),
            Verdict::Run
        ));
    }

    #[test]
    fn an_open_outcome_is_forgotten_so_a_retry_runs() {
        let s = Store::new(Duration::from_secs(60), 10, 1 << 20);
        let t = Instant::now();
        assert!(matches!(s.begin("a", [1; 32], t), Verdict::Run));
        s.finish("a", None);
        assert!(matches!(s.begin("a", [1; 32], t), Verdict::Run));
    }

    #[test]
    fn forgotten_answers_do_not_grow_the_order_queue() {
        let s = Store::new(Duration::from_secs(600), 4, 1 << 20);
        let t = Instant::now();
        for i in 0..1_000 {
            let scope = format!("k{i}");
            assert!(matches!(s.begin(&scope, [1; 32], t), Verdict::Run));
            s.finish(&scope, None);
        }
        let g = s.lock();
        assert!(g.entries.is_empty());
        assert!(g.order.len() <= 2 * 4 + 1, "{} order slots", g.order.len());
    }

    #[test]
    fn entries_and_bytes_are_bounded_oldest_answers_first_never_in_flight() {
        let s = Store::new(Duration::from_secs(60), 2, 1 << 20);
        let t = Instant::now();
        assert!(matches!(s.begin("a", [1; 32], t), Verdict::Run));
        s.finish("a", Some(stored("x", 1)));
        assert!(matches!(s.begin("b", [1; 32], t), Verdict::Run));
        // "a" is evicted to make room for "c"; "b" is in flight and stays.
        assert!(matches!(s.begin("c", [1; 32], t), Verdict::Run));
        assert!(matches!(s.begin("a", [1; 32], t), Verdict::Full));
        assert!(matches!(s.begin("b", [1; 32], t), Verdict::InFlight));
        let by_bytes = Store::new(Duration::from_secs(60), 100, 10);
        assert!(matches!(by_bytes.begin("a", [1; 32], t), Verdict::Run));
        by_bytes.finish("a", Some(stored("0123456789abcdef", 1)));
        assert!(
            by_bytes.lock().bytes <= 10,
            "an answer beyond the byte bound is not kept"
        );
    }
}
