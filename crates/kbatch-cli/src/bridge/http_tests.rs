//! Tests of the `--http` bridge against in-process servers: no broker needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use kbatch_core::Offset;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::*;

fn record(key: Option<&'static [u8]>) -> ConsumedRecord {
    ConsumedRecord {
        topic: "gps".into(),
        partition: 1,
        offset: Offset(42),
        key: key.map(Bytes::from_static),
        value: Some(Bytes::from_static(b"fix")),
        headers: Vec::new(),
        timestamp: None,
        envelope: None,
    }
}

/// A keep-alive HTTP/1.1 server on loopback that answers every request with `response`
/// (or never, when it is `None`); counts the connections it accepted.
async fn server(response: Option<&'static str>) -> (Url, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/in", listener.local_addr().unwrap())).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (rd, mut wr) = s.into_split();
                let mut rd = BufReader::new(rd);
                loop {
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end().to_ascii_lowercase();
                        if line.is_empty() {
                            break;
                        }
                        if let Some(v) = line.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    rd.read_exact(&mut body).await.unwrap();
                    match response {
                        Some(r) => wr.write_all(r.as_bytes()).await.unwrap(),
                        None => std::future::pending().await,
                    }
                }
            });
        }
    });
    (url, accepted)
}

#[test]
fn urls_parse_with_clear_errors() {
    let u = parse_http_url("http://127.0.0.1:8080/gps/fix").unwrap();
    assert_eq!(
        (u.host_str(), u.port_or_known_default(), u.path()),
        (Some("127.0.0.1"), Some(8080), "/gps/fix")
    );
    let u = parse_http_url("https://ingest.example.com").unwrap();
    assert_eq!((u.port_or_known_default(), u.path()), (Some(443), "/"));
    let e = parse_http_url("ftp://h/x").unwrap_err();
    assert!(e.contains("\"ftp\"") && e.contains("https://"), "{e}");
    let e = parse_http_url("http://h:99999/").unwrap_err();
    assert!(e.contains("not a URL") && e.contains("port"), "{e}");
    assert!(parse_http_url("localhost:8080").is_err());
}

#[test]
fn statuses_are_classified() {
    let v = |c: u16| classify(StatusCode::from_u16(c).unwrap());
    for c in [200, 201, 204, 299] {
        assert_eq!(v(c), Verdict::Done, "{c}");
    }
    for c in [408, 429, 500, 502, 503, 504, 599] {
        assert_eq!(v(c), Verdict::Retriable, "{c}");
    }
    for c in [301, 302, 307, 308, 400, 401, 403, 404, 409, 413, 422] {
        assert_eq!(v(c), Verdict::Permanent, "{c}");
    }
}

#[test]
fn keys_go_verbatim_when_they_survive_a_header_else_base64() {
    let h = |k: &[u8]| {
        let (name, value) = key_header(k);
        (name.as_str().to_owned(), value.to_str().unwrap().to_owned())
    };
    let plain = |v: &str| ("x-kafka-key".to_owned(), v.to_owned());
    let b64 = |v: &str| ("x-kafka-key-base64".to_owned(), v.to_owned());
    assert_eq!(h(b"user-7"), plain("user-7"));
    assert_eq!(h(b"a b~{}"), plain("a b~{}"));
    assert_eq!(h(b""), plain(""));
    assert_eq!(h("café".as_bytes()), b64("Y2Fmw6k="));
    assert_eq!(h(b"line\r\nX-Evil: 1"), b64("bGluZQ0KWC1FdmlsOiAx"));
    assert_eq!(h(b" padded"), b64("IHBhZGRlZA=="));
    assert_eq!(h(b"tab\t"), b64("dGFiCQ=="));
    assert_eq!(h(&[0, 159, 255]), b64("AJ//"));
}

#[test]
fn an_event_names_its_envelope_offset_and_its_place_in_it() {
    let names = |r: &ConsumedRecord| {
        let h = request_headers(r).unwrap();
        let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_owned());
        (
            get("x-kafka-offset"),
            get("x-kafka-envelope-index"),
            get("x-kafka-envelope-count"),
        )
    };
    let plain = record(Some(b"k"));
    assert_eq!(names(&plain), (Some("42".into()), None, None));
    let event = ConsumedRecord {
        envelope: Some(kbatch_core::EnvelopePosition {
            index: 3,
            count: 10,
        }),
        ..plain
    };
    assert_eq!(
        names(&event),
        (Some("42".into()), Some("3".into()), Some("10".into()))
    );
}

