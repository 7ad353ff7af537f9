//! The HTTP deliverer against a real local HTTP server, through a relay on a SQLite outbox.
#![allow(clippy::unwrap_used, reason = "tests: a panic is a failure")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kbatch_outbox::{
    Destination, HttpConfig, HttpDeliverer, ID_HEADER, OutboxEntry, OutboxStore, Relay,
    RelayConfig, TableName, enqueue,
};

/// A request the server took: id header, body, `event-type` header.
type Received = (String, Vec<u8>, Option<String>);

#[derive(Default)]
struct Server {
    received: Mutex<Vec<Received>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

async fn ok(State(s): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(40)).await;
    let id = headers.get(ID_HEADER).unwrap().to_str().unwrap().to_owned();
    let kind = headers
        .get("event-type")
        .map(|v| v.to_str().unwrap().to_owned());
    s.received.lock().unwrap().push((id, body.to_vec(), kind));
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_entries_are_posted_with_bounded_concurrency_and_classified_by_status() {
    let server = Arc::new(Server::default());
    let app = Router::new()
        .route("/ok", post(ok))
        .route("/busy", post(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .route(
            "/throttled",
            post(|| async { StatusCode::TOO_MANY_REQUESTS }),
        )
        .route("/bad", post(|| async { StatusCode::BAD_REQUEST }))
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                StatusCode::OK
            }),
        )
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let store = OutboxStore::connect(dir.path().join("o.db").to_str().unwrap())
        .await
        .unwrap();
    let table = TableName::default();
    store.migrate(&table).await.unwrap();
    let good: Vec<OutboxEntry> = (0..12)
        .map(|i| {
            OutboxEntry::new(Destination::http(format!("{base}/ok")), format!("body {i}"))
                .with_header("event-type", "OrderPaid")
        })
        .collect();
    let busy = OutboxEntry::new(Destination::http(format!("{base}/busy")), "b");
    let throttled = OutboxEntry::new(Destination::http(format!("{base}/throttled")), "t");
    let slow = OutboxEntry::new(Destination::http(format!("{base}/slow")), "s");
    let bad = OutboxEntry::new(Destination::http(format!("{base}/bad")), "x");
    let refused = OutboxEntry::new(Destination::http("http://127.0.0.1:9/nothing"), "r");
    let OutboxStore::Sqlite(pool) = &store else {
        unreachable!()
    };
    let mut tx = pool.begin().await.unwrap();
    for e in good
        .iter()
        .chain([&busy, &throttled, &slow, &bad, &refused])
    {
        enqueue(&mut tx, &table, e).await.unwrap();
    }
    tx.commit().await.unwrap();

    let deliverer = HttpDeliverer::new(HttpConfig {
        concurrency: 4,
        timeout: Duration::from_millis(500),
    })
    .unwrap();
    let relay = Relay::new(store.clone(), deliverer, RelayConfig::default()).unwrap();
    let report = relay.run_once().await.unwrap();
    assert_eq!(
        (
            report.claimed,
            report.delivered,
            report.retried,
            report.dead
        ),
        (17, 12, 4, 1),
        "busy, throttled, slow (timeout) and refused retry; bad dies: {report:?}"
    );

    let received = server.received.lock().unwrap().clone();
    let mut ids: Vec<String> = received.iter().map(|r| r.0.clone()).collect();
    ids.sort();
    let mut want: Vec<String> = good.iter().map(|e| e.id.to_string()).collect();
    want.sort();
    assert_eq!(ids, want, "each good entry posted once, with its id header");
    for (id, body, kind) in &received {
        let e = good.iter().find(|e| e.id.to_string() == *id).unwrap();
        assert_eq!(body, &e.payload.to_vec());
        assert_eq!(kind.as_deref(), Some("OrderPaid"));
    }
    let max = server.max_in_flight.load(Ordering::SeqCst);
    assert!(
        (2..=4).contains(&max),
        "in flight at most 4 and really concurrent, saw {max}"
    );

