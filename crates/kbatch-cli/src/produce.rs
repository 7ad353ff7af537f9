//! `kbatch produce`: stdin lines or generated records into a topic.

use std::io::BufRead;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args as ClapArgs;
use kbatch_client::{
    Compression, Delivered, DeliveryError, DeliverySink, KafkaProducer, KafkaProducerConfig,
};
use kbatch_core::{Classify, Record};

use crate::cluster::Target;

/// Options of `kbatch produce`.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    target: Target,
    /// Topic to produce to (created if missing).
    #[arg(long)]
    topic: String,
    /// Partitions of the topic if it has to be created.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    partitions: i32,
    /// Generate this many records instead of reading stdin.
    #[arg(long)]
    generate: Option<u64>,
    /// Value size in bytes of generated records.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Distinct keys of generated records (0: no key).
    #[arg(long, default_value_t = 1024)]
    keys: u64,
    /// Split each stdin line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// Compression codec: none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    compression: Compression,
    /// Linger in milliseconds.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
}

/// Counts outcomes and keeps the first error for the report.
#[derive(Default)]
struct Outcome {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<DeliveryError>>,
}

impl DeliverySink for Outcome {
    fn on_delivery(&self, _token: usize, r: Result<Delivered, DeliveryError>) {
        match r {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("kbatch_cli_records_produced_total", "result" => "delivered")
                    .increment(1);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("kbatch_cli_records_produced_total", "result" => e.class().as_str()).increment(1);
                self.first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
            }
        }
    }
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let cluster = a.target.connect()?;
    cluster.ensure_topic(&a.topic, a.partitions).await?;
    let config = KafkaProducerConfig::new(cluster.client())
        .with_compression(a.compression)
        .with_linger(Duration::from_millis(a.linger_ms));
    let producer = KafkaProducer::new(&config, Outcome::default())?;
    let started = Instant::now();
    let sent =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, KafkaProducer<Outcome>)> {
            let mut n = 0u64;
            match a.generate {
                Some(count) => {
                    let value = Bytes::from(vec![b'x'; a.size]);
                    for i in 0..count {
                        let mut r = Record::new(a.topic.as_str(), value.clone());
                        if a.keys > 0 {
                            r = r.with_key(format!("key-{}", i % a.keys));
                        }
                        send_blocking(&producer, &r)?;
                        n += 1;
                    }
                }
                None => {
                    for line in std::io::stdin().lock().lines() {
                        let line = line.context("reading stdin")?;
                        let r = match a.key_separator.as_deref().and_then(|s| line.split_once(s)) {
                            Some((k, v)) => {
                                Record::new(a.topic.as_str(), v.to_owned()).with_key(k.to_owned())
                            }
                            None => Record::new(a.topic.as_str(), line),
                        };
                        send_blocking(&producer, &r)?;
                        n += 1;
                    }
                }
            }
            producer.flush(Duration::from_secs(300))?;
            Ok((n, producer))
        })
        .await??;
    let (n, producer) = sent;
    let secs = started.elapsed().as_secs_f64();
    let o = producer.sink();
    let (ok, failed) = (
        o.ok.load(Ordering::Relaxed),
        o.failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "produced {ok} of {n} records to {} in {secs:.2}s ({:.0} records/s), failed {failed}",
        cluster.bootstrap,
        ok as f64 / secs.max(1e-9)
    );
    if let Some(e) = o
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        anyhow::bail!("{failed} records failed; first error: {e} ({})", e.class());
    }
    Ok(())
}

/// Sends one record, waiting while the client queue is full (back-pressure, not an error).
fn send_blocking<S: DeliverySink>(p: &KafkaProducer<S>, r: &Record) -> anyhow::Result<()> {
    loop {
        match p.send(r, 0) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_queue_full() => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => anyhow::bail!(
                "cannot enqueue record for topic {:?}, key {}: {e}",
                r.topic(),
                r.key_for_display()
            ),
        }
    }
}
