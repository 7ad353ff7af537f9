#![cfg_attr(
    not(feature = "unstable-codec"),
    allow(
        unreachable_pub,
        dead_code,
        reason = "public only under the unstable-codec feature"
    )
)]

//! Offset-metadata codecs: what the commit metadata says about records completed beyond the
//! committed offset.
//!
//! ```text
//!  committed C          highest seen H
//!      │ o x x o x x x x o x │        o = incomplete (must be processed), x = completed
//!      └── encoded span ─────┘        offsets > H are unknown: processed when polled
//! ```
//!
//! Two formats are read: kbatch's own ([`kbatch`]), and Confluent Parallel Consumer's
//! ([`pc`]), so a group moved from PC to kbatch does not reprocess what PC completed. Both
//! decode into [`OffsetMap`], whose size is bounded by the input, not by the offsets it names:
//! hostile metadata cannot make the decoder allocate without limit.

pub(crate) mod kbatch;
pub(crate) mod pc;

use std::ops::Range;

/// Decoded commit metadata of one partition.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OffsetMap {
    /// The committed offset the metadata describes (the first offset of the span).
    pub base: i64,
    /// One past the highest offset the span covers; offsets from here on are unknown.
    pub end: i64,
    /// Incomplete offsets inside `base..end`, as sorted, disjoint, non-empty ranges. Every
    /// other offset of the span is completed.
    pub incomplete: Vec<Range<i64>>,
}

impl OffsetMap {
    /// A map saying nothing beyond `base`.
    pub fn empty(base: i64) -> Self {
        Self {
            base,
            end: base,
            incomplete: Vec::new(),
        }
    }

    /// Number of incomplete offsets in the span.
    pub fn incomplete_count(&self) -> u64 {
        self.incomplete
            .iter()
            .map(|r| (r.end - r.start) as u64)
            .sum()
    }

    /// True when `offset` lies in the span and is not incomplete.
    pub fn is_completed(&self, offset: i64) -> bool {
        if offset < self.base || offset >= self.end {
            return false;
        }
        let i = self.incomplete.partition_point(|r| r.end <= offset);
        self.incomplete.get(i).is_none_or(|r| r.start > offset)
    }

    /// Builds a map from `base`, `end` and any sorted iterator of distinct incomplete offsets
    /// inside `base..end`.
    pub fn from_incomplete(base: i64, end: i64, incomplete: impl IntoIterator<Item = i64>) -> Self {
        let mut ranges: Vec<Range<i64>> = Vec::new();
        for o in incomplete {
            debug_assert!(o >= base && o < end, "{o} outside {base}..{end}");
            match ranges.last_mut() {
                Some(r) if r.end == o => r.end += 1,
                _ => ranges.push(o..o + 1),
            }
        }
        Self {
            base,
            end,
            incomplete: ranges,
        }
    }

    /// Pushes a run of `len` offsets, incomplete or completed, at the end of the span.
    pub(crate) fn push_run(&mut self, len: i64, incomplete: bool) {
        if len <= 0 {
            return;
        }
        if incomplete {
            match self.incomplete.last_mut() {
                Some(r) if r.end == self.end => r.end += len,
                _ => self.incomplete.push(self.end..self.end + len),
            }
        }
        self.end += len;
    }
}

/// Why metadata could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not base64, or an unknown magic/version byte: not a format kbatch reads.
    #[error("unrecognised offset metadata format: {0}")]
    Unknown(String),
    /// A known format, but the bytes are inconsistent.
    #[error("corrupt offset metadata ({format}): {why}")]
    Corrupt {
        /// Which format claimed it.
        format: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Well formed, but describes another committed offset than the one it is stored with.
    #[error(
        "offset metadata describes offset {described}, but is stored with committed offset {committed}"
    )]
    BaseMismatch {
        /// Offset the metadata's span starts at.
        described: i64,
        /// The committed offset.
        committed: i64,
    },
}

/// Longest span a decoded map may claim: a sane bound on what 4 KiB of metadata can mean, so
/// that corrupt input is refused instead of tracked.
pub(crate) const MAX_SPAN: i64 = 1 << 40;

/// Decodes metadata stored with `committed`: kbatch's format, then PC's; empty means nothing
/// beyond `committed`.
pub fn decode(committed: i64, metadata: &str) -> Result<OffsetMap, DecodeError> {
    if metadata.is_empty() {
        return Ok(OffsetMap::empty(committed));
    }
    if let Some(body) = metadata.strip_prefix(kbatch::PREFIX) {
        let map = kbatch::decode(body)?;
        if map.base != committed {
            return Err(DecodeError::BaseMismatch {
                described: map.base,
                committed,
            });
        }
        return Ok(map);
    }
    pc::decode(committed, metadata)
}

/// Encodes the state of one partition as commit metadata (kbatch format, smallest of its
/// encodings). Empty when nothing is incomplete beyond the committed offset.
pub fn encode(map: &OffsetMap) -> String {
    if map.incomplete.is_empty() || map.end <= map.base {
        return String::new();
    }
    kbatch::encode(map)
}

#[cfg(test)]
mod tests;
