//! Rows as the store reads and writes them: claimed columns in, outcome rows out.

use kbatch_core::Timestamp;
use uuid::Uuid;

use super::{ClaimedEntry, STATE_DEAD, STATE_DELIVERED, STATE_PENDING};
use crate::entry::{Destination, OutboxEntry, decode_headers};
use crate::error::{Error, Result};
use crate::relay::Outcome;
use crate::schema::TableName;

/// Longest `last_error` stored; longer messages are cut (MySQL's TEXT holds 64 KiB).
const MAX_ERROR_CHARS: usize = 2_000;

/// One row of the batch update.
pub(crate) struct OutcomeRow {
    pub(crate) id: Uuid,
    pub(crate) state: i16,
    pub(crate) attempts: i32,
    pub(crate) next_attempt_at: i64,
    pub(crate) last_error: Option<String>,
    pub(crate) delivered_at: Option<i64>,
}

impl OutcomeRow {
    pub(crate) fn new(c: &ClaimedEntry, o: &Outcome, now: Timestamp) -> Self {
        let attempts = i32::try_from(c.attempts.saturating_add(1)).unwrap_or(i32::MAX);
        let cut = |e: &str| e.chars().take(MAX_ERROR_CHARS).collect::<String>();
        let (state, next, err, delivered_at) = match o {
            Outcome::Delivered => (STATE_DELIVERED, now.millis(), None, Some(now.millis())),
            Outcome::Retry {
                next_attempt_at,
                error,
            } => (
                STATE_PENDING,
                next_attempt_at.millis(),
                Some(cut(error)),
                None,
            ),
            Outcome::Dead { last_error } => (STATE_DEAD, now.millis(), Some(cut(last_error)), None),
        };
        Self {
            id: c.entry.id,
            state: state as i16,
            attempts,
            next_attempt_at: next,
            last_error: err,
            delivered_at,
        }
    }
}

/// The columns every claim selects, in this order.
pub(crate) const CLAIM_COLUMNS: &str =
    "id, msg_key, dest_kind, dest, payload, headers, created_at, attempts";

/// A claimed row's columns, decoded by each backend.
pub(crate) type RawRow = (
    Uuid,
    Option<String>,
    i16,
    String,
    Vec<u8>,
    Vec<u8>,
    i64,
    i32,
);

pub(crate) fn to_claimed(table: &TableName, row: RawRow) -> Result<ClaimedEntry> {
    let (id, key, kind, dest, payload, headers, created_at, attempts) = row;
    let corrupt = |reason: String| Error::CorruptEntry {
        id: id.to_string(),
        table: table.to_string(),
        reason,
    };
    let destination = Destination::from_columns(kind, dest).ok_or_else(|| {
        corrupt(format!(
            "dest_kind {kind} is neither 0 (Kafka) nor 1 (HTTP)"
        ))
    })?;
    let headers = decode_headers(&headers).map_err(corrupt)?;
    Ok(ClaimedEntry {
        entry: OutboxEntry {
            id,
            key,
            destination,
            payload: payload.into(),
            headers,
            created_at: Timestamp(created_at),
        },
        attempts: u32::try_from(attempts).unwrap_or(0),
    })
}
