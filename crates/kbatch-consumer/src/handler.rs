//! What users plug in: handlers, their errors, and the retry delay policy.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kbatch_core::{Classify, ConsumedRecord, ErrorClass};

/// Why a handler did not process a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// Try again after the retry delay (a timeout, a busy downstream service).
    #[error("retriable: {0}")]
    Retriable(String),
    /// Will fail again: dead-letter it (or skip it, without a dead-letter target).
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandlerError {
    /// A retriable failure.
    pub fn retriable(e: impl std::fmt::Display) -> Self {
        HandlerError::Retriable(e.to_string())
    }

    /// A permanent failure.
    pub fn permanent(e: impl std::fmt::Display) -> Self {
        HandlerError::Permanent(e.to_string())
    }
}

impl Classify for HandlerError {
    fn class(&self) -> ErrorClass {
        match self {
            HandlerError::Retriable(_) => ErrorClass::Retriable,
            HandlerError::Permanent(_) => ErrorClass::Permanent,
        }
    }
}

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

pub(crate) type AsyncFn =
    Arc<dyn Fn(ConsumedRecord) -> BoxFuture<'static, HandlerResult> + Send + Sync>;
pub(crate) type BlockingFn = Arc<dyn Fn(ConsumedRecord) -> HandlerResult + Send + Sync>;
pub(crate) type BatchFn =
    Arc<dyn Fn(Vec<ConsumedRecord>) -> BoxFuture<'static, HandlerResult> + Send + Sync>;
/// Called with a record that failed for good, its last error and attempts made; `Ok` marks it done.
pub(crate) type DeadLetterFn = Arc<
    dyn Fn(ConsumedRecord, HandlerError, u32) -> BoxFuture<'static, HandlerResult> + Send + Sync,
>;

/// The user's processing function, in one of three shapes.
#[derive(Clone)]
pub(crate) enum Handler {
    /// Async, many thousands in flight on the runtime.
    Async(AsyncFn),
    /// Blocking, on the runtime's bounded blocking pool.
    Blocking(BlockingFn),
    /// Async over up to `n` records that respect the ordering.
    Batch(BatchFn, usize),
}

impl Handler {
    pub(crate) fn from_async<F, Fut>(f: F) -> Self
    where
        F: Fn(ConsumedRecord) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Handler::Async(Arc::new(move |r| Box::pin(f(r))))
    }

    pub(crate) fn batch_size(&self) -> usize {
        match self {
            Handler::Batch(_, n) => *n,
            _ => 1,
        }
    }
}

/// Delay before retry number `attempt` (1 = the first retry) of a failed record.
pub trait RetryPolicy: Send + Sync + 'static {
    /// The delay.
    fn delay(&self, attempt: u32) -> Duration;
}

/// Exponential backoff with jitter, capped: `initial × multiplier^(attempt-1)`, at most `max`,
/// then scaled by a random factor in `1 ± jitter`.
#[derive(Clone, Copy, Debug, PartialEq)]
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
        let b = ExponentialBackoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.2,
        };
        for _ in 0..100 {
            let d1 = b.delay(1).as_secs_f64();
            assert!((0.08..=0.12).contains(&d1), "{d1}");
            let d3 = b.delay(3).as_secs_f64();
            assert!((0.32..=0.48).contains(&d3), "{d3}");
            assert!(b.delay(50) <= Duration::from_secs(1));
        }
        let none = ExponentialBackoff { jitter: 0.0, ..b };
        assert_eq!(none.delay(2), Duration::from_millis(200));
    }
}
