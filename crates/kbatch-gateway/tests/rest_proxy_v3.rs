//! Confluent REST Proxy v3 produce through the gateway, over real sockets against the real
//! broker, every answer checked against what an independent consumer reads back.
//!
//! Request bodies are REST Proxy's documented ones: the API reference's "Produce records"
//! example (docs.confluent.io, Kafka REST API v3, `POST /v3/clusters/{cluster_id}/topics/
//! {topic_name}/records`: `partition_id` 1, headers `Header-1`/`Header-2`, a BINARY key
//! `Zm9vYmFy`, a JSON value `{"foo":"bar"}`, timestamp `2021-02-05T19:14:42Z`) and the REST
//! Proxy quickstart's v3 bodies (`{"value":{"type":"JSON","data":{"foo":"bar"}}}`, BINARY
//! `S2Fma2E=`, STRING keys); the response shape is kafka-rest's `ProduceResponse` with the
//! documented `error_code: 200`.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::time::Duration;

use common::{
    TOKEN, adaptive_config, config, producer_config, read_back, start, start_adaptive, topic,
};
use futures::StreamExt as _;
use kbatch_gateway::ProducerKind;
use serde_json::{Value, json};

/// The broker's cluster id, as the gateway lists it.
async fn cluster_id(gw: &common::Running) -> String {
    let a = gw
        .http
        .get(gw.url("/v3/clusters"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let a = common::answer(a).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["kind"], "KafkaClusterList");
    let id = a.body["data"][0]["cluster_id"].as_str().unwrap().to_owned();
    assert_eq!(a.body["data"][0]["kind"], "KafkaCluster");
    assert_eq!(
        a.body["data"][0]["metadata"]["self"],
        gw.url(&format!("/v3/clusters/{id}"))
    );
    id
}

fn records_path(cluster: &str, topic: &str) -> String {
    format!("/v3/clusters/{cluster}/topics/{topic}/records")
}

/// Every concatenated JSON object of a response body, until it ends.
async fn answers(mut r: reqwest::Response) -> Vec<Value> {
    let mut buf = Vec::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        buf.extend_from_slice(&chunk);
    }
    serde_json::Deserializer::from_slice(&buf)
        .into_iter::<Value>()
        .map(|v| v.unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&buf))))
        .collect()
}

/// Reads from `r` until one more complete JSON object is in `buf`, and returns it.
async fn next_answer(r: &mut reqwest::Response, buf: &mut Vec<u8>) -> Option<Value> {
    loop {
        let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                let used = it.byte_offset();
                buf.drain(..used);
                return Some(v);
            }
            Some(Err(e)) if !e.is_eof() => panic!("{e}: {:?}", String::from_utf8_lossy(buf)),
            _ => {}
        }
        match tokio::time::timeout(Duration::from_secs(20), r.chunk())
            .await
            .expect("an answer within 20 s")
            .unwrap()
        {
            Some(chunk) => buf.extend_from_slice(&chunk),
            None => return None,
        }
    }
}

fn assert_ok(a: &Value, cluster: &str, topic: &str) {
    assert_eq!(a["error_code"], 200, "{a}");
    assert_eq!(a["cluster_id"], cluster, "{a}");
    assert_eq!(a["topic_name"], topic, "{a}");
    assert!(a["partition_id"].is_i64() && a["offset"].is_i64(), "{a}");
}

