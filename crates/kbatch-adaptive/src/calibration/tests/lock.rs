//! A file locked by another connection, and by another process: every call returns within the
//! hang guard with `Locked` where it must wait, and the store works once the lock is gone.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::*;

/// Set (to the file's path) in the child process that holds the lock.
const HOLDER_ENV: &str = "KBATCH_TEST_LOCK_HOLDER";
const HOLDING: &str = "kbatch-test: holding the exclusive lock";
/// The child lets go by itself after this, so an orphan never holds a file for long.
const HOLDER_MAX: Duration = Duration::from_secs(60);

fn assert_locked<T: std::fmt::Debug>(what: &str, r: Result<T, CalibrationError>) {
    match r {
        Err(e @ CalibrationError::Locked { .. }) => {
            assert!(e.is_retriable());
            assert!(e.to_string().contains("locked by another process"), "{e}");
        }
        other => panic!("{what}: expected Locked, got {other:?}"),
    }
}

#[test]
fn a_write_lock_from_another_connection_fails_writes_in_bounded_time_and_clears() {
    let dir = Dir::new();
    let store = Arc::new(open_clean(&dir.file()));
    store.save("p", &[record(1, 1)]).unwrap();

    let other = Connection::open(dir.file()).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();

    // WAL: readers are not blocked by the writer; writers wait at most the busy timeout.
    let s = store.clone();
    assert_eq!(
        within("load under a write lock", move || s.load("p")).unwrap(),
        [record(1, 1)]
    );
    let s = store.clone();
    assert_locked(
        "save",
        within("save under a write lock", move || {
            s.save("p", &[record(2, 2)])
        }),
    );
    let s = store.clone();
    assert_locked(
        "record",
        within("record under a write lock", move || {
            s.record("p", &[observation(2, 1)])
        }),
    );
    let s = store.clone();
    assert_locked(
        "reset",
        within("reset under a write lock", move || s.reset(None)),
    );
    // A second store opening the file meanwhile is not held up either.
    let p = dir.file();
    let opened = within("open under a write lock", move || {
        CalibrationStore::open(&p)
    });
    assert!(opened.warning.is_none(), "{:?}", opened.warning);

    other.execute_batch("COMMIT").unwrap();
    store.save("p", &[record(2, 2)]).unwrap();
    store.record("p", &[observation(2, 1)]).unwrap();
    assert_eq!(store.load("p").unwrap(), [record(1, 1), record(2, 2)]);
    assert_eq!(
        opened.store.load("p").unwrap(),
        [record(1, 1), record(2, 2)]
    );
}

/// Another process (this test binary again) holding `BEGIN EXCLUSIVE` on a file in
/// rollback-journal mode — what an older tool or a sqlite3 shell leaves — blocks readers too.
#[test]
fn an_exclusive_lock_held_by_another_process_gives_a_warning_and_clears() {
    let dir = Dir::new();
    let store = open_clean(&dir.file());
    store.save("p", &[record(3, 30)]).unwrap();
    drop(store);
    Connection::open(dir.file())
        .unwrap()
        .query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
        .unwrap();

    let holder = Holder::start(&dir.file());
    let p = dir.file();
    let opened = within("open under another process's lock", move || {
        CalibrationStore::open(&p)
    });
    let w = opened.warning.expect("no warning opening a locked file");
    assert!(matches!(w, CalibrationError::Locked { .. }), "{w}");
    assert!(
        w.to_string().contains(&dir.file().display().to_string()),
        "{w}"
    );
    let store = Arc::new(opened.store);
    assert!(
        store.is_enabled(),
        "a locked file must be tried again, not given up"
    );
    let s = store.clone();
    assert_locked(
        "load",
        within("load under another process's lock", move || s.load("p")),
    );
    let s = store.clone();
    assert_locked(
        "save",
        within("save under another process's lock", move || {
            s.save("p", &[record(4, 4)])
        }),
    );

    holder.release();
    // The data is still there: a locked file is never taken for a corrupt one.
    assert_eq!(store.load("p").unwrap(), [record(3, 30)]);
    store.save("p", &[record(4, 4)]).unwrap();
    assert_eq!(store.load("p").unwrap(), [record(3, 30), record(4, 4)]);
    assert_eq!(
        dir.others(),
        Vec::<PathBuf>::new(),
        "something was moved aside"
    );
}

/// Another process holding the write lock of a store in WAL mode: writes wait, reads go on.
#[test]
fn a_write_lock_held_by_another_process_fails_writes_in_bounded_time_and_clears() {
    let dir = Dir::new();
    let store = Arc::new(open_clean(&dir.file()));
    store.save("p", &[record(3, 30)]).unwrap();

    let holder = Holder::start(&dir.file());
    let s = store.clone();
    assert_eq!(
        within("load under another process's write lock", move || s
            .load("p"))
        .unwrap(),
        [record(3, 30)]
    );
    let s = store.clone();
    assert_locked(
        "save",
        within("save under another process's write lock", move || {
            s.save("p", &[record(4, 4)])
        }),
    );

    holder.release();
    store.save("p", &[record(4, 4)]).unwrap();
    assert_eq!(store.load("p").unwrap(), [record(3, 30), record(4, 4)]);
}

/// The child process: this test binary run again on one ignored test, holding the lock until
/// its stdin closes.
struct Holder {
    child: Child,
}

impl Holder {
    /// Starts the child and waits (guarded) until it says it holds the lock.
    fn start(path: &Path) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "calibration::tests::lock::hold_exclusive_lock",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HOLDER_ENV, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains(HOLDING) {
                    let _ = tx.send(());
                }
            }
        });
        let holder = Self { child };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("the child process never reported holding the lock within 30 s");
        }
        holder
    }

    /// Closes the child's stdin and waits (guarded) for it to commit and exit.
    fn release(mut self) {
        drop(self.child.stdin.take());
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "the lock-holding child failed: {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the lock-holding child did not exit within 30 s of its stdin closing");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Not a test of its own: the body of the child process that [`Holder`] starts. Without
/// `KBATCH_TEST_LOCK_HOLDER` it has nothing to do.
#[test]
#[ignore = "helper: run as a child process by the cross-process lock tests"]
fn hold_exclusive_lock() {
    let Some(path) = std::env::var_os(HOLDER_ENV) else {
        return;
    };
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "{HOLDING}").unwrap();
    out.flush().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(HOLDER_MAX);
    conn.execute_batch("COMMIT").unwrap();
}
