//! The gateway over real sockets, against the real broker: what it answers is what a
//! consumer reads back.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{
    Running, TOKEN, assert_results_match, config, producer_config, read_back, start, topic,
};
use kbatch_gateway::{GatewayConfig, ProducerKind};
use serde_json::{Value, json};

const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";

fn path(topic: &str) -> String {
    format!("/topics/{topic}/records")
}

async fn gateway() -> Running {
    start(config(), producer_config()).await
}

fn json_bytes(v: &Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(v).unwrap())
}

#[tokio::test]
async fn single_record_is_answered_with_its_offset_and_read_back() {
    let gw = gateway().await;
    let t = topic("single");
    kbatch_testkit::create_topic(&t, 3).await;
    let a = gw
        .post(
            &path(&t),
            JSON,
            r#"{"key": "user-1", "value": {"b": 2, "a": [1, "x y"]}, "headers": {"source": "test"}, "timestamp": 1700000000000}"#,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let consumed = read_back(&t, 1).await;
    assert_results_match(
        a.results(),
        &[Some(b"user-1".to_vec())],
        // Compact JSON text, key order as written.
        &[Some(br#"{"b":2,"a":[1,"x y"]}"#.to_vec())],
        &consumed,
    );
    let c = &consumed[0];
    assert_eq!(
        c.header("source").unwrap().value.as_deref(),
        Some(&b"test"[..])
    );
    assert_eq!(c.timestamp.map(|t| t.0), Some(1_700_000_000_000));
    gw.stop().await;
}

#[tokio::test]
async fn array_records_each_get_their_own_offset() {
    let gw = gateway().await;
    let t = topic("array");
    kbatch_testkit::create_topic(&t, 3).await;
    let values: Vec<Value> = (0..50)
        .map(|i| json!({"n": i, "s": format!("v{i}")}))
        .collect();
    let body: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"key": format!("k{}", i % 7), "value": v}))
        .collect();
    let a = gw
        .post(&path(&t), JSON, serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.results().len(), 50);
    let consumed = read_back(&t, 50).await;
    let keys: Vec<_> = (0..50)
        .map(|i| Some(format!("k{}", i % 7).into_bytes()))
        .collect();
    let vals: Vec<_> = values.iter().map(json_bytes).collect();
    assert_results_match(a.results(), &keys, &vals, &consumed);
    gw.stop().await;
}

#[tokio::test]
async fn ndjson_lines_each_get_their_own_offset() {
    let gw = gateway().await;
    let t = topic("ndjson");
    kbatch_testkit::create_topic(&t, 2).await;
    let mut body = String::new();
    let mut keys = Vec::new();
    let mut vals = Vec::new();
    for i in 0..40 {
        let v = json!([i, "x"]);
        body.push_str(&json!({"key": format!("k{i}"), "value": v}).to_string());
        body.push('\n');
        keys.push(Some(format!("k{i}").into_bytes()));
        vals.push(json_bytes(&v));
    }
    // A tombstone line: no value.
    body.push_str("{\"key\": \"gone\", \"value\": null}\n");
    keys.push(Some(b"gone".to_vec()));
    vals.push(None);
    let a = gw.post(&path(&t), NDJSON, body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.results().len(), 41);
    let consumed = read_back(&t, 41).await;
    assert_results_match(a.results(), &keys, &vals, &consumed);
    gw.stop().await;
}

