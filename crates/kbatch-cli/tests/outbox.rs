//! `kbatch outbox migrate|status|relay` on a SQLite file, against the real broker.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use kbatch_client::Isolation;
use kbatch_outbox::{Destination, ID_HEADER, OutboxEntry, OutboxStore, TableName, enqueue};
use kbatch_testkit::{brokers, consume_all, create_topic, unique_name};

fn kbatch(db: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kbatch"));
    c.env_remove("KBATCH_BROKERS")
        .env("KBATCH_OUTBOX_DATABASE_URL", db)
        .env("RUST_LOG", "error");
    c
}

fn json(c: &mut Command) -> serde_json::Value {
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kbatch failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_status_and_relay_deliver_a_sqlite_outbox_to_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db").to_str().unwrap().to_owned();
    let out = kbatch(&db).args(["outbox", "migrate"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The application: entries enqueued in its own transaction.
    let topic = unique_name("cli-outbox");
    create_topic(&topic, 2).await;
    let OutboxStore::Sqlite(pool) = OutboxStore::connect(&db).await.unwrap() else {
        unreachable!()
    };
    let entries: Vec<OutboxEntry> = (0..30)
        .map(|i| {
            OutboxEntry::new(Destination::kafka(&topic), format!("event {i}"))
                .with_key(format!("k{}", i % 4))
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    for e in &entries {
        enqueue(&mut tx, &TableName::default(), e).await.unwrap();
    }
    tx.commit().await.unwrap();
    pool.close().await;

    let s = json(kbatch(&db).args(["outbox", "status"]));
    assert_eq!(
        (s["pending"].as_u64(), s["delivered"].as_u64()),
        (Some(30), Some(0)),
        "{s}"
    );
    assert!(s["oldest_pending_age_ms"].as_i64().unwrap() >= 0);

    let r = json(kbatch(&db).args([
        "outbox",
        "relay",
        "--until-idle",
        "--batch-size",
        "8",
        "--brokers",
        brokers(),
    ]));
    assert_eq!(
        (r["delivered"].as_u64(), r["dead"].as_u64()),
        (Some(30), Some(0)),
        "{r}"
    );
    let s = json(kbatch(&db).args(["outbox", "status"]));
    assert_eq!(
        (s["pending"].as_u64(), s["delivered"].as_u64()),
        (Some(0), Some(30)),
        "{s}"
    );

    // Nothing is dead; retention keeps the fresh deliveries, retention 0 purges them.
    assert_eq!(
        json(kbatch(&db).args(["outbox", "redrive"]))["redriven"].as_u64(),
        Some(0)
    );
    assert_eq!(
        json(kbatch(&db).args(["outbox", "purge"]))["purged"].as_u64(),
        Some(0)
    );
    std::thread::sleep(Duration::from_millis(5));
    let p = json(kbatch(&db).args(["outbox", "purge", "--retention-secs", "0"]));
    assert_eq!(p["purged"].as_u64(), Some(30), "{p}");

    let parts = tokio::task::spawn_blocking(move || {
        consume_all(
            &topic,
            Isolation::ReadUncommitted,
            None,
            Duration::from_secs(3),
        )
    })
    .await
    .unwrap();
    let ids: Vec<String> = parts
        .into_values()
        .flatten()
        .map(|r| {
            let h = r.headers.iter().find(|h| h.key == ID_HEADER).unwrap();
            String::from_utf8(h.value.clone().unwrap().to_vec()).unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 30, "each entry once");
    let want: HashSet<String> = entries.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), want);
}

#[test]
fn a_table_without_the_prefix_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db").to_str().unwrap().to_owned();
    let out = kbatch(&db)
        .args(["outbox", "migrate", "--table", "outbox"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"outbox\"") && err.contains("kbatch_outbox"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_run_loses_nothing_and_redelivers_at_most_its_batches_in_flight() {
    let db = kbatch_testkit::pg_url().to_owned();
    let table = format!(
        "kbatch_outbox_kill{}",
        unique_name("t").trim_start_matches("t-")
    );
    let out = kbatch(&db)
        .args(["outbox", "migrate", "--table", &table])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let topic = unique_name("cli-outbox-kill");
    create_topic(&topic, 3).await;
    let OutboxStore::Postgres(pool) = OutboxStore::connect(&db).await.unwrap() else {
        unreachable!()
    };
    let t = TableName::new(&table).unwrap();
    let total = 3_000;
    let entries: Vec<OutboxEntry> = (0..total)
        .map(|i| {
            OutboxEntry::new(Destination::kafka(&topic), format!("e{i}"))
                .with_key(format!("k{}", i % 16))
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    for e in &entries {
        enqueue(&mut tx, &t, e).await.unwrap();
    }
    tx.commit().await.unwrap();

    let (batch, in_flight) = (500, 2);
    let mut relay = kbatch(&db)
        .args([
            "outbox",
            "relay",
            "--table",
            &table,
            "--batch-size",
            &batch.to_string(),
            "--batches-in-flight",
            &in_flight.to_string(),
            "--brokers",
            brokers(),
        ])
        .spawn()
        .unwrap();
    let store = OutboxStore::Postgres(pool.clone());
    // Kill (SIGKILL) once Kafka holds more records than the table has recorded as delivered:
    // a batch is then published and not yet marked.
    let consumer = kbatch_client::KafkaConsumer::new(&kbatch_testkit::consumer_config()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let published_before_kill = loop {
        let published: i64 = tokio::task::block_in_place(|| {
            (0..3)
                .map(|p| {
                    let tp = kbatch_core::TopicPartition::new(topic.as_str(), p);
                    consumer
                        .watermarks(&tp, Duration::from_secs(5))
                        .unwrap()
                        .1
                        .0
                })
                .sum()
        });
        let recorded = store.status(&t).await.unwrap().delivered;
        if published > i64::try_from(recorded).unwrap() {
            break published;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no batch caught in flight"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    relay.kill().unwrap();
    relay.wait().unwrap();
    let at_kill = store.status(&t).await.unwrap();
    assert!(
        at_kill.pending > 0,
        "killed too late to test anything: {at_kill:?}"
    );

    // A new relay finishes the job.
    let r = json(kbatch(&db).args([
        "outbox",
        "relay",
        "--table",
        &table,
        "--until-idle",
        "--brokers",
        brokers(),
    ]));
    assert_eq!(r["dead"].as_u64(), Some(0), "{r}");
    let s = store.status(&t).await.unwrap();
    assert_eq!((s.pending, s.delivered), (0, total as u64));

    let parts = tokio::task::spawn_blocking(move || {
        consume_all(
            &topic,
            Isolation::ReadUncommitted,
            None,
            Duration::from_secs(3),
        )
    })
    .await
    .unwrap();
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for r in parts.into_values().flatten() {
        let h = r.headers.iter().find(|h| h.key == ID_HEADER).unwrap();
        *seen
            .entry(String::from_utf8(h.value.clone().unwrap().to_vec()).unwrap())
            .or_default() += 1;
    }
    let want: HashSet<String> = entries.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(
        seen.keys().cloned().collect::<HashSet<_>>(),
        want,
        "nothing lost, nothing foreign"
    );
    let again = seen.values().filter(|n| **n > 1).count();
    assert!(
        seen.values().all(|n| *n <= 2),
        "an entry delivered three times"
    );
    assert!(
        again <= batch * in_flight,
        "{again} redelivered: more than the {in_flight} batches in flight"
    );
    if published_before_kill > i64::try_from(at_kill.delivered).unwrap() {
        // Records reached Kafka that the killed relay never recorded: they must come again.
        assert!(
            again > 0,
            "published {published_before_kill}, recorded {}, none redelivered",
            at_kill.delivered
        );
    }
    eprintln!(
        "killed with {} recorded; {again} entries delivered again (same ids)",
        at_kill.delivered
    );
}
