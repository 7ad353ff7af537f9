//! The outbox against real PostgreSQL, MariaDB, SQLite and the real Kafka broker.
#![allow(clippy::unwrap_used, reason = "tests: a panic is a failure")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kbatch_client::Isolation;
use kbatch_core::{ErrorClass, Timestamp};
use kbatch_outbox::store::{claim_mysql, claim_postgres, claim_sqlite};
use kbatch_outbox::{
    Attempt, ClaimOrder, Deliverer, Destination, Error, Handoff, ID_HEADER, KafkaDeliverer,
    OutboxEntry, OutboxStore, ROWS_PER_INSERT, Relay, RelayConfig, RetryPolicy, TableName, enqueue,
    enqueue_batch,
};
use kbatch_producer::{Producer, ProducerConfig};
use kbatch_testkit::{consume_all, create_topic, mysql_url, pg_url, producer_config, unique_name};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use uuid::Uuid;

#[derive(Clone, Copy, Debug)]
enum Db {
    Postgres,
    Maria,
    Sqlite,
}

/// A store on a table of its own (and, for SQLite, a file of its own).
struct Fixture {
    store: OutboxStore,
    table: TableName,
    _dir: Option<tempfile::TempDir>,
}

async fn fixture(db: Db) -> Fixture {
    let table = TableName::new(format!("kbatch_outbox_t{:016x}", rand_u64())).unwrap();
    let (store, dir) = match db {
        Db::Postgres => {
            let pool = PgPoolOptions::new()
                .max_connections(6)
                .connect(pg_url())
                .await
                .unwrap();
            (OutboxStore::Postgres(pool), None)
        }
        Db::Maria => {
            let pool = MySqlPoolOptions::new()
                .max_connections(6)
                .connect(mysql_url())
                .await
                .unwrap();
            (OutboxStore::MySql(pool), None)
        }
        Db::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let opts = SqliteConnectOptions::new()
                .filename(dir.path().join("outbox.db"))
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(30));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(opts)
                .await
                .unwrap();
            (OutboxStore::Sqlite(pool), Some(dir))
        }
    };
    store.migrate(&table).await.unwrap();
    // Twice: migrations are idempotent.
    store.migrate(&table).await.unwrap();
    Fixture {
        store,
        table,
        _dir: dir,
    }
}

fn rand_u64() -> u64 {
    // unique_name gives `p-<16 hex>`; reuse its randomness.
    u64::from_str_radix(unique_name("x").trim_start_matches("x-"), 16).unwrap()
}

/// Enqueues `entries` in one transaction of the fixture's database, then commits or rolls back.
async fn enqueue_all(f: &Fixture, entries: &[OutboxEntry], commit: bool) {
    macro_rules! run {
        ($pool:expr) => {{
            let mut tx = $pool.begin().await.unwrap();
            for e in entries {
                enqueue(&mut tx, &f.table, e).await.unwrap();
            }
            if commit {
                tx.commit().await.unwrap()
            } else {
                tx.rollback().await.unwrap()
            }
        }};
    }
    match &f.store {
        OutboxStore::Postgres(p) => run!(p),
        OutboxStore::MySql(p) => run!(p),
        OutboxStore::Sqlite(p) => run!(p),
        _ => unreachable!(),
    }
}

/// As [`enqueue_all`], with the multi-row `enqueue_batch`; its result is returned before the
/// commit or rollback.
async fn enqueue_batch_all(
    f: &Fixture,
    entries: &[OutboxEntry],
    commit: bool,
) -> kbatch_outbox::Result<()> {
    macro_rules! run {
        ($pool:expr) => {{
            let mut tx = $pool.begin().await.unwrap();
            let r = enqueue_batch(&mut tx, &f.table, entries).await;
            if commit && r.is_ok() {
                tx.commit().await.unwrap()
            } else {
                tx.rollback().await.unwrap()
            }
            r
        }};
    }
    match &f.store {
        OutboxStore::Postgres(p) => run!(p),
        OutboxStore::MySql(p) => run!(p),
        OutboxStore::Sqlite(p) => run!(p),
        _ => unreachable!(),
    }
}

fn producer() -> Producer {
    Producer::new(ProducerConfig::default().with_kafka(producer_config())).unwrap()
}