#[tokio::test]
async fn binary_format_sends_the_decoded_bytes() {
    let gw = gateway().await;
    let t = topic("binary");
    kbatch_testkit::create_topic(&t, 1).await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (key, value) = (vec![0u8, 255, 1], vec![0xc3u8, 0x28, 0, 7]);
    let body = json!([{"key": b64.encode(&key), "value": b64.encode(&value)}]);
    let a = gw
        .post(
            &format!("{}?format=binary", path(&t)),
            JSON,
            body.to_string(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let consumed = read_back(&t, 1).await;
    assert_results_match(a.results(), &[Some(key)], &[Some(value)], &consumed);
    gw.stop().await;
}

#[tokio::test]
async fn a_bad_partition_fails_only_its_record_with_207() {
    let gw = gateway().await;
    let t = topic("partial");
    kbatch_testkit::create_topic(&t, 2).await;
    let body = json!([
        {"key": "a", "value": 1, "partition": 0},
        {"key": "b", "value": 2, "partition": 5},
        {"key": "c", "value": 3, "partition": 1},
    ]);
    let a = gw.post(&path(&t), JSON, body.to_string()).await;
    assert_eq!(a.status, 207, "{}", a.body);
    let r = a.results();
    assert_eq!(r[1]["error"]["code"], "unknown_partition", "{}", a.body);
    assert!(
        r[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("partition 5")
    );
    assert_eq!(
        (r[0]["partition"].as_i64(), r[2]["partition"].as_i64()),
        (Some(0), Some(1))
    );
    let consumed = read_back(&t, 2).await;
    assert_results_match(
        r,
        &[Some(b"a".to_vec()), None, Some(b"c".to_vec())],
        &[Some(b"1".to_vec()), None, Some(b"3".to_vec())],
        &consumed,
    );
    // All of them bad: the failure's own status.
    let a = gw
        .post(
            &path(&t),
            JSON,
            json!({"value": 1, "partition": 9}).to_string(),
        )
        .await;
    assert_eq!(
        (a.status, a.error_code()),
        (404, "unknown_partition"),
        "{}",
        a.body
    );
    gw.stop().await;
}

#[tokio::test]
async fn malformed_json_is_400_naming_line_and_column() {
    let gw = gateway().await;
    let t = topic("malformed");
    kbatch_testkit::create_topic(&t, 1).await;
    let a = gw
        .post(&path(&t), JSON, "[\n  {\"value\": 1},\n  {\"value\": }\n]")
        .await;
    assert_eq!(
        (a.status, a.error_code()),
        (400, "malformed_json"),
        "{}",
        a.body
    );
    let msg = a.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("malformed JSON at line 3, column 13:"),
        "{msg}"
    );
    let a = gw
        .post(
            &path(&t),
            NDJSON,
            "{\"value\": 1}\n{\"value\": 2}\n{\"value\" 3}\n",
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let msg = a.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("malformed JSON at line 3, column 10:"),
        "{msg}"
    );
    // Nothing of a refused request is written, not even its valid lines.
    assert!(read_back(&t, 0).await.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn oversized_bodies_and_too_many_records_are_413() {
    let gw = start(config().with_limits(2048, 3), producer_config()).await;
    let t = topic("limits");
    kbatch_testkit::create_topic(&t, 1).await;
    let big = json!({"value": "x".repeat(4096)}).to_string();
    let a = gw.post(&path(&t), JSON, big).await;
    assert_eq!(
        (a.status, a.error_code()),
        (413, "body_too_large"),
        "{}",
        a.body
    );
    let four = json!([{"value": 1}, {"value": 2}, {"value": 3}, {"value": 4}]).to_string();
    let a = gw.post(&path(&t), JSON, four).await;
    assert_eq!(
        (a.status, a.error_code()),
        (413, "too_many_records"),
        "{}",
        a.body
    );
    let a = gw.post(&path(&t), NDJSON, "{}\n{}\n{}\n{}\n").await;
    assert_eq!(
        (a.status, a.error_code()),
        (413, "too_many_records"),
        "{}",
        a.body
    );
    // At the limits, accepted.
    let a = gw.post(&path(&t), NDJSON, "{}\n{}\n{}\n").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(read_back(&t, 3).await.len(), 3);
    gw.stop().await;
}

#[tokio::test]
async fn unknown_topic_is_404() {
    let gw = gateway().await;
    let t = topic("missing");
    let a = gw.post(&path(&t), JSON, r#"{"value": 1}"#).await;
    assert_eq!(
        (a.status, a.error_code()),
        (404, "unknown_topic"),
        "{}",
        a.body
    );
    assert!(a.body["error"]["message"].as_str().unwrap().contains(&t));
    // Asked again (from the cache this time): still 404, and the topic was not created.
    let a = gw.post(&path(&t), JSON, r#"{"value": 1}"#).await;
    assert_eq!(a.status, 404);
    let admin = kbatch_testkit::admin();
    assert!(matches!(
        admin.describe_topic(&t).await,
        Err(kbatch_client::Error::UnknownTopic(_))
    ));
    gw.stop().await;
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_401() {
    let gw = gateway().await;
    let t = topic("auth");
    kbatch_testkit::create_topic(&t, 1).await;
    for token in [None, Some("wrong-token"), Some("s3cret-gateway-tokeN")] {
        let a = gw.post_as(&path(&t), token, JSON, r#"{"value": 1}"#).await;
        assert_eq!(
            (a.status, a.error_code()),
            (401, "unauthorized"),
            "{token:?}"
        );
        assert_eq!(a.headers["www-authenticate"], "Bearer");
    }
    // X-API-Key works as well as Bearer.
    let r = gw
        .http
        .post(gw.url(&path(&t)))
        .header("x-api-key", TOKEN)
        .body(r#"{"value": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        read_back(&t, 1).await.len(),
        1,
        "only the authenticated record is written"
    );
    gw.stop().await;
}

#[tokio::test]
async fn topics_outside_the_allowlist_and_internal_topics_are_403() {
    let gw = gateway().await;
    let outside = kbatch_testkit::unique_name("other");
    kbatch_testkit::create_topic(&outside, 1).await;
    let a = gw.post(&path(&outside), JSON, r#"{"value": 1}"#).await;
    assert_eq!((a.status, a.error_code()), (403, "forbidden"), "{}", a.body);
    let a = gw
        .post(&path("__consumer_offsets"), JSON, r#"{"value": 1}"#)
        .await;
    assert_eq!((a.status, a.error_code()), (403, "forbidden"), "{}", a.body);
    gw.stop().await;
    // Without authentication, internal topics stay closed; others are open.
    let open = start(config().with_insecure_no_auth(true), producer_config()).await;
    let a = open
        .post_as(&path("__consumer_offsets"), None, JSON, r#"{"value": 1}"#)
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = open
        .post_as(&path(&outside), None, JSON, r#"{"value": 1}"#)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(read_back(&outside, 1).await.len(), 1);
    open.stop().await;
}

/// Provoking "full": the producer may hold one record, and lingers 3 s before sending a
/// batch, so a record handed in holds the only place for 3 s. The plain producer (whose
/// linger holds records), which keeps that path covered; the adaptive one's 429 is in
/// tests/adaptive.rs.
#[tokio::test]
async fn a_full_producer_answers_429_and_still_reports_what_it_took() {
    let mut pc = producer_config().with_pending_limits(1, 1 << 20);
    pc.kafka.linger = Duration::from_secs(3);
    let gw = start(config().with_producer(ProducerKind::Plain), pc).await;
    let t = topic("full");
    kbatch_testkit::create_topic(&t, 1).await;
    // Warm the topic cache so that request A hands its record in at once.
    let first = gw.post(&path(&t), JSON, r#"{"value": 0}"#).await;
    assert_eq!(first.status, 200, "{}", first.body);

    let (http, url) = (gw.http.clone(), gw.url(&path(&t)));
    let a = tokio::spawn(async move {
        common::answer(
            http.post(url)
                .bearer_auth(TOKEN)
                .body(r#"{"key": "a", "value": 1}"#)
                .send()
                .await
                .unwrap(),
        )
        .await
    });
    let p = gw.producer.clone();
    kbatch_testkit::wait_until(
        Duration::from_secs(10),
        "request A's record is pending",
        || {
            let pending = p.counters().pending_records;
            async move { pending == 1 }
        },
    )
    .await;
    let b = gw
        .post(&path(&t), JSON, r#"[{"value": 2}, {"value": 3}]"#)
        .await;
    assert_eq!(
        (b.status, b.error_code()),
        (429, "producer_full"),
        "{}",
        b.body
    );
    assert_eq!(b.headers["retry-after"], "1");
    assert!(
        b.results()
            .iter()
            .all(|r| r["error"]["code"] == "producer_full")
    );
    let a = a.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);

    // The first record fits, the next two do not: they are reported, the first is awaited.
    let c = gw
        .post(
            &path(&t),
            JSON,
            r#"[{"key": "c", "value": 4}, {"value": 5}, {"value": 6}]"#,
        )
        .await;
    assert_eq!(c.status, 207, "{}", c.body);
    assert_eq!(c.headers["retry-after"], "1");
    let r = c.results();
    assert!(r[0]["offset"].as_i64().is_some(), "{}", c.body);
    assert!(r[1..].iter().all(|r| r["error"]["code"] == "producer_full"));
    let consumed = read_back(&t, 3).await;
    let all: Vec<Value> = first
        .results()
        .iter()
        .chain(a.results())
        .chain(b.results())
        .chain(r)
        .cloned()
        .collect();
    let keys = [
        None,
        Some(b"a".to_vec()),
        None,
        None,
        Some(b"c".to_vec()),
        None,
        None,
    ];
    let vals = ["0", "1", "2", "3", "4", "5", "6"].map(|v| Some(v.as_bytes().to_vec()));
    assert_results_match(&all, &keys, &vals, &consumed);
    gw.stop().await;
}

#[tokio::test]
async fn healthz_and_readyz_follow_the_broker() {
    let gw = gateway().await;
    let h = gw.get("/healthz").await;
    assert_eq!((h.status, h.body["status"].as_str()), (200, Some("ok")));
    let r = gw.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.body);
    gw.stop().await;
    // A broker that does not answer: alive, not ready; produce requests get 503, never 2xx.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // bound and released: nothing listens there
    let pc = kbatch_producer::ProducerConfig::new(kbatch_client::ClientConfig::new(format!(
        "127.0.0.1:{port}"
    )))
    .with_close_timeout(Duration::from_millis(100));
    let down = start(config().with_request_timeout(Duration::from_secs(1)), pc).await;
    assert_eq!(down.get("/healthz").await.status, 200);
    let r = down.get("/readyz").await;
    assert_eq!(
        (r.status, r.error_code()),
        (503, "broker_unavailable"),
        "{}",
        r.body
    );
    let a = down
        .post(&path(&topic("down")), JSON, r#"{"value": 1}"#)
        .await;
    assert_eq!(
        (a.status, a.error_code()),
        (503, "broker_unavailable"),
        "{}",
        a.body
    );
    down.stop().await;
}

#[tokio::test]
async fn shutdown_answers_the_request_in_flight_then_stops() {
    let mut pc = producer_config();
    // The record waits 2 s in the (plain) producer: shutdown begins while the request is in
    // flight. The adaptive producers' shutdown is in tests/adaptive.rs.
    pc.kafka.linger = Duration::from_secs(2);
    let gw = start(config().with_producer(ProducerKind::Plain), pc).await;
    let t = topic("shutdown");
    kbatch_testkit::create_topic(&t, 1).await;
    let (http, url) = (gw.http.clone(), gw.url(&path(&t)));
    let in_flight = tokio::spawn(async move {
        common::answer(
            http.post(url)
                .bearer_auth(TOKEN)
                .body(r#"{"key": "last", "value": "words"}"#)
                .send()
                .await
                .unwrap(),
        )
        .await
    });
    let p = gw.producer.clone();
    kbatch_testkit::wait_until(Duration::from_secs(10), "the record is pending", || {
        let pending = p.counters().pending_records;
        async move { pending == 1 }
    })
    .await;
    let addr = gw.addr;
    let report = gw.stop().await;
    let a = in_flight.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(report.pending_at_close, 0, "{report:?}");
    let consumed = read_back(&t, 1).await;
    assert_results_match(
        a.results(),
        &[Some(b"last".to_vec())],
        &[Some(br#""words""#.to_vec())],
        &consumed,
    );
    // Stopped: no longer accepting.
    let after = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await;
    assert!(after.is_err(), "still serving after shutdown: {after:?}");
}

#[tokio::test]
async fn starting_without_keys_needs_the_insecure_flag() {
    let p = kbatch_producer::Producer::new(producer_config()).unwrap();
    let e = kbatch_gateway::Gateway::bind(GatewayConfig::default(), p)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("api_keys"), "{e}");
}
