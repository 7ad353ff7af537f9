//! The gateway's adaptive producers over real sockets, against the real broker: latency
//! budgets from the request, packed topics, 429 from a full intake, shutdown flushing what
//! the adaptive producers hold.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    Answer, Running, TOKEN, adaptive_config, answer, config, producer_config, read_back, start,
    start_adaptive, topic,
};
use kbatch_adaptive::{AdaptiveConfig, LevelId};
use kbatch_core::envelope::{decode, is_envelope};
use serde_json::{Value, json};

const JSON: &str = "application/json";
const V2_JSON: &str = "application/vnd.kafka.json.v2+json";
/// Topics the tests' gateways pack (the test key may write `gw-*`).
const PACKED: &str = "gw-packed-*";

fn path(topic: &str) -> String {
    format!("/topics/{topic}/records")
}

/// Adaptive producers held at L8 (5 s budget: a batch lingers 2.5 s) with no pipeline bound
/// (which would send a lone event at once by itself): only a budget can cut a record's wait.
/// Packed, because a per-event producer without the pipeline bound starts from no linger.
fn held_at_l8() -> AdaptiveConfig {
    let mut a = adaptive_config(producer_config())
        .with_initial_level(LevelId(8))
        .with_explore_share(0.0)
        .with_flushes_in_flight(0);
    a.controller.min_dwell = Duration::from_secs(3_600);
    a
}

async fn packed_gateway(adaptive: AdaptiveConfig) -> Running {
    start_adaptive(
        config().with_packed_topic(PACKED),
        producer_config(),
        adaptive,
    )
    .await
}

