//! `kbatch consume`: print the records of a topic.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, ValueEnum};
use kbatch_client::{
    AutoOffsetReset, ConsumerConfig, GroupProtocol, KafkaConsumer, OffsetCommit, StartOffset,
};
use kbatch_core::{ConsumedRecord, TopicPartition};

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
    /// partition, offset, key and value, tab-separated.
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
    /// Stop after this many records.
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
            print_record(&mut out, r, a.format)?;
        }
        printed += batch.len() as u64;
        metrics::counter!("kbatch_cli_records_consumed_total").increment(batch.len() as u64);
        if a.group.is_some() {
            out.flush()?;
            c.commit(&next_offsets(&batch), false)?;
        }
    }
    out.flush()?;
    eprintln!("consumed {printed} records");
    Ok(())
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
            "{}\t{}\t{}\t{}",
            r.partition,
            r.offset,
            text(r.key.as_ref()).unwrap_or_else(|| "null".into()),
            text(r.value.as_ref()).unwrap_or_else(|| "null".into())
        ),
        Format::Json => {
            let v = serde_json::json!({
                "topic": &*r.topic, "partition": r.partition, "offset": r.offset.0,
                "key": text(r.key.as_ref()), "value": text(r.value.as_ref()),
                "timestamp": r.timestamp.map(|t| t.0),
                "headers": r.headers.iter().map(|h| (h.key.clone(), text(h.value.as_ref()))).collect::<Vec<_>>(),
            });
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
