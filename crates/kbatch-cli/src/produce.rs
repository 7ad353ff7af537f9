//! `kbatch produce`: stdin lines or generated records into a topic, through kbatch's own
//! batching producer.
//!
//! ```text
//!  stdin ─► reader thread ─► batches of records (bounded channel) ──┐
//!  --generate N ────────────────────────────────────────────────────┴─► Producer::send
//!                            (waits while the producer holds its pending-records or bytes bound)
//!                                                                          │ DeliveryFuture
//!                                                                          ▼
//!  in-flight window, in send order, at most the pending-records bound: resolved futures are
//!  settled as sending goes on; when the window is full, the oldest is awaited
//! ```
//!
//! With `--packed N`, generated records are events packed N to a record, in the packed
//! microbatch envelope format (`kbatch_core::envelope`, the `kbatch-envelope` header), each
//! event keyed as a generated record would be; the envelope record itself has no key.
//!
//! Records are fired without waiting for their acknowledgement: no round trip per record.
//! A record the producer refuses (too large, say) fails alone and the others are still sent;
//! only a closed producer stops the run. The summary counts every record; any failure makes
//! the command exit non-zero with the first error, which names the record.

use std::collections::VecDeque;
use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args as ClapArgs;
use kbatch_client::Compression;
use kbatch_core::envelope::{EnvelopeWriter, envelope_header};
use kbatch_core::{Classify, Record, Topic};
use kbatch_producer::{Delivered, DeliveryFuture, ProduceError, Producer, ProducerConfig};

use crate::cluster::Target;

/// Stdin lines handed from the reader thread to the sender at once, at most.
const STDIN_BATCH: usize = 1024;

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
    /// Pack the generated records N to a Kafka record, as events of a packed envelope
    /// (`--generate` then counts events; the last envelope may hold fewer).
    #[arg(long, value_name = "N", requires = "generate", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    packed: Option<u32>,
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

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let cluster = a.target.connect()?;
    cluster.ensure_topic(&a.topic, a.partitions).await?;
    let mut config = ProducerConfig::new(cluster.client()).with_compression(a.compression);
    config.kafka.linger = Duration::from_millis(a.linger_ms);
    let producer = Producer::new(config)?;
    let started = Instant::now();
    let mut sender = Sender::new(producer.clone());
    let topic: Topic = a.topic.as_str().into();
    let read = match a.generate {
        Some(count) => {
            let shape = Generated {
                count,
                size: a.size,
                keys: a.keys,
            };
            match a.packed {
                Some(per) => generate_packed(&mut sender, topic, &shape, per).await,
                None => generate(&mut sender, topic, &shape).await,
            }
            Ok(())
        }
        None => from_stdin(&mut sender, topic, a.key_separator).await,
    };
    let (sent, tally) = sender.settle_all().await;
    let secs = started.elapsed().as_secs_f64();
    producer.close().await;
    eprintln!(
        "produced {} of {sent} records to {} in {secs:.2}s ({:.0} records/s), failed {}",
        tally.ok,
        cluster.bootstrap,
        tally.ok as f64 / secs.max(1e-9),
        tally.failed
    );
    read?;
    if let Some(e) = tally.first_error {
        // The error names the record, the cause and its class.
        anyhow::bail!("{} records failed; first error: {e}", tally.failed);
    }
    Ok(())
}

/// What `--generate` makes: `count` records of `size` bytes, keyed `key-{i % keys}` (no key
/// when `keys` is 0).
struct Generated {
    count: u64,
    size: usize,
    keys: u64,
}

impl Generated {
    /// Up to this many keys are made once and shared; more are formatted per record.
    const SHARED_KEYS: u64 = 1 << 16;

    fn shared_keys(&self) -> Vec<Bytes> {
        (0..self.keys.min(self.count))
            .take_while(|_| self.keys <= Self::SHARED_KEYS)
            .map(|k| Bytes::from(format!("key-{k}")))
            .collect()
    }

    /// The key of record `i`.
    fn key(&self, shared: &[Bytes], i: u64) -> Option<Bytes> {
        if self.keys == 0 {
            return None;
        }
        let k = i % self.keys;
        Some(match shared.get(k as usize) {
            Some(key) => key.clone(),
            None => Bytes::from(format!("key-{k}")),
        })
    }
}

async fn generate(sender: &mut Sender, topic: Topic, g: &Generated) {
    let value = Bytes::from(vec![b'x'; g.size]);
    let shared = g.shared_keys();
    for i in 0..g.count {
        let mut r = Record::new(topic.clone(), value.clone());
        r.key = g.key(&shared, i);
        if !sender.send(r).await {
            return;
        }
    }
}

/// The generated records as events, `per` to an envelope record.
async fn generate_packed(sender: &mut Sender, topic: Topic, g: &Generated, per: u32) {
    let value = vec![b'x'; g.size];
    let shared = g.shared_keys();
    let mut i = 0;
    while i < g.count {
        let mut w = EnvelopeWriter::with_capacity(per as usize * (g.size + 16));
        for _ in 0..per.min(u32::try_from(g.count - i).unwrap_or(u32::MAX)) {
            w.push(g.key(&shared, i).as_deref(), Some(&value), &[], None);
            i += 1;
        }
        let mut r = Record::new(topic.clone(), w.finish());
        r.headers.push(envelope_header());
        if !sender.send(r).await {
            return;
        }
    }
}