/// Reads the whole topic until 3 s pass without a record: (entry id header → count).
async fn read_ids(topic: &str) -> (HashMap<Uuid, usize>, Vec<kbatch_core::ConsumedRecord>) {
    let topic = topic.to_owned();
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
    let records: Vec<_> = parts.into_values().flatten().collect();
    let mut ids = HashMap::new();
    for r in &records {
        let h = r
            .headers
            .iter()
            .find(|h| h.key == ID_HEADER)
            .expect("id header on every record");
        let id = Uuid::parse_str(std::str::from_utf8(h.value.as_ref().unwrap()).unwrap()).unwrap();
        *ids.entry(id).or_insert(0) += 1;
    }
    (ids, records)
}

async fn drain<D: Deliverer>(relay: &Relay<D>) -> kbatch_outbox::BatchReport {
    let mut total = kbatch_outbox::BatchReport::default();
    for _ in 0..1_000 {
        let b = relay.run_once().await.unwrap();
        if b.claimed == 0 {
            return total;
        }
        total.claimed += b.claimed;
        total.delivered += b.delivered;
        total.retried += b.retried;
        total.dead += b.dead;
    }
    panic!("relay never drained");
}

async fn committed_entries_are_delivered_once_and_rolled_back_ones_never(db: Db) {
    let f = fixture(db).await;
    let topic = unique_name("outbox");
    create_topic(&topic, 3).await;
    let committed: Vec<OutboxEntry> = (0..40)
        .map(|i| {
            OutboxEntry::new(Destination::kafka(&topic), format!("paid {i}"))
                .with_key(format!("order-{}", i % 7))
                .with_header("type", "OrderPaid")
        })
        .collect();
    let rolled_back: Vec<OutboxEntry> = (0..10)
        .map(|i| OutboxEntry::new(Destination::kafka(&topic), format!("ghost {i}")))
        .collect();
    enqueue_all(&f, &committed[..20], true).await;
    enqueue_all(&f, &rolled_back, false).await;
    enqueue_all(&f, &committed[20..], true).await;
    assert_eq!(f.store.status(&f.table).await.unwrap().pending, 40);

    let config = RelayConfig::default()
        .with_table(f.table.clone())
        .with_batch_size(16);
    let relay = Relay::new(f.store.clone(), KafkaDeliverer::new(producer()), config).unwrap();
    let report = drain(&relay).await;
    assert_eq!(
        (report.claimed, report.delivered, report.dead),
        (40, 40, 0),
        "{report:?}"
    );

    let (ids, records) = read_ids(&topic).await;
    let want: HashMap<Uuid, usize> = committed.iter().map(|e| (e.id, 1)).collect();
    assert_eq!(
        ids, want,
        "every committed entry exactly once, no rolled-back one"
    );
    for r in &records {
        let h = &r.headers.iter().find(|h| h.key == ID_HEADER).unwrap().value;
        let id = Uuid::parse_str(std::str::from_utf8(h.as_ref().unwrap()).unwrap()).unwrap();
        let e = committed.iter().find(|e| e.id == id).unwrap();
        assert_eq!(r.value.as_deref(), Some(&e.payload[..]));
        assert_eq!(r.key.as_deref(), e.key.as_deref().map(str::as_bytes));
        assert!(
            r.headers.iter().any(|h| h.key == "type"),
            "the entry's own headers travel too"
        );
    }
    let status = f.store.status(&f.table).await.unwrap();
    assert_eq!((status.pending, status.delivered, status.dead), (0, 40, 0));
    // Nothing left to claim: a second pass delivers nothing again.
    assert_eq!(relay.run_once().await.unwrap().claimed, 0);
}

