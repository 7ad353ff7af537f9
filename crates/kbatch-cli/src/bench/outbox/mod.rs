//! `kbatch bench outbox`: the transactional outbox relay draining a backlog to Kafka from
//! PostgreSQL, MariaDB and SQLite, a sustained run with writers, and Debezium's outbox event
//! router on the same PostgreSQL rows, in one run on a real broker.
//!
//! ```text
//!  round r = 1..R:
//!    for store in postgres, mariadb, sqlite; batch in 1000, 100 (and 1000 with one batch
//!    in flight, a labelled row, on postgres and mariadb):
//!      load N pending entries (multi-row enqueue, untimed)
//!      Relay::drain ─► msg/s (first claim → last outcomes committed)
//!      the table afterwards: delivered = N, pending = dead = 0 (nothing lost)
//!    debezium: same N rows (ids, keys, payloads) in its outbox shape, one transaction
//!      ─► msg/s (first record seen → last broker ack)
//!    sustained (postgres): W writers at RATE/s, one transaction per entry, relay running
//!      ─► lag p50/p99/max, created_at → delivered_at
//!  ─► min / median / max per row; targets: postgres batch 1000 ≥ 50,000 msg/s, > Debezium
//! ```
//!
//! Every relay uses the Relay's defaults (2 batches in flight) unless its row says otherwise,
//! and kbatch's `Producer` with its defaults (acks=all, idempotent, linger 5 ms,
//! 1 MiB batches); the Debezium peer's KafkaProducer gets acks=all, linger 5 ms, 1 MiB
//! batches and the engine batch size of the relay rows it is compared with.

mod debezium;
mod drain;
mod sustained;

use std::path::PathBuf;

use clap::Args as ClapArgs;
use kbatch_client::{Admin, ClientConfig, NewTopic};
use kbatch_outbox::{OutboxStore, RelayConfig, TableName};
use kbatch_producer::{Producer, ProducerConfig};

use super::{Spread, Target};
use debezium::DebeziumRun;
use drain::Drained;
use sustained::Sustained;

/// Options of `kbatch bench outbox`.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Bootstrap servers of the (real) Kafka cluster to measure against.
    #[arg(long, env = "KBATCH_BROKERS")]
    brokers: String,
    /// PostgreSQL URL (wal_level=logical for the Debezium row; scripts/postgres sets it).
    #[arg(long, env = "KBATCH_PG_URL")]
    pg_url: Option<String>,
    /// MariaDB/MySQL URL.
    #[arg(long, env = "KBATCH_MYSQL_URL")]
    mysql_url: Option<String>,
    /// Stores to measure, comma-separated: postgres, mariadb, sqlite.
    #[arg(long, value_delimiter = ',', default_values_t = ["postgres".to_owned(), "mariadb".to_owned(), "sqlite".to_owned()])]
    stores: Vec<String>,
    /// Pending entries per drain (and rows for Debezium).
    #[arg(long, default_value_t = 200_000)]
    entries: u64,
    /// Measured rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// Payload bytes per entry.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Distinct keys (aggregate ids).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Partitions of each run's topic.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Sustained run: entries offered per second.
    #[arg(long, default_value_t = 5_000.0)]
    rate: f64,
    /// Sustained run: seconds of writing.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Sustained run: concurrent writers (one transaction per entry each).
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// `scripts/debezium` (default: $KBATCH_DEBEZIUM, else scripts/debezium of this checkout).
    #[arg(long, env = "KBATCH_DEBEZIUM")]
    debezium: Option<PathBuf>,
    /// Skip the Debezium row (no Java/Maven needed).
    #[arg(long)]
    no_debezium: bool,
    /// Smoke test: 1 round of 2,000 entries, 2 s sustained at 500/s. Not a measurement.
    #[arg(long, conflicts_with_all = ["rounds", "entries", "rate", "seconds"])]
    quick: bool,
    /// Print one JSON object (configuration, every run, summaries, targets) on stdout as well.
    #[arg(long)]
    json: bool,
}

const BATCHES: [usize; 2] = [1_000, 100];
/// Batches in flight per row: the relay's default, and one at a time as a labelled row (at
/// batch 1,000, on the stores where more than one can be in flight) to show what overlapping
/// batches is worth.
fn in_flights(store: &str, batch: usize) -> Vec<usize> {
    let default = RelayConfig::default().batches_in_flight;
    if batch == BATCHES[0] && store != "sqlite" && default != 1 {
        vec![default, 1]
    } else {
        vec![default]
    }
}
const STORES: [&str; 3] = ["postgres", "mariadb", "sqlite"];