/// POSTs `body` with the test token and `headers`; the answer and how long it took.
async fn timed_post(
    gw: &Running,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (Answer, Duration) {
    let mut req = gw
        .http
        .post(gw.url(path))
        .bearer_auth(TOKEN)
        .header("content-type", content_type)
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let started = Instant::now();
    let a = answer(req.send().await.unwrap()).await;
    (a, started.elapsed())
}

#[tokio::test]
async fn a_latency_budget_cuts_the_levels_linger() {
    let gw = packed_gateway(held_at_l8()).await;
    let t = kbatch_testkit::unique_name("gw-packed-budget");
    kbatch_testkit::create_topic(&t, 1).await;
    // Warm the topic cache and the producer's partition lookup, so that only batching is timed.
    let (warm, _) = timed_post(
        &gw,
        &path(&t),
        JSON,
        &[("x-latency-budget-ms", "50")],
        r#"{"value": 0}"#,
    )
    .await;
    assert_eq!(warm.status, 200, "{}", warm.body);

    let budgeted = [
        (path(&t), JSON, "x-latency-budget-ms", r#"{"value": 1}"#),
        (
            format!("{}?latency_budget_ms=50", path(&t)),
            JSON,
            "",
            r#"{"value": 2}"#,
        ),
        (
            format!("/topics/{t}"),
            V2_JSON,
            "x-latency-budget-ms",
            r#"{"records": [{"value": 3}]}"#,
        ),
    ];
    for (p, ct, header, body) in &budgeted {
        let headers: Vec<(&str, &str)> = if header.is_empty() {
            vec![]
        } else {
            vec![(*header, "50")]
        };
        let (a, took) = timed_post(&gw, p, ct, &headers, body).await;
        assert_eq!(a.status, 200, "{p}: {}", a.body);
        // The level's linger is 2.5 s: a budget of 50 ms must cut it.
        assert!(
            took < Duration::from_secs(1),
            "{p} with a 50 ms budget took {took:?}: the budget was not honoured"
        );
    }
    // Without a budget the level decides: the record waits out the linger.
    let (a, took) = timed_post(&gw, &path(&t), JSON, &[], r#"{"value": 4}"#).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        took >= Duration::from_secs(2),
        "without a budget the record should wait the L8 linger (2.5 s), took {took:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_bad_latency_budget_is_400_naming_it() {
    let gw = start(config(), producer_config()).await;
    let t = topic("bad-budget");
    kbatch_testkit::create_topic(&t, 1).await;
    for bad in ["0", "soon", "-1", "3600001", "1.5"] {
        let (a, _) = timed_post(
            &gw,
            &path(&t),
            JSON,
            &[("x-latency-budget-ms", bad)],
            r#"{"value": 1}"#,
        )
        .await;
        assert_eq!(
            (a.status, a.error_code()),
            (400, "invalid_latency_budget"),
            "{bad}: {}",
            a.body
        );
        let msg = a.body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("X-Latency-Budget-Ms {bad:?}")),
            "{msg}"
        );
    }
    let (a, _) = timed_post(
        &gw,
        &format!("{}?latency_budget_ms=later", path(&t)),
        JSON,
        &[],
        r#"{"value": 1}"#,
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let msg = a.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("latency_budget_ms \"later\""), "{msg}");
    // REST Proxy v2: its error shape, the same check.
    let (a, _) = timed_post(
        &gw,
        &format!("/topics/{t}"),
        V2_JSON,
        &[("x-latency-budget-ms", "0")],
        r#"{"records": [{"value": 1}]}"#,
    )
    .await;
    assert_eq!((a.status, &a.body["error_code"]), (400, &json!(400)));
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("X-Latency-Budget-Ms \"0\""),
        "{}",
        a.body
    );
    // Nothing was written by any of them.
    assert!(read_back(&t, 0).await.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn a_packed_topic_answers_each_records_place_in_its_envelope() {
    let gw = packed_gateway(adaptive_config(producer_config())).await;
    let t = kbatch_testkit::unique_name("gw-packed-keys");
    kbatch_testkit::create_topic(&t, 3).await;
    let n = 500;
    let body: Vec<Value> = (0..n)
        .map(|i| json!({"key": format!("k{}", i % 13), "value": i}))
        .collect();
    let (a, _) = timed_post(
        &gw,
        &path(&t),
        JSON,
        &[],
        &serde_json::to_string(&body).unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let results = a.results();
    assert_eq!(results.len(), n);

    // An independent consumer; every envelope unpacked into (partition, offset, index).
    let consumed = read_back(&t, 1).await;
    let mut events = HashMap::new();
    for r in &consumed {
        assert!(
            is_envelope(&r.headers),
            "a packed topic holds envelopes only"
        );
        for (i, e) in decode(r.value.as_ref().unwrap())
            .unwrap()
            .into_iter()
            .enumerate()
        {
            events.insert((r.partition, r.offset.0, i as u64), e);
        }
    }
    assert_eq!(events.len(), n, "exactly the acknowledged events");
    let mut last_place: HashMap<String, (i64, i64, u64)> = HashMap::new();
    for (i, r) in results.iter().enumerate() {
        let place = (
            r["partition"].as_i64().unwrap(),
            r["offset"].as_i64().unwrap(),
            r["index"]
                .as_u64()
                .unwrap_or_else(|| panic!("result {i} has no index: {r}")),
        );
        let e = events
            .get(&(place.0 as i32, place.1, place.2))
            .unwrap_or_else(|| panic!("result {i} ({r}) is not in the topic"));
        let key = format!("k{}", i % 13);
        assert_eq!(e.key.as_deref(), Some(key.as_bytes()), "key of record {i}");
        assert_eq!(
            e.value.as_deref(),
            Some(i.to_string().as_bytes()),
            "value of record {i}"
        );
        // In key order: each record of a key lands after the key's previous one.
        if let Some(prev) = last_place.insert(key.clone(), place) {
            assert!(
                prev.0 == place.0 && (prev.1, prev.2) < (place.1, place.2),
                "record {i} of key {key} at {place:?}, not after its predecessor at {prev:?}"
            );
        }
    }
    gw.stop().await;
}

/// The adaptive intake holds one event, and a request's records go in together or not at
/// all: floods of concurrent 3-record requests until some are refused. Each answer is all
/// offsets (200) or all `producer_full` (429 with Retry-After), never a mix, and exactly the
/// acknowledged requests' records are in the topic, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_adaptive_intake_refuses_whole_requests_with_429() {
    let gw = Arc::new(
        start_adaptive(
            config(),
            producer_config(),
            adaptive_config(producer_config()).with_intake_capacity(1),
        )
        .await,
    );
    let t = topic("adaptive-full");
    kbatch_testkit::create_topic(&t, 1).await;
    let (mut written, mut refused) = (Vec::new(), 0usize);
    for flood in 0..50u64 {
        let posts: Vec<_> = (0..32u64)
            .map(|r| {
                let (gw, t) = (Arc::clone(&gw), t.clone());
                let n = (flood * 32 + r) * 3;
                tokio::spawn(async move {
                    let body = format!(
                        r#"[{{"key": "k{r}", "value": {n}}}, {{"key": "k{r}", "value": {}}}, {{"value": {}}}]"#,
                        n + 1,
                        n + 2
                    );
                    (n, timed_post(&gw, &path(&t), JSON, &[], &body).await.0)
                })
            })
            .collect();
        for p in posts {
            let (n, a) = p.await.unwrap();
            let r = a.results();
            match a.status {
                200 => {
                    assert!(
                        r.iter().all(|r| r["offset"].as_i64().is_some()),
                        "{}",
                        a.body
                    );
                    written.extend([n, n + 1, n + 2]);
                }
                429 => {
                    assert_eq!(a.headers["retry-after"], "1");
                    assert!(
                        r.iter().all(|r| r["error"]["code"] == "producer_full"),
                        "all or nothing: {}",
                        a.body
                    );
                    refused += 1;
                }
                s => panic!("{s}: {}", a.body),
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(
        refused > 0,
        "50 floods of 32 requests into an intake of 1, none refused"
    );
    let mut got: Vec<u64> = read_back(&t, written.len())
        .await
        .iter()
        .map(|c| {
            std::str::from_utf8(c.value.as_deref().unwrap())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    got.sort_unstable();
    written.sort_unstable();
    assert_eq!(got, written, "exactly the acknowledged records, each once");
    Arc::into_inner(gw).unwrap().stop().await;
}

/// Shutdown while a record waits in a packed batch (L8 linger 2.5 s): the request in flight
/// is answered 200 with its place, then the adaptive producers close.
#[tokio::test]
async fn shutdown_flushes_what_the_adaptive_producers_hold() {
    let gw = packed_gateway(held_at_l8()).await;
    let t = kbatch_testkit::unique_name("gw-packed-shutdown");
    kbatch_testkit::create_topic(&t, 1).await;
    let (http, url) = (gw.http.clone(), gw.url(&path(&t)));
    let in_flight = tokio::spawn(async move {
        answer(
            http.post(url)
                .bearer_auth(TOKEN)
                .body(r#"{"key": "last", "value": "words"}"#)
                .send()
                .await
                .unwrap(),
        )
        .await
    });
    // The request's record is in the batch well before its 2.5 s linger ends.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let addr = gw.addr;
    gw.stop().await;
    let a = in_flight.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.results()[0]["index"], 0, "{}", a.body);
    let consumed = read_back(&t, 1).await;
    let events = decode(consumed[0].value.as_ref().unwrap()).unwrap();
    assert_eq!(events[0].key.as_deref(), Some(&b"last"[..]));
    let after = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await;
    assert!(after.is_err(), "still serving after shutdown: {after:?}");
}

/// `calibration_path` is where both adaptive producers remember what they learned, each under
/// its own profile.
#[tokio::test]
async fn both_adaptive_producers_calibrate_into_the_configured_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.sqlite");
    let gw = start_adaptive(
        config()
            .with_packed_topic(PACKED)
            .with_calibration_path(&file),
        producer_config(),
        // Short epochs, so that a few requests end some.
        adaptive_config(producer_config()).with_epoch(Duration::from_millis(50)),
    )
    .await;
    let (plain, packed) = (
        topic("calibrated"),
        kbatch_testkit::unique_name("gw-packed-calibrated"),
    );
    for t in [&plain, &packed] {
        kbatch_testkit::create_topic(t, 1).await;
        for i in 0..5 {
            let (a, _) = timed_post(&gw, &path(t), JSON, &[], &format!("{{\"value\": {i}}}")).await;
            assert_eq!(a.status, 200, "{}", a.body);
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    gw.stop().await;
    let opened = kbatch_adaptive::calibration::CalibrationStore::open(&file);
    assert!(opened.warning.is_none(), "{:?}", opened.warning);
    let mut profiles = opened.store.profiles().unwrap();
    profiles.sort();
    assert_eq!(profiles, ["gateway", "gateway-packed"]);
}

/// A request's records keep their order in the adaptive producer whatever their keys, as
/// they would in one Kafka producer: on one partition their offsets follow the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_records_keep_their_order_across_keys() {
    let gw = start(config(), producer_config()).await;
    let t = topic("order");
    kbatch_testkit::create_topic(&t, 1).await;
    for round in 0..3 {
        let records: Vec<Value> = (0..2_000)
            .map(|i| json!({"key": format!("k{i}"), "value": i}))
            .collect();
        let a = gw
            .post(&path(&t), JSON, serde_json::to_string(&records).unwrap())
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let offsets: Vec<i64> = a.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["offset"].as_i64().unwrap())
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[1] == w[0] + 1),
            "round {round}: offsets out of request order: {offsets:?}"
        );
    }
    gw.stop().await;
}
