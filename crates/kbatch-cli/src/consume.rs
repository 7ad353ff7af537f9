//! `kbatch consume`: print the records of a topic. A packed envelope (a record with the
//! `kbatch-envelope` header) is printed as its events, one per line, each with its place in
//! the envelope (`OFFSET#INDEX` in text, `envelope_index` / `envelope_count` in JSON); one
//! that does not decode is printed as the record it is, with a warning naming the problem.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, ValueEnum};
use kbatch_client::{
    AutoOffsetReset, ConsumerConfig, GroupProtocol, KafkaConsumer, OffsetCommit, StartOffset,
};
use kbatch_core::envelope::{self, Event};
use kbatch_core::{ConsumedRecord, EnvelopePosition, TopicPartition};

use crate::cluster::Target;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum From {
    Beginning,
    End,
    Committed,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// The value only, one per line.
    Value,
    /// partition, offset (`OFFSET#INDEX` for an event of an envelope), key and value,
    /// tab-separated.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options of `kbatch consume`.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    target: Target,
    /// Topic to read.
    #[arg(long)]
    topic: String,
    /// Consumer group: join it and commit what was printed. Without it, read all partitions
    /// without a group.
    #[arg(long)]
    group: Option<String>,
    /// Where to start (without a group; with a group, where to start lacking a commit).
    #[arg(long, value_enum, default_value_t = From::Beginning)]
    from: From,
    /// Stop after this many records (an envelope is one record, however many events it
    /// prints).
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds without a record.
    #[arg(long)]
    idle_exit: Option<f64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Value)]
    format: Format,
    /// Process records with the parallel consumer (needs --group and --exec or --http).
    #[arg(long, requires = "group")]
    parallel: bool,
    /// Ordering for --parallel.
    #[arg(long, value_enum, default_value_t = OrderArg::Key, requires = "parallel")]
    ordering: OrderArg,
    /// Records in flight at once for --parallel.
    #[arg(long, default_value_t = 64, requires = "parallel")]
    concurrency: usize,
    /// Run `sh -c CMD` per record (value on stdin, KBATCH_TOPIC/PARTITION/OFFSET/KEY set).
    #[arg(
        long,
        value_name = "CMD",
        requires = "parallel",
        conflicts_with = "http"
    )]
    exec: Option<String>,
    /// POST each record's value to this http:// or https:// URL (X-Kafka-Topic, -Partition,
    /// -Offset and -Key headers; a key that is not plain ASCII goes in X-Kafka-Key-Base64).
    #[arg(long, value_name = "URL", requires = "parallel", value_parser = crate::bridge::parse_http_url)]
    http: Option<reqwest::Url>,
    /// Time limit of one --http request: connecting, sending and reading the answer.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 30_000,
        requires = "http",
        value_parser = clap::value_parser!(u64).range(1..=3_600_000)
    )]
    http_timeout_ms: u64,
    /// Write records that fail for good here (with origin headers).
    #[arg(long, value_name = "TOPIC", requires = "parallel")]
    dead_letter: Option<String>,
    /// Attempts before a record is dead-lettered (default: retry retriable failures forever).
    #[arg(long, requires = "parallel")]
    max_attempts: Option<u32>,
    /// Static group membership (`group.instance.id`): a restart with the same id takes its
    /// partitions back at once instead of after the session timeout. One id per running process.
    #[arg(long, value_name = "ID", requires = "group")]
    instance_id: Option<String>,
    /// Consumer group protocol: classic, or consumer (KIP-848, Kafka 4.0+).
    #[arg(long, value_enum, default_value_t = ProtocolArg::Classic, requires = "group")]
    group_protocol: ProtocolArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtocolArg {
    Classic,
    Consumer,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OrderArg {
    Key,
    Partition,
    Unordered,
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let cluster = a.target.connect()?;
    if cluster.dev.is_some() {
        eprintln!(
            "note: the embedded dev broker starts empty; pass --brokers to read an existing cluster"
        );
        cluster.ensure_topic(&a.topic, 1).await?;
    }
    let reset = match a.from {
        From::End => AutoOffsetReset::Latest,
        From::Beginning | From::Committed => AutoOffsetReset::Earliest,
    };
    let mut config = ConsumerConfig::new(cluster.client()).with_offset_reset(reset);
    if let Some(g) = &a.group {
        config = config.with_group(g.as_str());
    }
    if let Some(id) = &a.instance_id {
        config = config.with_instance_id(id.as_str());
    }
    config = config.with_group_protocol(match a.group_protocol {
        ProtocolArg::Classic => GroupProtocol::Classic,
        ProtocolArg::Consumer => GroupProtocol::Consumer,
    });
    config.validate()?;
    if a.parallel {
        let result = parallel(&a, config).await;
        drop(cluster);
        return result;
    }
    // The consumer blocks in poll; it lives on a blocking thread with the dev broker kept alive here.
    let handle = tokio::task::spawn_blocking(move || consume_loop(&a, &config));
    let result = handle.await?;
    drop(cluster);
    result
}

fn consume_loop(a: &Args, config: &ConsumerConfig) -> anyhow::Result<()> {
    let c = KafkaConsumer::new(config)?;
    if a.group.is_some() {
        c.subscribe(&[&a.topic])?;
    } else {
        let n = c.partition_count(&a.topic, Duration::from_secs(10))?;
        let start = match a.from {
            From::Beginning => StartOffset::Beginning,
            From::End => StartOffset::End,
            From::Committed => anyhow::bail!("--from committed needs --group"),
        };
        let parts: Vec<_> = (0..n)
            .map(|p| (TopicPartition::new(a.topic.as_str(), p), start))
            .collect();
        c.assign(&parts)?;
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let mut events = 0u64;
    let mut last = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    loop {
        let want = a.count.map_or(1000, |c| (c - printed).min(1000)) as usize;
        if want == 0 {
            break;
        }
        batch.clear();
        c.poll_batch(&mut batch, want, Duration::from_millis(200))?;
        if batch.is_empty() {
            out.flush()?;
            if a.idle_exit
                .is_some_and(|s| last.elapsed().as_secs_f64() >= s)
            {
                break;
            }
            continue;
        }
        last = Instant::now();
        for r in &batch {
            events += print_unpacked(&mut out, r, a.format)?;
        }
        printed += batch.len() as u64;
        metrics::counter!("kbatch_cli_records_consumed_total").increment(batch.len() as u64);
        if a.group.is_some() {
            out.flush()?;
            c.commit(&next_offsets(&batch), false)?;
        }
    }
    out.flush()?;
    if events == printed {
        eprintln!("consumed {printed} records");
    } else {
        eprintln!("consumed {printed} records ({events} printed, envelopes unpacked)");
    }
    Ok(())
}

/// Prints `r`, or the events of the envelope it is, one per line; returns the lines printed.
fn print_unpacked(out: &mut impl Write, r: &ConsumedRecord, f: Format) -> std::io::Result<u64> {
    if !envelope::is_envelope(&r.headers) {
        print_record(out, r, f)?;
        return Ok(1);
    }
    let value = r.value.clone().unwrap_or_default();
    let events = match envelope::decode(&value) {
        Ok(events) => events,
        Err(e) => {
            eprintln!(
                "warning: partition {} offset {}: {e}; printed as the record it is",
                r.partition, r.offset
            );
            print_record(out, r, f)?;
            return Ok(1);
        }
    };
    // `decode` returns at most u32::MAX events: the count field is a u32.
    let count = u32::try_from(events.len()).unwrap_or(u32::MAX);
    for (index, e) in (0..count).zip(events) {
        let Event {
            key,
            value,
            headers,
            timestamp,
        } = e;
        let event = ConsumedRecord {
            key,
            value,
            headers,
            timestamp: timestamp.or(r.timestamp),
            envelope: Some(EnvelopePosition { index, count }),
            ..r.clone()
        };
        print_record(out, &event, f)?;
    }
    Ok(u64::from(count))
}

/// The offset after the last printed record of each partition in `batch`.
fn next_offsets(batch: &[ConsumedRecord]) -> Vec<OffsetCommit> {
    let mut last = std::collections::BTreeMap::new();
    for r in batch {
        last.insert(r.topic_partition(), r.offset);
    }
    last.into_iter()
        .map(|(tp, o)| OffsetCommit {
            tp,
            offset: o.next(),
            metadata: None,
        })
        .collect()
}

fn print_record(out: &mut impl Write, r: &ConsumedRecord, f: Format) -> std::io::Result<()> {
    let text = |b: Option<&bytes::Bytes>| b.map(|b| String::from_utf8_lossy(b).into_owned());
    match f {
        Format::Value => writeln!(out, "{}", text(r.value.as_ref()).unwrap_or_default()),
        Format::Text => writeln!(
            out,
            "{}\t{}{}\t{}\t{}",
            r.partition,
            r.offset,
            r.envelope
                .map(|p| format!("#{}", p.index))
                .unwrap_or_default(),
            text(r.key.as_ref()).unwrap_or_else(|| "null".into()),
            text(r.value.as_ref()).unwrap_or_else(|| "null".into())
        ),
        Format::Json => {
            let mut v = serde_json::json!({
                "topic": &*r.topic, "partition": r.partition, "offset": r.offset.0,
                "key": text(r.key.as_ref()), "value": text(r.value.as_ref()),
                "timestamp": r.timestamp.map(|t| t.0),
                "headers": r.headers.iter().map(|h| (h.key.clone(), text(h.value.as_ref()))).collect::<Vec<_>>(),
            });
            if let Some(p) = r.envelope {
                v["envelope_index"] = p.index.into();
                v["envelope_count"] = p.count.into();
            }
            writeln!(out, "{v}")
        }
    }
}

async fn parallel(a: &Args, kafka: ConsumerConfig) -> anyhow::Result<()> {
    use kbatch_consumer::{ParallelConfig, ParallelConsumer, ProcessingOrder, ShutdownMode};
    let order = match a.ordering {
        OrderArg::Key => ProcessingOrder::Key,
        OrderArg::Partition => ProcessingOrder::Partition,
        OrderArg::Unordered => ProcessingOrder::Unordered,
    };
    let mut cfg = ParallelConfig::new(kafka, [a.topic.as_str()])
        .with_ordering(order)
        .with_concurrency(a.concurrency);
    cfg.dead_letter_topic = a.dead_letter.clone();
    cfg.max_attempts = a.max_attempts;
    let builder = ParallelConsumer::builder(cfg);
    let builder = match (&a.exec, &a.http) {
        (Some(cmd), None) => {
            let cmd = cmd.clone();
            builder.handler(move |r| crate::bridge::exec(cmd.clone(), r))
        }
        (None, Some(url)) => {
            let timeout = Duration::from_millis(a.http_timeout_ms);
            let bridge = crate::bridge::HttpBridge::new(url.clone(), timeout)?;
            builder.handler(move |r| {
                let bridge = bridge.clone();
                async move { bridge.post(r).await }
            })
        }
        _ => anyhow::bail!("--parallel needs --exec CMD or --http URL"),
    };
    let running = builder.build()?.start()?;
    eprintln!(
        "bridging {} with {:?} ordering, {} in flight; Ctrl-C to stop",
        a.topic, a.ordering, a.concurrency
    );
    let idle = a.idle_exit.map(Duration::from_secs_f64);
    let mut last = (running.stats().processed, Instant::now());
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let s = running.stats();
        if a.count
            .is_some_and(|c| s.processed + s.dead_lettered + s.skipped_failed >= c)
            || running.is_finished()
        {
            break;
        }
        if s.processed != last.0 {
            last = (s.processed, Instant::now());
        } else if idle.is_some_and(|i| last.1.elapsed() >= i) {
            break;
        }
    }
    let report = running.shutdown(ShutdownMode::Drain).await?;
    eprintln!(
        "processed {} records; left {} for the next run",
        report.processed, report.left_unprocessed
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kbatch_core::envelope::{encode, envelope_header};
    use kbatch_core::{Offset, Timestamp};

    use super::*;

    fn record(value: Bytes, envelope: bool) -> ConsumedRecord {
        ConsumedRecord {
            topic: "t".into(),
            partition: 2,
            offset: Offset(7),
            key: None,
            value: Some(value),
            headers: if envelope {
                vec![envelope_header()]
            } else {
                Vec::new()
            },
            timestamp: Some(Timestamp(5)),
            envelope: None,
        }
    }

    fn printed(r: &ConsumedRecord, f: Format) -> (u64, String) {
        let mut out = Vec::new();
        let n = print_unpacked(&mut out, r, f).unwrap();
        (n, String::from_utf8(out).unwrap())
    }

    #[test]
    fn an_envelope_is_printed_as_its_events_with_their_index() {
        let events: Vec<Event> = (0..3)
            .map(|i| Event {
                key: (i != 1).then(|| Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("v{i}"))),
                headers: Vec::new(),
                timestamp: (i == 2).then_some(Timestamp(9)),
            })
            .collect();
        let r = record(encode(&events), true);
        assert_eq!(
            printed(&r, Format::Text),
            (
                3,
                "2\t7#0\tk0\tv0\n2\t7#1\tnull\tv1\n2\t7#2\tk2\tv2\n".into()
            )
        );
        let (_, json) = printed(&r, Format::Json);
        let lines: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        for (i, v) in lines.iter().enumerate() {
            assert_eq!(
                (
                    v["offset"].as_i64(),
                    v["envelope_index"].as_u64(),
                    v["envelope_count"].as_u64()
                ),
                (Some(7), Some(i as u64), Some(3)),
                "{v}"
            );
        }
        assert_eq!(
            (
                lines[0]["timestamp"].as_i64(),
                lines[2]["timestamp"].as_i64()
            ),
            (Some(5), Some(9)),
            "the envelope's timestamp unless the event has its own"
        );
    }

    #[test]
    fn a_plain_or_malformed_record_is_printed_as_it_is() {
        let plain = record(Bytes::from_static(b"hello"), false);
        assert_eq!(
            printed(&plain, Format::Text),
            (1, "2\t7\tnull\thello\n".into())
        );
        let (_, json) = printed(&plain, Format::Json);
        assert!(!json.contains("envelope_index"), "{json}");
        let bad = record(Bytes::from_static(b"KBEV\x01\x00\x00\x00\x00\x01"), true);
        let (n, text) = printed(&bad, Format::Value);
        assert_eq!((n, text.lines().count()), (1, 1));
    }
}
