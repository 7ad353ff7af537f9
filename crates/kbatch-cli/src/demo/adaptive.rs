//! The demo's second act: adaptive microbatching, with the level following the load.
//!
//! ```text
//!  trickle ─► burst ─► trickle ──► AdaptiveProducer (packed) ──► topic ──► ParallelConsumer (KEY)
//!   offered rate changes            level, N, T printed           envelopes unpacked into events,
//!                                   as they move                  each event counted once, in key order
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kbatch_adaptive::{AdaptiveConfig, AdaptiveProducer, ControllerConfig, LevelId, Shape};
use kbatch_client::{AutoOffsetReset, ConsumerConfig};
use kbatch_consumer::{ParallelConfig, ParallelConsumer, ProcessingOrder, ShutdownMode};
use kbatch_core::Record;
use kbatch_producer::ProducerConfig;
use serde::Serialize;

use crate::cluster::Cluster;

/// The load: (name, events/s, seconds).
const PHASES: [(&str, f64, f64); 3] = [
    ("trickle", 100.0, 2.0),
    ("burst", 30_000.0, 3.0),
    ("trickle", 100.0, 4.0),
];

/// What the second act measured.
#[derive(Debug, Serialize)]
pub(crate) struct AdaptiveSummary {
    pub(crate) topic: String,
    pub(crate) events: u64,
    pub(crate) kafka_records: u64,
    /// (seconds since start, level, N, T ms) at every level change seen.
    pub(crate) levels: Vec<(f64, u8, u32, f64)>,
    pub(crate) consumed: u64,
    pub(crate) lost: u64,
    pub(crate) duplicates: u64,
    pub(crate) reordered: u64,
    pub(crate) budget_overruns: u64,
}

impl AdaptiveSummary {
    pub(crate) fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.reordered == 0
    }
}

#[derive(Default)]
struct Ledger {
    seen: Vec<bool>,
    last_per_key: HashMap<u64, u64>,
    duplicates: u64,
    reordered: u64,
    count: u64,
}

pub(crate) async fn run(
    cluster: &Cluster,
    partitions: i32,
    keys: u64,
    quiet: bool,
) -> anyhow::Result<AdaptiveSummary> {
    let topic = format!(
        "kbatch-demo-adaptive-{:08x}",
        crate::cluster::random_suffix()
    );
    cluster.ensure_topic(&topic, partitions).await?;
    let mut config = AdaptiveConfig::new(ProducerConfig::new(cluster.client()))
        .with_shape(Shape::Packed)
        .with_profile("kbatch-demo")
        .with_initial_level(LevelId(1))
        .with_epoch(Duration::from_millis(250));
    // A demo-length rate window (3 s instead of 10 s), so the level comes back down in time.
    config.controller = ControllerConfig {
        window: Duration::from_secs(3),
        min_dwell: Duration::from_millis(500),
        ..ControllerConfig::default()
    };
    let producer = AdaptiveProducer::start(config)?;
    let say = |line: String| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    say(format!(
        "demo: adaptive producer (packed) → {topic}; the level follows the offered load"
    ));

    let start = Instant::now();
    let mut levels = Vec::new();
    let mut last_seen = None;
    let mut futures = Vec::new();
    let mut seq = 0u64;
    for (name, rate, secs) in PHASES {
        say(format!("  {name:>7}: {rate:>6.0} events/s for {secs} s"));
        let phase = Instant::now();
        let mut sent = 0u64;
        while phase.elapsed().as_secs_f64() < secs {
            let owed = (phase.elapsed().as_secs_f64() * rate) as u64;
            while sent < owed {
                let key = seq % keys;
                let r = Record::new(topic.as_str(), format!("{key}:{seq}"))
                    .with_key(format!("user-{key}"));
                futures.push(producer.send(r).await?);
                sent += 1;
                seq += 1;
            }
            let now = (producer.level(), producer.settings());
            // Level changes only: settings also change within a level when it explores.
            if last_seen.is_none_or(|(l, _)| l != now.0) {
                last_seen = Some(now);
                let t = start.elapsed().as_secs_f64();
                levels.push((
                    t,
                    now.0.0,
                    now.1.max_events,
                    now.1.linger.as_secs_f64() * 1e3,
                ));
                say(format!(
                    "           t={t:>4.1} s  level {}  {}",
                    now.0, now.1
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    for f in futures {
        f.await.context("an adaptive event was not delivered")?;
    }
    let closed = producer.close().await;
    let events = seq;

    // Read it back with the parallel consumer: envelopes arrive as events.
    let ledger = Arc::new(Mutex::new(Ledger {
        seen: vec![false; events as usize],
        ..Ledger::default()
    }));
    let kafka = ConsumerConfig::new(cluster.client())
        .with_group(format!(
            "kbatch-demo-adaptive-{:08x}",
            crate::cluster::random_suffix()
        ))
        .with_offset_reset(AutoOffsetReset::Earliest);
    let cfg = ParallelConfig::new(kafka, [topic.as_str()])
        .with_ordering(ProcessingOrder::Key)
        .with_concurrency(64);
    let running = {
        let ledger = Arc::clone(&ledger);
        ParallelConsumer::builder(cfg)
            .handler(move |r: kbatch_core::ConsumedRecord| {
                let ledger = Arc::clone(&ledger);
                async move {
                    let v = r.value.as_deref().unwrap_or_default();
                    let text = std::str::from_utf8(v).unwrap_or_default();
                    if let Some((k, s)) = text.split_once(':')
                        && let (Ok(k), Ok(s)) = (k.parse::<u64>(), s.parse::<u64>())
                    {
                        let mut l = ledger
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        l.count += 1;
                        match l.seen.get_mut(s as usize) {
                            Some(seen) if *seen => l.duplicates += 1,
                            Some(seen) => *seen = true,
                            None => {}
                        }
                        if let Some(prev) = l.last_per_key.insert(k, s)
                            && prev > s
                        {
                            l.reordered += 1;
                        }
                    }
                    Ok(())
                }
            })
            .start()?
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let done = ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .count
            >= events;
        if done || running.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown(ShutdownMode::Drain).await?;
    let l = ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(AdaptiveSummary {
        topic,
        events,
        kafka_records: closed.stats.records,
        levels,
        consumed: l.count,
        lost: l.seen.iter().filter(|s| !**s).count() as u64,
        duplicates: l.duplicates,
        reordered: l.reordered,
        budget_overruns: closed.stats.budget_overruns,
    })
}
