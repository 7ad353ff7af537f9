//! The file's schema, and bringing a file into a state the store can use: create it, check it,
//! move a corrupt one aside, leave a newer one alone.
//!
//! Durations and times are stored as integer nanoseconds (times since the Unix epoch), so a
//! value comes back exactly as it was saved.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, TransactionBehavior};

use super::CalibrationError;

/// The schema this build writes and reads. A file with a higher `user_version` is left alone.
pub(super) const SCHEMA_VERSION: i64 = 1;

const CREATE: &str = "
CREATE TABLE levels (
    profile             TEXT    NOT NULL,
    level               INTEGER NOT NULL,
    max_events          INTEGER NOT NULL,
    linger_ns           INTEGER NOT NULL,
    expected_throughput REAL    NOT NULL,
    p99_ns              INTEGER NOT NULL,
    observations        INTEGER NOT NULL,
    updated_at_ns       INTEGER NOT NULL,
    PRIMARY KEY (profile, level)
);
CREATE TABLE observations (
    -- AUTOINCREMENT: ids never repeat, so the highest id is always the newest observation.
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    profile    TEXT    NOT NULL,
    level      INTEGER NOT NULL,
    max_events INTEGER NOT NULL,
    linger_ns  INTEGER NOT NULL,
    explored   INTEGER NOT NULL,
    throughput REAL    NOT NULL,
    p50_ns     INTEGER NOT NULL,
    p99_ns     INTEGER NOT NULL,
    fill       REAL    NOT NULL,
    at_ns      INTEGER NOT NULL
);
CREATE INDEX observations_newest ON observations (profile, level, id);
PRAGMA user_version = 1;
";

pub(super) const SELECT_LEVELS: &str = "SELECT level, max_events, linger_ns, expected_throughput, \
     p99_ns, observations, updated_at_ns FROM levels WHERE profile = ?1 ORDER BY level";

pub(super) const UPSERT_LEVEL: &str = "INSERT INTO levels (profile, level, max_events, linger_ns, \
     expected_throughput, p99_ns, observations, updated_at_ns) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (profile, level) DO UPDATE SET max_events = excluded.max_events, \
     linger_ns = excluded.linger_ns, expected_throughput = excluded.expected_throughput, \
     p99_ns = excluded.p99_ns, observations = excluded.observations, \
     updated_at_ns = excluded.updated_at_ns";

pub(super) const INSERT_OBSERVATION: &str = "INSERT INTO observations (profile, level, max_events, \
     linger_ns, explored, throughput, p50_ns, p99_ns, fill, at_ns) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// Deletes all but the newest `?3` observations of a (profile, level).
pub(super) const PRUNE_OBSERVATIONS: &str = "DELETE FROM observations \
     WHERE profile = ?1 AND level = ?2 AND id <= (SELECT id FROM observations \
     WHERE profile = ?1 AND level = ?2 ORDER BY id DESC LIMIT 1 OFFSET ?3)";

pub(super) const SELECT_OBSERVATIONS: &str = "SELECT level, max_events, linger_ns, explored, \
     throughput, p50_ns, p99_ns, fill, at_ns FROM observations \
     WHERE profile = ?1 AND (?2 IS NULL OR level = ?2) ORDER BY id DESC LIMIT ?3";

pub(super) const SELECT_PROFILES: &str =
    "SELECT profile FROM levels UNION SELECT profile FROM observations ORDER BY profile";

/// Every statement the store runs against an existing file: a file of our version where one
/// of them does not prepare (a table or column missing, no unique key for the upsert) is
/// treated as corrupt.
const USED: [&str; 6] = [
    SELECT_LEVELS,
    UPSERT_LEVEL,
    INSERT_OBSERVATION,
    PRUNE_OBSERVATIONS,
    SELECT_OBSERVATIONS,
    SELECT_PROFILES,
];

/// The outcome of bringing the file into use.
pub(super) enum Init {
    /// Usable; with a warning when a corrupt file was moved aside first.
    Ready(Connection, Option<CalibrationError>),
    /// Locked by another process: try again on the next call.
    Retry(CalibrationError),
    /// Not usable; the store runs without it.
    Disabled(CalibrationError),
}

/// What an existing file turned out to be.
enum Found {
    /// No schema and no tables: a new (possibly zero-length) file.
    Empty,
    /// Our schema, every statement prepares.
    Current,
    /// A schema version above ours.
    Newer(i64),
}

/// Why an existing file cannot be used as it is.
enum Problem {
    Busy,
    Corrupt(String),
    Other(rusqlite::Error),
}

impl From<rusqlite::Error> for Problem {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Self::Busy,
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                Self::Corrupt(e.to_string())
            }
            _ => Self::Other(e),
        }
    }
}

