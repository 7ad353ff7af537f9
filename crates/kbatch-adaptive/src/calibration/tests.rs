//! The store against real files: round trips, bounds, and the files it must survive (locked by
//! another connection or process, corrupt in three ways, written by a newer kbatch).
//!
//! Every call that could block on a lock runs under [`within`], a hang guard 20 times the
//! busy timeout, so a hang fails with the name of the call that never returned.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod damaged;
mod lock;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use super::store::default_path_from;
use super::*;
use crate::levels::{BatchSettings, LevelId};

const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<CalibrationStore>();
};

/// 16 times the default busy timeout that every call here runs with, and below rusqlite's own
/// default of 5 s, so a store that forgot to set its timeout fails here too.
const HANG_GUARD: Duration = Duration::from_secs(4);

/// Runs `f` on a thread and fails, naming `what`, if it has not returned within [`HANG_GUARD`].
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG_GUARD).unwrap_or_else(|_| {
        panic!(
            "{what} did not return within {HANG_GUARD:?} (busy timeout {DEFAULT_BUSY_TIMEOUT:?})"
        )
    })
}

fn t(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

fn record(level: u8, max_events: u32) -> LevelRecord {
    LevelRecord {
        level: LevelId(level),
        best: BatchSettings {
            max_events,
            linger: Duration::new(0, 12_345_678 + u32::from(level)),
        },
        expected_throughput: 1_234.567 + f64::from(level),
        p99: Duration::from_nanos(987_654_321),
        observations: u64::from(max_events) * 3,
        updated_at: t(1_790_000_000, 123_456_789),
    }
}

fn observation(level: u8, i: u32) -> Observation {
    Observation {
        level: LevelId(level),
        settings: BatchSettings {
            max_events: 100 + i,
            linger: Duration::from_micros(u64::from(i) + 1),
        },
        explored: i.is_multiple_of(3),
        throughput: f64::from(i) * 10.5,
        p50: Duration::from_nanos(u64::from(i) * 1_001),
        p99: Duration::from_nanos(u64::from(i) * 9_001),
        fill: f64::from(i % 11) / 10.0,
        at: t(1_790_000_000 + u64::from(i), i),
    }
}

struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self) -> PathBuf {
        self.tmp.path().join("calibration.sqlite3")
    }

    /// Names in the directory other than the store file and its `-wal`/`-shm`.
    fn others(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                !matches!(
                    n.as_str(),
                    "calibration.sqlite3" | "calibration.sqlite3-wal" | "calibration.sqlite3-shm"
                )
            })
            .collect();
        v.sort();
        v
    }
}

/// Opens `path` and fails if there was a warning.
fn open_clean(path: &Path) -> CalibrationStore {
    let p = path.to_path_buf();
    let opened = within("open", move || CalibrationStore::open(&p));
    if let Some(w) = opened.warning {
        panic!("unexpected warning opening {}: {w}", path.display());
    }
    opened.store
}

#[test]
fn records_round_trip_exactly_and_upsert_per_level() {
    let dir = Dir::new();
    let store = open_clean(&dir.file());
    store
        .save("orders", &[record(7, 900), record(2, 10)])
        .unwrap();
    store.save("audit", &[record(5, 500)]).unwrap();
    assert_eq!(
        store.load("orders").unwrap(),
        [record(2, 10), record(7, 900)]
    );

    // A later save replaces its level and keeps the others.
    let mut better = record(7, 1_200);
    better.expected_throughput = 5_000.25;
    store.save("orders", &[better.clone()]).unwrap();
    drop(store);

    let store = open_clean(&dir.file());
    assert_eq!(store.load("orders").unwrap(), [record(2, 10), better]);
    assert_eq!(store.load("audit").unwrap(), [record(5, 500)]);
    assert_eq!(store.load("nobody").unwrap(), []);
    assert_eq!(store.profiles().unwrap(), ["audit", "orders"]);
    assert_eq!(store.path(), Some(dir.file().as_path()));
}

#[test]
fn observations_round_trip_newest_first_by_level_and_limit() {
    let dir = Dir::new();
    let store = open_clean(&dir.file());
    let first: Vec<Observation> = (1..=4).map(|i| observation(3, i)).collect();
    store.record("orders", &first).unwrap();
    store
        .record("orders", &[observation(5, 5), observation(3, 6)])
        .unwrap();
    store.record("other", &[observation(3, 7)]).unwrap();
    drop(store);

    let store = open_clean(&dir.file());
    let all = store.observations("orders", None, 100).unwrap();
    let expected: Vec<Observation> = [6, 5, 4, 3, 2, 1]
        .into_iter()
        .map(|i| observation(if i == 5 { 5 } else { 3 }, i))
        .collect();
    assert_eq!(all, expected);
    assert_eq!(
        store.observations("orders", Some(LevelId(3)), 2).unwrap(),
        [observation(3, 6), observation(3, 4)]
    );
    assert_eq!(
        store.observations("orders", Some(LevelId(5)), 100).unwrap(),
        [observation(5, 5)]
    );
    assert_eq!(store.profiles().unwrap(), ["orders", "other"]);
}