#[derive(serde::Serialize)]
struct Run {
    round: u32,
    store: String,
    batch: usize,
    /// The relay's `batches_in_flight`.
    in_flight: usize,
    #[serde(flatten)]
    drained: Drained,
}

#[derive(serde::Serialize)]
struct Round<T> {
    round: u32,
    #[serde(flatten)]
    measured: T,
}

pub(crate) async fn run(mut a: Args) -> anyhow::Result<()> {
    if a.quick {
        (a.rounds, a.entries, a.rate, a.seconds) = (1, 2_000, 500.0, 2.0);
    }
    for s in &a.stores {
        anyhow::ensure!(
            STORES.contains(&s.as_str()),
            "--stores: unknown store {s:?}; allowed: {}",
            STORES.join(", ")
        );
    }
    let client = ClientConfig::new(a.brokers.as_str()).with_client_id("kbatch-bench-outbox");
    let producer_config = ProducerConfig::new(client.clone());
    let admin = Admin::new(&client)?;
    let scratch = std::env::temp_dir().join(format!(
        "kbatch-bench-outbox-{:08x}",
        crate::cluster::random_suffix()
    ));
    std::fs::create_dir_all(&scratch)?;
    let mut stores = Vec::new();
    for s in &a.stores {
        let url = match s.as_str() {
            "postgres" => a.pg_url.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "--stores postgres needs --pg-url or KBATCH_PG_URL (scripts/postgres up)"
                )
            })?,
            "mariadb" => a.mysql_url.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "--stores mariadb needs --mysql-url or KBATCH_MYSQL_URL (scripts/mariadb up)"
                )
            })?,
            _ => scratch.join("outbox.sqlite").display().to_string(),
        };
        stores.push((s.clone(), OutboxStore::connect(&url).await?));
    }
    let pg = stores.iter().find_map(|(n, s)| match s {
        OutboxStore::Postgres(p) if n == "postgres" => Some(p.clone()),
        _ => None,
    });
    let debezium_script = (!a.no_debezium && pg.is_some()).then(|| {
        a.debezium.clone().unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/debezium")
        })
    });
    let payload = bytes::Bytes::from(vec![b'x'; a.size]);

    let mut runs = Vec::new();
    let mut dbz = Vec::new();
    let mut sust = Vec::new();
    let mut dbz_error = None;
    for round in 1..=a.rounds {
        for (name, store) in &stores {
            for (batch, in_flight) in BATCHES
                .into_iter()
                .flat_map(|b| in_flights(name, b).into_iter().map(move |f| (b, f)))
            {
                let suffix = crate::cluster::random_suffix();
                let topic = format!("kbatch-bench-outbox-{name}-{batch}-{suffix:08x}");
                admin
                    .create_topics(&[NewTopic::new(&topic, a.partitions)])
                    .await?;
                let table = TableName::new(format!("kbatch_outbox_bench_{suffix:08x}"))?;
                store.migrate(&table).await?;
                let entries = drain::entries(a.entries, &topic, &payload, a.keys);
                drain::load(store, &table, &entries).await?;
                drop(entries);
                let producer = Producer::new(producer_config.clone())?;
                let d = drain::drain(store, &table, producer.clone(), batch, in_flight, a.entries)
                    .await;
                producer.close().await;
                drop_table(store, &table).await;
                admin.delete_topics(&[&topic]).await?;
                let d = d?;
                eprintln!(
                    "bench: round {round} {name} batch {batch}, {in_flight} in flight: {:.0} msg/s ({} entries in {:.2} s, {} batches); delivered {}, pending {}, dead {}",
                    d.msg_per_s,
                    d.entries,
                    d.seconds,
                    d.batches,
                    d.delivered,
                    d.pending_after,
                    d.dead_after
                );
                runs.push(Run {
                    round,
                    store: name.clone(),
                    batch,
                    in_flight,
                    drained: d,
                });
            }
        }
        if let (Some(script), Some(pool), Some(url)) = (&debezium_script, &pg, &a.pg_url) {
            let suffix = crate::cluster::random_suffix();
            let topic = format!("kbatch-bench-outbox-debezium-{suffix:08x}");
            admin
                .create_topics(&[NewTopic::new(&topic, a.partitions)])
                .await?;
            let entries = drain::entries(a.entries, &topic, &payload, a.keys);
            let r = debezium::run(
                script, pool, url, &a.brokers, &topic, BATCHES[0], &entries, suffix,
            )
            .await;
            admin.delete_topics(&[&topic]).await?;
            match r {
                Ok(r) => {
                    eprintln!(
                        "bench: round {round} debezium: {:.0} msg/s ({} of {} acknowledged in {:.2} s)",
                        r.msg_per_s, r.delivered, r.entries, r.seconds
                    );
                    dbz.push(Round { round, measured: r });
                }
                Err(e) => {
                    eprintln!("bench: round {round} debezium FAILED: {e:#}");
                    dbz_error = Some(format!("{e:#}"));
                }
            }
        }
        if let Some(pool) = &pg {
            let suffix = crate::cluster::random_suffix();
            let topic = format!("kbatch-bench-outbox-sustained-{suffix:08x}");
            admin
                .create_topics(&[NewTopic::new(&topic, a.partitions)])
                .await?;
            let table = TableName::new(format!("kbatch_outbox_bench_{suffix:08x}"))?;
            let store = OutboxStore::Postgres(pool.clone());
            store.migrate(&table).await?;
            let producer = Producer::new(producer_config.clone())?;
            let s = sustained::run(
                pool,
                &table,
                &topic,
                producer.clone(),
                BATCHES[0],
                a.rate,
                a.seconds,
                a.writers,
                &payload,
            )
            .await;
            producer.close().await;
            drop_table(&store, &table).await;
            admin.delete_topics(&[&topic]).await?;
            let s = s?;
            let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
            eprintln!(
                "bench: round {round} sustained: offered {:.0}/s, enqueued {:.0}/s, {} of {} delivered; lag p50 {} ms, p99 {} ms, max {} ms",
                s.offered_per_s,
                s.enqueued_per_s,
                s.delivered,
                s.enqueued,
                ms(s.p50_ms),
                ms(s.p99_ms),
                ms(s.max_ms)
            );
            sust.push(Round { round, measured: s });
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);

    let report = Report::new(
        &a,
        &runs,
        &dbz,
        &sust,
        dbz_error.as_deref(),
        debezium_script.is_some(),
    );
    report.print(&a);
    if a.json {
        let out = serde_json::json!({
            "config": {
                "rounds": a.rounds, "entries": a.entries, "size": a.size, "keys": a.keys,
                "partitions": a.partitions, "stores": a.stores, "batches": BATCHES,
                "rate": a.rate, "seconds": a.seconds, "writers": a.writers,
                "debezium": debezium_script.is_some(),
            },
            "runs": runs,
            "debezium": dbz,
            "debezium_error": dbz_error,
            "sustained": sust,
            "summaries": report.summaries,
            "targets": report.targets,
        });
        #[allow(clippy::print_stdout, reason = "the report is this command's output")]
        {
            println!("{out}");
        }
    }
    Ok(())
}

