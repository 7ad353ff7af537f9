//! Running the demo: produce and consume concurrently, then summarise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kbatch_client::{AutoOffsetReset, ConsumerConfig};
use kbatch_consumer::{ParallelConfig, ParallelConsumer, ProcessingOrder, ShutdownMode};
use kbatch_core::{Classify, Record};
use kbatch_producer::{DeliveryFuture, ProduceError, Producer, ProducerConfig};
use serde::Serialize;

use super::ledger::{self, Ledger, Verdict};
use super::{Args, DEV_BROKER_BYTES_PER_PARTITION};
use crate::stats::{Percentiles, latency_histogram};

/// What the producing side measured.
pub(super) struct Produced {
    pub(super) seconds: f64,
    pub(super) delivered: u64,
    pub(super) failed: u64,
    pub(super) first_error: Option<ProduceError>,
    pub(super) latency: Histogram<u64>,
}

/// The demo's result.
#[derive(Debug, Serialize)]
struct Summary {
    brokers: String,
    embedded_broker: bool,
    topic: String,
    partitions: i32,
    records: u64,
    value_bytes: u64,
    /// The records went through the HTTP ingest gateway (`--via-gateway`).
    via_gateway: bool,
    /// From the consumer's start until it was assigned its partitions (joined its group) and
    /// had nothing to read; the first record is sent after that.
    consumer_ready_seconds: f64,
    /// First send to the last acknowledgement.
    produce_seconds: f64,
    produce_records_per_s: f64,
    consume_seconds: f64,
    consume_records_per_s: f64,
    delivered: u64,
    failed: u64,
    /// Send to acknowledgement by the broker.
    delivery_latency: Percentiles,
    /// Send to the consumer's handler, the consumer being assigned before the first send.
    end_to_end_latency: Percentiles,
    verdict: Verdict,
    /// The second act: adaptive microbatching under a changing load (absent with
    /// `--no-adaptive`).
    adaptive: Option<super::adaptive::AdaptiveSummary>,
    /// The third act: the transactional outbox on SQLite (absent with `--no-outbox`).
    outbox: Option<super::outbox::OutboxSummary>,
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let cluster = a.target.connect()?;
    let embedded = cluster.dev.is_some();
    if embedded {
        let per_partition = a.records * (a.size + ledger::HEADER as u64) / a.partitions as u64;
        anyhow::ensure!(
            per_partition <= DEV_BROKER_BYTES_PER_PARTITION,
            "--records {} × --size {} over --partitions {} is {per_partition} bytes per partition; the embedded dev broker keeps only ~{} MiB per partition. Use more partitions, fewer records, or --brokers",
            a.records,
            a.size,
            a.partitions,
            DEV_BROKER_BYTES_PER_PARTITION >> 20
        );
    }
    let topic = a
        .topic
        .clone()
        .unwrap_or_else(|| format!("kbatch-demo-{:08x}", crate::cluster::random_suffix()));
    let partitions = cluster.ensure_topic(&topic, a.partitions).await?;
    eprintln!(
        "demo: {} records of {} bytes → topic {topic} ({partitions} partitions) at {}",
        a.records, a.size, cluster.bootstrap
    );

    let base = Instant::now();
    let producer = Producer::new(ProducerConfig::new(cluster.client()))?;
    let consumer_cfg = ConsumerConfig::new(cluster.client());