#[test]
fn observations_keep_only_the_newest_thousand_per_profile_and_level() {
    let dir = Dir::new();
    let store = open_clean(&dir.file());
    let level2 = |range: std::ops::RangeInclusive<u32>| -> Vec<Observation> {
        range.map(|i| observation(2, i)).collect()
    };
    store.record("orders", &level2(1..=1_000)).unwrap();
    store.record("orders", &[observation(3, 1)]).unwrap();
    store.record("other", &level2(1..=10)).unwrap();
    // 250 more, half in one call and half one by one: both paths prune.
    store.record("orders", &level2(1_001..=1_125)).unwrap();
    for i in 1_126..=1_250 {
        store.record("orders", &[observation(2, i)]).unwrap();
    }

    let kept = store
        .observations("orders", Some(LevelId(2)), usize::MAX)
        .unwrap();
    assert_eq!(kept.len(), MAX_OBSERVATIONS_PER_LEVEL);
    assert_eq!(kept.first(), Some(&observation(2, 1_250)), "newest kept");
    assert_eq!(kept.last(), Some(&observation(2, 251)), "oldest kept");
    // Other levels and profiles are not pruned by this one.
    assert_eq!(
        store
            .observations("orders", Some(LevelId(3)), 10)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.observations("other", None, 100).unwrap().len(), 10);

    // The table itself stays bounded, not just what is read back.
    drop(store);
    let rows: i64 = Connection::open(dir.file())
        .unwrap()
        .query_row("SELECT count(*) FROM observations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1_000 + 1 + 10);
}

#[test]
fn reset_removes_one_profile_or_all_and_counts_rows() {
    let dir = Dir::new();
    let store = open_clean(&dir.file());
    store.save("a", &[record(1, 1), record(2, 2)]).unwrap();
    store.record("a", &[observation(1, 1)]).unwrap();
    store.save("b", &[record(1, 1)]).unwrap();
    store
        .record("b", &[observation(1, 1), observation(4, 2)])
        .unwrap();

    assert_eq!(store.reset(Some("a")).unwrap(), 3);
    assert_eq!(store.load("a").unwrap(), []);
    assert_eq!(store.observations("a", None, 10).unwrap(), []);
    assert_eq!(store.load("b").unwrap(), [record(1, 1)]);
    assert_eq!(store.profiles().unwrap(), ["b"]);
    assert_eq!(store.reset(Some("a")).unwrap(), 0);

    assert_eq!(store.reset(None).unwrap(), 3);
    assert_eq!(store.profiles().unwrap(), Vec::<String>::new());
    assert_eq!(store.observations("b", None, 10).unwrap(), []);
}

#[test]
fn missing_directories_are_created() {
    let dir = Dir::new();
    let path = dir.tmp.path().join("a/b/c/calibration.sqlite3");
    let store = open_clean(&path);
    assert!(path.is_file(), "{} was not created", path.display());
    store.save("p", &[record(4, 40)]).unwrap();
    drop(store);
    assert_eq!(open_clean(&path).load("p").unwrap(), [record(4, 40)]);
}

#[test]
fn disabled_store_remembers_nothing() {
    let store = CalibrationStore::disabled();
    store.save("p", &[record(4, 40)]).unwrap();
    store.record("p", &[observation(4, 1)]).unwrap();
    assert_eq!(store.load("p").unwrap(), []);
    assert_eq!(store.observations("p", None, 10).unwrap(), []);
    assert_eq!(store.profiles().unwrap(), Vec::<String>::new());
    assert_eq!(store.reset(None).unwrap(), 0);
    assert_eq!(store.path(), None);
    assert!(!store.is_enabled());
}

#[test]
fn values_that_cannot_be_stored_are_refused_and_nothing_of_the_call_is_kept() {
    let dir = Dir::new();
    let store = open_clean(&dir.file());
    let cases: Vec<(LevelRecord, &str)> = vec![
        (record(0, 10), "level"),
        (record(3, 0), "best.max_events"),
        (
            LevelRecord {
                expected_throughput: f64::NAN,
                ..record(3, 10)
            },
            "expected_throughput",
        ),
        (
            LevelRecord {
                expected_throughput: -1.0,
                ..record(3, 10)
            },
            "expected_throughput",
        ),
        (
            LevelRecord {
                updated_at: UNIX_EPOCH - Duration::from_secs(1),
                ..record(3, 10)
            },
            "updated_at",
        ),
    ];
    for (bad, field) in cases {
        let e = store.save("p", &[record(1, 1), bad]).unwrap_err();
        assert!(
            matches!(&e, CalibrationError::Invalid { field: f, .. } if *f == field),
            "{e}"
        );
        assert!(e.to_string().contains("expected"), "{e}");
    }
    let bad_fill = Observation {
        fill: 1.5,
        ..observation(2, 1)
    };
    let e = store
        .record("p", &[observation(2, 2), bad_fill])
        .unwrap_err();
    assert!(
        matches!(e, CalibrationError::Invalid { field: "fill", .. }),
        "{e}"
    );
    assert_eq!(
        store.load("p").unwrap(),
        [],
        "a refused save stored part of its call"
    );
    assert_eq!(store.observations("p", None, 10).unwrap(), []);
}

/// Log lines written while `f` runs.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

#[test]
fn nonsense_rows_are_skipped_on_load_with_a_warning() {
    let dir = Dir::new();
    let store = open_clean(&dir.file());
    store.save("p", &[record(3, 30)]).unwrap();
    store.record("p", &[observation(3, 1)]).unwrap();
    let raw = Connection::open(dir.file()).unwrap();
    let good = "max_events, linger_ns, expected_throughput, p99_ns, observations, updated_at_ns";
    for (level, values) in [
        ("0", "10, 1, 1.0, 1, 1, 1"),
        ("256", "10, 1, 1.0, 1, 1, 1"),
        ("-4", "10, 1, 1.0, 1, 1, 1"),
        ("4", "0, 1, 1.0, 1, 1, 1"),
        ("5", "10, -1, 1.0, 1, 1, 1"),
        ("6", "10, 1, -2.5, 1, 1, 1"),
        ("7", "10, 1, 1.0, 1, -1, 1"),
        ("8", "'ten', 1, 1.0, 1, 1, 1"),
        ("9", "10, 1, 1.0, 1, 1, -5"),
        ("10", "4294967296, 1, 1.0, 1, 1, 1"),
    ] {
        raw.execute_batch(&format!(
            "INSERT INTO levels (profile, level, {good}) VALUES ('p', {level}, {values})"
        ))
        .unwrap();
    }
    let cols = "level, max_events, linger_ns, explored, throughput, p50_ns, p99_ns, fill, at_ns";
    for values in [
        "3, 10, 1, 0, 1.0, 1, 1, 1.5, 1",
        "3, 10, 1, 2, 1.0, 1, 1, 0.5, 1",
        "0, 10, 1, 0, 1.0, 1, 1, 0.5, 1",
        "3, 10, 1, 0, 1.0, -1, 1, 0.5, 1",
    ] {
        raw.execute_batch(&format!(
            "INSERT INTO observations (profile, {cols}) VALUES ('p', {values})"
        ))
        .unwrap();
    }

    let (levels, log) = logged(|| store.load("p").unwrap());
    assert_eq!(levels, [record(3, 30)]);
    assert_eq!(log.matches("skipping a row of levels").count(), 10, "{log}");
    assert!(log.contains("max_events is 0, expected 1 to"), "{log}");

    let (obs, log) = logged(|| store.observations("p", None, 100).unwrap());
    assert_eq!(obs, [observation(3, 1)]);
    assert_eq!(
        log.matches("skipping a row of observations").count(),
        4,
        "{log}"
    );
    assert!(log.contains("fill is 1.5"), "{log}");
}

#[test]
fn default_path_follows_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| std::ffi::OsString::from(v))
        }
    };
    let all = &[
        ("KBATCH_DATA_DIR", "/data/kb"),
        ("XDG_DATA_HOME", "/xdg"),
        ("HOME", "/home/u"),
    ];
    assert_eq!(
        default_path_from(env(all)),
        Path::new("/data/kb/calibration.sqlite3")
    );
    assert_eq!(
        default_path_from(env(&[
            ("KBATCH_DATA_DIR", ""),
            ("XDG_DATA_HOME", "/xdg"),
            ("HOME", "/h")
        ])),
        Path::new("/xdg/kbatch/calibration.sqlite3")
    );
    // A relative XDG_DATA_HOME is ignored, as the XDG spec says.
    assert_eq!(
        default_path_from(env(&[("XDG_DATA_HOME", "rel"), ("HOME", "/home/u")])),
        Path::new("/home/u/.local/share/kbatch/calibration.sqlite3")
    );
    assert_eq!(
        default_path_from(env(&[])),
        std::env::temp_dir().join("kbatch/calibration.sqlite3")
    );
}
