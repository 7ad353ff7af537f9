//! Kafka offsets.

use std::fmt;

/// The position of a record in a partition. Committed offsets follow Kafka's convention:
/// the committed value is the offset of the *next* record to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Offset(pub i64);

impl Offset {
    /// The offset after this one: what to commit once this record is done.
    #[must_use]
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }

    /// The raw value.
    pub fn value(self) -> i64 {
        self.0
    }
}

impl From<i64> for Offset {
    fn from(v: i64) -> Self {
        Offset(v)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
