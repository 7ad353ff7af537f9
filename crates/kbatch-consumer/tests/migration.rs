//! Moving a group from Confluent Parallel Consumer to kbatch.
//!
//! - Golden vectors written by PC's own encoder (`bench/parallel-consumer/pc_vectors.json`,
//!   made by `scripts/pc run vectors`): kbatch decodes every encoding PC can decode to the same
//!   incomplete offsets and the same highest seen offset.
//! - The real thing: PC (Java, from Maven Central) consumes a group and leaves some records
//!   incomplete; kbatch then processes exactly those.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{Ledger, committed, config, eventually};
use kbatch_consumer::codec::decode;
use kbatch_consumer::{ProcessingOrder, ShutdownMode};
use kbatch_testkit::{brokers, repo_root, unique_name};

fn incompletes_of(v: &serde_json::Value) -> BTreeSet<i64> {
    v["incomplete_ranges"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r[0].as_i64().unwrap()..=r[1].as_i64().unwrap())
        .collect()
}

fn decoded_incompletes(m: &kbatch_consumer::codec::OffsetMap) -> BTreeSet<i64> {
    m.incomplete.iter().flat_map(|r| r.clone()).collect()
}

#[test]
fn golden_vectors_from_parallel_consumer_decode_identically() {
    let path = repo_root().join("bench/parallel-consumer/pc_vectors.json");
    let vectors: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(vectors.len() >= 20);
    let mut checked = 0;
    for v in &vectors {
        let name = v["name"].as_str().unwrap();
        let committed = v["committed_offset"].as_i64().unwrap();
        let want = incompletes_of(v);
        // What PC actually commits.
        let meta = v["committed_metadata"].as_str().unwrap();
        let m = decode(committed, meta).unwrap_or_else(|e| panic!("{name}: {e}"));
        if !meta.is_empty() {
            assert_eq!(decoded_incompletes(&m), want, "{name}: committed metadata");
            assert_eq!(
                m.end - 1,
                v["committed_decoded_highest_seen"].as_i64().unwrap(),
                "{name}: highest seen"
            );
        }
        // Every encoding PC itself can decode.
        for e in v["encodings"].as_array().unwrap() {
            let enc = e["encoding"].as_str().unwrap();
            // Some encodings cannot hold a case (v1 limits): PC wrote nothing for them.
            let Some(text) = e["metadata"].as_str() else {
                continue;
            };
            let ours = decode(committed, text);
            if !e["pc_decodes"].as_bool().unwrap() {
                assert!(ours.is_err(), "{name}/{enc}: PC refuses it, so must we");
                continue;
            }
            let m = ours.unwrap_or_else(|err| panic!("{name}/{enc}: {err}"));
            assert_eq!(decoded_incompletes(&m), want, "{name}/{enc}: incompletes");
            let pc_highest = e["decoded_highest_seen"].as_i64().unwrap();
            // PC's run-length decoder reports 0 rather than base-1 for an empty range (its
            // encoder never writes one); everywhere else the spans agree.
            if !(m.end == m.base && pc_highest == 0) {
                assert_eq!(m.end - 1, pc_highest, "{name}/{enc}: highest seen");
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked} encodings checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_left_by_the_real_parallel_consumer_resumes_without_reprocessing() {
    const N: u64 = 1000;
    let topic = unique_name("pc-real-migrate");
    let group = unique_name("pc-real-migrate-g");
    let out = tokio::task::spawn_blocking({
        let (topic, group) = (topic.clone(), group.clone());
        move || {
            Command::new(repo_root().join("scripts/pc"))
                .args([
                    "run",
                    "partial",
                    "--bootstrap",
                    brokers(),
                    "--topic",
                    &topic,
                    "--group",
                    &group,
                ])
                .args(["--records", &N.to_string(), "--fail-every", "10", "--fill"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "PC harness failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pc: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    let incomplete: Vec<u64> = pc["incomplete"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let processed = pc["processed"].as_array().unwrap().len();
    assert_eq!(
        incomplete.len() + processed,
        N as usize,
        "PC saw every record"
    );
    assert!(!incomplete.is_empty());
    let (off, meta) = committed(&group, &topic, 0);
    assert_eq!(off, pc["committed_offset"].as_i64());
    assert!(
        !meta.is_empty() && !meta.starts_with("kb:"),
        "PC's own metadata: {meta}"
    );

    let seen = Ledger::default();
    let running = common::start_recording(
        config(&group, &[&topic], ProcessingOrder::Unordered),
        &seen,
        Duration::ZERO,
    );
    eventually(60, "kbatch processes what PC left", || {
        seen.len() >= incomplete.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.shutdown(ShutdownMode::Drain).await.unwrap();
    let mut got: Vec<u64> = seen
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.offset.0 as u64)
        .collect();
    got.sort_unstable();
    assert_eq!(got, incomplete, "exactly the records PC had not completed");
    assert_eq!(committed(&group, &topic, 0).0, Some(N as i64));
}