/// `enqueue_batch` over more than one multi-row insert: every committed entry delivered once
/// with its key, payload and headers; a rolled-back batch never; a batch with one invalid
/// entry is refused by that entry's id before anything is written.
async fn batch_enqueue_commits_and_rolls_back_whole_and_delivers_intact(db: Db) {
    let f = fixture(db).await;
    let topic = unique_name("outbox-batch");
    create_topic(&topic, 3).await;
    let n = ROWS_PER_INSERT + 7;
    let committed: Vec<OutboxEntry> = (0..n)
        .map(|i| {
            OutboxEntry::new(Destination::kafka(&topic), format!("bulk {i}"))
                .with_key(format!("order-{}", i % 11))
                .with_header("seq", i.to_string())
        })
        .collect();
    let rolled_back: Vec<OutboxEntry> = (0..ROWS_PER_INSERT + 1)
        .map(|i| OutboxEntry::new(Destination::kafka(&topic), format!("ghost {i}")))
        .collect();
    let mut invalid: Vec<OutboxEntry> = (0..3)
        .map(|i| OutboxEntry::new(Destination::kafka(&topic), format!("never {i}")))
        .collect();
    invalid[2].destination = Destination::kafka("");
    let bad_id = invalid[2].id;
    let err = enqueue_batch_all(&f, &invalid, true).await.unwrap_err();
    assert!(err.to_string().contains(&bad_id.to_string()), "{err}");
    enqueue_batch_all(&f, &rolled_back, false).await.unwrap();
    enqueue_batch_all(&f, &committed, true).await.unwrap();
    assert_eq!(f.store.status(&f.table).await.unwrap().pending, n as u64);

    let config = RelayConfig::default()
        .with_table(f.table.clone())
        .with_batch_size(500);
    let relay = Relay::new(f.store.clone(), KafkaDeliverer::new(producer()), config).unwrap();
    let report = drain(&relay).await;
    assert_eq!((report.delivered, report.dead), (n, 0), "{report:?}");
    let (ids, records) = read_ids(&topic).await;
    let want: HashMap<Uuid, usize> = committed.iter().map(|e| (e.id, 1)).collect();
    assert_eq!(ids, want, "every committed entry once, nothing else");
    for r in &records {
        let h = &r.headers.iter().find(|h| h.key == ID_HEADER).unwrap().value;
        let id = Uuid::parse_str(std::str::from_utf8(h.as_ref().unwrap()).unwrap()).unwrap();
        let e = committed.iter().find(|e| e.id == id).unwrap();
        assert_eq!(r.value.as_deref(), Some(&e.payload[..]));
        assert_eq!(r.key.as_deref(), e.key.as_deref().map(str::as_bytes));
        let seq = r.headers.iter().find(|h| h.key == "seq").unwrap();
        assert_eq!(
            seq.value, e.headers[0].value,
            "the entry's own headers travel"
        );
    }
}

async fn parallel_relays_deliver_every_entry_once(db: Db) {
    let f = fixture(db).await;
    let topic = unique_name("outbox-par");
    create_topic(&topic, 4).await;
    let entries: Vec<OutboxEntry> = (0..400)
        .map(|i| {
            OutboxEntry::new(Destination::kafka(&topic), format!("e{i}"))
                .with_key(format!("k{}", i % 13))
        })
        .collect();
    for chunk in entries.chunks(100) {
        enqueue_all(&f, chunk, true).await;
    }
    // Each relay keeps 2 batches in flight (the fixture's pools hold the 6 transactions):
    // claims race within a relay as well as across them.
    let config = RelayConfig::default()
        .with_table(f.table.clone())
        .with_batch_size(25)
        .with_batches_in_flight(2);
    let a = Relay::new(
        f.store.clone(),
        KafkaDeliverer::new(producer()),
        config.clone(),
    )
    .unwrap();
    let b = Relay::new(
        f.store.clone(),
        KafkaDeliverer::new(producer()),
        config.clone(),
    )
    .unwrap();
    let c = Relay::new(f.store.clone(), KafkaDeliverer::new(producer()), config).unwrap();
    let (ra, rb, rc) = tokio::join!(a.drain(), b.drain(), c.drain());
    let (ra, rb, rc) = (ra.unwrap(), rb.unwrap(), rc.unwrap());
    assert_eq!(
        ra.delivered + rb.delivered + rc.delivered,
        400,
        "{ra:?} {rb:?} {rc:?}"
    );
    let (ids, _) = read_ids(&topic).await;
    assert_eq!(ids.len(), 400, "every entry delivered");
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    if matches!(db, Db::Postgres | Db::Maria) {
        // Row locks, not luck: on the databases that allow it, the relays shared the work.
        let busy = [ra.claimed, rb.claimed, rc.claimed]
            .iter()
            .filter(|n| **n > 0)
            .count();
        eprintln!(
            "claims per relay: {} {} {}",
            ra.claimed, rb.claimed, rc.claimed
        );
        assert!(
            busy >= 2,
            "only one relay ever claimed: {ra:?} {rb:?} {rc:?}"
        );
    }
}

