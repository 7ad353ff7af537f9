//! `kbatch bench gateway --quick --json` end to end against the real broker: every load ran,
//! had records acknowledged and none failed (through the plain and the adaptive gateway), HTTP
//! loads report latency, and both targets were evaluated for both gateways. A smoke test of the harness; the numbers themselves are not checked (speed
//! targets are the bench's to report, never a test's).

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use common::bench_json;
use serde_json::Value;

#[test]
fn quick_run_measures_every_load_through_the_gateway_and_direct() {
    let (j, stderr) = bench_json("gateway", &[]);
    let runs = j["runs"].as_array().unwrap();
    for load in [
        "direct",
        "direct_matched",
        "ndjson",
        "single",
        "open",
        "direct_open",
        "ndjson_adaptive",
        "single_adaptive",
        "open_adaptive",
    ] {
        let hits: Vec<&Value> = runs.iter().filter(|r| r["load"] == load).collect();
        assert_eq!(hits.len(), 1, "{load}: {} runs\n{stderr}", hits.len());
        let r = hits[0];
        assert!(
            r["records"].as_u64().unwrap() > 0,
            "{load}: nothing acknowledged: {r}"
        );
        assert_eq!(r["failed"], 0, "{load}: {r}");
        if load.starts_with("direct") && load != "direct_open" {
            assert!(
                r["p99_ms"].is_null(),
                "the direct loads have no request latency: {r}"
            );
        } else {
            assert!(r["p99_ms"].as_f64().unwrap() > 0.0, "{load}: {r}");
            assert!(r["requests"].as_u64().unwrap() > 0, "{load}: {r}");
        }
    }
    for load in ["ndjson", "ndjson_adaptive"] {
        let ndjson = runs.iter().find(|r| r["load"] == load).unwrap();
        assert_eq!(
            ndjson["records"].as_u64().unwrap(),
            ndjson["requests"].as_u64().unwrap() * 1_000,
            "1,000 records per NDJSON request: {ndjson}"
        );
    }
    // Both targets, for the plain gateway (equal settings) and the adaptive default.
    let targets = j["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 4, "{targets:?}");
    for t in targets {
        assert!(t["met"].is_boolean(), "target not evaluated: {t}");
    }
}
