//! Records and observations to and from table rows, checked both ways: what cannot be stored
//! is refused on save, and a nonsense row (another tool's write, a hand edit) is skipped on load.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::Value;

use super::{LevelRecord, Observation};
use crate::levels::{BatchSettings, LevelId};

/// A value that is not what its field allows.
#[derive(Debug)]
pub(super) struct Invalid {
    pub(super) field: &'static str,
    pub(super) value: String,
    pub(super) expected: &'static str,
}

impl Invalid {
    fn new(field: &'static str, value: impl ToString, expected: &'static str) -> Self {
        Self {
            field,
            value: value.to_string(),
            expected,
        }
    }
}

const LEVEL: &str = "a level from 1 to 255";
const EVENTS: &str = "1 to 4294967295 events";
const NANOS: &str = "a non-negative integer of nanoseconds (at most about 292 years)";
const TIME: &str = "a time from 1970 to 2262";
const RATE: &str = "a finite number of events/s, at least 0";
const FILL: &str = "a fraction from 0 to 1";
const COUNT: &str = "a count up to 9223372036854775807";

/// A [`LevelRecord`] as its row's values, in `UPSERT_LEVEL`'s order after the profile.
pub(super) struct LevelRow {
    pub(super) level: i64,
    pub(super) max_events: i64,
    pub(super) linger_ns: i64,
    pub(super) expected_throughput: f64,
    pub(super) p99_ns: i64,
    pub(super) observations: i64,
    pub(super) updated_at_ns: i64,
}

/// An [`Observation`] as its row's values, in `INSERT_OBSERVATION`'s order after the profile.
pub(super) struct ObservationRow {
    pub(super) level: i64,
    pub(super) max_events: i64,
    pub(super) linger_ns: i64,
    pub(super) explored: bool,
    pub(super) throughput: f64,
    pub(super) p50_ns: i64,
    pub(super) p99_ns: i64,
    pub(super) fill: f64,
    pub(super) at_ns: i64,
}

pub(super) fn encode_level(r: &LevelRecord) -> Result<LevelRow, Invalid> {
    Ok(LevelRow {
        level: level_in(r.level)?,
        max_events: events_in(r.best.max_events, "best.max_events")?,
        linger_ns: nanos_in(r.best.linger, "best.linger")?,
        expected_throughput: rate_in(r.expected_throughput, "expected_throughput")?,
        p99_ns: nanos_in(r.p99, "p99")?,
        observations: i64::try_from(r.observations)
            .map_err(|_| Invalid::new("observations", r.observations, COUNT))?,
        updated_at_ns: time_in(r.updated_at, "updated_at")?,
    })
}

pub(super) fn encode_observation(o: &Observation) -> Result<ObservationRow, Invalid> {
    if !(0.0..=1.0).contains(&o.fill) {
        return Err(Invalid::new("fill", o.fill, FILL));
    }
    Ok(ObservationRow {
        level: level_in(o.level)?,
        max_events: events_in(o.settings.max_events, "settings.max_events")?,
        linger_ns: nanos_in(o.settings.linger, "settings.linger")?,
        explored: o.explored,
        throughput: rate_in(o.throughput, "throughput")?,
        p50_ns: nanos_in(o.p50, "p50")?,
        p99_ns: nanos_in(o.p99, "p99")?,
        fill: o.fill,
        at_ns: time_in(o.at, "at")?,
    })
}

/// A row of `SELECT_LEVELS`.
pub(super) fn decode_level(v: &[Value]) -> Result<LevelRecord, Invalid> {
    let [
        level,
        max_events,
        linger,
        thr,
        p99,
        observations,
        updated_at,
    ] = v
    else {
        return Err(Invalid::new("row", v.len(), "7 columns"));
    };
    Ok(LevelRecord {
        level: level_out(level)?,
        best: BatchSettings {
            max_events: events_out(max_events, "max_events")?,
            linger: nanos_out(linger, "linger_ns")?,
        },
        expected_throughput: real_out(thr, "expected_throughput", RATE, |x| x >= 0.0)?,
        p99: nanos_out(p99, "p99_ns")?,
        observations: u64::try_from(int_out(observations, "observations", COUNT)?)
            .map_err(|_| Invalid::new("observations", show(observations), COUNT))?,
        updated_at: time_out(updated_at, "updated_at_ns")?,
    })
}