async fn undeliverable_entries_die_with_their_error_and_the_rest_is_delivered(db: Db) {
    let f = fixture(db).await;
    let topic = unique_name("outbox-dead");
    create_topic(&topic, 1).await;
    let too_big = OutboxEntry::new(Destination::kafka(&topic), vec![7u8; 2 * 1024 * 1024]);
    let http = OutboxEntry::new(Destination::http("http://127.0.0.1:9/hook"), "x");
    let mut entries: Vec<OutboxEntry> = (0..5)
        .map(|i| OutboxEntry::new(Destination::kafka(&topic), format!("ok {i}")))
        .collect();
    entries.insert(2, too_big.clone());
    entries.push(http.clone());
    enqueue_all(&f, &entries, true).await;

    let config = RelayConfig::default().with_table(f.table.clone());
    let relay = Relay::new(f.store.clone(), KafkaDeliverer::new(producer()), config).unwrap();
    let report = drain(&relay).await;
    assert_eq!(
        (report.delivered, report.dead, report.retried),
        (5, 2, 0),
        "{report:?}"
    );
    let (ids, _) = read_ids(&topic).await;
    assert_eq!(ids.len(), 5);
    assert!(!ids.contains_key(&too_big.id));
    let big_error = last_error(&f, too_big.id)
        .await
        .expect("the error is stored");
    assert!(
        big_error.to_lowercase().contains("size") || big_error.contains("large"),
        "{big_error}"
    );
    let http_error = last_error(&f, http.id).await.unwrap();
    assert!(http_error.contains("HTTP"), "{http_error}");
    let s = f.store.status(&f.table).await.unwrap();
    assert_eq!((s.pending, s.delivered, s.dead), (0, 5, 2));
}

async fn last_error(f: &Fixture, id: Uuid) -> Option<String> {
    let sql = |q: &str| sqlx::AssertSqlSafe(q.replace("{table}", f.table.as_str()));
    match &f.store {
        OutboxStore::Postgres(p) => {
            sqlx::query_scalar(sql("SELECT last_error FROM {table} WHERE id = $1"))
                .bind(id)
                .fetch_one(p)
                .await
                .unwrap()
        }
        OutboxStore::MySql(p) => {
            sqlx::query_scalar(sql("SELECT last_error FROM {table} WHERE id = ?"))
                .bind(id)
                .fetch_one(p)
                .await
                .unwrap()
        }
        OutboxStore::Sqlite(p) => {
            sqlx::query_scalar(sql("SELECT last_error FROM {table} WHERE id = ?"))
                .bind(id)
                .fetch_one(p)
                .await
                .unwrap()
        }
        _ => unreachable!(),
    }
}

async fn a_claim_outside_a_transaction_is_refused(db: Db) {
    let f = fixture(db).await;
    let e = OutboxEntry::new(Destination::kafka("never"), "x");
    enqueue_all(&f, std::slice::from_ref(&e), true).await;
    let now = Timestamp::now();
    let err = match &f.store {
        OutboxStore::Postgres(p) => {
            claim_postgres(
                &mut p.acquire().await.unwrap(),
                &f.table,
                10,
                now,
                ClaimOrder::Id,
            )
            .await
        }
        OutboxStore::MySql(p) => {
            claim_mysql(
                &mut p.acquire().await.unwrap(),
                &f.table,
                10,
                now,
                ClaimOrder::Id,
            )
            .await
        }
        OutboxStore::Sqlite(p) => {
            claim_sqlite(
                &mut p.acquire().await.unwrap(),
                &f.table,
                10,
                now,
                ClaimOrder::Id,
            )
            .await
        }
        _ => unreachable!(),
    }
    .unwrap_err();
    assert!(
        matches!(err, Error::ClaimOutsideTransaction { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("outside a transaction"), "{err}");
    // Inside a transaction the same call claims it.
    macro_rules! in_tx {
        ($pool:expr, $claim:ident) => {{
            let mut tx = $pool.begin().await.unwrap();
            let got = $claim(&mut tx, &f.table, 10, now, ClaimOrder::Id)
                .await
                .unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].entry, e);
        }};
    }
    match &f.store {
        OutboxStore::Postgres(p) => in_tx!(p, claim_postgres),
        OutboxStore::MySql(p) => in_tx!(p, claim_mysql),
        OutboxStore::Sqlite(p) => in_tx!(p, claim_sqlite),
        _ => unreachable!(),
    }
    assert_eq!(f.store.status(&f.table).await.unwrap().pending, 1);
}

