//! `kbatch gateway` killed with SIGKILL (its whole process group) while clients post records:
//! every record the gateway answered 2xx for is in Kafka, where the answer said, with the
//! bytes that were sent — read back by an independent consumer. The gateway answers only after
//! the broker acknowledged; a gateway that answered on hand-in would lose what its client
//! still held at the kill.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Group, kill_group};
use kbatch_client::Isolation;
use kbatch_testkit::{brokers, consume_all, create_topic, unique_name};
use serde_json::Value;

mod common;

/// Per record id: where the gateway said it was written.
type Acked = BTreeMap<u64, (i32, i64)>;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_gateway(port: u16) -> Group {
    Command::new(env!("CARGO_BIN_EXE_kbatch"))
        .env_remove("KBATCH_BROKERS")
        .env("RUST_LOG", "warn")
        .args(["gateway", "--brokers", brokers(), "--insecure-no-auth"])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        // The adaptive producer's calibration goes to a scratch file, not the user's.
        .arg("--calibration-path")
        .arg(std::env::temp_dir().join(format!("kbatch-gateway-crash-{port}.sqlite")))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Group)
        .unwrap()
}

/// Records `first..first + n` as NDJSON, each value naming its id.
fn body(first: u64, n: u64) -> String {
    (first..first + n)
        .map(|i| format!("{{\"key\":\"k{}\",\"value\":{{\"id\":{i}}}}}\n", i % 97))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_record_answered_2xx_survives_a_sigkill_of_the_gateway_under_load() {
    const PER: u64 = 50;
    const CLIENTS: u64 = 8;
    let topic = unique_name("gateway-crash");
    create_topic(&topic, 4).await;
    let port = free_port();
    let mut gateway = start_gateway(port);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let ready = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(60),
            "the gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let acked = Arc::new(Mutex::new(Acked::new()));
    let url = format!("{base}/topics/{topic}/records");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (http, url, acked) = (http.clone(), url.clone(), Arc::clone(&acked));
            tokio::spawn(async move {
                let (mut n, mut lost_to_kill) = (c, 0u32);
                // Until the gateway is gone: each request's records are ids n·PER ..
                loop {
                    let first = n * PER;
                    let r = http
                        .post(&url)
                        .header("content-type", "application/x-ndjson")
                        .body(body(first, PER))
                        .send()
                        .await;
                    let Ok(r) = r else {
                        lost_to_kill += 1;
                        break;
                    };
                    let status = r.status();
                    let Ok(text) = r.text().await else {
                        lost_to_kill += 1;
                        break;
                    };
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if status.is_success() {
                        let results = v["results"].as_array().unwrap();
                        assert_eq!(results.len() as u64, PER, "{v}");
                        let mut a = acked.lock().unwrap();
                        for (i, res) in results.iter().enumerate() {
                            // 207: failed entries carry an error and no offset.
                            if let Some(off) = res["offset"].as_i64() {
                                let p = res["partition"].as_i64().unwrap() as i32;
                                a.insert(first + i as u64, (p, off));
                            }
                        }
                    }
                    n += CLIENTS;
                }
                lost_to_kill
            })
        })
        .collect();
    // Under load: kill once a good number of answers came back, while requests are out.
    let start = Instant::now();
    while acked.lock().unwrap().len() < 5_000 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {} records acknowledged in 60 s",
            acked.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| kill_group(&mut gateway));
    let mut cut_off = 0;
    for c in clients {
        cut_off += c.await.unwrap();
    }
    assert_eq!(
        cut_off, CLIENTS as u32,
        "every client had a request cut off by the kill (it was under load)"
    );

    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let got = tokio::task::block_in_place(|| {
        consume_all(
            &topic,
            Isolation::ReadCommitted,
            None,
            Duration::from_secs(3),
        )
    });
    let mut found: BTreeMap<(i32, i64), u64> = BTreeMap::new();
    for (p, recs) in &got {
        for r in recs {
            let v: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            found.insert((*p, r.offset.0), v["id"].as_u64().unwrap());
        }
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|(id, at)| found.get(at) != Some(id))
        .take(10)
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records are not where their answer said (first: {lost:?})",
        acked
            .iter()
            .filter(|(id, at)| found.get(at) != Some(id))
            .count(),
        acked.len()
    );
}
