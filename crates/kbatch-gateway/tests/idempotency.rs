//! `Idempotency-Key` over a real socket against the real broker: a retry gets the original
//! answer and the broker holds one copy; another body under the same key is refused; a retry
//! while the first is still out is 409; another credential's key is its own.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::time::Duration;

use common::{TOKEN, answer, config, producer_config, read_back, start, topic};
use kbatch_gateway::ApiKey;
use serde_json::Value;

const NDJSON: &str = "application/x-ndjson";
const BODY: &str =
    "{\"key\":\"a\",\"value\":1}\n{\"key\":\"b\",\"value\":2}\n{\"key\":\"c\",\"value\":3}\n";

async fn post(
    g: &common::Running,
    path: &str,
    token: &str,
    key: &str,
    body: &'static str,
) -> common::Answer {
    let r = g
        .http
        .post(g.url(path))
        .bearer_auth(token)
        .header("content-type", NDJSON)
        .header("idempotency-key", key)
        .body(body)
        .send()
        .await
        .unwrap();
    answer(r).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_gets_the_original_answer_and_the_broker_one_copy() {
    let t = topic("idem");
    kbatch_testkit::create_topic(&t, 2).await;
    let g = start(
        config().with_api_key(ApiKey::from_token("other", "other-token", ["gw-*"])),
        producer_config(),
    )
    .await;
    let path = format!("/topics/{t}/records");
    let first = post(&g, &path, TOKEN, "order-42", BODY).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = post(&g, &path, TOKEN, "order-42", BODY).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        again.body, first.body,
        "the original answer, offsets and all"
    );
    assert_eq!(
        again.headers.get("idempotent-replayed").unwrap(),
        "true",
        "a replay says so"
    );
    // The same key with another body: refused, nothing written.
    let other = post(&g, &path, TOKEN, "order-42", "{\"value\":9}").await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(other.error_code(), "idempotency_key_reused");
    assert_eq!(
        read_back(&t, 3).await.len(),
        3,
        "one copy of the three records"
    );
    // Another credential's key of the same name is its own request.
    let theirs = post(&g, &path, "other-token", "order-42", BODY).await;
    assert_eq!(theirs.status, 200, "{}", theirs.body);
    assert!(theirs.headers.get("idempotent-replayed").is_none());
    assert_eq!(read_back(&t, 6).await.len(), 6);
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_while_the_first_is_out_is_409_then_replays() {
    let t = topic("idem-inflight");
    kbatch_testkit::create_topic(&t, 1).await;
    // A 2 s linger keeps the first request waiting for its acknowledgement (the plain
    // producer: its linger holds the records where this test can see them pending).
    let mut pc = producer_config();
    pc.kafka.linger = Duration::from_secs(2);
    let g = start(
        config().with_producer(kbatch_gateway::ProducerKind::Plain),
        pc,
    )
    .await;
    let path = format!("/topics/{t}/records");
    let first = {
        let (http, url) = (g.http.clone(), g.url(&path));
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(TOKEN)
                .header("content-type", NDJSON)
                .header("idempotency-key", "k1")
                .body(BODY)
                .send()
                .await
                .unwrap();
            answer(r).await
        })
    };
    // Until the first is in (its records are pending in the producer).
    kbatch_testkit::wait_until(
        Duration::from_secs(10),
        "the first request in flight",
        || async { g.producer.counters().pending_records > 0 },
    )
    .await;
    let second = post(&g, &path, TOKEN, "k1", BODY).await;
    assert_eq!(second.status, 409, "{}", second.body);
    assert_eq!(second.error_code(), "idempotency_key_in_flight");
    assert_eq!(second.headers.get("retry-after").unwrap(), "1");
    let first = first.await.unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    let third = post(&g, &path, TOKEN, "k1", BODY).await;
    assert_eq!(third.body, first.body);
    let records = read_back(&t, 3).await;
    assert_eq!(records.len(), 3, "one copy");
    let values: Vec<Value> = records
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(values, [Value::from(1), Value::from(2), Value::from(3)]);
    g.stop().await;
}