    let status = store.status(&table).await.unwrap();
    assert_eq!((status.pending, status.delivered, status.dead), (4, 12, 1));
    let err: String =
        sqlx::query_scalar("SELECT last_error FROM kbatch_outbox_entries WHERE id = ?")
            .bind(bad.id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(err.contains("400"), "{err}");
    let err: String =
        sqlx::query_scalar("SELECT last_error FROM kbatch_outbox_entries WHERE id = ?")
            .bind(busy.id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(err.contains("503"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_goes_to_kafka_and_http_in_one_pass() {
    use kbatch_client::Isolation;
    use kbatch_outbox::{KafkaDeliverer, Routed};
    use kbatch_producer::{Producer, ProducerConfig};
    use kbatch_testkit::{consume_all, create_topic, producer_config, unique_name};

    let server = Arc::new(Server::default());
    let app = Router::new()
        .route("/ok", post(ok))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ok", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let topic = unique_name("outbox-mixed");
    create_topic(&topic, 1).await;

    let dir = tempfile::tempdir().unwrap();
    let store = OutboxStore::connect(dir.path().join("o.db").to_str().unwrap())
        .await
        .unwrap();
    let table = TableName::default();
    store.migrate(&table).await.unwrap();
    let entries: Vec<OutboxEntry> = (0..10)
        .map(|i| {
            let dest = if i % 2 == 0 {
                Destination::kafka(&topic)
            } else {
                Destination::http(&url)
            };
            OutboxEntry::new(dest, format!("m{i}")).with_header("event-type", "Mixed")
        })
        .collect();
    let OutboxStore::Sqlite(pool) = &store else {
        unreachable!()
    };
    let mut tx = pool.begin().await.unwrap();
    for e in &entries {
        enqueue(&mut tx, &table, e).await.unwrap();
    }
    tx.commit().await.unwrap();

    let producer = Producer::new(ProducerConfig::default().with_kafka(producer_config())).unwrap();
    let routed = Routed::new(
        KafkaDeliverer::new(producer),
        HttpDeliverer::new(HttpConfig::default()).unwrap(),
    );
    let relay = Relay::new(store.clone(), routed, RelayConfig::default()).unwrap();
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.delivered, report.dead), (10, 0), "{report:?}");
    let over_http: Vec<Vec<u8>> = server
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.1.clone())
        .collect();
    let mut over_http: Vec<String> = over_http
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    over_http.sort();
    assert_eq!(over_http, ["m1", "m3", "m5", "m7", "m9"]);
    let parts = tokio::task::spawn_blocking(move || {
        consume_all(
            &topic,
            Isolation::ReadUncommitted,
            Some(5),
            Duration::from_secs(3),
        )
    })
    .await
    .unwrap();
    let mut in_kafka: Vec<String> = parts
        .into_values()
        .flatten()
        .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
        .collect();
    in_kafka.sort();
    assert_eq!(in_kafka, ["m0", "m2", "m4", "m6", "m8"]);
}

#[tokio::test]
async fn a_deliverer_that_loses_count_rolls_the_batch_back() {
    struct Short;
    impl kbatch_outbox::Deliverer for Short {
        async fn deliver(&self, entries: &[&OutboxEntry]) -> Vec<kbatch_outbox::Attempt> {
            entries
                .iter()
                .skip(1)
                .map(|_| kbatch_outbox::Attempt::Delivered)
                .collect()
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = OutboxStore::connect(dir.path().join("o.db").to_str().unwrap())
        .await
        .unwrap();
    let table = TableName::default();
    store.migrate(&table).await.unwrap();
    let OutboxStore::Sqlite(pool) = &store else {
        unreachable!()
    };
    let mut tx = pool.begin().await.unwrap();
    for i in 0..3 {
        enqueue(
            &mut tx,
            &table,
            &OutboxEntry::new(Destination::http("http://127.0.0.1:9/"), format!("{i}")),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let relay = Relay::new(store.clone(), Short, RelayConfig::default()).unwrap();
    let err = relay.run_once().await.unwrap_err();
    assert!(
        err.to_string().contains("2 attempts for 3 entries"),
        "{err}"
    );
    let s = store.status(&table).await.unwrap();
    assert_eq!((s.pending, s.delivered), (3, 0), "nothing recorded");
}