#[tokio::test]
async fn documented_bodies_binary_json_string_headers_partition() {
    let gw = start(config(), producer_config()).await;
    let t = topic("v3-doc");
    kbatch_testkit::create_topic(&t, 2).await;
    let cluster = cluster_id(&gw).await;

    // The API reference's example request, as one (non-streaming) body.
    let a = gw
        .post(
            &records_path(&cluster, &t),
            "application/json",
            r#"{
              "partition_id": 1,
              "headers": [
                {"name": "Header-1", "value": "SGVhZGVyLTE="},
                {"name": "Header-2", "value": "SGVhZGVyLTI="}
              ],
              "key": {"type": "BINARY", "data": "Zm9vYmFy"},
              "value": {"type": "JSON", "data": {"foo": "bar"}},
              "timestamp": "2021-02-05T19:14:42Z"
            }"#,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_ok(&a.body, &cluster, &t);
    assert_eq!(a.body["partition_id"], 1);
    assert_eq!(a.body["timestamp"], "2021-02-05T19:14:42Z");
    assert_eq!(a.body["key"], json!({"type": "BINARY", "size": 6}));
    assert_eq!(a.body["value"], json!({"type": "JSON", "size": 13}));

    // The quickstart's bodies: a JSON value, a BINARY value, a STRING key and value; no key
    // means no "key" in the answer.
    let path = records_path(&cluster, &t);
    let mut docs = Vec::new();
    for body in [
        r#"{"value":{"type":"JSON","data":{"foo":"bar"}}}"#,
        r#"{"value":{"type":"BINARY","data":"S2Fma2E="}}"#,
        r#"{"key":{"type":"STRING","data":"user-1"},"value":{"type":"STRING","data":"héllo"}}"#,
    ] {
        let a = gw.post(&path, "application/json", body).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_ok(&a.body, &cluster, &t);
        docs.push(a.body);
    }
    assert!(docs[0].get("key").is_none(), "{}", docs[0]);
    assert_eq!(docs[1]["value"], json!({"type": "BINARY", "size": 5}));
    assert_eq!(docs[2]["key"], json!({"type": "STRING", "size": 6}));

    let consumed = read_back(&t, 4).await;
    assert_eq!(consumed.len(), 4);
    let at = |a: &Value| {
        consumed
            .iter()
            .find(|c| {
                i64::from(c.partition) == a["partition_id"].as_i64().unwrap()
                    && c.offset.0 == a["offset"].as_i64().unwrap()
            })
            .unwrap_or_else(|| panic!("{a} is not in the topic"))
    };
    let first = at(&a.body);
    assert_eq!(first.key.as_deref(), Some(&b"foobar"[..]));
    assert_eq!(first.value.as_deref(), Some(&br#"{"foo":"bar"}"#[..]));
    let headers: Vec<_> = first
        .headers
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_deref()))
        .collect();
    assert_eq!(
        headers,
        [
            ("Header-1", Some(&b"Header-1"[..])),
            ("Header-2", Some(&b"Header-2"[..]))
        ]
    );
    assert_eq!(first.timestamp.map(|t| t.0), Some(1_612_552_482_000));
    assert_eq!(
        at(&docs[0]).value.as_deref(),
        Some(&br#"{"foo":"bar"}"#[..])
    );
    assert_eq!(at(&docs[0]).key, None);
    assert_eq!(at(&docs[1]).value.as_deref(), Some(&b"Kafka"[..]));
    assert_eq!(at(&docs[2]).key.as_deref(), Some(&b"user-1"[..]));
    assert_eq!(at(&docs[2]).value.as_deref(), Some("héllo".as_bytes()));
    gw.stop().await;
}

#[tokio::test]
async fn hundred_records_in_one_chunked_request_are_answered_in_order() {
    let gw = start(config(), producer_config()).await;
    let t = topic("v3-stream");
    kbatch_testkit::create_topic(&t, 1).await;
    let cluster = cluster_id(&gw).await;
    let mut body = String::new();
    for i in 0..100 {
        body.push_str(&format!(
            r#"{{"key":{{"type":"STRING","data":"k{i}"}},"value":{{"type":"JSON","data":{{"n":{i}}}}}}}"#
        ));
        // Whitespace between objects, of every kind REST Proxy's parser skips.
        body.push_str(["\n", " ", "\r\n\t", ""][i % 4]);
    }
    // Uneven chunks that cut objects in the middle: sent with Transfer-Encoding: chunked.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.as_bytes().chunks(37).map(|c| Ok(c.to_vec())).collect();
    let r = gw
        .http
        .post(gw.url(&records_path(&cluster, &t)))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answers = answers(r).await;
    assert_eq!(answers.len(), 100);
    let consumed = read_back(&t, 100).await;
    assert_eq!(consumed.len(), 100);
    for (i, a) in answers.iter().enumerate() {
        assert_ok(a, &cluster, &t);
        let c = consumed
            .iter()
            .find(|c| c.offset.0 == a["offset"].as_i64().unwrap())
            .unwrap();
        assert_eq!(c.key.as_deref(), Some(format!("k{i}").as_bytes()), "{a}");
        assert_eq!(
            c.value.as_deref(),
            Some(format!(r#"{{"n":{i}}}"#).as_bytes())
        );
    }
    // In order: one partition, so the offsets of the answers climb by one.
    let offsets: Vec<i64> = answers
        .iter()
        .map(|a| a["offset"].as_i64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
    gw.stop().await;
}

#[tokio::test]
async fn interactive_client_sends_the_next_record_after_reading_the_last_answer() {
    let gw = start(config(), producer_config()).await;
    let t = topic("v3-interactive");
    kbatch_testkit::create_topic(&t, 1).await;
    let cluster = cluster_id(&gw).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let request = gw
        .http
        .post(gw.url(&records_path(&cluster, &t)))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(body));
    // The first record goes before the response is awaited: the gateway answers the
    // headers at once, then each record as it is acknowledged.
    tx.send(Ok(br#"{"value":{"type":"STRING","data":"r0"}}"#.to_vec()))
        .await
        .unwrap();
    let mut r = request.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut buf = Vec::new();
    let mut got = Vec::new();
    for i in 0..5 {
        if i > 0 {
            tx.send(Ok(format!(
                "\n{{\"value\":{{\"type\":\"STRING\",\"data\":\"r{i}\"}}}}"
            )
            .into_bytes()))
                .await
                .unwrap();
        }
        // Nothing else is sent until this record's answer arrived.
        let a = next_answer(&mut r, &mut buf).await.expect("an answer");
        assert_ok(&a, &cluster, &t);
        got.push(a);
    }
    drop(tx); // ends the body: the gateway ends the answers
    assert_eq!(next_answer(&mut r, &mut buf).await, None);
    let consumed = read_back(&t, 5).await;
    assert_eq!(consumed.len(), 5);
    for (i, a) in got.iter().enumerate() {
        let c = consumed
            .iter()
            .find(|c| c.offset.0 == a["offset"].as_i64().unwrap())
            .unwrap();
        assert_eq!(c.value.as_deref(), Some(format!("r{i}").as_bytes()));
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_malformed_object_ends_the_stream_after_the_good_ones_are_answered() {
    let gw = start(config(), producer_config()).await;
    let t = topic("v3-malformed");
    kbatch_testkit::create_topic(&t, 1).await;
    let cluster = cluster_id(&gw).await;
    // Three good records, an AVRO one (needs a Schema Registry: its error, the stream goes
    // on), one with a misspelt field (well-formed JSON: its error, the stream goes on), a
    // good one, then malformed JSON: as REST Proxy, one error object and the end; the record
    // after it is never read.
    let body = [
        r#"{"value":{"type":"JSON","data":1}}"#,
        r#"{"value":{"type":"JSON","data":2}}"#,
        r#"{"value":{"type":"JSON","data":3}}"#,
        r#"{"value":{"type":"AVRO","data":{"f":1}}}"#,
        r#"{"valeu":{"type":"JSON","data":4}}"#,
        r#"{"value":{"type":"JSON","data":5}}"#,
        r#"{"value":{"type":"JSON","data": }}"#,
        r#"{"value":{"type":"JSON","data":6}}"#,
    ]
    .join("\n");
    let r = gw
        .http
        .post(gw.url(&records_path(&cluster, &t)))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answers = answers(r).await;
    let codes: Vec<i64> = answers
        .iter()
        .map(|a| a["error_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [200, 200, 200, 42206, 400, 200, 400], "{answers:?}");
    assert_eq!(
        answers[3]["message"],
        "Payload error. Schema Registry must be configured when using schemas."
    );
    assert!(
        answers[4]["message"].as_str().unwrap().contains("valeu"),
        "{}",
        answers[4]
    );
    let consumed = read_back(&t, 4).await;
    let mut values: Vec<_> = consumed.iter().map(|c| c.value.clone().unwrap()).collect();
    values.sort();
    assert_eq!(values, [&b"1"[..], b"2", b"3", b"5"]);
    gw.stop().await;
}

#[tokio::test]
async fn request_errors_have_their_status_and_v3_shape() {
    let gw = start(config(), producer_config()).await;
    let t = topic("v3-errors");
    kbatch_testkit::create_topic(&t, 1).await;
    let cluster = cluster_id(&gw).await;
    let one = r#"{"value":{"type":"JSON","data":1}}"#;
    let cases: Vec<(String, Option<&str>, &str, u16, i64)> = vec![
        (
            records_path("not-our-cluster", &t),
            Some(TOKEN),
            "application/json",
            404,
            404,
        ),
        (
            records_path(&cluster, &topic("v3-missing")),
            Some(TOKEN),
            "application/json",
            404,
            404,
        ),
        (
            records_path(&cluster, &t),
            None,
            "application/json",
            401,
            40101,
        ),
        (
            records_path(&cluster, &t),
            Some("wrong-token"),
            "application/json",
            401,
            40101,
        ),
        (
            records_path(&cluster, "other-topic"),
            Some(TOKEN),
            "application/json",
            403,
            40301,
        ),
        (
            records_path(&cluster, "__consumer_offsets"),
            Some(TOKEN),
            "application/json",
            403,
            40301,
        ),
        (
            records_path(&cluster, &t),
            Some(TOKEN),
            "application/vnd.kafka.avro.v2+json",
            415,
            415,
        ),
    ];
    for (path, token, content_type, status, code) in cases {
        let a = gw.post_as(&path, token, content_type, one).await;
        assert_eq!(
            (a.status, a.body["error_code"].as_i64()),
            (status, Some(code)),
            "{path}: {}",
            a.body
        );
        assert!(
            a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            a.body
        );
    }
    let a = gw.get(&format!("/v3/clusters/{cluster}")).await;
    assert_eq!(a.status, 401, "listing needs credentials too: {}", a.body);
    let r = gw
        .http
        .get(gw.url("/v3/clusters/not-our-cluster"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A partition the topic does not have: that record's error, in the stream.
    let a = gw
        .post(
            &records_path(&cluster, &t),
            "application/json",
            r#"{"partition_id":7,"value":{"type":"JSON","data":1}}"#,
        )
        .await;
    assert_eq!(
        (a.status, a.body["error_code"].as_i64()),
        (200, Some(40402)),
        "{}",
        a.body
    );
    // Nothing of the refused requests reached Kafka.
    assert!(read_back(&t, 0).await.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn stream_limits_end_it_with_an_error_after_the_accepted_records() {
    let gw = start(config().with_limits(8 << 20, 2), producer_config()).await;
    let t = topic("v3-limits");
    kbatch_testkit::create_topic(&t, 1).await;
    let cluster = cluster_id(&gw).await;
    let body = r#"{"value":{"type":"JSON","data":1}} {"value":{"type":"JSON","data":2}} {"value":{"type":"JSON","data":3}}"#;
    let r = gw
        .http
        .post(gw.url(&records_path(&cluster, &t)))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let answers = answers(r).await;
    let codes: Vec<_> = answers
        .iter()
        .map(|a| a["error_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [200, 200, 413], "{answers:?}");
    assert_eq!(read_back(&t, 2).await.len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn many_concurrent_streams_each_answer_their_own_records() {
    let gw = start(config(), producer_config()).await;
    let t = topic("v3-concurrent");
    kbatch_testkit::create_topic(&t, 3).await;
    let cluster = cluster_id(&gw).await;
    let url = gw.url(&records_path(&cluster, &t));
    let runs = futures::stream::iter(0..8)
        .map(|s| {
            let (http, url) = (gw.http.clone(), url.clone());
            async move {
                let body: String = (0..25)
                    .map(|i| format!(r#"{{"value":{{"type":"STRING","data":"s{s}-{i}"}}}}"#))
                    .collect();
                let r = http
                    .post(url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                (s, answers(r).await)
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let consumed = read_back(&t, 200).await;
    assert_eq!(consumed.len(), 200);
    for (s, answers) in runs {
        assert_eq!(answers.len(), 25);
        for (i, a) in answers.iter().enumerate() {
            let c = consumed
                .iter()
                .find(|c| {
                    i64::from(c.partition) == a["partition_id"].as_i64().unwrap()
                        && c.offset.0 == a["offset"].as_i64().unwrap()
                })
                .unwrap();
            assert_eq!(c.value.as_deref(), Some(format!("s{s}-{i}").as_bytes()));
        }
    }
    gw.stop().await;
}

/// A streaming request fed from a channel: the sender, and the response once its headers came.
async fn open_stream(
    gw: &common::Running,
    path: &str,
    first: &str,
) -> (
    tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    reqwest::Response,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    tx.send(Ok(first.as_bytes().to_vec())).await.unwrap();
    let r = gw
        .http
        .post(gw.url(path))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    (tx, r)
}

#[tokio::test]
async fn a_stalled_stream_is_closed_with_408_after_the_request_timeout() {
    let gw = start(
        config().with_request_timeout(Duration::from_millis(1500)),
        producer_config(),
    )
    .await;
    let t = topic("v3-stall");
    kbatch_testkit::create_topic(&t, 1).await;
    let cluster = cluster_id(&gw).await;
    let (tx, mut r) = open_stream(
        &gw,
        &records_path(&cluster, &t),
        r#"{"value":{"type":"JSON","data":1}} {"value":{"type":"JSON","#,
    )
    .await;
    let mut buf = Vec::new();
    assert_ok(&next_answer(&mut r, &mut buf).await.unwrap(), &cluster, &t);
    // Half a record, then nothing: closed after the timeout, not held open.
    let started = std::time::Instant::now();
    let a = next_answer(&mut r, &mut buf).await.unwrap();
    assert_eq!(a["error_code"], 408, "{a}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(next_answer(&mut r, &mut buf).await, None);
    drop(tx);
    assert_eq!(read_back(&t, 1).await.len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_ends_an_open_stream_after_answering_what_it_read() {
    let gw = start(config(), producer_config()).await;
    let t = topic("v3-shutdown");
    kbatch_testkit::create_topic(&t, 1).await;
    let cluster = cluster_id(&gw).await;
    let (tx, mut r) = open_stream(
        &gw,
        &records_path(&cluster, &t),
        r#"{"value":{"type":"JSON","data":1}}"#,
    )
    .await;
    let mut buf = Vec::new();
    assert_ok(&next_answer(&mut r, &mut buf).await.unwrap(), &cluster, &t);
    // The client keeps the request open; the gateway must still stop.
    gw.shutdown.cancel();
    let a = next_answer(&mut r, &mut buf).await.unwrap();
    assert_eq!(a["error_code"], 503, "{a}");
    assert_eq!(next_answer(&mut r, &mut buf).await, None);
    let report = tokio::time::timeout(Duration::from_secs(20), gw.task)
        .await
        .expect("the gateway stops while a client holds a stream open")
        .unwrap()
        .unwrap();
    assert_eq!(report.pending_at_close, 0, "{report:?}");
    drop(tx);
    assert_eq!(read_back(&t, 1).await.len(), 1);
}

/// Where the native route refuses records the producer has no room for (429), a stream
/// waits for room: reading pauses, and every record is answered, in order. Through the
/// plain producer (2 records pending at most) and through the adaptive one (an intake of one
/// event), so both producers' waits are met.
#[tokio::test]
async fn a_full_producer_slows_a_stream_down_instead_of_failing_it() {
    let plain = start(
        config().with_producer(ProducerKind::Plain),
        producer_config().with_pending_limits(2, 1 << 20),
    )
    .await;
    stream_through_a_full_producer(plain, "v3-full-plain", 50).await;
    let adaptive = start_adaptive(
        config(),
        producer_config(),
        adaptive_config(producer_config()).with_intake_capacity(1),
    )
    .await;
    stream_through_a_full_producer(adaptive, "v3-full-adaptive", 500).await;
}

async fn stream_through_a_full_producer(gw: common::Running, name: &str, n: usize) {
    let t = topic(name);
    kbatch_testkit::create_topic(&t, 1).await;
    let cluster = cluster_id(&gw).await;
    // Keys spread the records over the adaptive intake's shards: the stream's sequence must
    // keep them in order anyway.
    let body: String = (0..n)
        .map(|i| {
            format!(
                r#"{{"key":{{"type":"STRING","data":"k{i}"}},"value":{{"type":"STRING","data":"v{i}"}}}}"#
            )
        })
        .collect();
    let r = gw
        .http
        .post(gw.url(&records_path(&cluster, &t)))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let answers = answers(r).await;
    assert_eq!(answers.len(), n, "{name}");
    let consumed = read_back(&t, n).await;
    assert_eq!(consumed.len(), n, "{name}");
    for (i, a) in answers.iter().enumerate() {
        assert_ok(a, &cluster, &t);
        assert_eq!(
            a["offset"].as_i64(),
            Some(i as i64),
            "{name}: record {i} in stream order"
        );
        let c = consumed
            .iter()
            .find(|c| c.offset.0 == a["offset"].as_i64().unwrap())
            .unwrap();
        assert_eq!(c.value.as_deref(), Some(format!("v{i}").as_bytes()));
    }
    gw.stop().await;
}
