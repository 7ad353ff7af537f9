//! The calibration store's one error type.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong with the calibration file. Every message names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CalibrationError {
    /// Another process holds a lock on the file and did not let go within the busy timeout.
    #[error(
        "calibration store {path} is locked by another process (gave up after {waited:?}); \
         kbatch goes on without it and tries again on the next call: close the other program \
         holding it (another kbatch, a sqlite3 shell) or point KBATCH_CALIBRATION / --path at \
         another file"
    )]
    Locked {
        /// The file.
        path: PathBuf,
        /// How long the call waited for the lock.
        waited: Duration,
    },

    /// The file was not a usable calibration store; it was moved aside and a fresh one created.
    #[error(
        "calibration store {path} was corrupt ({reason}); moved it aside to {moved_to} and \
         started a fresh, empty store: what was learned before is lost, so delete {moved_to} \
         unless you want to inspect it"
    )]
    Corrupt {
        /// The file, now a fresh store.
        path: PathBuf,
        /// Where the corrupt file went.
        moved_to: PathBuf,
        /// What was wrong with it.
        reason: String,
    },

    /// The file was corrupt and could not be moved aside; the store runs without it.
    #[error(
        "calibration store {path} is corrupt ({reason}) and could not be moved aside ({source}); \
         running without calibration: delete or move the file yourself"
    )]
    CorruptStuck {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
        /// Why it could not be renamed.
        source: std::io::Error,
    },

    /// The file was written by a newer kbatch; it is left untouched and the store runs without it.
    #[error(
        "calibration store {path} has schema version {found}, newer than the {supported} this \
         kbatch understands; running without calibration and leaving the file untouched: \
         upgrade kbatch, or point KBATCH_CALIBRATION / --path at another file"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The newest version this build reads.
        supported: i64,
    },

    /// The directory for the file could not be created; the store runs without it.
    #[error(
        "cannot create the calibration directory {dir}: {source}; running without calibration: \
         fix its permissions or point KBATCH_CALIBRATION / --path elsewhere"
    )]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// SQLite failed otherwise (cannot open the file, disk full, I/O error).
    #[error(
        "calibration store {path}: {op} failed: {source}; check the file's permissions and the \
         free disk space, or point KBATCH_CALIBRATION / --path at another file"
    )]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// What the store was doing.
        op: &'static str,
        /// SQLite's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A record or observation handed to `save` or `record` holds a value that cannot be stored.
    #[error(
        "calibration for profile {profile:?}, level {level}: {field} is {value}, expected \
         {expected}; nothing of this call was stored"
    )]
    Invalid {
        /// The profile.
        profile: String,
        /// The level number as given.
        level: u8,
        /// The field, e.g. `best.max_events`.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
}

impl CalibrationError {
    /// True when the same call may succeed later without anyone fixing anything (the lock
    /// goes away).
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Locked { .. })
    }
}