/// Fails every entry once with a retriable error, then delivers: a stand-in destination
/// for the retry path (the broker cannot be made to fail one record on demand).
struct FailFirst(std::sync::Mutex<std::collections::HashSet<Uuid>>);

impl Deliverer for FailFirst {
    fn deliver<'a>(
        &'a self,
        entries: &'a [&'a OutboxEntry],
    ) -> impl Future<Output = Vec<Attempt>> + Send + 'a {
        let mut seen = self.0.lock().unwrap();
        let out = entries
            .iter()
            .map(|e| {
                if seen.insert(e.id) {
                    Attempt::failed(ErrorClass::Retriable, "broker busy")
                } else {
                    Attempt::Delivered
                }
            })
            .collect();
        std::future::ready(out)
    }
}

async fn retriable_failures_back_off_then_deliver_or_die_at_max_attempts(db: Db) {
    let f = fixture(db).await;
    let entries: Vec<OutboxEntry> = (0..6)
        .map(|i| OutboxEntry::new(Destination::kafka("t"), format!("{i}")))
        .collect();
    enqueue_all(&f, &entries, true).await;
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(400),
        max_backoff: Duration::from_secs(1),
        jitter: 0.0,
    };
    let config = RelayConfig::default()
        .with_table(f.table.clone())
        .with_retry(retry.clone());
    let relay = Relay::new(f.store.clone(), FailFirst(Default::default()), config).unwrap();
    let first = relay.run_once().await.unwrap();
    assert_eq!((first.claimed, first.retried), (6, 6));
    // Backing off: not due yet.
    assert_eq!(
        relay.run_once().await.unwrap().claimed,
        0,
        "claimed before next_attempt_at"
    );
    assert_eq!(
        last_error(&f, entries[0].id).await.as_deref(),
        Some("broker busy")
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second = relay.run_once().await.unwrap();
    assert_eq!((second.claimed, second.delivered), (6, 6));

    // Always failing: dead after max_attempts, with the error.
    let e = OutboxEntry::new(Destination::kafka("t"), "doomed");
    enqueue_all(&f, std::slice::from_ref(&e), true).await;
    struct Always;
    impl Deliverer for Always {
        fn deliver<'a>(
            &'a self,
            entries: &'a [&'a OutboxEntry],
        ) -> impl Future<Output = Vec<Attempt>> + Send + 'a {
            std::future::ready(
                entries
                    .iter()
                    .map(|_| Attempt::failed(ErrorClass::Retriable, "still down"))
                    .collect(),
            )
        }
    }
    let config = RelayConfig::default()
        .with_table(f.table.clone())
        .with_retry(retry);
    let relay = Relay::new(f.store.clone(), Always, config).unwrap();
    let mut dead = 0;
    for _ in 0..20 {
        dead += relay.run_once().await.unwrap().dead;
        if dead == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(dead, 1);
    let err = last_error(&f, e.id).await.unwrap();
    assert!(
        err.contains("still down") && err.contains("3 attempts"),
        "{err}"
    );
    let s = f.store.status(&f.table).await.unwrap();
    assert_eq!((s.pending, s.delivered, s.dead), (0, 6, 1));

    // Redrive: the dead entry is pending and due again, with a fresh attempt budget.
    assert_eq!(
        f.store.redrive(&f.table, Timestamp::now()).await.unwrap(),
        1
    );
    let s = f.store.status(&f.table).await.unwrap();
    assert_eq!((s.pending, s.delivered, s.dead), (1, 6, 0));
    let relay = Relay::new(
        f.store.clone(),
        FailFirst(Default::default()),
        RelayConfig::default()
            .with_table(f.table.clone())
            .with_retry(RetryPolicy {
                max_attempts: 3,
                ..RetryPolicy::default()
            }),
    )
    .unwrap();
    let again = relay.run_once().await.unwrap();
    assert_eq!(
        (again.claimed, again.retried),
        (1, 1),
        "attempts were reset: not dead at once"
    );

    // Purge: delivered entries older than the cut-off go, the pending one stays.
    assert_eq!(
        f.store
            .purge_delivered(&f.table, Timestamp(0))
            .await
            .unwrap(),
        0,
        "none delivered before 1970"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        f.store
            .purge_delivered(&f.table, Timestamp::now())
            .await
            .unwrap(),
        6
    );
    let s = f.store.status(&f.table).await.unwrap();
    assert_eq!((s.pending, s.delivered, s.dead), (1, 0, 0));
}