#[test]
fn retry_after_reads_seconds_and_dates() {
    let now = httpdate::parse_http_date("Sun, 30 Nov 2025 10:00:00 GMT").unwrap();
    let at = |v: &'static str| {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static(v));
        retry_after(&h, now)
    };
    assert_eq!(at("7"), Some(Duration::from_secs(7)));
    assert_eq!(at(" 0 "), Some(Duration::ZERO));
    assert_eq!(
        at("Sun, 30 Nov 2025 10:01:30 GMT"),
        Some(Duration::from_secs(90))
    );
    assert_eq!(at("Sun, 30 Nov 2025 09:00:00 GMT"), Some(Duration::ZERO));
    assert_eq!(at("soon"), None);
    assert_eq!(at("-3"), None);
    assert_eq!(retry_after(&HeaderMap::new(), now), None);
}

#[tokio::test]
async fn sequential_posts_reuse_one_connection() {
    let (url, accepted) = server(Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
    let bridge = HttpBridge::new(url, Duration::from_secs(5)).unwrap();
    for _ in 0..20 {
        bridge.post(record(Some(b"k"))).await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_error_is_permanent_and_quotes_the_body() {
    let (url, _) = server(Some(
        "HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: 13\r\n\r\nbad lat/long\n",
    ))
    .await;
    let bridge = HttpBridge::new(url, Duration::from_secs(5)).unwrap();
    let e = bridge.post(record(Some(b"car-1"))).await.unwrap_err();
    assert!(!e.is_retriable(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("422") && msg.contains("offset 42") && msg.contains("bad lat/long"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_names_the_new_place() {
    let (url, _) = server(Some(
        "HTTP/1.1 308 Permanent Redirect\r\nLocation: http://elsewhere/in\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    let bridge = HttpBridge::new(url, Duration::from_secs(5)).unwrap();
    let e = bridge.post(record(None)).await.unwrap_err();
    assert!(!e.is_retriable(), "{e}");
    assert!(e.to_string().contains("http://elsewhere/in"), "{e}");
}

#[tokio::test]
async fn retry_after_is_waited_for_but_never_past_the_timeout() {
    let (url, _) = server(Some(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    let bridge = HttpBridge::new(url, Duration::from_secs(5)).unwrap();
    let started = Instant::now();
    let e = bridge.post(record(None)).await.unwrap_err();
    let took = started.elapsed();
    assert!(e.is_retriable(), "{e}");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");

    let (url, _) = server(Some(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3600\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    let bridge = HttpBridge::new(url, Duration::from_millis(300)).unwrap();
    let started = Instant::now();
    let e = bridge.post(record(None)).await.unwrap_err();
    let took = started.elapsed();
    assert!(e.is_retriable(), "{e}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "an hour asked, the timeout waited: {took:?}"
    );
}

#[tokio::test]
async fn no_answer_times_out_as_retriable() {
    let (url, _) = server(None).await;
    let bridge = HttpBridge::new(url, Duration::from_millis(200)).unwrap();
    let started = Instant::now();
    let e = bridge.post(record(None)).await.unwrap_err();
    assert!(e.is_retriable(), "{e}");
    assert!(e.to_string().contains("timed out after 200ms"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn no_server_is_retriable_and_names_the_cause() {
    // Bind, then close: nothing listens on the port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
    let bridge = HttpBridge::new(url, Duration::from_secs(5)).unwrap();
    let e = bridge.post(record(None)).await.unwrap_err();
    assert!(e.is_retriable(), "{e}");
    assert!(e.to_string().to_lowercase().contains("refused"), "{e}");
}

#[tokio::test]
async fn https_urls_are_spoken_to_in_tls() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("https://{}/in", listener.local_addr().unwrap())).unwrap();
    let first_bytes = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut b = [0u8; 3];
        s.read_exact(&mut b).await.unwrap();
        b
    });
    let bridge = HttpBridge::new(url, Duration::from_secs(5)).unwrap();
    let e = bridge.post(record(None)).await.unwrap_err();
    // A TLS handshake record (0x16), protocol major version 3: a ClientHello, not HTTP.
    assert_eq!(first_bytes.await.unwrap()[..2], [0x16, 0x03]);
    assert!(e.is_retriable(), "the server hung up mid-handshake: {e}");
}