/// Whether an error means another connection holds the lock.
pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Opens `path` (creating it and its directory), checks it, and makes it ready.
///
/// Nothing is written to a file before its schema version was read, so a newer file is never
/// changed (not even its journal mode).
pub(super) fn open_ready(path: &Path, busy_timeout: Duration) -> Init {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Err(source) = fs::create_dir_all(dir)
    {
        return Init::Disabled(CalibrationError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        });
    }
    let sqlite = |op, e: rusqlite::Error| CalibrationError::Sqlite {
        path: path.to_path_buf(),
        op,
        source: Box::new(e),
    };
    let locked = || CalibrationError::Locked {
        path: path.to_path_buf(),
        waited: busy_timeout,
    };
    let conn = match connect(path, busy_timeout) {
        Ok(c) => c,
        Err(e) => return Init::Disabled(sqlite("open", e)),
    };
    let found = inspect(&conn);
    let (mut conn, warning) = match found {
        Ok(Found::Newer(found)) => {
            return Init::Disabled(CalibrationError::NewerSchema {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(Found::Empty | Found::Current) => (conn, None),
        Err(Problem::Busy) => return Init::Retry(locked()),
        Err(Problem::Other(e)) => return Init::Disabled(sqlite("open", e)),
        Err(Problem::Corrupt(reason)) => {
            drop(conn);
            let moved_to = match move_aside(path) {
                Ok(p) => p,
                Err(source) => {
                    return Init::Disabled(CalibrationError::CorruptStuck {
                        path: path.to_path_buf(),
                        reason,
                        source,
                    });
                }
            };
            let conn = match connect(path, busy_timeout) {
                Ok(c) => c,
                Err(e) => return Init::Disabled(sqlite("create a fresh file", e)),
            };
            let warning = CalibrationError::Corrupt {
                path: path.to_path_buf(),
                moved_to,
                reason,
            };
            (conn, Some(warning))
        }
    };
    // WAL lets `kbatch calibration show` read while a producer writes. Switching needs a
    // moment without other readers; if that fails, rollback journaling is still correct.
    if let Err(e) = conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())) {
        tracing::debug!(path = %path.display(), error = %e, "calibration store stays in rollback-journal mode");
    }
    // In WAL mode NORMAL loses at most the last transactions on power failure, never the
    // file: fine for what is a cache of learned settings. FULL (the default) is as correct.
    let _ = conn.pragma_update(None, "synchronous", "NORMAL");
    match create_if_empty(&mut conn) {
        Ok(()) => Init::Ready(conn, warning),
        Err(e) if is_busy(&e) => Init::Retry(locked()),
        Err(e) => Init::Disabled(sqlite("create the schema", e)),
    }
}

/// Opens without reading anything: the first read (in `inspect`) is where a lock or a
/// corrupt file shows.
fn connect(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // rusqlite's default is 5 s; a producer must not stall that long on someone's sqlite3 shell.
    conn.busy_timeout(busy_timeout)?;
    Ok(conn)
}

fn inspect(conn: &Connection) -> Result<Found, Problem> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Ok(Found::Newer(version));
    }
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    if problems != ["ok"] {
        let first: Vec<&str> = problems.iter().take(3).map(String::as_str).collect();
        return Err(Problem::Corrupt(format!(
            "integrity check: {}",
            first.join("; ")
        )));
    }
    match version {
        0 => {
            let tables = user_tables(conn)?;
            if tables.is_empty() {
                Ok(Found::Empty)
            } else {
                Err(Problem::Corrupt(format!(
                    "no kbatch schema version, but tables {}",
                    tables.join(", ")
                )))
            }
        }
        SCHEMA_VERSION => {
            for sql in USED {
                if let Err(e) = conn.prepare(sql) {
                    return match Problem::from(e) {
                        Problem::Other(e) => {
                            Err(Problem::Corrupt(format!("schema version 1 but {e}")))
                        }
                        p => Err(p),
                    };
                }
            }
            Ok(Found::Current)
        }
        v => Err(Problem::Corrupt(format!("schema version {v}"))),
    }
}

fn user_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )?;
    stmt.query_map([], |r| r.get(0))?.collect()
}

/// Creates the schema in an empty file. Checked again under the write lock: another process
/// may have created it since we looked.
fn create_if_empty(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version != 0 {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(WRITE)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == 0 {
        tx.execute_batch(CREATE)?;
    }
    tx.commit()
}

/// Renames `path` to `<name>.corrupt-<unix secs>` (with `-N` if that exists), its `-wal`,
/// `-shm` and `-journal` files along with it, so a stale journal is never replayed into the
/// fresh file. Returns the new name.
fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path.file_name().map(OsString::from).unwrap_or_default();
    let with_suffix = |p: &Path, suffix: &str| {
        let mut s = p.as_os_str().to_os_string();
        s.push(suffix);
        PathBuf::from(s)
    };
    let mut base = name.clone();
    base.push(format!(".corrupt-{secs}"));
    let mut target = path.with_file_name(&base);
    let mut n = 1;
    while fs::symlink_metadata(&target).is_ok() {
        let mut b = base.clone();
        b.push(format!("-{n}"));
        target = path.with_file_name(b);
        n += 1;
    }
    fs::rename(path, &target)?;
    for side in ["-wal", "-shm", "-journal"] {
        let from = with_suffix(path, side);
        if fs::symlink_metadata(&from).is_ok() {
            // The main file is already out of the way; a sidecar that will not move is
            // removed so it cannot be applied to the fresh file.
            if fs::rename(&from, with_suffix(&target, side)).is_err() {
                let _ = fs::remove_file(&from);
            }
        }
    }
    Ok(target)
}

/// The fresh transaction type used by the store: IMMEDIATE, so the write lock is taken (and
/// waited for, up to the busy timeout) at BEGIN rather than failing half-way.
pub(super) const WRITE: TransactionBehavior = TransactionBehavior::Immediate;