/// Fails chosen entries once (retriable) before they reach Kafka; the rest go to Kafka.
struct FlakyKafka {
    kafka: KafkaDeliverer,
    flaky: std::collections::HashSet<Uuid>,
    failed: std::sync::Mutex<std::collections::HashSet<Uuid>>,
}

impl Deliverer for FlakyKafka {
    async fn deliver(&self, entries: &[&OutboxEntry]) -> Vec<Attempt> {
        let fail: Vec<bool> = {
            let mut failed = self.failed.lock().unwrap();
            entries
                .iter()
                .map(|e| self.flaky.contains(&e.id) && failed.insert(e.id))
                .collect()
        };
        let send: Vec<&OutboxEntry> = entries
            .iter()
            .zip(&fail)
            .filter(|(_, f)| !**f)
            .map(|(e, _)| *e)
            .collect();
        let mut sent = self.kafka.deliver(&send).await.into_iter();
        fail.iter()
            .map(|f| {
                if *f {
                    Attempt::failed(ErrorClass::Retriable, "injected")
                } else {
                    sent.next().unwrap()
                }
            })
            .collect()
    }
}

/// `keys` keys (`k0`, `k1`, …) × `seqs` entries to `topic`, interleaved: every key's entry 0,
/// then every key's entry 1, …; each payload is its sequence number.
fn interleaved_keys(topic: &str, keys: u32, seqs: u32) -> Vec<OutboxEntry> {
    (0..seqs)
        .flat_map(|seq| (0..keys).map(move |k| (k, seq)))
        .map(|(k, seq)| {
            OutboxEntry::new(Destination::kafka(topic), format!("{seq}")).with_key(format!("k{k}"))
        })
        .collect()
}

async fn per_key_order_holds_under_failures_and_a_failing_head_blocks_only_its_key(db: Db) {
    let f = fixture(db).await;
    let topic = unique_name("outbox-order");
    create_topic(&topic, 2).await;
    // 4 keys x 8 entries, interleaved; some fail once, the heads of k0 among them.
    let entries = interleaved_keys(&topic, 4, 8);
    enqueue_all(&f, &entries, true).await;
    let key_seq = |e: &OutboxEntry| (e.key.clone().unwrap(), e.payload.clone());
    let flaky: std::collections::HashSet<Uuid> = entries
        .iter()
        .filter(|e| {
            let (k, seq) = key_seq(e);
            (k == "k0" && (&seq[..] == b"0" || &seq[..] == b"4")) || (k == "k2" && &seq[..] == b"2")
        })
        .map(|e| e.id)
        .collect();
    let retry = RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(300),
        max_backoff: Duration::from_millis(300),
        jitter: 0.0,
    };
    let config = RelayConfig::default()
        .with_table(f.table.clone())
        .with_order(ClaimOrder::PerKey)
        .with_retry(retry);
    let flaky_kafka = || FlakyKafka {
        kafka: KafkaDeliverer::new(producer()),
        flaky: flaky.clone(),
        failed: Default::default(),
    };
    let a = Relay::new(f.store.clone(), flaky_kafka(), config.clone()).unwrap();
    let first = a.run_once().await.unwrap();
    assert_eq!(
        (first.claimed, first.delivered, first.retried),
        (4, 3, 1),
        "one head per key: {first:?}"
    );
    let second = a.run_once().await.unwrap();
    assert_eq!(
        second.claimed, 3,
        "k0 waits behind its backing-off head, the others flow: {second:?}"
    );

    // Then two relays at once until everything is delivered.
    let b = Relay::new(f.store.clone(), flaky_kafka(), config).unwrap();
    // b must not fail what a already failed once: share a's record of injected failures.
    *b.deliverer().failed.lock().unwrap() = a.deliverer().failed.lock().unwrap().clone();
    for _ in 0..400 {
        if f.store.status(&f.table).await.unwrap().pending == 0 {
            break;
        }
        let (ra, rb) = tokio::join!(a.run_once(), b.run_once());
        if ra.unwrap().claimed + rb.unwrap().claimed == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let s = f.store.status(&f.table).await.unwrap();
    assert_eq!((s.pending, s.delivered, s.dead), (0, 32, 0));

    let topic2 = topic.clone();
    let parts = tokio::task::spawn_blocking(move || {
        consume_all(
            &topic2,
            Isolation::ReadUncommitted,
            None,
            Duration::from_secs(3),
        )
    })
    .await
    .unwrap();
    let mut per_key: HashMap<String, Vec<String>> = HashMap::new();
    for r in parts.into_values().flatten() {
        let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
        per_key
            .entry(key)
            .or_default()
            .push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
    }
    let want: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    for k in 0..4 {
        assert_eq!(
            per_key.get(&format!("k{k}")),
            Some(&want),
            "key k{k} in order, once each"
        );
    }
}

