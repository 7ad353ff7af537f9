//! The pure part of the relay: what one delivery attempt means for its entry.
//!
//! ```text
//!  (attempts so far, Attempt, now, jitter sample) ──decide──► Outcome
//!     Delivered                                          ──► Delivered
//!     Failed{Permanent}                                  ──► Dead{last_error}
//!     Failed{Retriable|Fatal}, attempts+1 <  max_attempts ──► Retry{next_attempt_at = now + backoff}
//!     Failed{Retriable|Fatal}, attempts+1 >= max_attempts ──► Dead{last_error}
//! ```
//!
//! No clock and no randomness inside: the driver passes both, so tests run on a fixed clock.

use std::time::Duration;

use kbatch_core::{ErrorClass, Timestamp};

use crate::error::{Error, Result};

/// What a deliverer reports for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The destination acknowledged it.
    Delivered,
    /// It was not delivered.
    Failed {
        /// Whether trying again may help. `Fatal` (the deliverer itself is broken) is
        /// retried like `Retriable`: the entry is not at fault.
        class: ErrorClass,
        /// The error, stored in `last_error`.
        error: String,
    },
}

impl Attempt {
    /// A failure of `class` with `error`.
    pub fn failed(class: ErrorClass, error: impl Into<String>) -> Self {
        Attempt::Failed {
            class,
            error: error.into(),
        }
    }
}

/// What the relay writes back for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done; never claimed again.
    Delivered,
    /// Pending again, due at `next_attempt_at`.
    Retry {
        /// When it becomes due.
        next_attempt_at: Timestamp,
        /// The error of this attempt.
        error: String,
    },
    /// Given up: a permanent error or `max_attempts` reached. Kept with its error.
    Dead {
        /// The error of the last attempt.
        last_error: String,
    },
}

