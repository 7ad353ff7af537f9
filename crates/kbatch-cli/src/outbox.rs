//! `kbatch outbox migrate|status|relay|redrive|purge`: the transactional outbox from the command line.
//!
//! ```text
//!  --database-url (postgres://, mysql://, mariadb://, sqlite:, or a SQLite file; default
//!  kbatch-outbox.db) ─► OutboxStore ─► migrate: CREATE TABLE IF NOT EXISTS kbatch_outbox_…
//!                                   ─► status:  pending / delivered / dead, oldest pending age
//!                                   ─► relay:   Relay + Kafka / HTTP deliverers until Ctrl-C (or idle)
//!                                   ─► redrive: dead → pending;  purge: old delivered rows
//! ```

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args as ClapArgs, Subcommand};
use kbatch_core::Timestamp;
use kbatch_outbox::{
    HttpConfig, HttpDeliverer, KafkaDeliverer, OutboxStore, Relay, RelayConfig, Routed, TableName,
};
use kbatch_producer::{Producer, ProducerConfig};
use tokio_util::sync::CancellationToken;

use crate::cluster::Target;

/// `kbatch outbox` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum Outbox {
    /// Create the outbox table if missing (idempotent).
    Migrate(Db),
    /// Print entries by state and the age of the oldest pending one, as JSON.
    Status(Db),
    /// Deliver pending entries (Kafka topics, HTTP endpoints) until Ctrl-C (or, with --until-idle, until none is due).
    Relay(RelayArgs),
    /// Move every dead entry back to pending, due now, with its attempts reset.
    Redrive(Db),
    /// Delete delivered entries older than the retention (pending and dead ones stay).
    Purge(PurgeArgs),
}

/// Options of `kbatch outbox purge`.
#[derive(ClapArgs, Debug)]
pub(crate) struct PurgeArgs {
    #[command(flatten)]
    db: Db,
    /// Keep delivered entries this many seconds after delivery.
    #[arg(long, default_value_t = 7 * 86_400)]
    retention_secs: u64,
}

/// Which database and table.
#[derive(ClapArgs, Debug)]
pub(crate) struct Db {
    /// postgres://…, mysql://… / mariadb://…, sqlite:…, or a SQLite file path.
    #[arg(
        long,
        env = "KBATCH_OUTBOX_DATABASE_URL",
        default_value = "kbatch-outbox.db"
    )]
    database_url: String,
    /// The outbox table; must start with kbatch_outbox.
    #[arg(long, default_value = "kbatch_outbox_entries")]
    table: String,
}

impl Db {
    async fn open(&self) -> anyhow::Result<(OutboxStore, TableName)> {
        let table = TableName::new(&self.table)?;
        let store = OutboxStore::connect(&self.database_url)
            .await
            .with_context(|| {
                format!(
                    "cannot open the outbox database {}",
                    redact(&self.database_url)
                )
            })?;
        Ok((store, table))
    }
}

/// Options of `kbatch outbox relay`.
#[derive(ClapArgs, Debug)]
pub(crate) struct RelayArgs {
    #[command(flatten)]
    db: Db,
    #[command(flatten)]
    target: Target,
    /// Entries claimed per batch (1..=5000).
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Batches claimed and in delivery at once (1..=16; SQLite always goes one at a time).
    #[arg(long, default_value_t = RelayConfig::default().batches_in_flight)]
    batches_in_flight: usize,
    /// Delivery attempts before an entry is dead.
    #[arg(long, default_value_t = 10)]
    max_attempts: u32,
    /// Stop once a batch finds nothing due, instead of waiting for more.
    #[arg(long)]
    until_idle: bool,
}

pub(crate) async fn run(cmd: Outbox) -> anyhow::Result<()> {
    match cmd {
        Outbox::Migrate(db) => {
            let (store, table) = db.open().await?;
            store.migrate(&table).await?;
            eprintln!("outbox table {table} ready");
            Ok(())
        }
        Outbox::Status(db) => {
            let (store, table) = db.open().await?;
            let s = store.status(&table).await?;
            let lag_ms = s
                .oldest_pending
                .map(|t| (Timestamp::now().millis() - t.millis()).max(0));
            let json = serde_json::json!({
                "table": table.as_str(),
                "pending": s.pending,
                "delivered": s.delivered,
                "dead": s.dead,
                "oldest_pending_age_ms": lag_ms,
            });
            write_line(&json.to_string())
        }
        Outbox::Relay(a) => relay(a).await,
        Outbox::Redrive(db) => {
            let (store, table) = db.open().await?;
            let n = store.redrive(&table, Timestamp::now()).await?;
            write_line(&serde_json::json!({ "redriven": n }).to_string())
        }
        Outbox::Purge(a) => {
            let (store, table) = a.db.open().await?;
            let keep_ms = i64::try_from(a.retention_secs.saturating_mul(1_000)).unwrap_or(i64::MAX);
            let before = Timestamp(Timestamp::now().millis().saturating_sub(keep_ms));
            let n = store.purge_delivered(&table, before).await?;
            write_line(&serde_json::json!({ "purged": n }).to_string())
        }
    }
}

async fn relay(a: RelayArgs) -> anyhow::Result<()> {
    let (store, table) = a.db.open().await?;
    let cluster = a.target.connect()?;
    let producer = Producer::new(ProducerConfig::new(cluster.client()))?;
    let config = RelayConfig::default()
        .with_table(table)
        .with_batch_size(a.batch_size)
        .with_batches_in_flight(a.batches_in_flight)
        .with_retry(kbatch_outbox::RetryPolicy {
            max_attempts: a.max_attempts,
            ..Default::default()
        });
    // Kafka entries through the producer, HTTP entries POSTed: one relay for a mixed table.
    let deliverer = Routed::new(
        KafkaDeliverer::new(producer.clone()),
        HttpDeliverer::new(HttpConfig::default())?,
    );
    let relay = Relay::new(store, deliverer, config)?;
    let report = if a.until_idle {
        relay.drain().await?
    } else {
        let cancel = CancellationToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            on_signal.cancel();
        });
        relay.run(cancel).await?
    };
    producer.flush(Duration::from_secs(30)).await?;
    let json = serde_json::json!({
        "claimed": report.claimed,
        "delivered": report.delivered,
        "retried": report.retried,
        "dead": report.dead,
    });
    write_line(&json.to_string())
}

fn write_line(s: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")?;
    Ok(())
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