/// Drops a bench table (and its wake-up function on PostgreSQL); a failure only leaves a
/// table behind in a scratch database.
async fn drop_table(store: &OutboxStore, table: &TableName) {
    let drop = format!("DROP TABLE IF EXISTS {table}");
    let _ = match store {
        OutboxStore::Postgres(p) => {
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(p).await;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP FUNCTION IF EXISTS {table}_notify()"
            )))
            .execute(p)
            .await
            .map(|_| ())
        }
        OutboxStore::MySql(p) => sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(p)
            .await
            .map(|_| ()),
        OutboxStore::Sqlite(p) => sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(p)
            .await
            .map(|_| ()),
        _ => Ok(()),
    };
}

#[derive(serde::Serialize)]
struct Summary {
    row: String,
    msg_per_s: Option<Spread>,
    /// Entries not delivered after the run (pending or dead), over all rounds.
    lost: u64,
}

struct Report {
    summaries: Vec<Summary>,
    lag: Option<(Option<Spread>, Option<Spread>, Option<Spread>)>,
    targets: Vec<Target>,
}

impl Report {
    fn new(
        a: &Args,
        runs: &[Run],
        dbz: &[Round<DebeziumRun>],
        sust: &[Round<Sustained>],
        dbz_error: Option<&str>,
        dbz_on: bool,
    ) -> Self {
        let mut summaries = Vec::new();
        for store in &a.stores {
            for (batch, in_flight) in BATCHES
                .into_iter()
                .flat_map(|b| in_flights(store, b).into_iter().map(move |f| (b, f)))
            {
                let of: Vec<&Run> = runs
                    .iter()
                    .filter(|r| &r.store == store && r.batch == batch && r.in_flight == in_flight)
                    .collect();
                let labelled = if in_flight == in_flights(store, batch)[0] {
                    String::new()
                } else {
                    format!(", {in_flight} in flight")
                };
                summaries.push(Summary {
                    row: format!("{store} batch {batch}{labelled}"),
                    msg_per_s: Spread::of(
                        &of.iter().map(|r| r.drained.msg_per_s).collect::<Vec<_>>(),
                    ),
                    lost: of
                        .iter()
                        .map(|r| r.drained.entries.saturating_sub(r.drained.delivered))
                        .sum(),
                });
            }
        }
        if dbz_on {
            summaries.push(Summary {
                row: format!("debezium (postgres, engine batch {})", BATCHES[0]),
                msg_per_s: Spread::of(
                    &dbz.iter().map(|r| r.measured.msg_per_s).collect::<Vec<_>>(),
                ),
                lost: dbz
                    .iter()
                    .map(|r| r.measured.entries.saturating_sub(r.measured.delivered))
                    .sum(),
            });
        }
        let lag = (!sust.is_empty()).then(|| {
            let v = |f: fn(&Sustained) -> Option<f64>| {
                Spread::of(
                    &sust
                        .iter()
                        .filter_map(|r| f(&r.measured))
                        .collect::<Vec<_>>(),
                )
            };
            (v(|s| s.p50_ms), v(|s| s.p99_ms), v(|s| s.max_ms))
        });
        let pg1000: Vec<(u32, f64)> = runs
            .iter()
            .filter(|r| {
                r.store == "postgres"
                    && r.batch == BATCHES[0]
                    && r.in_flight == in_flights("postgres", BATCHES[0])[0]
            })
            .map(|r| (r.round, r.drained.msg_per_s))
            .collect();
        let mut targets = Vec::new();
        let values: Vec<f64> = pg1000.iter().map(|(_, v)| *v).collect();
        targets.push(
            Target::judge(
                "PostgreSQL, batch 1,000: ≥ 50,000 msg/s".to_owned(),
                values,
                |m| m >= 50_000.0,
            )
            .unless_evaluated(|| "postgres not measured (--stores)".to_owned()),
        );
        let ratios: Vec<f64> = pg1000
            .iter()
            .filter_map(|(round, ours)| {
                let theirs = dbz.iter().find(|d| d.round == *round)?.measured.msg_per_s;
                Some(ours / theirs.max(1e-9))
            })
            .collect();
        targets.push(
            Target::judge(
                "PostgreSQL, batch 1,000: ahead of Debezium (ratio > 1)".to_owned(),
                ratios,
                |m| m > 1.0,
            )
            .unless_evaluated(|| match (dbz_on, dbz_error) {
                (false, _) => "Debezium not run (--no-debezium or no postgres)".to_owned(),
                (true, Some(e)) => format!("Debezium failed: {e}"),
                (true, None) => "no round with both rows".to_owned(),
            }),
        );
        Self {
            summaries,
            lag,
            targets,
        }
    }

