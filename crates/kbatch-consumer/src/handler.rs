//! What users plug in: handlers, their errors, and the retry delay policy.
//!
//! A [`Handler`] is an async closure `|record| async { … }` or a type of yours with an
//! `async fn handle(&self, record)`: shared state lives in `self`, cloned by no one.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kbatch_core::{Classify, ConsumedRecord, ErrorClass};

/// How a handler failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// Try again after the retry delay (a timeout, a busy downstream service).
    Retriable,
    /// Will fail again: dead-letter it (or skip it, without a dead-letter target).
    Permanent,
    /// The handler panicked. Retried like a retriable failure; the consumer keeps running.
    Panicked,
}

impl FailureKind {
    fn as_str(self) -> &'static str {
        match self {
            FailureKind::Retriable => "retriable",
            FailureKind::Permanent => "permanent",
            FailureKind::Panicked => "panicked",
        }
    }
}

/// Why a handler did not process a record: how it failed, and the error that caused it
/// (kept as the [`source`](std::error::Error::source), so nothing of it is lost on the way to
/// logs and dead-letter headers).
///
/// ```
/// use kbatch_consumer::{FailureKind, HandlerError};
///
/// let e = HandlerError::retriable(std::io::Error::other("connection reset"));
/// assert_eq!(e.kind(), FailureKind::Retriable);
/// assert_eq!(e.to_string(), "retriable: connection reset");
/// assert!(std::error::Error::source(&e).is_some());
/// assert!(!HandlerError::permanent("malformed").is_retriable());
/// ```
#[derive(Clone)]
pub struct HandlerError {
    kind: FailureKind,
    source: Arc<dyn std::error::Error + Send + Sync>,
}

impl HandlerError {
    /// A failure worth retrying, caused by `error` (an error value, or a message).
    pub fn retriable(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(FailureKind::Retriable, error)
    }

    /// A failure that will happen again, caused by `error` (an error value, or a message).
    pub fn permanent(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(FailureKind::Permanent, error)
    }

    pub(crate) fn panicked(message: String) -> Self {
        Self::new(FailureKind::Panicked, message)
    }

    fn new(kind: FailureKind, error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            kind,
            source: Arc::from(error.into()),
        }
    }

    /// How it failed.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// True when the record is tried again after the retry delay (retriable, or a panic).
    pub fn is_retriable(&self) -> bool {
        self.kind != FailureKind::Permanent
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.source)
    }
}

impl std::fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl Classify for HandlerError {
    fn class(&self) -> ErrorClass {
        match self.kind {
            FailureKind::Permanent => ErrorClass::Permanent,
            FailureKind::Retriable | FailureKind::Panicked => ErrorClass::Retriable,
        }
    }
}

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// Processes one record. Implemented for async closures (`|record| async move { … }`) and for
/// your own types:
///
/// ```
/// use kbatch_consumer::{Handler, HandlerError, HandlerResult};
/// use kbatch_core::ConsumedRecord;
///
/// struct Geocoder {
///     endpoint: String, // and a connection pool, a cache…: shared through `&self`
/// }
///
/// impl Handler for Geocoder {
///     async fn handle(&self, record: ConsumedRecord) -> HandlerResult {
///         let fix = record.value.ok_or_else(|| HandlerError::permanent("empty fix"))?;
///         let _ = (&self.endpoint, fix); // call the service here
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Processes `record`. An `Err` is retried or dead-lettered as its kind says.
    fn handle(&self, record: ConsumedRecord) -> impl Future<Output = HandlerResult> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(ConsumedRecord) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send,
{
    fn handle(&self, record: ConsumedRecord) -> impl Future<Output = HandlerResult> + Send {
        self(record)
    }
}

/// Processes up to a batch of records that respect the ordering (records of one key or
/// partition appear in offset order); the batch succeeds or fails as a whole. Implemented for
/// async closures over `Vec<ConsumedRecord>` and for your own types.
pub trait BatchHandler: Send + Sync + 'static {
    /// Processes `records`.
    fn handle_batch(
        &self,
        records: Vec<ConsumedRecord>,
    ) -> impl Future<Output = HandlerResult> + Send;
}

impl<F, Fut> BatchHandler for F
where
    F: Fn(Vec<ConsumedRecord>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send,
{
    fn handle_batch(
        &self,
        records: Vec<ConsumedRecord>,
    ) -> impl Future<Output = HandlerResult> + Send {
        self(records)
    }
}

/// Called with a record that failed for good, its last error and attempts made; `Ok` marks it done.
pub(crate) type DeadLetterFn = Arc<
    dyn Fn(ConsumedRecord, HandlerError, u32) -> BoxFuture<'static, HandlerResult> + Send + Sync,
>;

/// The user's processing, type-erased: every shape becomes "records in, future out".
pub(crate) trait Process: Send + Sync + 'static {
    fn process(self: Arc<Self>, records: Vec<ConsumedRecord>) -> BoxFuture<'static, HandlerResult>;
}

