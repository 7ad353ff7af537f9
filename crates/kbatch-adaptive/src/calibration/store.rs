//! [`CalibrationStore`]: one SQLite connection behind a mutex, opened lazily while locked.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, params};

use super::rows::{self, Invalid};
use super::schema::{self, Init};
use super::{
    CalibrationError, DEFAULT_BUSY_TIMEOUT, LevelRecord, MAX_OBSERVATIONS_PER_LEVEL, Observation,
    Opened,
};
use crate::levels::LevelId;

const FILE_NAME: &str = "calibration.sqlite3";

/// The calibration store: learned settings per (profile, level) and recent observations.
///
/// `Send + Sync`; calls are synchronous and serialized on one connection. Each call waits at
/// most the busy timeout for another process's lock. A store that is disabled — made by
/// [`disabled`](Self::disabled), or opened on a file it must not or cannot use — remembers
/// nothing: writes succeed without effect and reads return nothing.
pub struct CalibrationStore {
    file: Option<File>,
}

struct File {
    path: PathBuf,
    busy_timeout: Duration,
    state: Mutex<State>,
}

enum State {
    /// Not yet usable: the file was locked; tried again on each call.
    Pending,
    Ready(Connection),
    Disabled,
}

impl CalibrationStore {
    /// Where the store lives unless told otherwise: `$KBATCH_DATA_DIR/calibration.sqlite3`, else
    /// `$XDG_DATA_HOME/kbatch/calibration.sqlite3` (when absolute, as the XDG spec asks), else
    /// `$HOME/.local/share/kbatch/calibration.sqlite3`, else the same under the temporary
    /// directory.
    pub fn default_path() -> PathBuf {
        default_path_from(|k| std::env::var_os(k))
    }

    /// Opens (or creates) the store at `path`, waiting at most [`DEFAULT_BUSY_TIMEOUT`] for
    /// another process's lock. See [`open_with`](Self::open_with).
    pub fn open(path: &Path) -> Opened {
        Self::open_with(path, DEFAULT_BUSY_TIMEOUT)
    }

    /// Opens (or creates, with its directory) the store at `path`. Never panics and never
    /// waits much longer than `busy_timeout`.
    ///
    /// The warning, when there is one, says what happened to the file:
    /// - [`CalibrationError::Locked`]: another process holds it; the store tries again on each
    ///   call and works as soon as the lock is gone.
    /// - [`CalibrationError::Corrupt`]: it was moved aside and a fresh, empty store started.
    /// - [`CalibrationError::NewerSchema`], `CreateDir`, `CorruptStuck`, `Sqlite`: the store is
    ///   disabled and the file left as it was.
    pub fn open_with(path: &Path, busy_timeout: Duration) -> Opened {
        let (state, warning) = match schema::open_ready(path, busy_timeout) {
            Init::Ready(conn, warning) => (State::Ready(conn), warning),
            Init::Retry(e) => (State::Pending, Some(e)),
            Init::Disabled(e) => (State::Disabled, Some(e)),
        };
        let store = Self {
            file: Some(File {
                path: path.to_path_buf(),
                busy_timeout,
                state: Mutex::new(state),
            }),
        };
        Opened { store, warning }
    }

    /// A store without a file: remembers nothing, `load` returns nothing.
    pub fn disabled() -> Self {
        Self { file: None }
    }

    /// The file behind the store; `None` for [`disabled`](Self::disabled). A store opened on a
    /// file it could not use still names it (see [`is_enabled`](Self::is_enabled)).
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// Whether the store reads and writes its file (or will, once another process's lock is
    /// gone).
    pub fn is_enabled(&self) -> bool {
        self.file.as_ref().is_some_and(|f| {
            !matches!(
                *f.state.lock().unwrap_or_else(PoisonError::into_inner),
                State::Disabled
            )
        })
    }

    /// What was learned for `profile`, lowest level first. Rows that make no sense (a level
    /// outside 1..=255, `max_events` 0, negative values) are skipped with a warning in the log.
    pub fn load(&self, profile: &str) -> Result<Vec<LevelRecord>, CalibrationError> {
        let out = self.with_conn("load", |conn, path| {
            let mut stmt = conn.prepare_cached(schema::SELECT_LEVELS)?;
            let raw = stmt
                .query_map([profile], |r| values(r, 7))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(keep_sound(raw, rows::decode_level, path, profile, "levels"))
        })?;
        Ok(out.unwrap_or_default())
    }

    /// Stores what was learned for `profile`: each record replaces that level's earlier one;
    /// other levels are kept. One transaction: all or nothing.
    pub fn save(&self, profile: &str, levels: &[LevelRecord]) -> Result<(), CalibrationError> {
        let encoded = levels
            .iter()
            .map(|r| rows::encode_level(r).map_err(|e| invalid(profile, r.level, e)))
            .collect::<Result<Vec<_>, _>>()?;
        self.with_conn("save", |conn, _| {
            let tx = conn.transaction_with_behavior(schema::WRITE)?;
            {
                let mut stmt = tx.prepare_cached(schema::UPSERT_LEVEL)?;
                for r in &encoded {
                    stmt.execute(params![
                        profile,
                        r.level,
                        r.max_events,
                        r.linger_ns,
                        r.expected_throughput,
                        r.p99_ns,
                        r.observations,
                        r.updated_at_ns
                    ])?;
                }
            }
            tx.commit()
        })?;
        Ok(())
    }