    let bars = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos}/{len} {per_sec} {elapsed}")
            .context("progress template")?
            .progress_chars("=> ");
    let pbar = bars.add(
        ProgressBar::new(a.records)
            .with_style(style.clone())
            .with_prefix("delivered"),
    );
    let cbar = bars.add(
        ProgressBar::new(a.records)
            .with_style(style)
            .with_prefix("consumed"),
    );

    // The consumer joins its group and is assigned its partitions before the first record is
    // sent: end-to-end latency is then the pipeline's, not the time the group join took.
    let consumed = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let consume = tokio::spawn(consume_all(
        consumer_cfg,
        topic.clone(),
        a.clone(),
        base,
        consumed.clone(),
        ready_tx,
    ));
    let Ok(consumer_ready) = ready_rx.await else {
        // The consumer stopped before it was ready: its error says why.
        consume.await??;
        anyhow::bail!("the demo consumer stopped before it was assigned its partitions");
    };
    eprintln!("demo: consumer assigned in {consumer_ready:.2} s; producing");
    // Through the gateway, records are counted delivered as its answers come back.
    let via_gateway = Arc::new(AtomicU64::new(0));
    let produce = if a.via_gateway {
        tokio::spawn(super::gateway::produce_all(
            producer.clone(),
            topic.clone(),
            a.clone(),
            base,
            Arc::clone(&via_gateway),
        ))
    } else {
        tokio::spawn(produce_all(
            producer.clone(),
            topic.clone(),
            a.clone(),
            base,
        ))
    };
    let ticker = {
        let (pbar, cbar, consumed, producer, via_gateway) = (
            pbar.clone(),
            cbar.clone(),
            consumed.clone(),
            producer.clone(),
            Arc::clone(&via_gateway),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                pbar.set_position(
                    producer
                        .counters()
                        .delivered
                        .max(via_gateway.load(Ordering::Relaxed)),
                );
                cbar.set_position(consumed.load(Ordering::Relaxed));
            }
        })
    };
    let mut produced = produce.await??;
    pbar.set_position(produced.delivered);
    pbar.finish();
    let (verdict, e2e, consume_secs) = consume.await??;
    ticker.abort();
    cbar.set_position(verdict.received);
    cbar.finish();

    let summary = Summary {
        brokers: cluster.bootstrap.clone(),
        embedded_broker: embedded,
        topic,
        partitions,
        records: a.records,
        value_bytes: a.size,
        via_gateway: a.via_gateway,
        consumer_ready_seconds: consumer_ready,
        produce_seconds: produced.seconds,
        produce_records_per_s: a.records as f64 / produced.seconds,
        consume_seconds: consume_secs,
        consume_records_per_s: verdict.received as f64 / consume_secs,
        delivered: produced.delivered,
        failed: produced.failed,
        delivery_latency: Percentiles::of(&produced.latency),
        end_to_end_latency: Percentiles::of(&e2e),
        verdict,
        adaptive: None,
        outbox: None,
    };
    producer.close().await;
    let mut summary = summary;
    if !a.no_adaptive && produced.first_error.is_none() && summary.verdict.is_clean() {
        summary.adaptive =
            Some(super::adaptive::run(&cluster, a.partitions, a.keys, a.json).await?);
    }
    if !a.no_outbox && produced.first_error.is_none() && summary.verdict.is_clean() {
        summary.outbox = Some(super::outbox::run(&cluster, a.partitions, a.json).await?);
    }
    print_summary(&summary, a.json)?;
    if let Some(e) = produced.first_error.take() {
        anyhow::bail!(
            "{} records failed to deliver; first error: {e} ({})",
            summary.failed,
            e.class()
        );
    }
    anyhow::ensure!(
        summary.verdict.is_clean(),
        "verification failed: {:?}",
        summary.verdict
    );
    if let Some(ad) = &summary.adaptive {
        anyhow::ensure!(ad.is_clean(), "adaptive verification failed: {ad:?}");
    }
    if let Some(ob) = &summary.outbox {
        anyhow::ensure!(ob.is_clean(), "outbox verification failed: {ob:?}");
    }
    Ok(())
}

