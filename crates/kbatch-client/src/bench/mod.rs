//! Raw librdkafka clients that `kbatch bench` measures kbatch against, built from the same
//! [`KafkaProducerConfig`] so every contender runs with identical librdkafka settings, and
//! [`client_settings`], librdkafka's own account of those settings, to prove it.
//! Not a stable API (feature `unstable-bench`).

mod producers;
mod settings;

use std::time::{Duration, Instant};

pub use producers::{base_producer, future_producer, threaded_producer};
pub use settings::{client_settings, ignored_setting, parse_conf_dump};

use crate::config::KafkaProducerConfig;
use crate::error::{Error, Result};

/// One measured run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawRun {
    /// Records acknowledged.
    pub delivered: u64,
    /// Records that failed.
    pub failed: u64,
    /// From the first send to the last delivery report.
    pub seconds: f64,
}

/// The librdkafka properties `config` produces, for handing to another client (the Python
/// peers). Includes credentials: do not log.
pub fn librdkafka_properties(config: &KafkaProducerConfig) -> Vec<(String, String)> {
    config
        .to_rdkafka()
        .config_map()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The version of the librdkafka the Rust contenders are built on, e.g. `2.12.1`.
pub fn librdkafka_version() -> String {
    rdkafka::util::get_rdkafka_version().1
}

/// `BaseConsumer` reading every partition of `topic` from the beginning until `records`
/// records arrived: the ceiling for any consumer over librdkafka. Times from the first record
/// to the last. With `commit_every` (and a group in `config`) it commits its position
/// asynchronously at that interval, as a deployed consumer does.
pub fn base_consumer(
    config: &crate::ConsumerConfig,
    topic: &str,
    records: u64,
    commit_every: Option<Duration>,
) -> Result<RawRun> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::message::Message;
    let c: BaseConsumer = config
        .to_rdkafka()
        .create()
        .map_err(|e| Error::kafka("create BaseConsumer", e))?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| Error::kafka("metadata", e))?;
    let parts = md
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .map_err(|e| Error::kafka("assign", e))?;
    }
    c.assign(&tpl).map_err(|e| Error::kafka("assign", e))?;
    if commit_every.is_some() && config.group_id.is_none() {
        return Err(Error::Invalid {
            what: "base_consumer".into(),
            why: "committing needs a group_id".into(),
        });
    }
    let (mut n, mut bytes, mut start) = (0u64, 0usize, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut next_commit = commit_every.map(|d| Instant::now() + d);
    while n < records && Instant::now() < deadline {
        if let (Some(at), Some(every)) = (next_commit, commit_every)
            && Instant::now() >= at
        {
            let pos = c.position().map_err(|e| Error::kafka("position", e))?;
            if pos.count() > 0 {
                c.commit(&pos, CommitMode::Async)
                    .map_err(|e| Error::kafka("commit", e))?;
            }
            next_commit = Some(at + every);
        }
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.map_err(|e| Error::kafka("poll", e))?;
            start.get_or_insert_with(Instant::now);
            // Touch the payload as a handler would.
            bytes += m.payload().map_or(0, <[u8]>::len);
            n += 1;
        }
    }
    let seconds = start.map_or(f64::NAN, |s| s.elapsed().as_secs_f64());
    std::hint::black_box(bytes);
    Ok(RawRun {
        delivered: n,
        failed: records.saturating_sub(n),
        seconds,
    })
}
