//! `kbatch bench outbox --quick --json --no-debezium` end to end against the real broker,
//! PostgreSQL, MariaDB and SQLite: every store drained at both batch sizes with every entry
//! delivered (the table says so afterwards), the sustained run delivered what its writers
//! committed, and the targets were evaluated (the PostgreSQL one) or say why not (Debezium,
//! skipped here: building it needs Maven and a JVM, the full bench runs it). A smoke test of
//! the harness; the numbers themselves are not checked.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::ffi::OsStr;

use common::bench_json;
use kbatch_testkit::{mysql_url, pg_url};

#[test]
fn quick_run_drains_every_store_at_both_batch_sizes_losing_nothing() {
    let (j, stderr) = bench_json(
        "outbox",
        &[
            OsStr::new("--pg-url"),
            OsStr::new(pg_url()),
            OsStr::new("--mysql-url"),
            OsStr::new(mysql_url()),
            OsStr::new("--no-debezium"),
        ],
    );
    let entries = j["config"]["entries"].as_u64().unwrap();
    assert!(entries > 0, "{}", j["config"]);
    let runs = j["runs"].as_array().unwrap();
    // The relay's default of 2 batches in flight everywhere, and a labelled row of one at a
    // time at batch 1,000 where more than one can be in flight (not on SQLite).
    for (store, batch, in_flight) in [
        ("postgres", 1_000, 2),
        ("postgres", 1_000, 1),
        ("postgres", 100, 2),
        ("mariadb", 1_000, 2),
        ("mariadb", 1_000, 1),
        ("mariadb", 100, 2),
        ("sqlite", 1_000, 2),
        ("sqlite", 100, 2),
    ] {
        let hits: Vec<_> = runs
            .iter()
            .filter(|r| r["store"] == store && r["batch"] == batch && r["in_flight"] == in_flight)
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "{store} batch {batch}, {in_flight} in flight: {hits:?}\n{stderr}"
        );
        let r = hits[0];
        assert_eq!(
            r["delivered"].as_u64(),
            Some(entries),
            "{store}/{batch}: {r}"
        );
        assert_eq!(r["pending_after"], 0, "{store}/{batch}: {r}");
        assert_eq!(r["dead_after"], 0, "{store}/{batch}: {r}");
        assert!(r["msg_per_s"].as_f64().unwrap() > 0.0, "{r}");
        // Batches of at most `batch` entries: at least entries / batch of them.
        assert!(r["batches"].as_u64().unwrap() >= entries / batch, "{r}");
    }
    let sustained = j["sustained"].as_array().unwrap();
    assert_eq!(sustained.len(), 1, "{sustained:?}");
    let s = &sustained[0];
    assert!(s["enqueued"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["delivered"], s["enqueued"], "sustained lost entries: {s}");
    assert!(s["p99_ms"].as_f64().is_some(), "{s}");
    for row in j["summaries"].as_array().unwrap() {
        assert_eq!(row["lost"], 0, "{row}");
    }
    let targets = j["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{targets:?}");
    assert!(
        targets[0]["met"].is_boolean(),
        "not evaluated: {}",
        targets[0]
    );
    assert!(
        targets[1]["met"].is_null() && targets[1]["note"].as_str().unwrap().contains("Debezium"),
        "the Debezium target says why it was not evaluated: {}",
        targets[1]
    );
}
