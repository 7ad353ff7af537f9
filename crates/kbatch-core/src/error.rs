//! The error taxonomy shared by all kbatch crates.
//!
//! Every failure a caller has to react to falls in one of three classes. Each crate keeps its
//! own `Error` type and implements [`Classify`] so that generic code (retry loops,
//! dead-letter routing, outbox classification) decides from the class alone.

use std::fmt;

/// How a caller should react to a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// May succeed if tried again later: timeouts, leader changes, full queues, transport
    /// errors, a coordinator that moved.
    Retriable,
    /// Will fail again for the same input: a record too large, an unknown topic or partition,
    /// missing authorization, bad serialization. Retry is pointless; route it elsewhere.
    Permanent,
    /// The component itself can no longer work (fenced transactional producer, fatal
    /// idempotence error, a client that was closed). It must be rebuilt.
    Fatal,
}

impl ErrorClass {
    /// Lower-case name, used in metrics labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retriable => "retriable",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Fatal => "fatal",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by every kbatch error so callers can decide without matching on variants.
pub trait Classify {
    /// The failure's class.
    fn class(&self) -> ErrorClass;

    /// True when trying again later may succeed.
    fn is_retriable(&self) -> bool {
        self.class() == ErrorClass::Retriable
    }

    /// True when the component that returned it must be rebuilt.
    fn is_fatal(&self) -> bool {
        self.class() == ErrorClass::Fatal
    }
}