/// Every stdin line, split at the first `separator` into key and value when it has one.
async fn from_stdin(
    sender: &mut Sender,
    topic: Topic,
    separator: Option<String>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    // A plain thread, not spawn_blocking: a read blocked on a terminal must not keep the
    // runtime from shutting down when the sender stops early.
    std::thread::Builder::new()
        .name("kbatch-stdin".into())
        .spawn(move || read_lines(std::io::stdin(), &topic, separator.as_deref(), &tx))
        .context("cannot start the stdin reader thread")?;
    while let Some(batch) = rx.recv().await {
        for r in batch? {
            if !sender.send(r).await {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Reads `input` line by line into records and hands them over in batches: a batch goes when
/// it is full or when no more input is buffered, so typed lines are sent as they are typed.
fn read_lines(
    input: impl std::io::Read,
    topic: &Topic,
    separator: Option<&str>,
    tx: &tokio::sync::mpsc::Sender<anyhow::Result<Vec<Record>>>,
) {
    let mut input = std::io::BufReader::with_capacity(1 << 16, input);
    let mut batch = Vec::with_capacity(STDIN_BATCH);
    let mut line = String::new();
    for number in 1u64.. {
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {
                // As `BufRead::lines`: without the "\n" or "\r\n".
                if line.ends_with('\n') {
                    line.pop();
                    if line.ends_with('\r') {
                        line.pop();
                    }
                }
                batch.push(line_record(topic, &line, separator));
            }
            Err(e) => {
                let _ = tx.blocking_send(Ok(std::mem::take(&mut batch)));
                let e = anyhow::Error::new(e).context(format!("reading stdin line {number}"));
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
        if batch.len() >= STDIN_BATCH || input.buffer().is_empty() {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(STDIN_BATCH));
            if tx.blocking_send(Ok(full)).is_err() {
                return; // The sender stopped.
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(Ok(batch));
    }
}

fn line_record(topic: &Topic, line: &str, separator: Option<&str>) -> Record {
    match separator.and_then(|s| line.split_once(s)) {
        Some((k, v)) => Record::new(topic.clone(), v.to_owned()).with_key(k.to_owned()),
        None => Record::new(topic.clone(), line.to_owned()),
    }
}

/// Outcomes so far; the first error is kept for the report.
struct Tally {
    ok: u64,
    failed: u64,
    first_error: Option<ProduceError>,
    delivered: metrics::Counter,
}

impl Tally {
    fn new() -> Self {
        Self {
            ok: 0,
            failed: 0,
            first_error: None,
            delivered: metrics::counter!("kbatch_cli_records_produced_total", "result" => "delivered"),
        }
    }

    fn record(&mut self, r: Result<Delivered, ProduceError>) {
        match r {
            Ok(_) => {
                self.ok += 1;
                self.delivered.increment(1);
            }
            Err(e) => {
                self.failed += 1;
                metrics::counter!("kbatch_cli_records_produced_total", "result" => e.class().as_str())
                    .increment(1);
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// Fires records and settles their futures: no round trip per record, and no more futures
/// held than the producer's own pending-records bound.
struct Sender {
    producer: Producer,
    /// Futures in send order.
    in_flight: VecDeque<DeliveryFuture>,
    window: usize,
    sent: u64,
    tally: Tally,
}

impl Sender {
    fn new(producer: Producer) -> Self {
        let window = producer.config().max_pending_records;
        Self {
            producer,
            in_flight: VecDeque::with_capacity(window.min(1 << 20) + 1),
            window,
            sent: 0,
            tally: Tally::new(),
        }
    }

    /// Sends one record (waiting while the producer is full). Returns false when the producer
    /// takes no more records; a record refused on its own counts as failed, and sending goes on.
    async fn send(&mut self, r: Record) -> bool {
        self.sent += 1;
        match self.producer.send(r).await {
            Ok(f) => {
                self.in_flight.push_back(f);
                self.settle_ready();
                while self.in_flight.len() > self.window {
                    if let Some(oldest) = self.in_flight.pop_front() {
                        self.tally.record(oldest.await);
                    }
                }
                true
            }
            Err(e) => {
                let fatal = e.is_fatal();
                self.tally.record(Err(e));
                !fatal
            }
        }
    }

    /// Settles the futures at the front that already resolved, without waiting.
    fn settle_ready(&mut self) {
        while let Some(oldest) = self.in_flight.front_mut() {
            match oldest.try_result() {
                Some(r) => {
                    self.in_flight.pop_front();
                    self.tally.record(r);
                }
                None => break,
            }
        }
    }

    /// Awaits every future still in flight; returns how many records were sent and the tally.
    async fn settle_all(mut self) -> (u64, Tally) {
        while let Some(f) = self.in_flight.pop_front() {
            self.tally.record(f.await);
        }
        (self.sent, self.tally)
    }
}
