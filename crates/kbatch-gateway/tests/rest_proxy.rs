//! Confluent REST Proxy v2 produce through the gateway, with request bodies from REST Proxy's
//! documentation (the quickstart's `jsontest` / `binarytest` bodies and the API reference's
//! three-record examples), answered in its response shape and read back from the broker.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use base64::Engine as _;
use common::{Answer, assert_results_match, config, producer_config, read_back, start, topic};
use serde_json::Value;

const V2_JSON: &str = "application/vnd.kafka.json.v2+json";
const V2_BINARY: &str = "application/vnd.kafka.binary.v2+json";

/// REST Proxy's `offsets` as the native `results` shape, for `assert_results_match`.
fn as_results(a: &Answer) -> Vec<Value> {
    a.body["offsets"]
        .as_array()
        .unwrap_or_else(|| panic!("no offsets in {}", a.body))
        .iter()
        .map(|o| {
            if o["error_code"].is_null() {
                serde_json::json!({"partition": o["partition"], "offset": o["offset"]})
            } else {
                serde_json::json!({"error": {"code": o["error_code"], "message": o["error"]}})
            }
        })
        .collect()
}

fn assert_v2_success_shape(a: &Answer, records: usize) {
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.headers["content-type"], "application/vnd.kafka.v2+json");
    assert!(a.body["key_schema_id"].is_null() && a.body["value_schema_id"].is_null());
    let offsets = a.body["offsets"].as_array().unwrap();
    assert_eq!(offsets.len(), records);
    for o in offsets {
        assert!(o["partition"].is_i64() && o["offset"].is_i64(), "{o}");
        assert!(o["error_code"].is_null() && o["error"].is_null(), "{o}");
    }
}

#[tokio::test]
async fn quickstart_json_and_binary_bodies() {
    let gw = start(config(), producer_config()).await;
    let json_topic = topic("jsontest");
    let binary_topic = topic("binarytest");
    kbatch_testkit::create_topic(&json_topic, 1).await;
    kbatch_testkit::create_topic(&binary_topic, 1).await;

    let a = gw
        .post(
            &format!("/topics/{json_topic}"),
            V2_JSON,
            r#"{"records":[{"value":{"foo":"bar"}}]}"#,
        )
        .await;
    assert_v2_success_shape(&a, 1);
    assert_eq!(a.body["offsets"][0]["partition"], 0);
    let consumed = read_back(&json_topic, 1).await;
    assert_results_match(
        &as_results(&a),
        &[None],
        &[Some(br#"{"foo":"bar"}"#.to_vec())],
        &consumed,
    );

    let a = gw
        .post(
            &format!("/topics/{binary_topic}"),
            V2_BINARY,
            r#"{"records":[{"value":"S2Fma2E="}]}"#,
        )
        .await;
    assert_v2_success_shape(&a, 1);
    let consumed = read_back(&binary_topic, 1).await;
    assert_results_match(
        &as_results(&a),
        &[None],
        &[Some(b"Kafka".to_vec())],
        &consumed,
    );
    gw.stop().await;
}

#[tokio::test]
async fn api_reference_three_record_bodies() {
    let gw = start(config(), producer_config()).await;
    let t = topic("v2-binary");
    kbatch_testkit::create_topic(&t, 2).await;
    let a = gw
        .post(
            &format!("/topics/{t}"),
            V2_BINARY,
            r#"{"records":[{"key":"a2V5","value":"Y29uZmx1ZW50"},{"value":"a2Fma2E=","partition":1},{"value":"bG9ncw=="}]}"#,
        )
        .await;
    assert_v2_success_shape(&a, 3);
    assert_eq!(a.body["offsets"][1]["partition"], 1);
    let consumed = read_back(&t, 3).await;
    let b = |s: &str| Some(base64::engine::general_purpose::STANDARD.decode(s).unwrap());
    assert_results_match(
        &as_results(&a),
        &[b("a2V5"), None, None],
        &[b("Y29uZmx1ZW50"), b("a2Fma2E="), b("bG9ncw==")],
        &consumed,
    );

    let t = topic("v2-json");
    kbatch_testkit::create_topic(&t, 2).await;
    let a = gw
        .post(
            &format!("/topics/{t}"),
            V2_JSON,
            r#"{"records":[{"key":"somekey","value":{"foo":"bar"}},{"value":["foo","bar"],"partition":1},{"value":53.5}]}"#,
        )
        .await;
    assert_v2_success_shape(&a, 3);
    let consumed = read_back(&t, 3).await;
    // REST Proxy's JSON embedded format stores keys and values as JSON text.
    assert_results_match(
        &as_results(&a),
        &[Some(br#""somekey""#.to_vec()), None, None],
        &[
            Some(br#"{"foo":"bar"}"#.to_vec()),
            Some(br#"["foo","bar"]"#.to_vec()),
            Some(b"53.5".to_vec()),
        ],
        &consumed,
    );
    gw.stop().await;
}

#[tokio::test]
async fn v2_errors_use_rest_proxy_codes() {
    let gw = start(config(), producer_config()).await;
    let t = topic("v2-errors");
    kbatch_testkit::create_topic(&t, 2).await;
    // One bad partition among good records: 200, the bad one carries its error in place.
    let a = gw
        .post(
            &format!("/topics/{t}"),
            V2_JSON,
            r#"{"records":[{"value":1},{"value":2,"partition":7}]}"#,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let bad = &a.body["offsets"][1];
    assert!(
        bad["partition"].is_null() && bad["offset"].is_null(),
        "{bad}"
    );
    assert_eq!(bad["error_code"], 1);
    assert!(
        bad["error"].as_str().unwrap().contains("no partition 7"),
        "{bad}"
    );
    let consumed = read_back(&t, 1).await;
    assert_results_match(
        &as_results(&a),
        &[None, None],
        &[Some(b"1".to_vec()), None],
        &consumed,
    );

    let missing = topic("v2-missing");
    let a = gw
        .post(
            &format!("/topics/{missing}"),
            V2_JSON,
            r#"{"records":[{"value":1}]}"#,
        )
        .await;
    assert_eq!(
        (a.status, a.body["error_code"].as_u64()),
        (404, Some(40401)),
        "{}",
        a.body
    );
    let a = gw
        .post_as(
            &format!("/topics/{t}"),
            None,
            V2_JSON,
            r#"{"records":[{"value":1}]}"#,
        )
        .await;
    assert_eq!(
        (a.status, a.body["error_code"].as_u64()),
        (401, Some(40101)),
        "{}",
        a.body
    );
    let a = gw
        .post(
            &format!("/topics/{t}"),
            "application/vnd.kafka.avro.v2+json",
            r#"{"records":[]}"#,
        )
        .await;
    assert_eq!(a.status, 415, "{}", a.body);
    let a = gw
        .post(
            &format!("/topics/{t}"),
            V2_JSON,
            "{\"records\":[\n{\"value\": }]}",
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body["message"].as_str().unwrap().contains("line 2"),
        "{}",
        a.body
    );
    gw.stop().await;
}