/// Records the order entries are handed off in and how many deliveries overlap. The first
/// batch is slow to hand off; acknowledgements take a while after every handoff.
#[derive(Default)]
struct Overlap {
    handed: std::sync::Mutex<Vec<Uuid>>,
    calls: AtomicUsize,
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Deliverer for Overlap {
    fn deliver<'a>(
        &'a self,
        entries: &'a [&'a OutboxEntry],
    ) -> impl Future<Output = Vec<Attempt>> + Send + 'a {
        self.deliver_with_handoff(entries, Handoff::detached())
    }

    async fn deliver_with_handoff(
        &self,
        entries: &[&OutboxEntry],
        handoff: Handoff,
    ) -> Vec<Attempt> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            // A relay that claimed and started the next batch before this handoff would hand
            // that batch's entries off first.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.handed
            .lock()
            .unwrap()
            .extend(entries.iter().map(|e| e.id));
        handoff.complete();
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        entries.iter().map(|_| Attempt::Delivered).collect()
    }
}

async fn batches_overlap_yet_are_handed_off_in_claim_order(db: Db) {
    let f = fixture(db).await;
    let entries: Vec<OutboxEntry> = (0..50)
        .map(|i| OutboxEntry::new(Destination::kafka("t"), format!("{i}")))
        .collect();
    enqueue_batch_all(&f, &entries, true).await.unwrap();
    let config = RelayConfig::default()
        .with_table(f.table.clone())
        .with_batch_size(10)
        .with_batches_in_flight(3);
    let relay = Relay::new(f.store.clone(), Overlap::default(), config).unwrap();
    let report = relay.drain().await.unwrap();
    assert_eq!(
        (report.batches, report.claimed, report.delivered),
        (5, 50, 50)
    );
    let mut by_id: Vec<Uuid> = entries.iter().map(|e| e.id).collect();
    by_id.sort();
    assert_eq!(
        *relay.deliverer().handed.lock().unwrap(),
        by_id,
        "batches handed off in claim (id) order"
    );
    // SQLite's claim holds the one writer lock until its batch commits: one at a time.
    let want = if matches!(db, Db::Sqlite) { 1 } else { 3 };
    assert_eq!(
        relay.deliverer().max.load(Ordering::SeqCst),
        want,
        "batches in flight at once"
    );
    let s = f.store.status(&f.table).await.unwrap();
    assert_eq!((s.pending, s.delivered, s.dead), (0, 50, 0));
}

