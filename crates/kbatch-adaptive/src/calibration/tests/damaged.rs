//! Files the store must survive: garbage, a truncated store, someone else's database, a
//! current-version file missing a table (each moved aside for a fresh store), and a newer
//! schema (left untouched, store disabled).

use std::fs;
use std::path::PathBuf;

use rusqlite::Connection;

use super::*;

/// Opens `path`, expecting the corrupt file to be moved aside; checks the warning names both
/// paths, the moved file holds exactly `original`, and the fresh store works. Returns the reason.
fn assert_moved_aside(dir: &Dir, original: &[u8]) -> String {
    let path = dir.file();
    let p = path.clone();
    let opened = within("open of a corrupt file", move || CalibrationStore::open(&p));
    let Some(CalibrationError::Corrupt {
        path: warned_path,
        moved_to,
        reason,
    }) = &opened.warning
    else {
        panic!("expected a Corrupt warning, got {:?}", opened.warning);
    };
    let message = opened.warning.as_ref().unwrap().to_string();
    assert_eq!(warned_path, &path);
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains(&moved_to.display().to_string()),
        "{message}"
    );
    assert_eq!(
        dir.others(),
        std::slice::from_ref(moved_to),
        "exactly one file moved aside"
    );
    let name = moved_to.file_name().unwrap().to_string_lossy().into_owned();
    let secs = name
        .strip_prefix("calibration.sqlite3.corrupt-")
        .unwrap_or_else(|| panic!("moved to {name}"));
    assert!(secs.parse::<u64>().is_ok(), "moved to {name}");
    assert_eq!(
        fs::read(moved_to).unwrap(),
        original,
        "the moved file was changed"
    );

    let store = opened.store;
    assert!(store.is_enabled());
    assert_eq!(store.load("p").unwrap(), [], "the fresh store is not empty");
    store.save("p", &[record(2, 20)]).unwrap();
    assert_eq!(store.load("p").unwrap(), [record(2, 20)]);
    drop(store);
    // And it stays: reopening the fresh file is clean.
    assert_eq!(open_clean(&path).load("p").unwrap(), [record(2, 20)]);
    reason.clone()
}

#[test]
fn a_file_of_garbage_is_moved_aside_and_a_fresh_store_started() {
    let dir = Dir::new();
    let garbage: Vec<u8> = (0..8_192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(dir.file(), &garbage).unwrap();
    let reason = assert_moved_aside(&dir, &garbage);
    assert!(reason.contains("not a database"), "{reason}");
}

#[test]
fn a_truncated_store_is_moved_aside_and_a_fresh_store_started() {
    let dir = Dir::new();
    let store = open_clean(&dir.file());
    let obs: Vec<Observation> = (1..=1_000).map(|i| observation(2, i)).collect();
    store.record("p", &obs).unwrap();
    store.save("p", &[record(1, 1)]).unwrap();
    drop(store); // the last connection checkpoints the WAL into the file
    let whole = fs::read(dir.file()).unwrap();
    assert!(
        whole.len() >= 8 * 4_096,
        "too small to truncate: {}",
        whole.len()
    );
    let half = &whole[..whole.len() / 2];
    fs::write(dir.file(), half).unwrap();
    let reason = assert_moved_aside(&dir, half);
    assert!(
        reason.contains("integrity check") || reason.contains("malformed"),
        "{reason}"
    );
}

#[test]
fn a_database_of_someone_else_is_moved_aside_and_a_fresh_store_started() {
    let dir = Dir::new();
    {
        let c = Connection::open(dir.file()).unwrap();
        c.execute_batch("CREATE TABLE customers (id INTEGER, name TEXT); INSERT INTO customers VALUES (1, 'x');")
            .unwrap();
    }
    let original = fs::read(dir.file()).unwrap();
    let reason = assert_moved_aside(&dir, &original);
    assert!(reason.contains("customers"), "{reason}");
}

#[test]
fn a_current_version_file_missing_a_table_is_moved_aside() {
    let dir = Dir::new();
    {
        let c = Connection::open(dir.file()).unwrap();
        c.execute_batch(
            "CREATE TABLE levels (profile TEXT, level INTEGER); PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let original = fs::read(dir.file()).unwrap();
    let reason = assert_moved_aside(&dir, &original);
    assert!(reason.contains("schema version 1 but"), "{reason}");
}

#[test]
fn a_newer_schema_disables_the_store_and_leaves_the_file_untouched() {
    let dir = Dir::new();
    {
        let c = Connection::open(dir.file()).unwrap();
        c.execute_batch("CREATE TABLE levels_v2 (x); PRAGMA user_version = 2;")
            .unwrap();
    }
    let before = fs::read(dir.file()).unwrap();
    let modified = fs::metadata(dir.file()).unwrap().modified().unwrap();

    let p = dir.file();
    let opened = within("open of a newer file", move || CalibrationStore::open(&p));
    let w = opened.warning.expect("no warning for a newer schema");
    assert!(
        matches!(
            w,
            CalibrationError::NewerSchema {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{w}"
    );
    assert!(
        w.to_string().contains(&dir.file().display().to_string()),
        "{w}"
    );
    let store = opened.store;
    assert!(!store.is_enabled());
    store.save("p", &[record(1, 1)]).unwrap();
    store.record("p", &[observation(1, 1)]).unwrap();
    assert_eq!(store.reset(None).unwrap(), 0);
    assert_eq!(store.load("p").unwrap(), []);
    drop(store);

    assert_eq!(
        fs::read(dir.file()).unwrap(),
        before,
        "a newer file was rewritten"
    );
    assert_eq!(
        fs::metadata(dir.file()).unwrap().modified().unwrap(),
        modified
    );
    assert_eq!(
        dir.others(),
        Vec::<PathBuf>::new(),
        "something was moved aside"
    );
}