/// A [`Handler`], one record at a time.
pub(crate) struct One<H>(pub(crate) H);

impl<H: Handler> Process for One<H> {
    fn process(
        self: Arc<Self>,
        mut records: Vec<ConsumedRecord>,
    ) -> BoxFuture<'static, HandlerResult> {
        Box::pin(async move {
            match records.pop() {
                Some(r) => self.0.handle(r).await,
                None => Ok(()),
            }
        })
    }
}

/// A [`BatchHandler`].
pub(crate) struct Batch<H>(pub(crate) H);

impl<H: BatchHandler> Process for Batch<H> {
    fn process(self: Arc<Self>, records: Vec<ConsumedRecord>) -> BoxFuture<'static, HandlerResult> {
        Box::pin(async move { self.0.handle_batch(records).await })
    }
}

/// A blocking function, on the runtime's blocking pool.
pub(crate) struct Blocking<F>(pub(crate) Arc<F>);

impl<F> Process for Blocking<F>
where
    F: Fn(ConsumedRecord) -> HandlerResult + Send + Sync + 'static,
{
    fn process(
        self: Arc<Self>,
        mut records: Vec<ConsumedRecord>,
    ) -> BoxFuture<'static, HandlerResult> {
        let f = Arc::clone(&self.0);
        Box::pin(async move {
            let Some(r) = records.pop() else {
                return Ok(());
            };
            match tokio::task::spawn_blocking(move || f(r)).await {
                Ok(result) => result,
                Err(e) if e.is_panic() => Err(HandlerError::panicked(panic_text(&*e.into_panic()))),
                Err(e) => Err(HandlerError::retriable(format!(
                    "blocking handler task: {e}"
                ))),
            }
        })
    }
}

pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// Delay before retry number `attempt` (1 = the first retry) of a failed record.
pub trait RetryPolicy: Send + Sync + 'static {
    /// The delay.
    fn delay(&self, attempt: u32) -> Duration;
}

/// Exponential backoff with jitter, capped: `initial × multiplier^(attempt-1)`, at most `max`,
/// then scaled by a random factor in `1 ± jitter`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct ExponentialBackoff {
    /// First delay. Default 100 ms.
    pub initial: Duration,
    /// Cap. Default 30 s.
    pub max: Duration,
    /// Growth per attempt. Default 2.
    pub multiplier: f64,
    /// Relative jitter, 0..=1. Default 0.2.
    pub jitter: f64,
}

impl Default for ExponentialBackoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl ExponentialBackoff {
    /// Backoff from `initial`, doubling, capped at `max`, with 20 % jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            ..Self::default()
        }
    }

    /// Sets the growth per attempt.
    #[must_use]
    pub fn with_multiplier(mut self, m: f64) -> Self {
        self.multiplier = m;
        self
    }

    /// Sets the relative jitter (0 = none).
    #[must_use]
    pub fn with_jitter(mut self, j: f64) -> Self {
        self.jitter = j;
        self
    }
}

impl RetryPolicy for ExponentialBackoff {
    fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let base = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        let j = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + j * (2.0 * rand::random::<f64>() - 1.0);
        Duration::from_secs_f64((base * factor).clamp(0.0, self.max.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_bounds() {
        let b = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            let d1 = b.delay(1).as_secs_f64();
            assert!((0.08..=0.12).contains(&d1), "{d1}");
            let d3 = b.delay(3).as_secs_f64();
            assert!((0.32..=0.48).contains(&d3), "{d3}");
            assert!(b.delay(50) <= Duration::from_secs(1));
        }
        let none = b.with_jitter(0.0);
        assert_eq!(none.delay(2), Duration::from_millis(200));
    }

    #[test]
    fn errors_keep_their_source_and_kind() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream slow");
        let e = HandlerError::retriable(io);
        assert_eq!(e.kind(), FailureKind::Retriable);
        assert!(e.is_retriable() && e.is_retriable() == (e.class() == ErrorClass::Retriable));
        let src = std::error::Error::source(&e).unwrap();
        assert_eq!(
            src.downcast_ref::<std::io::Error>().unwrap().kind(),
            std::io::ErrorKind::TimedOut
        );
        let p = HandlerError::panicked("boom".into());
        assert!(p.is_retriable());
        assert_eq!(p.to_string(), "panicked: boom");
        assert_eq!(
            HandlerError::permanent("bad").class(),
            ErrorClass::Permanent
        );
    }
}
