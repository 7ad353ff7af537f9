//! `kbatch calibration show|reset` run as a user would, on files written through the library:
//! no broker needed.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, UNIX_EPOCH};

use kbatch_adaptive::calibration::{CalibrationStore, LevelRecord, Observation};
use kbatch_adaptive::{BatchSettings, LevelId};

fn kbatch() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kbatch"));
    c.env_remove("KBATCH_CALIBRATION")
        .env_remove("KBATCH_DATA_DIR")
        .env_remove("RUST_BACKTRACE")
        .env("RUST_LOG", "warn");
    c
}

fn run(c: &mut Command) -> (String, String) {
    let out: Output = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "kbatch failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

fn show(path: &Path, extra: &[&str]) -> (String, String) {
    run(kbatch()
        .args(["calibration", "show", "--path"])
        .arg(path)
        .args(extra))
}

fn json(path: &Path, extra: &[&str]) -> serde_json::Value {
    let (stdout, _) = show(path, &[extra, &["--json"]].concat());
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn record(level: u8, max_events: u32, linger_ms: u64) -> LevelRecord {
    LevelRecord {
        level: LevelId(level),
        best: BatchSettings {
            max_events,
            linger: Duration::from_millis(linger_ms),
        },
        expected_throughput: 8_200.0,
        p99: Duration::from_micros(72_500),
        observations: 31,
        updated_at: UNIX_EPOCH + Duration::from_secs(1_790_000_000),
    }
}

fn observation(i: u64) -> Observation {
    Observation {
        level: LevelId(5),
        settings: BatchSettings {
            max_events: 400 + u32::try_from(i).unwrap(),
            linger: Duration::from_millis(30),
        },
        explored: i == 3,
        throughput: 7_000.0 + i as f64,
        p50: Duration::from_millis(20),
        p99: Duration::from_millis(60),
        fill: 0.75,
        at: UNIX_EPOCH + Duration::from_secs(1_790_000_000 + i),
    }
}

/// A calibration file with two profiles, written through the library.
fn written(dir: &Path) -> PathBuf {
    let path = dir.join("calibration.sqlite3");
    let store = CalibrationStore::open(&path).store;
    store
        .save("orders", &[record(5, 500, 40), record(7, 20_000, 900)])
        .unwrap();
    store
        .record("orders", &(1..=3).map(observation).collect::<Vec<_>>())
        .unwrap();
    store.save("audit", &[record(2, 10, 4)]).unwrap();
    path
}

#[test]
fn show_on_a_missing_file_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere/calibration.sqlite3");
    let (stdout, _) = show(&path, &[]);
    assert!(stdout.contains("no calibration file at"), "{stdout}");
    assert!(stdout.contains(&path.display().to_string()), "{stdout}");
    let j = json(&path, &[]);
    assert_eq!(j["exists"], false, "{j}");
    assert_eq!(j["profiles"], serde_json::json!([]), "{j}");
    let (stdout, _) = run(kbatch().args(["calibration", "reset", "--path"]).arg(&path));
    assert!(stdout.contains("0 rows removed"), "{stdout}");
    assert!(
        !dir.path().join("nowhere").exists(),
        "show or reset created something"
    );
}

#[test]
fn show_prints_what_the_library_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let path = written(dir.path());
    let (stdout, stderr) = show(&path, &["--observations", "2"]);
    assert!(stderr.is_empty(), "{stderr}");
    let line = |needle: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(needle))
            .unwrap_or_else(|| panic!("no line starting {needle:?}:\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(stdout.contains("profile audit"), "{stdout}");
    assert!(stdout.contains("profile orders"), "{stdout}");
    // level, budget (L5 of the default table), N, T, expected/s, p99, observations, updated.
    assert_eq!(
        line("L5"),
        "L5 100.0 ms 500 40.0 ms 8200 72.5 ms 31 2026-09-21T14:13:20Z"
    );
    assert_eq!(
        line("L7"),
        "L7 1.00 s 20000 900.0 ms 8200 72.5 ms 31 2026-09-21T14:13:20Z"
    );
    assert!(stdout.contains("newest 2 observations"), "{stdout}");
    // Newest first: observation 3, then 2; observation 1 is past the limit.
    let at3 = stdout.find("2026-09-21T14:13:23Z").expect(&stdout);
    let at2 = stdout.find("2026-09-21T14:13:22Z").expect(&stdout);
    assert!(at3 < at2, "{stdout}");
    assert!(!stdout.contains("2026-09-21T14:13:21Z"), "{stdout}");

    let (only, _) = show(&path, &["--profile", "audit"]);
    assert!(
        only.contains("profile audit") && !only.contains("profile orders"),
        "{only}"
    );
    let (none, _) = show(&path, &["--profile", "nobody"]);
    assert!(
        none.contains("nothing learned for profile \"nobody\""),
        "{none}"
    );

    // The path may come from the environment instead.
    let (from_env, _) = run(kbatch()
        .args(["calibration", "show"])
        .env("KBATCH_CALIBRATION", &path));
    assert!(from_env.contains("profile orders"), "{from_env}");
}

#[test]
fn show_json_parses_and_holds_the_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = written(dir.path());
    let j = json(&path, &["--observations", "10"]);
    assert_eq!(j["exists"], true, "{j}");
    assert_eq!(j["warning"], serde_json::Value::Null, "{j}");
    let names: Vec<&str> = j["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["profile"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["audit", "orders"]);
    let orders = &j["profiles"][1];
    let l5 = &orders["levels"][0];
    assert_eq!(l5["level"], 5);
    assert_eq!(l5["budget_ms"], 100.0);
    assert_eq!(l5["max_events"], 500);
    assert_eq!(l5["linger_ms"], 40.0);
    assert_eq!(l5["expected_events_per_s"], 8_200.0);
    assert_eq!(l5["p99_ms"], 72.5);
    assert_eq!(l5["observations"], 31);
    assert_eq!(l5["updated"], "2026-09-21T14:13:20Z");
    let obs = orders["observations"].as_array().unwrap();
    let max_events: Vec<u64> = obs
        .iter()
        .map(|o| o["max_events"].as_u64().unwrap())
        .collect();
    assert_eq!(max_events, [403, 402, 401], "newest first");
    assert_eq!(obs[0]["explored"], true);
    assert_eq!(obs[0]["fill"], 0.75);
}

#[test]
fn reset_removes_rows_per_profile_then_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = written(dir.path());
    let reset = |extra: &[&str]| {
        run(kbatch()
            .args(["calibration", "reset", "--path"])
            .arg(&path)
            .args(extra))
        .0
    };
    // orders: 2 levels + 3 observations.
    let out = reset(&["--profile", "orders"]);
    assert!(out.contains("removed 5 rows (profile \"orders\")"), "{out}");
    let store = CalibrationStore::open(&path).store;
    assert_eq!(store.load("orders").unwrap(), []);
    assert_eq!(store.load("audit").unwrap(), [record(2, 10, 4)]);
    drop(store);

    let out = reset(&[]);
    assert!(out.contains("removed 1 rows (every profile)"), "{out}");
    let (stdout, _) = show(&path, &[]);
    assert!(stdout.contains("nothing learned yet"), "{stdout}");
}

#[test]
fn a_corrupt_file_is_reported_and_does_not_crash_show() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calibration.sqlite3");
    std::fs::write(
        &path,
        b"this is not a database, just some bytes".repeat(200),
    )
    .unwrap();
    let (stdout, stderr) = show(&path, &[]);
    assert!(stderr.contains("was corrupt"), "{stderr}");
    let moved: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(stderr.contains(&moved[0].display().to_string()), "{stderr}");
    assert!(stdout.contains("nothing learned yet"), "{stdout}");

    // The JSON report carries the warning too (a second corrupt file).
    std::fs::write(&path, b"garbage again".repeat(500)).unwrap();
    let j = json(&path, &[]);
    let w = j["warning"].as_str().unwrap_or_else(|| panic!("{j}"));
    assert!(w.contains("was corrupt"), "{w}");
}
