//! The gateway under hostile or heavy clients, over real sockets against the real broker:
//! slow-loris, oversized floods, header counts, load shedding, trickled bodies, TLS, and
//! what `/metrics` shows of it all.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TOKEN, config, producer_config, start, topic};
use kbatch_gateway::Gateway;
use kbatch_producer::Producer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn path(topic: &str) -> String {
    format!("/topics/{topic}/records")
}

/// Sends `request` on a fresh connection and returns the status of the answer (0 when the
/// connection closed without one).
async fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap_or(0);
    parse_status(&buf[..n])
}

fn parse_status(bytes: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(bytes);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A request head with `total` headers (Host included).
fn request_with_headers(total: usize) -> Vec<u8> {
    let mut r = String::from("GET /healthz HTTP/1.1\r\nHost: gw\r\n");
    for i in 1..total {
        r.push_str(&format!("X-Filler-{i}: v\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

#[tokio::test]
async fn header_count_over_the_bound_is_431() {
    let gw = start(config(), producer_config()).await;
    assert_eq!(raw_status(gw.addr, &request_with_headers(100)).await, 200);
    assert_eq!(raw_status(gw.addr, &request_with_headers(101)).await, 431);
    let small = config().with_connection_limits(Duration::from_secs(10), 5, 100);
    let gw2 = start(small, producer_config()).await;
    assert_eq!(raw_status(gw2.addr, &request_with_headers(5)).await, 200);
    assert_eq!(raw_status(gw2.addr, &request_with_headers(6)).await, 431);
    gw.stop().await;
    gw2.stop().await;
}

/// One slow-loris connection: sends a request head one byte per second until the server
/// closes the connection; returns how long that took (`None`: not cut within `give_up`).
async fn slow_loris(addr: SocketAddr, give_up: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.ok()?;
    let head = b"POST /topics/gw-x/records HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let (mut rd, mut wr) = s.split();
    let mut buf = [0u8; 512];
    let trickle = async {
        for b in head.iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let closed = async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // A 408 or similar before closing: keep reading to the close.
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        () = trickle => Some(start.elapsed()),
        () = closed => Some(start.elapsed()),
        () = tokio::time::sleep(give_up) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_connections_are_cut_and_do_not_slow_normal_clients() {
    const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
    let gw = start(
        config().with_connection_limits(HEADER_TIMEOUT, 100, 10_000),
        producer_config(),
    )
    .await;
    let t = topic("loris");
    kbatch_testkit::create_topic(&t, 3).await;
    // Warm the topic lookup so the first timed request does not pay for it.
    assert_eq!(
        gw.post(&path(&t), "application/json", r#"{"value":0}"#)
            .await
            .status,
        200
    );
    let addr = gw.addr;
    let slow: Vec<_> = (0..200)
        .map(|_| tokio::spawn(slow_loris(addr, Duration::from_secs(15))))
        .collect();
    // Let every slow connection open and start trickling before the normal client starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::with_capacity(200);
    for i in 0..200 {
        let started = Instant::now();
        let a = gw
            .post(&path(&t), "application/json", format!(r#"{{"value":{i}}}"#))
            .await;
        latencies.push(started.elapsed());
        assert_eq!(a.status, 200, "normal request {i}: {}", a.body);
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    assert!(
        p99 < Duration::from_secs(2),
        "normal clients' p99 {p99:?} while 200 slow-loris connections are open"
    );
    for (i, h) in slow.into_iter().enumerate() {
        let cut = h.await.unwrap();
        let cut = cut.unwrap_or_else(|| panic!("slow connection {i} still open after 15 s"));
        assert!(
            cut >= HEADER_TIMEOUT - Duration::from_millis(100),
            "slow connection {i} was cut after {cut:?}, before the header timeout"
        );
        assert!(
            cut < HEADER_TIMEOUT + Duration::from_secs(3),
            "slow connection {i} was cut only after {cut:?} (header timeout {HEADER_TIMEOUT:?})"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let gw = start(
        config().with_connection_limits(Duration::from_secs(1), 100, 10_000),
        producer_config(),
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(parse_status(&buf[..n]), 200);
    // Kept alive, then idle: closed by the server within the timeout plus slack.
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle connection still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(900));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_flood_is_413_quickly_while_normal_clients_succeed() {
    const LIMIT: usize = 64 << 10;
    let gw = start(config().with_limits(LIMIT, 10_000), producer_config()).await;
    let t = topic("flood");
    kbatch_testkit::create_topic(&t, 3).await;
    let url = gw.url(&path(&t));
    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..50)
        .map(|c| {
            let url = url.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut answered = 0usize;
                // Just over the limit: the point is that the gateway refuses without reading
                // what it will not take; the body fits the socket buffers, so the client
                // reads the 413 rather than a reset.
                let body = vec![b' '; LIMIT + 4096];
                while !stop.load(Ordering::Relaxed) || answered == 0 {
                    let chunked = (c + answered).is_multiple_of(2);
                    let req = http
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/json");
                    let req = if chunked {
                        // A stream body has no Content-Length: sent chunked.
                        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                            body.chunks(8192).map(|c| Ok(c.to_vec())).collect();
                        req.body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
                    } else {
                        req.body(body.clone())
                    };
                    let started = Instant::now();
                    let r = req.send().await.unwrap_or_else(|e| {
                        panic!("flooder {c} (chunked: {chunked}): no answer: {e:?}")
                    });
                    let elapsed = started.elapsed();
                    assert_eq!(r.status().as_u16(), 413, "flooder {c}, chunked: {chunked}");
                    let body: serde_json::Value =
                        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                    assert_eq!(body["error"]["code"], "body_too_large");
                    // Far below the request timeout (30 s): refused without waiting for the
                    // body, with room for a debug build on a shared 2-core machine.
                    assert!(elapsed < Duration::from_secs(5), "413 took {elapsed:?}");
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for i in 0..100 {
        let started = Instant::now();
        let a = gw
            .post(&path(&t), "application/json", format!(r#"{{"value":{i}}}"#))
            .await;
        latencies.push(started.elapsed());
        assert_eq!(a.status, 200, "normal request {i}: {}", a.body);
    }
    stop.store(true, Ordering::Relaxed);
    let mut refused = 0;
    for f in flooders {
        refused += f.await.unwrap();
    }
    latencies.sort();
    let p99 = latencies[98];
    assert!(
        p99 < Duration::from_secs(2),
        "normal p99 {p99:?} during the flood"
    );
    assert!(refused >= 50, "{refused} oversized requests answered");
    gw.stop().await;
}

/// Opens a produce request whose body never completes: it holds a concurrency slot.
async fn held_request(addr: SocketAddr, topic: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /topics/{topic}/records HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{{\"value\""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn third_request_is_shed_with_429_then_the_gateway_recovers() {
    let gw = start(
        config()
            .with_max_concurrent_requests(2)
            .with_request_timeout(Duration::from_secs(20)),
        producer_config(),
    )
    .await;
    let t = topic("shed");
    kbatch_testkit::create_topic(&t, 1).await;
    let mut a = held_request(gw.addr, &t).await;
    let mut b = held_request(gw.addr, &t).await;
    // Both are in their handlers (reading the body) once the shedder refuses a third.
    let mut shed = None;
    for _ in 0..50 {
        let r = gw
            .post(&path(&t), "application/json", r#"{"value":1}"#)
            .await;
        if r.status == 429 {
            shed = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shed = shed.expect("a third request while two are held is shed");
    assert_eq!(shed.error_code(), "overloaded");
    assert_eq!(shed.headers["retry-after"], "1");
    // Health and metrics are not shed; the shed request is counted.
    assert_eq!(gw.get("/healthz").await.status, 200);
    let shed_series =
        r#"kbatch_gateway_requests_total{route="/topics/{topic}/records",status="429"}"#;
    assert!(series(&scrape(&gw).await, shed_series) >= 1.0);
    // The held requests complete, and free their slots.
    for s in [&mut a, &mut b] {
        s.write_all(b":1}").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(
            parse_status(&buf[..n]),
            200,
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    let r = gw
        .post(&path(&t), "application/json", r#"{"value":2}"#)
        .await;
    assert_eq!(r.status, 200, "after recovery: {}", r.body);
    gw.stop().await;
}

#[tokio::test]
async fn trickled_body_is_408_within_the_request_timeout() {
    let gw = start(
        config().with_request_timeout(Duration::from_secs(1)),
        producer_config(),
    )
    .await;
    let t = topic("trickle");
    kbatch_testkit::create_topic(&t, 1).await;
    let started = Instant::now();
    let mut s = held_request(gw.addr, &t).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert_eq!(parse_status(&buf[..n]), 408, "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    gw.stop().await;
}

/// A self-signed certificate for `localhost` in `dir`: (cert path, key path, cert PEM).
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = c.cert.pem();
    let cert = dir.join("gw.crt");
    let key = dir.join("gw.key");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    (cert, key, cert_pem)
}

#[tokio::test]
async fn tls_produce_works_and_plain_http_to_the_tls_port_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, cert_pem) = self_signed(dir.path());
    let producer = Producer::new(producer_config()).unwrap();
    let gateway = Gateway::bind(config().with_tls(&cert, &key), producer.clone())
        .await
        .unwrap();
    let port = gateway.local_addr().port();
    assert!(gateway.url().starts_with("https://"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(gateway.run(shutdown.clone()));
    let t = topic("tls");
    kbatch_testkit::create_topic(&t, 1).await;
    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let r = https
        .post(format!("https://localhost:{port}{}", path(&t)))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"key":"k","value":{"over":"tls"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["results"][0]["offset"], 0);
    let consumed = common::read_back(&t, 1).await;
    assert_eq!(consumed.len(), 1);
    assert_eq!(
        consumed[0].value.as_deref(),
        Some(&br#"{"over":"tls"}"#[..])
    );
    // Plain HTTP to the TLS port: no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn missing_or_bad_tls_files_are_start_up_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _key, _) = self_signed(dir.path());
    let missing = dir.path().join("no-such.key");
    let producer = Producer::new(producer_config()).unwrap();
    let e = Gateway::bind(config().with_tls(&cert, &missing), producer.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls_key") && e.contains("no-such.key"), "{e}");
    // A certificate file that holds no certificate.
    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "not a pem\n").unwrap();
    let e = Gateway::bind(config().with_tls(&empty, &cert), producer.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls_cert") && e.contains("empty.crt"), "{e}");
    // Only one of the two: the config names the missing one.
    let mut c = config();
    c.tls_cert = Some(cert);
    let e = Gateway::bind(c, producer).await.unwrap_err().to_string();
    assert!(e.contains("tls_key"), "{e}");
}

/// The value of the series `name` (with its labels, as rendered) in a scrape, 0 if absent.
fn series(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(gw: &common::Running) -> String {
    let r = gw.http.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    r.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_requests_records_and_latency() {
    let gw = start(config(), producer_config()).await;
    let t = topic("metrics");
    kbatch_testkit::create_topic(&t, 2).await;
    let before = scrape(&gw).await;
    let ok = r#"kbatch_gateway_requests_total{route="/topics/{topic}/records",status="200"}"#;
    let missing = r#"kbatch_gateway_requests_total{route="/topics/{topic}/records",status="404"}"#;
    let latency =
        r#"kbatch_gateway_request_duration_seconds_count{route="/topics/{topic}/records"}"#;
    let produced = "kbatch_gateway_records_produced_total";
    let per_request = "kbatch_gateway_records_per_request_sum";
    for _ in 0..3 {
        let a = gw
            .post(
                &path(&t),
                "application/json",
                r#"[{"value":1},{"value":2}]"#,
            )
            .await;
        assert_eq!(a.status, 200);
    }
    let a = gw
        .post(
            &path(&common::topic("absent")),
            "application/json",
            r#"{"value":1}"#,
        )
        .await;
    assert_eq!(a.status, 404);
    let after = scrape(&gw).await;
    let delta = |name: &str| series(&after, name) - series(&before, name);
    // Other tests of this binary may run in this process too (cargo test): at least ours.
    assert!(delta(ok) >= 3.0, "{ok}: {}\n{after}", delta(ok));
    assert!(delta(missing) >= 1.0, "{missing}\n{after}");
    assert!(delta(latency) >= 4.0, "{latency}\n{after}");
    assert!(delta(produced) >= 6.0, "{produced}\n{after}");
    assert!(delta(per_request) >= 6.0, "{per_request}\n{after}");
    for present in [
        "kbatch_gateway_pressure_level ",
        "kbatch_gateway_open_connections ",
        "kbatch_gateway_requests_in_flight ",
        r#"kbatch_gateway_request_duration_seconds_bucket{route="/topics/{topic}/records",le="0.005"}"#,
    ] {
        assert!(after.contains(present), "{present} missing from\n{after}");
    }
    assert!(series(&after, "kbatch_gateway_open_connections") >= 1.0);
    // The default adaptive producer reports its level: L1 (1) or above, never the 0 of a
    // gauge nobody feeds.
    assert!(
        series(&after, "kbatch_gateway_pressure_level") >= 1.0,
        "pressure level not reported\n{after}"
    );
    assert!(!after.contains(TOKEN), "no secrets in /metrics");
    gw.stop().await;
}

#[tokio::test]
async fn metrics_route_can_be_turned_off() {
    let gw = start(config().with_metrics(false), producer_config()).await;
    assert_eq!(gw.get("/metrics").await.status, 404);
    gw.stop().await;
}

#[tokio::test]
async fn past_max_connections_new_connections_wait_until_one_closes() {
    let gw = start(
        config().with_connection_limits(Duration::from_secs(10), 100, 2),
        producer_config(),
    )
    .await;
    // Two connections hold both slots (open, no request yet).
    let first = TcpStream::connect(gw.addr).await.unwrap();
    let _second = TcpStream::connect(gw.addr).await.unwrap();
    // Give the serve loop time to accept both and stop accepting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The third connects (the kernel's backlog takes it) but is not served...
    let addr = gw.addr;
    let third = tokio::spawn(async move {
        raw_status(addr, b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n").await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served while max_connections = 2 were open"
    );
    // ...until a slot frees.
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(status, 200);
    gw.stop().await;
}