    /// Appends observations (the slice's last is the newest), then keeps only the newest
    /// [`MAX_OBSERVATIONS_PER_LEVEL`] of each (profile, level) they touched. One transaction.
    pub fn record(&self, profile: &str, obs: &[Observation]) -> Result<(), CalibrationError> {
        let encoded = obs
            .iter()
            .map(|o| rows::encode_observation(o).map_err(|e| invalid(profile, o.level, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut touched: Vec<i64> = encoded.iter().map(|o| o.level).collect();
        touched.sort_unstable();
        touched.dedup();
        let keep = i64::try_from(MAX_OBSERVATIONS_PER_LEVEL).unwrap_or(i64::MAX);
        self.with_conn("record", |conn, _| {
            let tx = conn.transaction_with_behavior(schema::WRITE)?;
            {
                let mut insert = tx.prepare_cached(schema::INSERT_OBSERVATION)?;
                for o in &encoded {
                    insert.execute(params![
                        profile,
                        o.level,
                        o.max_events,
                        o.linger_ns,
                        o.explored,
                        o.throughput,
                        o.p50_ns,
                        o.p99_ns,
                        o.fill,
                        o.at_ns
                    ])?;
                }
                let mut prune = tx.prepare_cached(schema::PRUNE_OBSERVATIONS)?;
                for level in &touched {
                    prune.execute(params![profile, level, keep])?;
                }
            }
            tx.commit()
        })?;
        Ok(())
    }

    /// The newest `limit` observations of `profile` (of one level, or all), newest first.
    /// Nonsense rows are skipped with a warning, so fewer may come back.
    pub fn observations(
        &self,
        profile: &str,
        level: Option<LevelId>,
        limit: usize,
    ) -> Result<Vec<Observation>, CalibrationError> {
        let level = level.map(|l| i64::from(l.0));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let out = self.with_conn("read observations", |conn, path| {
            let mut stmt = conn.prepare_cached(schema::SELECT_OBSERVATIONS)?;
            let raw = stmt
                .query_map(params![profile, level, limit], |r| values(r, 9))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(keep_sound(
                raw,
                rows::decode_observation,
                path,
                profile,
                "observations",
            ))
        })?;
        Ok(out.unwrap_or_default())
    }

    /// Every profile that has records or observations, sorted.
    pub fn profiles(&self) -> Result<Vec<String>, CalibrationError> {
        let out = self.with_conn("list profiles", |conn, _| {
            let mut stmt = conn.prepare_cached(schema::SELECT_PROFILES)?;
            stmt.query_map([], |r| r.get(0))?.collect()
        })?;
        Ok(out.unwrap_or_default())
    }

    /// Forgets `profile` (records and observations), or every profile with `None`. Returns
    /// how many rows were removed.
    pub fn reset(&self, profile: Option<&str>) -> Result<u64, CalibrationError> {
        let out = self.with_conn("reset", |conn, _| {
            let tx = conn.transaction_with_behavior(schema::WRITE)?;
            let mut removed = 0;
            for table in ["levels", "observations"] {
                removed += match profile {
                    Some(p) => {
                        tx.execute(&format!("DELETE FROM {table} WHERE profile = ?1"), [p])?
                    }
                    None => tx.execute(&format!("DELETE FROM {table}"), [])?,
                };
            }
            tx.commit()?;
            Ok(removed as u64)
        })?;
        Ok(out.unwrap_or(0))
    }

    /// Runs `f` on the connection, first bringing a pending file into use. `None` when the
    /// store is disabled.
    fn with_conn<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Connection, &Path) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, CalibrationError> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let mut state = file.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let State::Pending = *state {
            match schema::open_ready(&file.path, file.busy_timeout) {
                Init::Ready(conn, warning) => {
                    if let Some(w) = warning {
                        tracing::warn!("{w}");
                    }
                    *state = State::Ready(conn);
                }
                Init::Retry(e) => return Err(e),
                Init::Disabled(e) => {
                    *state = State::Disabled;
                    return Err(e);
                }
            }
        }
        let State::Ready(conn) = &mut *state else {
            return Ok(None);
        };
        match f(conn, &file.path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if schema::is_busy(&e) => Err(CalibrationError::Locked {
                path: file.path.clone(),
                waited: file.busy_timeout,
            }),
            Err(e) => Err(CalibrationError::Sqlite {
                path: file.path.clone(),
                op,
                source: Box::new(e),
            }),
        }
    }
}

impl std::fmt::Debug for CalibrationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CalibrationStore")
            .field("path", &self.path())
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

pub(super) fn default_path_from(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let var = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("KBATCH_DATA_DIR") {
        return dir.join(FILE_NAME);
    }
    if let Some(dir) = var("XDG_DATA_HOME").filter(|d| d.is_absolute()) {
        return dir.join("kbatch").join(FILE_NAME);
    }
    let base = var("HOME").map_or_else(std::env::temp_dir, |h| h.join(".local").join("share"));
    base.join("kbatch").join(FILE_NAME)
}

fn values(row: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Vec<Value>> {
    (0..n).map(|i| row.get(i)).collect()
}

/// Decodes rows, logging and dropping those that make no sense.
fn keep_sound<T>(
    raw: Vec<Vec<Value>>,
    decode: fn(&[Value]) -> Result<T, Invalid>,
    path: &Path,
    profile: &str,
    table: &str,
) -> Vec<T> {
    raw.into_iter()
        .filter_map(|v| match decode(&v) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(
                    "calibration store {}: skipping a row of {table} for profile {profile:?}, \
                     level {}: {} is {}, expected {}; `kbatch calibration reset --profile \
                     {profile}` clears it",
                    path.display(),
                    rows::level_of(&v),
                    e.field,
                    e.value,
                    e.expected
                );
                None
            }
        })
        .collect()
}

fn invalid(profile: &str, level: LevelId, e: Invalid) -> CalibrationError {
    CalibrationError::Invalid {
        profile: profile.to_owned(),
        level: level.0,
        field: e.field,
        value: e.value,
        expected: e.expected,
    }
}
