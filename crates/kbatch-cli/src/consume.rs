//! `kbatch consume`: print the records of a topic.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, ValueEnum};
use kbatch_client::{AutoOffsetReset, ConsumerConfig, KafkaConsumer, OffsetCommit, StartOffset};
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