/// A row of `SELECT_OBSERVATIONS`.
pub(super) fn decode_observation(v: &[Value]) -> Result<Observation, Invalid> {
    let [level, max_events, linger, explored, thr, p50, p99, fill, at] = v else {
        return Err(Invalid::new("row", v.len(), "9 columns"));
    };
    let explored = match int_out(explored, "explored", "0 or 1")? {
        0 => false,
        1 => true,
        x => return Err(Invalid::new("explored", x, "0 or 1")),
    };
    Ok(Observation {
        level: level_out(level)?,
        settings: BatchSettings {
            max_events: events_out(max_events, "max_events")?,
            linger: nanos_out(linger, "linger_ns")?,
        },
        explored,
        throughput: real_out(thr, "throughput", RATE, |x| x >= 0.0)?,
        p50: nanos_out(p50, "p50_ns")?,
        p99: nanos_out(p99, "p99_ns")?,
        fill: real_out(fill, "fill", FILL, |x| (0.0..=1.0).contains(&x))?,
        at: time_out(at, "at_ns")?,
    })
}

/// The level column of a row, as far as it can be read, for naming the row in a warning.
pub(super) fn level_of(v: &[Value]) -> String {
    v.first().map_or_else(|| "?".to_owned(), show)
}

fn level_in(l: LevelId) -> Result<i64, Invalid> {
    if l.0 == 0 {
        return Err(Invalid::new("level", l.0, LEVEL));
    }
    Ok(i64::from(l.0))
}

fn events_in(n: u32, field: &'static str) -> Result<i64, Invalid> {
    if n == 0 {
        return Err(Invalid::new(field, n, EVENTS));
    }
    Ok(i64::from(n))
}

fn nanos_in(d: Duration, field: &'static str) -> Result<i64, Invalid> {
    i64::try_from(d.as_nanos()).map_err(|_| Invalid::new(field, format!("{d:?}"), NANOS))
}

fn rate_in(x: f64, field: &'static str) -> Result<f64, Invalid> {
    if x.is_finite() && x >= 0.0 {
        Ok(x)
    } else {
        Err(Invalid::new(field, x, RATE))
    }
}

fn time_in(t: SystemTime, field: &'static str) -> Result<i64, Invalid> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .ok_or_else(|| Invalid::new(field, format!("{t:?}"), TIME))
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "NULL".to_owned(),
        Value::Integer(i) => i.to_string(),
        Value::Real(x) => x.to_string(),
        Value::Text(s) => format!("{s:?}"),
        Value::Blob(b) => format!("a {}-byte blob", b.len()),
    }
}

fn int_out(v: &Value, field: &'static str, expected: &'static str) -> Result<i64, Invalid> {
    match v {
        Value::Integer(i) => Ok(*i),
        other => Err(Invalid::new(field, show(other), expected)),
    }
}

fn level_out(v: &Value) -> Result<LevelId, Invalid> {
    let i = int_out(v, "level", LEVEL)?;
    match u8::try_from(i) {
        Ok(l) if l >= 1 => Ok(LevelId(l)),
        _ => Err(Invalid::new("level", i, LEVEL)),
    }
}

fn events_out(v: &Value, field: &'static str) -> Result<u32, Invalid> {
    let i = int_out(v, field, EVENTS)?;
    match u32::try_from(i) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(Invalid::new(field, i, EVENTS)),
    }
}

fn nanos_out(v: &Value, field: &'static str) -> Result<Duration, Invalid> {
    let i = int_out(v, field, NANOS)?;
    u64::try_from(i)
        .map(Duration::from_nanos)
        .map_err(|_| Invalid::new(field, i, NANOS))
}

fn time_out(v: &Value, field: &'static str) -> Result<SystemTime, Invalid> {
    let i = int_out(v, field, TIME)?;
    u64::try_from(i)
        .map(|n| UNIX_EPOCH + Duration::from_nanos(n))
        .map_err(|_| Invalid::new(field, i, TIME))
}

fn real_out(
    v: &Value,
    field: &'static str,
    expected: &'static str,
    ok: impl Fn(f64) -> bool,
) -> Result<f64, Invalid> {
    // SQLite may hand back an integer from a REAL column (written by another tool).
    let x = match v {
        Value::Real(x) => *x,
        Value::Integer(i) => *i as f64,
        other => return Err(Invalid::new(field, show(other), expected)),
    };
    if x.is_finite() && ok(x) {
        Ok(x)
    } else {
        Err(Invalid::new(field, x, expected))
    }
}