async fn batches_in_flight_reach_kafka_in_claim_order(db: Db) {
    let f = fixture(db).await;
    let topic = unique_name("outbox-inflight");
    create_topic(&topic, 1).await;
    let entries: Vec<OutboxEntry> = (0..3_000)
        .map(|i| OutboxEntry::new(Destination::kafka(&topic), format!("{i}")).with_key("one"))
        .collect();
    enqueue_batch_all(&f, &entries, true).await.unwrap();
    let config = RelayConfig::default()
        .with_table(f.table.clone())
        .with_batch_size(100)
        .with_batches_in_flight(4);
    let relay = Relay::new(f.store.clone(), KafkaDeliverer::new(producer()), config).unwrap();
    let report = relay.drain().await.unwrap();
    assert_eq!((report.claimed, report.delivered), (3_000, 3_000));
    let (ids, records) = read_ids(&topic).await;
    assert_eq!(ids.len(), 3_000);
    assert!(ids.values().all(|n| *n == 1), "each entry once");
    let mut by_id: Vec<&OutboxEntry> = entries.iter().collect();
    by_id.sort_by_key(|e| e.id);
    let want: Vec<&[u8]> = by_id.iter().map(|e| &e.payload[..]).collect();
    let got: Vec<&[u8]> = records
        .iter()
        .map(|r| r.value.as_deref().unwrap())
        .collect();
    assert!(got == want, "one partition: records in claim order");
}

async fn per_key_order_holds_with_batches_in_flight(db: Db) {
    let f = fixture(db).await;
    let topic = unique_name("outbox-key-inflight");
    create_topic(&topic, 3).await;
    // 6 keys x 40 entries, interleaved; batches of 4, 3 in flight, so a claim runs while the
    // batches before it (holding the keys' previous heads, uncommitted) are in flight.
    let entries = interleaved_keys(&topic, 6, 40);
    enqueue_batch_all(&f, &entries, true).await.unwrap();
    // Some entries fail once and back off: without per-key claims the entries behind them
    // would be delivered first.
    let flaky: std::collections::HashSet<Uuid> = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 7 == 0)
        .map(|(_, e)| e.id)
        .collect();
    let config = RelayConfig::default()
        .with_table(f.table.clone())
        .with_order(ClaimOrder::PerKey)
        .with_batch_size(4)
        .with_batches_in_flight(3)
        .with_retry(RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(100),
            jitter: 0.0,
        });
    let deliverer = FlakyKafka {
        kafka: KafkaDeliverer::new(producer()),
        flaky,
        failed: Default::default(),
    };
    let relay = Relay::new(f.store.clone(), deliverer, config).unwrap();
    let mut delivered = 0;
    for _ in 0..200 {
        delivered += relay.drain().await.unwrap().delivered;
        if delivered == 240 {
            break;
        }
        // Entries backing off are not due yet.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered, 240);
    let (ids, records) = read_ids(&topic).await;
    assert!(
        ids.len() == 240 && ids.values().all(|n| *n == 1),
        "each entry once"
    );
    let mut per_key: HashMap<String, Vec<u32>> = HashMap::new();
    for r in &records {
        let key = String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap();
        let seq = std::str::from_utf8(r.value.as_deref().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        per_key.entry(key).or_default().push(seq);
    }
    let want: Vec<u32> = (0..40).collect();
    for k in 0..6 {
        assert_eq!(
            per_key.get(&format!("k{k}")),
            Some(&want),
            "key k{k} in order"
        );
    }
}

macro_rules! per_db {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(Db::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() {
                super::$name(Db::Maria).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Db::Sqlite).await
            }
        }
    };
}

per_db!(committed_entries_are_delivered_once_and_rolled_back_ones_never);
per_db!(parallel_relays_deliver_every_entry_once);
per_db!(batch_enqueue_commits_and_rolls_back_whole_and_delivers_intact);
per_db!(undeliverable_entries_die_with_their_error_and_the_rest_is_delivered);
per_db!(a_claim_outside_a_transaction_is_refused);
per_db!(retriable_failures_back_off_then_deliver_or_die_at_max_attempts);
per_db!(per_key_order_holds_under_failures_and_a_failing_head_blocks_only_its_key);
per_db!(batches_overlap_yet_are_handed_off_in_claim_order);
per_db!(batches_in_flight_reach_kafka_in_claim_order);
per_db!(per_key_order_holds_with_batches_in_flight);