    fn print(&self, a: &Args) {
        eprintln!(
            "outbox benchmark: {} round(s); {} pending entries per drain, {}-byte payloads, {} keys, {} partitions; \
             relay = kbatch Relay + KafkaDeliverer, Relay defaults (2 batches in flight; rows marked '1 in flight' go one batch at a time; SQLite always does), Producer defaults (acks=all, idempotent, linger 5 ms); \
             msg/s from the first claim to the last batch's outcomes committed; \
             debezium = 3.6.1.Final embedded, pgoutput + outbox event router, KafkaProducer acks=all linger 5 ms, \
             msg/s from the first record seen to the last ack",
            a.rounds, a.entries, a.size, a.keys, a.partitions
        );
        eprintln!(
            "  {:<48} {:>30} {:>6}",
            "row", "msg/s min/median/max", "lost"
        );
        let f = |s: &Option<Spread>, p: usize| {
            s.map_or_else(
                || "-".to_owned(),
                |s| format!("{:.p$}/{:.p$}/{:.p$}", s.min, s.median, s.max),
            )
        };
        for s in &self.summaries {
            eprintln!("  {:<48} {:>30} {:>6}", s.row, f(&s.msg_per_s, 0), s.lost);
        }
        if let Some((p50, p99, max)) = &self.lag {
            eprintln!(
                "  sustained (postgres, {} writers at {}/s for {} s, batch {}): lag ms p50 {}, p99 {}, max {}",
                a.writers,
                a.rate,
                a.seconds,
                BATCHES[0],
                f(p50, 0),
                f(p99, 0),
                f(max, 0)
            );
        }
        Target::print_all(&self.targets);
        if a.rounds < 3 {
            eprintln!("  NOTE: {} round(s) only: no meaningful spread", a.rounds);
        }
    }
}