/// Exponential backoff with jitter, capped, and a limit on attempts.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts before an entry is dead, the first included. Default 10; 1..=1000.
    pub max_attempts: u32,
    /// Delay after the first failure. Default 500 ms; at least 1 ms.
    pub initial_backoff: Duration,
    /// Longest delay. Default 5 min; at least `initial_backoff`, at most 7 days.
    pub max_backoff: Duration,
    /// Fraction of each delay drawn at random, so relays that failed together do not retry
    /// together: the delay lies in `[d × (1 − jitter), d]`. Default 0.5; 0.0..=1.0.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// Checks every field against its documented range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: String, range: &str| {
            Err(Error::Config(format!(
                "retry.{field} = {value} is out of range; allowed: {range}"
            )))
        };
        if !(1..=1000).contains(&self.max_attempts) {
            return bad("max_attempts", self.max_attempts.to_string(), "1..=1000");
        }
        if self.initial_backoff < Duration::from_millis(1) {
            return bad(
                "initial_backoff",
                format!("{:?}", self.initial_backoff),
                ">= 1ms",
            );
        }
        if self.max_backoff < self.initial_backoff
            || self.max_backoff > Duration::from_secs(7 * 86_400)
        {
            return bad(
                "max_backoff",
                format!("{:?}", self.max_backoff),
                "initial_backoff..=7 days",
            );
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad("jitter", self.jitter.to_string(), "0.0..=1.0");
        }
        Ok(())
    }

    /// The delay after the `failures`-th failure (1-based): `initial × 2^(failures−1)`,
    /// capped at `max_backoff`, less `jitter × sample` of it. `sample` is in `[0, 1)`.
    pub fn backoff(&self, failures: u32, sample: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(63);
        let base = self
            .initial_backoff
            .checked_mul(1u32.checked_shl(doublings.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff);
        let cut = self.jitter * sample.clamp(0.0, 1.0);
        base.mul_f64(1.0 - cut)
    }

    /// The outcome of `attempt`, the `attempts_before + 1`-th, made at `now`.
    pub fn decide(
        &self,
        attempts_before: u32,
        attempt: Attempt,
        now: Timestamp,
        sample: f64,
    ) -> Outcome {
        match attempt {
            Attempt::Delivered => Outcome::Delivered,
            Attempt::Failed {
                class: ErrorClass::Permanent,
                error,
            } => Outcome::Dead { last_error: error },
            Attempt::Failed { error, .. } => {
                let failures = attempts_before.saturating_add(1);
                if failures >= self.max_attempts {
                    return Outcome::Dead {
                        last_error: format!("{error} (gave up after {failures} attempts)"),
                    };
                }
                let delay = self.backoff(failures, sample);
                let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                Outcome::Retry {
                    next_attempt_at: Timestamp(now.millis().saturating_add(delay_ms.max(1))),
                    error,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> impl Strategy<Value = RetryPolicy> {
        (1u32..50, 1u64..10_000, 0u64..1_000_000, 0.0f64..=1.0).prop_map(
            |(max, init, extra, jitter)| RetryPolicy {
                max_attempts: max,
                initial_backoff: Duration::from_millis(init),
                max_backoff: Duration::from_millis(init + extra),
                jitter,
            },
        )
    }

    proptest! {
        #[test]
        fn backoff_stays_within_jitter_band_and_cap(p in policy(), failures in 1u32..200, sample in 0.0f64..1.0) {
            prop_assert!(p.validate().is_ok());
            let d = p.backoff(failures, sample);
            let exp = p.initial_backoff.as_secs_f64() * 2f64.powi(failures as i32 - 1);
            let base = exp.min(p.max_backoff.as_secs_f64());
            prop_assert!(d <= p.max_backoff, "{d:?} over the cap");
            prop_assert!(d.as_secs_f64() <= base * (1.0 + 1e-9) + 1e-9);
            prop_assert!(d.as_secs_f64() >= base * (1.0 - p.jitter) * (1.0 - 1e-9) - 1e-9);
        }

        #[test]
        fn without_jitter_backoff_never_shrinks(p in policy(), failures in 1u32..200) {
            let p = RetryPolicy { jitter: 0.0, ..p };
            prop_assert!(p.backoff(failures + 1, 0.5) >= p.backoff(failures, 0.5));
        }

        #[test]
        fn retriable_failures_retry_in_the_future_until_max_then_die(
            p in policy(), before in 0u32..60, now in 0i64..1i64 << 45, sample in 0.0f64..1.0,
        ) {
            let out = p.decide(before, Attempt::failed(ErrorClass::Retriable, "boom"), Timestamp(now), sample);
            if before + 1 >= p.max_attempts {
                let is_dead = matches!(&out, Outcome::Dead { last_error } if last_error.contains("boom"));
                prop_assert!(is_dead, "{out:?}");
            } else {
                match out {
                    Outcome::Retry { next_attempt_at, error } => {
                        prop_assert!(next_attempt_at.millis() > now);
                        let cap = i64::try_from(p.max_backoff.as_millis()).unwrap();
                        prop_assert!(next_attempt_at.millis() <= now + cap.max(1));
                        prop_assert_eq!(error, "boom");
                    }
                    other => prop_assert!(false, "expected Retry, got {other:?}"),
                }
            }
        }

        #[test]
        fn permanent_failures_die_at_once_and_deliveries_are_final(
            p in policy(), before in 0u32..60, sample in 0.0f64..1.0,
        ) {
            prop_assert_eq!(
                p.decide(before, Attempt::failed(ErrorClass::Permanent, "too large"), Timestamp(5), sample),
                Outcome::Dead { last_error: "too large".into() }
            );
            prop_assert_eq!(p.decide(before, Attempt::Delivered, Timestamp(5), sample), Outcome::Delivered);
        }
    }

    #[test]
    fn backoff_doubles_from_initial_to_the_cap() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1_000),
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let got: Vec<u128> = (1..=6).map(|f| p.backoff(f, 0.0).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(p.backoff(u32::MAX, 0.0), Duration::from_millis(1_000));
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let e = RetryPolicy {
            jitter: 1.5,
            ..RetryPolicy::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("retry.jitter = 1.5"), "{e}");
        let e = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("max_attempts"), "{e}");
    }
}