/// Sends every record through the batching producer (waiting while it is full) and awaits
/// every delivery future, in send order, on a second task: the ack latency of a record is
/// taken when its future resolves.
async fn produce_all(
    p: Producer,
    topic: String,
    a: Args,
    base: Instant,
) -> anyhow::Result<Produced> {
    let topic: kbatch_core::Topic = topic.into();
    let keys: Vec<Bytes> = (0..a.keys)
        .map(|k| Bytes::from(format!("key-{k}")))
        .collect();
    // Bounded hand-off to the awaiting task: back-pressure, not buffering.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, DeliveryFuture)>(65_536);
    let awaiting = tokio::spawn(async move {
        let mut out = Produced {
            seconds: 0.0,
            delivered: 0,
            failed: 0,
            first_error: None,
            latency: latency_histogram(),
        };
        while let Some((sent, f)) = rx.recv().await {
            match f.await {
                Ok(_) => {
                    let lat = (base.elapsed().as_micros() as u64)
                        .saturating_sub(sent)
                        .max(1);
                    out.latency.saturating_record(lat);
                    metrics::histogram!("kbatch_cli_delivery_latency_seconds")
                        .record(lat as f64 / 1e6);
                    out.delivered += 1;
                }
                Err(e) => {
                    out.failed += 1;
                    out.first_error.get_or_insert(e);
                }
            }
        }
        out
    });
    let started = Instant::now();
    let mut value = vec![b'.'; a.size as usize];
    for seq in 0..a.records {
        let sent = base.elapsed().as_micros() as u64;
        ledger::encode(&mut value, seq, sent);
        let r = Record {
            key: Some(keys[(seq % a.keys) as usize].clone()),
            ..Record::new(topic.clone(), Bytes::copy_from_slice(&value))
        };
        let f = p
            .send(r)
            .await
            .with_context(|| format!("cannot enqueue demo record {seq}"))?;
        if tx.send((sent, f)).await.is_err() {
            anyhow::bail!("the delivery-awaiting task stopped early");
        }
    }
    drop(tx);
    let mut out = awaiting.await?;
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// What the consumer's handler saw.
struct Seen {
    ledger: Ledger,
    end_to_end: Histogram<u64>,
    /// When the first and the last record were handled.
    first: Option<Instant>,
    last: Option<Instant>,
}

/// How long the consumer may take to join its group and be assigned its partitions.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the consumer, reports on `ready` (seconds since its start) once it is assigned its
/// partitions and caught up, then reads until all records arrived, or 30 s pass with nothing
/// new; returns the ledger's verdict, end-to-end latencies and the time from the first record
/// handled to the last.
async fn consume_all(
    cfg: ConsumerConfig,
    topic: String,
    a: Args,
    base: Instant,
    progress: Arc<AtomicU64>,
    ready: tokio::sync::oneshot::Sender<f64>,
) -> anyhow::Result<(Verdict, Histogram<u64>, f64)> {
    // The parallel consumer, KEY order, many records in flight: the ledger checks per-key order.
    let state = Arc::new(Mutex::new(Seen {
        ledger: Ledger::new(a.records),
        end_to_end: latency_histogram(),
        first: None,
        last: None,
    }));
    let cfg = ParallelConfig::new(
        cfg.with_group(format!("{topic}-demo"))
            .with_offset_reset(AutoOffsetReset::Earliest),
        [topic.as_str()],
    )
    .with_ordering(ProcessingOrder::Key)
    .with_concurrency(256);
    let running = ParallelConsumer::builder(cfg)
        .handler({
            let (state, progress) = (state.clone(), progress.clone());
            move |r| {
                let (state, progress) = (state.clone(), progress.clone());
                async move {
                    let now = base.elapsed().as_micros() as u64;
                    let v = r.value.as_deref();
                    let mut s = state
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let t = Instant::now();
                    s.first.get_or_insert(t);
                    s.last = Some(t);
                    if let Some((_, sent)) = v.and_then(ledger::decode) {
                        s.end_to_end
                            .saturating_record(now.saturating_sub(sent).max(1));
                    }
                    s.ledger.observe(r.key.as_deref().unwrap_or_default(), v);
                    progress.store(s.ledger.distinct(), Ordering::Relaxed);
                    metrics::counter!("kbatch_cli_records_consumed_total").increment(1);
                    Ok(())
                }
            }
        })
        .build()?
        .start()?;
    // Assigned, and nothing (left) to read: on a new topic, the group join is all it waits for.
    let started = Instant::now();
    if tokio::time::timeout(READY_TIMEOUT, running.until_idle())
        .await
        .is_err()
    {
        running.shutdown(ShutdownMode::Quick).await?;
        anyhow::bail!("the demo consumer was not assigned its partitions within {READY_TIMEOUT:?}");
    }
    if running.is_finished() {
        running.join().await?;
        anyhow::bail!("the demo consumer stopped before it was assigned its partitions");
    }
    let _ = ready.send(started.elapsed().as_secs_f64());
    let mut last = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n = progress.load(Ordering::Relaxed);
        if n >= a.records || running.is_finished() {
            break;
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    running.shutdown(ShutdownMode::Drain).await?;
    let s = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let secs = match (s.first, s.last) {
        (Some(first), Some(last)) => (last - first).as_secs_f64(),
        _ => 0.0,
    };
    Ok((s.ledger.verdict(), s.end_to_end.clone(), secs))
}

#[allow(clippy::print_stdout, reason = "the summary is this command's output")]
fn print_summary(s: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(s)?);
        return Ok(());
    }
    let v = &s.verdict;
    println!("kbatch demo summary");
    println!(
        "  broker        {}{}",
        s.brokers,
        if s.embedded_broker {
            " (embedded in-memory dev broker)"
        } else {
            ""
        }
    );
    println!("  topic         {} ({} partitions)", s.topic, s.partitions);
    println!("  records       {} × {} bytes", s.records, s.value_bytes);
    println!(
        "  consumer      ready in {:.2} s (joined, partitions assigned) before the first send",
        s.consumer_ready_seconds
    );
    println!(
        "  produce       {:.2} s, {:.0} records/s, first send to last ack ({} delivered, {} failed){}",
        s.produce_seconds,
        s.produce_records_per_s,
        s.delivered,
        s.failed,
        if s.via_gateway {
            "; through the HTTP gateway (NDJSON, 8 connections)"
        } else {
            ""
        }
    );
    println!(
        "  consume       {:.2} s, {:.0} records/s, first record handled to last",
        s.consume_seconds, s.consume_records_per_s
    );
    println!(
        "  ack latency   {}  ({})",
        s.delivery_latency,
        if s.via_gateway {
            "record built to the gateway's answer"
        } else {
            "send to broker ack"
        }
    );
    println!(
        "  end-to-end    {}  (send to consumer's handler)",
        s.end_to_end_latency
    );
    println!(
        "  verified      received {} of {}: lost = {}, duplicates = {}, reordered = {}, foreign = {}  [{}]",
        v.received,
        v.expected,
        v.lost,
        v.duplicates,
        v.out_of_order,
        v.foreign,
        if v.is_clean() { "OK" } else { "FAILED" }
    );
    if let Some(ad) = &s.adaptive {
        let path: Vec<String> = ad
            .levels
            .iter()
            .map(|(t, l, _, _)| format!("L{l}@{t:.1}s"))
            .collect();
        println!(
            "  adaptive      trickle → burst → trickle: {} events in {} packed Kafka records ({:.0} events per record), {} budget overruns",
            ad.events,
            ad.kafka_records,
            ad.events as f64 / ad.kafka_records.max(1) as f64,
            ad.budget_overruns
        );
        println!("  levels        {}", path.join(" → "));
        println!(
            "  verified      {} events unpacked by the parallel consumer (KEY order): lost = {}, duplicates = {}, reordered = {}  [{}]",
            ad.consumed,
            ad.lost,
            ad.duplicates,
            ad.reordered,
            if ad.is_clean() { "OK" } else { "FAILED" }
        );
    }
    if let Some(ob) = &s.outbox {
        println!(
            "  outbox        SQLite: {} entries committed, {} rolled back; relayed in {} batches, {:.2} s",
            ob.committed, ob.rolled_back, ob.batches, ob.relay_seconds
        );
        println!(
            "  verified      {} of {} committed entries read back by id: lost = {}, duplicates = {}, rolled back seen = {}  [{}]",
            ob.received,
            ob.committed,
            ob.lost,
            ob.duplicates,
            ob.rolled_back_seen,
            if ob.is_clean() { "OK" } else { "FAILED" }
        );
    }
    Ok(())
}
