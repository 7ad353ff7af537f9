//! `kbatch bench adaptive --quick --json` end to end against the real broker: every contender
//! ran at every load, had events acknowledged and none failed, and every target was evaluated.
//! A smoke test of the harness; the numbers themselves are not checked (speed targets are the
//! bench's to report, never a test's).

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use common::bench_json;
use serde_json::Value;

const LATENCY: [&str; 4] = [
    "adaptive_per_event",
    "static_linger_0ms",
    "static_linger_5ms",
    "static_linger_100ms",
];
const LOADS: [&str; 5] = ["100/s", "1,000/s", "10,000/s", "100,000/s", "saturation"];
const PACKED: [&str; 4] = [
    "bulk_envelope_1000",
    "adaptive_packed",
    "adaptive_packed_many_1000",
    "adaptive_per_event",
];

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn quick_run_measures_every_contender_at_every_load() {
    let plot = std::env::temp_dir().join(format!("kbatch-adaptive-{}.png", std::process::id()));
    let (j, stderr) = bench_json("adaptive", &["--plot".as_ref(), plot.as_os_str()]);
    let _ = std::fs::remove_file(&plot);

    // Nobody was left out, quietly or with a note.
    assert_eq!(
        names(&j["config"]["latency_contenders"]).len(),
        LATENCY.len(),
        "{stderr}"
    );
    for c in LATENCY {
        assert!(
            names(&j["config"]["latency_contenders"]).contains(&c),
            "{c} missing:\n{stderr}"
        );
    }
    assert_eq!(names(&j["config"]["packed_contenders"]), PACKED, "{stderr}");
    assert_eq!(names(&j["config"]["loads"]), LOADS);

    let runs = j["runs"].as_array().unwrap();
    let find = |bench: &str, c: &str, load: &str| {
        let hits: Vec<&Value> = runs
            .iter()
            .filter(|r| r["bench"] == bench && r["contender"] == c && r["load"] == load)
            .collect();
        assert_eq!(hits.len(), 1, "{bench} {c} at {load}: {} runs", hits.len());
        hits[0]
    };
    let check = |r: &Value| {
        let what = format!("{} {} at {}", r["bench"], r["contender"], r["load"]);
        assert!(
            r["acked"].as_u64().unwrap() > 0,
            "{what}: nothing acknowledged: {r}"
        );
        assert_eq!(r["failed"], 0, "{what}: {r}");
        assert_eq!(
            r["acked"], r["sent"],
            "{what}: every counted event is accounted for: {r}"
        );
        assert!(r["records"].as_u64().unwrap() > 0, "{what}: {r}");
        assert!(r["p99_ms"].as_f64().unwrap() > 0.0, "{what}: {r}");
    };
    for c in LATENCY {
        for load in LOADS {
            let r = find("latency", c, load);
            check(r);
            // Per-event contenders write one Kafka record per event.
            assert_eq!(r["records"], r["acked"], "{c} at {load}: {r}");
        }
    }
    for c in PACKED {
        check(find("packed", c, "saturation"));
    }
    for c in ["adaptive_packed", "adaptive_packed_many_1000"] {
        let packed = find("packed", c, "saturation");
        assert!(
            packed["records"].as_u64().unwrap() < packed["acked"].as_u64().unwrap(),
            "{c}: fewer Kafka records than events: {packed}"
        );
    }
    let bulk = find("packed", "bulk_envelope_1000", "saturation");
    assert_eq!(
        bulk["records"].as_u64().unwrap() * 1_000,
        bulk["acked"].as_u64().unwrap(),
        "BULK: 1,000 events per record: {bulk}"
    );

    let targets = j["targets"].as_array().unwrap();
    // Per load one; packed: against BULK and per-event, sent per event and by send_many.
    assert_eq!(targets.len(), LOADS.len() + 4, "{targets:?}");
    for t in targets {
        assert!(t["met"].is_boolean(), "target not evaluated: {t}");
    }
}
