//! The `kbatch` binary, run as a user would: the demo on the embedded broker and on the real
//! one, produce/consume round trips, the metrics endpoint, and clear errors on bad input.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kbatch_testkit::{brokers, unique_name};

fn kbatch() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kbatch"));
    c.env_remove("KBATCH_BROKERS")
        .env_remove("RUST_BACKTRACE")
        .env("RUST_LOG", "error");
    c
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kbatch failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn assert_verified(s: &serde_json::Value, records: u64) {
    let v = &s["verdict"];
    assert_eq!(v["expected"], records, "{s}");
    assert_eq!(v["received"], records, "{s}");
    assert_eq!(v["lost"], 0, "{s}");
    assert_eq!(v["duplicates"], 0, "{s}");
    assert_eq!(v["out_of_order"], 0, "{s}");
    assert_eq!(s["delivered"], records, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
}

#[test]
fn version_is_printed() {
    let out = kbatch().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kbatch {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn demo_on_the_embedded_broker_verifies_zero_loss() {
    let out = kbatch()
        .args(["demo", "--records", "30000", "--json"])
        .output()
        .unwrap();
    let s = json_of(&out);
    assert_eq!(s["embedded_broker"], true);
    assert_verified(&s, 30_000);
}

#[test]
fn demo_against_the_real_broker_verifies_zero_loss() {
    let out = kbatch()
        .args([
            "demo",
            "--records",
            "50000",
            "--partitions",
            "4",
            "--json",
            "--brokers",
            brokers(),
        ])
        .output()
        .unwrap();
    let s = json_of(&out);
    assert_eq!(s["embedded_broker"], false);
    assert_eq!(s["partitions"], 4);
    assert_verified(&s, 50_000);
}

#[test]
fn demo_refuses_a_workload_the_dev_broker_would_silently_truncate() {
    let out = kbatch()
        .args(["demo", "--records", "1000000", "--partitions", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("per partition") && err.contains("--brokers"),
        "{err}"
    );
}

#[test]
fn stdin_lines_produced_are_consumed_back_with_keys() {
    let topic = unique_name("cli-roundtrip");
    let lines: Vec<String> = (0..500)
        .map(|i| format!("user-{}=event {i}", i % 7))
        .collect();
    assert!(produce_lines(&topic, 3, &lines).contains("produced 500 of 500"));

    let out = kbatch()
        .args([
            "consume",
            "--brokers",
            brokers(),
            "--topic",
            &topic,
            "--count",
            "500",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Vec<(String, String, i64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["key"].as_str().unwrap().to_owned(),
                v["value"].as_str().unwrap().to_owned(),
                v["partition"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got.len(), 500);
    // Per key, events arrive in the order they were written.
    for k in 0..7 {
        let key = format!("user-{k}");
        let seq: Vec<u32> = got
            .iter()
            .filter(|(gk, _, _)| *gk == key)
            .map(|(_, v, _)| v.trim_start_matches("event ").parse().unwrap())
            .collect();
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order: {seq:?}"
        );
        assert_eq!(seq.len(), (0..500).filter(|i| i % 7 == k).count());
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 500, "no duplicates");
}

#[test]
fn consume_with_a_group_commits_so_a_second_run_continues() {
    let topic = unique_name("cli-group");
    let group = unique_name("cli-group-g");
    let out = kbatch()
        .args([
            "produce",
            "--brokers",
            brokers(),
            "--topic",
            &topic,
            "--generate",
            "100",
            "--size",
            "10",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let consume = |count: &str| {
        kbatch()
            .args([
                "consume",
                "--brokers",
                brokers(),
                "--topic",
                &topic,
                "--group",
                &group,
                "--format",
                "text",
            ])
            .args(["--count", count, "--idle-exit", "5"])
            .output()
            .unwrap()
    };
    let first = consume("60");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = consume("1000");
    let offsets = |o: &std::process::Output| -> Vec<i64> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.split('\t').nth(1).unwrap().parse().unwrap())
            .collect()
    };
    let (a, b) = (offsets(&first), offsets(&second));
    assert_eq!(a, (0..60).collect::<Vec<_>>());
    assert_eq!(
        b,
        (60..100).collect::<Vec<_>>(),
        "second run starts at the committed offset"
    );
}

#[test]
fn metrics_endpoint_counts_consumed_records() {
    let mut broker = kbatch()
        .args(["broker", "--topic", "m:2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut addr = String::new();
    let mut stdout = broker.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        addr.push(byte[0] as char);
    }
    assert!(
        addr.starts_with("127.0.0.1:"),
        "dev broker prints its loopback address, got {addr:?}"
    );

    let out = kbatch()
        .args([
            "produce",
            "--brokers",
            &addr,
            "--topic",
            "m",
            "--generate",
            "1000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut consumer = kbatch()
        .args([
            "consume",
            "--brokers",
            &addr,
            "--topic",
            "m",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Scrape over a real socket until the counter reports every record. The deadline is a hang
    // guard that names what never showed up, not a speed target.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut body = String::new();
    while !body.contains("kbatch_cli_records_consumed_total 1000") {
        assert!(
            Instant::now() < deadline,
            "metrics never showed 1000 consumed records:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
        body.clear();
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            s.read_to_string(&mut body).unwrap();
        }
    }
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    consumer.kill().unwrap();
    broker.kill().unwrap();
    consumer.wait().unwrap();
    broker.wait().unwrap();
}

#[test]
fn bad_input_is_named_in_the_error() {
    let out = kbatch()
        .args([
            "produce",
            "--brokers",
            "localhost",
            "--topic",
            "t",
            "--generate",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("brokers") && err.contains("\"localhost\""),
        "{err}"
    );

    let out = kbatch().args(["demo", "--size", "8"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--size"));
}

/// Pipes `lines` (`key=value`) into `kbatch produce`; returns what it reported on stderr.
fn produce_lines(topic: &str, partitions: u32, lines: &[String]) -> String {
    let mut p = kbatch()
        .args([
            "produce",
            "--brokers",
            brokers(),
            "--topic",
            topic,
            "--key-separator",
            "=",
        ])
        .args(["--partitions", &partitions.to_string()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin
        .take()
        .unwrap()
        .write_all((lines.join("\n") + "\n").as_bytes())
        .unwrap();
    let out = p.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

#[test]
fn parallel_exec_bridge_keeps_key_order() {
    let topic = unique_name("cli-exec");
    let lines: Vec<String> = (0..60).map(|i| format!("car-{}=fix {i}", i % 4)).collect();
    produce_lines(&topic, 2, &lines);
    let dir = std::env::temp_dir().join(unique_name("kbatch-exec"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("log");
    // Short lines appended with >> are atomic; the sleep makes concurrency observable.
    let cmd = format!(
        "v=$(cat); sleep 0.01; echo \"$KBATCH_KEY|$v\" >> {}",
        log.display()
    );
    let out = kbatch()
        .args([
            "consume",
            "--brokers",
            brokers(),
            "--topic",
            &topic,
            "--group",
            &unique_name("cli-exec-g"),
        ])
        .args([
            "--parallel",
            "--ordering",
            "key",
            "--concurrency",
            "8",
            "--exec",
            &cmd,
            "--count",
            "60",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let rows: Vec<(String, u32)> = text
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('|').unwrap();
            (k.to_owned(), v.trim_start_matches("fix ").parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 60);
    for k in 0..4 {
        let key = format!("car-{k}");
        let seq: Vec<u32> = rows
            .iter()
            .filter(|(rk, _)| *rk == key)
            .map(|(_, v)| *v)
            .collect();
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "{key}: {seq:?}");
        assert_eq!(seq.len(), 15);
    }
}

#[test]
fn parallel_http_bridge_posts_and_retries_failures() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let topic = unique_name("cli-http");
    let lines: Vec<String> = (0..30)
        .map(|i| format!("{}=payload {i}", if i == 7 { "flaky" } else { "steady" }))
        .collect();
    produce_lines(&topic, 2, &lines);
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for conn in server.incoming() {
                let Ok(mut s) = conn else { continue };
                // Read the whole request: head, then Content-Length bytes of body.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let req = loop {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if body.len() >= len || n == 0 {
                            break text;
                        }
                    } else if n == 0 {
                        break text;
                    }
                };
                let body = req.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
                let flaky = req.contains("X-Kafka-Key: flaky");
                let attempts = {
                    let mut m = seen.lock().unwrap();
                    let a = m.entry(body).or_default();
                    *a += 1;
                    *a
                };
                let status = if flaky && attempts == 1 {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let _ = s.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                );
            }
        });
    }
    let out = kbatch()
        .args([
            "consume",
            "--brokers",
            brokers(),
            "--topic",
            &topic,
            "--group",
            &unique_name("cli-http-g"),
        ])
        .args([
            "--parallel",
            "--ordering",
            "unordered",
            "--http",
            &format!("http://127.0.0.1:{port}/fix"),
            "--count",
            "30",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = seen.lock().unwrap();
    assert_eq!(m.len(), 30, "every record posted: {m:?}");
    assert_eq!(m["payload 7"], 2, "the 503 was retried once");
    assert!(
        m.iter()
            .filter(|(k, _)| *k != "payload 7")
            .all(|(_, n)| *n == 1)
    );
}
