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

/// The demo's second act: every adaptive event consumed once, in key order, after the level
/// rose with the burst and came down after it.
fn assert_adaptive_verified(s: &serde_json::Value) {
    let a = &s["adaptive"];
    let events = a["events"].as_u64().unwrap();
    assert!(events > 0, "{s}");
    assert_eq!(a["consumed"], events, "{s}");
    assert_eq!(a["lost"], 0, "{s}");
    assert_eq!(a["duplicates"], 0, "{s}");
    assert_eq!(a["reordered"], 0, "{s}");
    let records = a["kafka_records"].as_u64().unwrap();
    assert!(
        records > 0 && records < events,
        "packed: {records} records for {events} events"
    );
    let levels: Vec<u64> = a["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l[1].as_u64().unwrap())
        .collect();
    let top = *levels.iter().max().unwrap();
    assert!(
        top >= 5,
        "the 30,000/s burst reached only L{top}: {levels:?}"
    );
    assert!(
        *levels.last().unwrap() < top,
        "the level stayed up after the burst: {levels:?}"
    );
}

/// The demo's third act: every committed outbox entry read back exactly once (by its id
/// header), none of the rolled-back ones.
fn assert_outbox_verified(s: &serde_json::Value) {
    let o = &s["outbox"];
    let committed = o["committed"].as_u64().unwrap();
    assert!(committed > 0, "{s}");
    assert!(
        o["rolled_back"].as_u64().unwrap() > 0,
        "nothing rolled back: {s}"
    );
    assert_eq!(o["received"], committed, "{s}");
    assert_eq!(o["lost"], 0, "{s}");
    assert_eq!(o["duplicates"], 0, "{s}");
    assert_eq!(o["rolled_back_seen"], 0, "{s}");
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
    assert_adaptive_verified(&s);
    assert_outbox_verified(&s);
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
    assert_adaptive_verified(&s);
    assert_outbox_verified(&s);
}

#[test]
fn demo_through_the_gateway_verifies_zero_loss_on_the_real_broker() {
    let out = kbatch()
        .args([
            "demo",
            "--records",
            "20000",
            "--partitions",
            "4",
            "--via-gateway",
            "--no-adaptive",
            "--no-outbox",
            "--json",
            "--brokers",
            brokers(),
        ])
        .output()
        .unwrap();
    let s = json_of(&out);
    assert_eq!(s["via_gateway"], true);
    assert_eq!(s["embedded_broker"], false);
    assert_verified(&s, 20_000);
    assert!(
        s["outbox"].is_null(),
        "--no-outbox still ran the outbox act: {s}"
    );
}

#[test]
fn producer_bench_runs_every_rust_contender_each_round_and_reports_ratios() {
    let out = kbatch()
        .args([
            "bench",
            "producer",
            "--records",
            "5000",
            "--rounds",
            "2",
            "--poll-every",
            "64,1",
            "--no-python",
            "--json",
            "--brokers",
            brokers(),
        ])
        .output()
        .unwrap();
    let s = json_of(&out);
    let keys = [
        "kbatch",
        "base_producer_poll_every_1",
        "base_producer_poll_every_64",
        "threaded_producer",
        "future_producer",
    ];
    let count = |runs: &serde_json::Value, key: &str| {
        runs.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["contender"] == key)
            .count()
    };
    for key in keys {
        assert_eq!(count(&s["warmup"], key), 1, "{key} warm-up: {s}");
        assert_eq!(count(&s["runs"], key), 2, "{key} measured: {s}");
    }
    assert_eq!(s["runs"].as_array().unwrap().len(), 2 * keys.len());
    // Rotation: a different contender opens each round.
    let first = |round: u64| {
        s["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["round"] == round && r["position"] == 0)
            .map(|r| r["contender"].clone())
    };
    assert_ne!(first(1), first(2), "{s}");
    let ratios = s["kbatch_ratios"].as_array().unwrap();
    assert_eq!(ratios.len(), keys.len() - 1, "{s}");
    for r in ratios {
        assert_eq!(r["per_round"].as_array().unwrap().len(), 2, "{r}");
        assert!(r["spread"]["min"].as_f64().unwrap() <= r["spread"]["max"].as_f64().unwrap());
    }
    assert_eq!(
        s["librdkafka_settings"]["queue.buffering.max.messages"],
        "100000"
    );
    assert!(s["kbatch_behind"].is_array(), "{s}");
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
fn packed_generation_is_consumed_back_as_events_with_their_place() {
    let topic = unique_name("cli-packed");
    let out = kbatch()
        .args(["produce", "--brokers", brokers(), "--topic", &topic])
        .args([
            "--generate",
            "25",
            "--packed",
            "10",
            "--keys",
            "3",
            "--size",
            "4",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("produced 3 of 3 records"),
        "three envelopes: {err}"
    );
    let out = kbatch()
        .args(["consume", "--brokers", brokers(), "--topic", &topic])
        .args(["--count", "3", "--idle-exit", "10", "--format", "text"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("consumed 3 records (25 printed, envelopes unpacked)"),
        "{err}"
    );
    let rows: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = (0..25)
        .map(|i| format!("0\t{}#{}\tkey-{}\txxxx", i / 10, i % 10, i % 3))
        .collect();
    assert_eq!(rows, want, "every event, in order, keyed as generated");
}

/// Runs `kbatch produce --generate` into a new topic of 2 partitions, then reads it all back as
/// (partition, offset, key, value) text rows.
fn generate_and_read_back(records: u64, keys: u64) -> Vec<(usize, u64, String, String)> {
    let topic = unique_name("cli-generate");
    let out = kbatch()
        .args(["produce", "--brokers", brokers(), "--topic", &topic])
        .args([
            "--generate",
            &records.to_string(),
            "--keys",
            &keys.to_string(),
        ])
        .args(["--size", "8", "--partitions", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("produced {records} of {records} records"))
            && err.contains("failed 0"),
        "{err}"
    );
    let out = kbatch()
        .args(["consume", "--brokers", brokers(), "--topic", &topic])
        .args([
            "--count",
            &records.to_string(),
            "--idle-exit",
            "10",
            "--format",
            "text",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let c: Vec<&str> = line.split('\t').collect();
            (
                c[0].parse().unwrap(),
                c[1].parse().unwrap(),
                c[2].to_owned(),
                c[3].to_owned(),
            )
        })
        .collect()
}

#[test]
fn generating_past_the_in_flight_window_delivers_every_record() {
    // 150,000 records: more than the producer's 100,000 pending records, so the oldest
    // futures are awaited while later records are still being sent. 70,000 keys: the first
    // 65,536 are made once and shared, the rest formatted per record.
    let rows = generate_and_read_back(150_000, 70_000);
    assert_eq!(rows.len(), 150_000);
    let mut per_partition = [0u64; 2];
    let mut per_key = std::collections::HashMap::<String, u32>::new();
    for (partition, offset, key, value) in rows {
        assert_eq!(
            offset, per_partition[partition],
            "offsets are dense: nothing lost"
        );
        per_partition[partition] += 1;
        *per_key.entry(key).or_default() += 1;
        assert_eq!(value, "xxxxxxxx");
    }
    // Record i has key i % 70,000: keys below 10,000 three times, the others twice.
    assert_eq!(per_key.len(), 70_000);
    for k in 0..70_000 {
        let expected = if k < 10_000 { 3 } else { 2 };
        assert_eq!(per_key.get(&format!("key-{k}")), Some(&expected), "key-{k}");
    }

    let rows = generate_and_read_back(10, 0);
    assert_eq!(rows.len(), 10);
    assert!(
        rows.iter().all(|r| r.2 == "null"),
        "--keys 0 sends no key: {rows:?}"
    );
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
    let out = produce_lines_output(topic, partitions, lines);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

/// Pipes `lines` (`key=value`) into `kbatch produce`, however it ends.
fn produce_lines_output(topic: &str, partitions: u32, lines: &[String]) -> std::process::Output {
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
    p.wait_with_output().unwrap()
}

#[test]
fn a_record_the_broker_refuses_fails_alone_named_and_the_exit_is_non_zero() {
    let topic = unique_name("cli-refused");
    // 2 MB is over the 1 MB max record size: refused; the lines around it still go.
    let lines = vec![
        "first=1".to_owned(),
        format!("huge={}", "x".repeat(2_000_000)),
        "last=3".to_owned(),
    ];
    let out = produce_lines_output(&topic, 1, &lines);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("produced 2 of 3 records") && err.contains("failed 1"),
        "{err}"
    );
    assert!(
        err.contains("1 records failed")
            && err.contains("key \"huge\"")
            && err.contains("permanent"),
        "the error names the record and its class: {err}"
    );
    let out = kbatch()
        .args(["consume", "--brokers", brokers(), "--topic", &topic])
        .args(["--count", "2", "--idle-exit", "10", "--format", "text"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0\t0\tfirst\t1\n0\t1\tlast\t3\n"
    );
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

/// One request as [`HttpStub`] read it: header names in lower case.
#[derive(Clone, Debug)]
struct StubRequest {
    headers: std::collections::HashMap<String, String>,
    body: String,
}

/// A tiny HTTP/1.1 server on std sockets that keeps connections alive as real servers do: a
/// connection carries request after request until the client closes it. `respond` gets each
/// request and its attempt number (1 + earlier requests with the same body) and picks the
/// status line; every answer has an empty body.
struct HttpStub {
    port: u16,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    requests: std::sync::Arc<std::sync::Mutex<Vec<StubRequest>>>,
}

impl HttpStub {
    fn start(
        respond: impl Fn(&StubRequest, usize) -> &'static str + Send + Sync + 'static,
    ) -> Self {
        use std::io::BufRead;
        use std::sync::Arc;
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stub = HttpStub {
            port: listener.local_addr().unwrap().port(),
            connections: Arc::default(),
            requests: Arc::default(),
        };
        let (connections, requests) = (stub.connections.clone(), stub.requests.clone());
        let respond = Arc::new(respond);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut writer) = conn else { continue };
                connections.fetch_add(1, Ordering::SeqCst);
                let (requests, respond) = (requests.clone(), respond.clone());
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(writer.try_clone().unwrap());
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return; // The client closed the connection.
                        }
                        let mut headers = std::collections::HashMap::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let Some((name, value)) = line.trim_end().split_once(':') else {
                                break; // The blank line after the head.
                            };
                            headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
                        }
                        let len = headers
                            .get("content-length")
                            .map_or(0, |v| v.parse().unwrap());
                        let mut body = vec![0; len];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let req = StubRequest {
                            headers,
                            body: String::from_utf8(body).unwrap(),
                        };
                        let attempt = {
                            let mut all = requests.lock().unwrap();
                            all.push(req.clone());
                            all.iter().filter(|r| r.body == req.body).count()
                        };
                        let answer = format!(
                            "HTTP/1.1 {}\r\nContent-Length: 0\r\n\r\n",
                            respond(&req, attempt)
                        );
                        if writer.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        stub
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/fix", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many times each body was posted.
    fn attempts(&self) -> std::collections::HashMap<String, usize> {
        let mut m = std::collections::HashMap::new();
        for r in self.requests.lock().unwrap().iter() {
            *m.entry(r.body.clone()).or_default() += 1;
        }
        m
    }
}

/// Runs the `--http` bridge over `topic` until `count` records are done or dead-lettered.
fn http_bridge(topic: &str, url: &str, count: usize, extra: &[&str]) -> std::process::Output {
    kbatch()
        .args(["consume", "--brokers", brokers(), "--topic", topic])
        .args(["--group", &unique_name("cli-http-g"), "--parallel"])
        .args(["--http", url, "--count", &count.to_string()])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn parallel_http_bridge_posts_and_retries_failures() {
    let topic = unique_name("cli-http");
    let lines: Vec<String> = (0..30)
        .map(|i| {
            let key = match i {
                7 => "flaky",
                9 => "café",
                _ => "steady",
            };
            format!("{key}=payload {i}")
        })
        .collect();
    produce_lines(&topic, 2, &lines);
    let stub = HttpStub::start(|req, attempt| {
        if req.headers.get("x-kafka-key").map(String::as_str) == Some("flaky") && attempt == 1 {
            "503 Service Unavailable"
        } else {
            "200 OK"
        }
    });
    let out = http_bridge(&topic, &stub.url(), 30, &["--ordering", "unordered"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = stub.attempts();
    assert_eq!(m.len(), 30, "every record posted: {m:?}");
    assert_eq!(m["payload 7"], 2, "the 503 was retried once");
    assert!(
        m.iter()
            .filter(|(k, _)| *k != "payload 7")
            .all(|(_, n)| *n == 1),
        "{m:?}"
    );
    let requests = stub.requests.lock().unwrap();
    let by_body = |b: &str| {
        requests
            .iter()
            .find(|r| r.body == b)
            .unwrap()
            .headers
            .clone()
    };
    let h = by_body("payload 3");
    assert_eq!(h["x-kafka-topic"], topic);
    assert_eq!(h["x-kafka-key"], "steady");
    assert!(h["x-kafka-partition"].parse::<i32>().unwrap() < 2);
    assert!(h["x-kafka-offset"].parse::<i64>().is_ok());
    assert_eq!(h["content-type"], "application/octet-stream");
    // A key that is not plain ASCII travels base64-encoded, under its own header name.
    let h = by_body("payload 9");
    assert_eq!(h["x-kafka-key-base64"], "Y2Fmw6k=");
    assert!(!h.contains_key("x-kafka-key"), "{h:?}");
}

#[test]
fn parallel_http_bridge_reuses_connections() {
    let topic = unique_name("cli-http-pool");
    let lines: Vec<String> = (0..200)
        .map(|i| format!("k{}=payload {i}", i % 10))
        .collect();
    produce_lines(&topic, 2, &lines);
    let stub = HttpStub::start(|_, _| "200 OK");
    let out = http_bridge(
        &topic,
        &stub.url(),
        200,
        &["--ordering", "unordered", "--concurrency", "4"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = stub.attempts();
    assert_eq!(m.len(), 200, "every record posted once: {m:?}");
    assert!(m.values().all(|n| *n == 1), "{m:?}");
    // At most 4 requests are in flight at once; a keep-alive pool needs about as many
    // connections (a few more if a new request races a connection's return to the pool).
    let connections = stub.connections();
    assert!(
        (1..=8).contains(&connections),
        "200 requests over {connections} connections"
    );
}

#[test]
fn parallel_http_bridge_dead_letters_a_permanent_client_error() {
    let topic = unique_name("cli-http-dlq");
    let dead_letters = unique_name("cli-http-dlq-out");
    let lines: Vec<String> = (0..20)
        .map(|i| format!("{}=payload {i}", if i == 5 { "poison" } else { "fine" }))
        .collect();
    produce_lines(&topic, 1, &lines);
    // The broker may not create topics on a producer's first write: create it empty.
    let out = kbatch()
        .args(["produce", "--brokers", brokers(), "--topic", &dead_letters])
        .args(["--generate", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stub = HttpStub::start(|req, _| {
        if req.headers.get("x-kafka-key").map(String::as_str) == Some("poison") {
            "400 Bad Request"
        } else {
            "200 OK"
        }
    });
    let out = http_bridge(
        &topic,
        &stub.url(),
        20,
        &["--dead-letter", &dead_letters, "--max-attempts", "5"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = stub.attempts();
    assert_eq!(m.len(), 20, "{m:?}");
    assert!(
        m.values().all(|n| *n == 1),
        "a 400 is not retried, though 5 attempts were allowed: {m:?}"
    );
    let out = kbatch()
        .args(["consume", "--brokers", brokers(), "--topic", &dead_letters])
        .args(["--count", "1", "--idle-exit", "20", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{stdout}");
    assert_eq!(rows[0]["key"], "poison");
    assert_eq!(rows[0]["value"], "payload 5");
    let headers: std::collections::HashMap<String, String> = rows[0]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_owned(),
                h[1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(headers["kbatch.dlq.topic"], topic);
    assert_eq!(headers["kbatch.dlq.offset"], "5");
    assert!(headers["kbatch.dlq.error"].contains("400"), "{headers:?}");
}
