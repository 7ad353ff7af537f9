//! Broker restarts under the parallel consumer, on a real three-node Kafka cluster: the node
//! coordinating the consumer group is SIGKILLed while records flow (the coordinator moves, and
//! the partitions it led get new leaders), then restarted (and handed its preferred leaderships
//! back: more moves). If that node led none of the topic's partitions, a partition leader is
//! killed and restarted too, so both kinds of move happen.
//!
//! ```text
//!  producer (steady) ──► topic: 3 partitions, RF 3, min ISR 2 ──► ParallelConsumer ──► ledger
//!                          kill coordinator · restart               commits ──► group offsets
//!                                                                  read by another client
//! ```
//!
//! What must hold: every acknowledged record is processed (at least once); the group's
//! committed offsets, as another client reads them, advance after each restart and end at the
//! end of every partition.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kbatch_client::{ConsumerConfig, Delivered, KafkaConsumer};
use kbatch_consumer::{ParallelConfig, ParallelConsumer, ProcessingOrder, Running, ShutdownMode};
use kbatch_core::{Record, TopicPartition};
use kbatch_producer::{Producer, ProducerConfig};
use kbatch_testkit::{Faults, cluster, unique_name, wait_until};

const PARTITIONS: i32 = 3;
const KEYS: u64 = 60;
/// Generous: a node is fenced after 4 s and restarts in about 10 s on a busy 2-core machine.
const LIMIT: Duration = Duration::from_secs(120);

/// What the producer got acknowledged, and the highest sequence number per partition.
#[derive(Default)]
struct Produced {
    sent: AtomicU64,
    acked: Mutex<BTreeMap<u64, Delivered>>,
}

impl Produced {
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
    /// Acknowledged records sent at or after `seq`, per partition.
    fn acked_since(&self, seq: u64) -> BTreeMap<i32, BTreeSet<u64>> {
        let mut m = BTreeMap::<i32, BTreeSet<u64>>::new();
        for (s, d) in self.acked.lock().unwrap().range(seq..) {
            m.entry(d.partition).or_default().insert(*s);
        }
        m
    }
}

/// Produces batches of 100 records (value `v:<seq>`) until `stop`, each batch once the
/// previous one is acknowledged. Delivery failures (a record timing out in a failover) are
/// allowed: only acknowledged records must be processed.
async fn produce_until_stopped(
    producer: Producer,
    topic: String,
    stop: Arc<AtomicBool>,
    produced: Arc<Produced>,
) {
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let batch: Vec<Record> = (seq..seq + 100)
            .map(|s| {
                Record::new(topic.as_str(), format!("v:{s}")).with_key(format!("key-{}", s % KEYS))
            })
            .collect();
        produced.sent.store(seq + 100, Ordering::SeqCst);
        let results = producer.send_batch(batch).await;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(d) => {
                    produced.acked.lock().unwrap().insert(seq + i as u64, d);
                }
                Err(e) => eprintln!("record {} not acknowledged: {e}", seq + i as u64),
            }
        }
        seq += 100;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sequence numbers the handler has completed.
#[derive(Clone, Default)]
struct Processed(Arc<Mutex<BTreeSet<u64>>>);

impl Processed {
    fn has_all(&self, seqs: &BTreeMap<i32, BTreeSet<u64>>) -> bool {
        let done = self.0.lock().unwrap();
        seqs.values().flatten().all(|s| done.contains(s))
    }
}

fn group_config(group: &str) -> ConsumerConfig {
    cluster().consumer_config().with_group(group)
}

/// The group's committed offsets as another client reads them (`None` per partition while
/// nothing is committed or the coordinator cannot answer).
fn committed(group: &str, topic: &str) -> BTreeMap<i32, Option<i64>> {
    let c = KafkaConsumer::new(&group_config(group)).unwrap();
    let tps: Vec<_> = (0..PARTITIONS)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    // The reader asks the group's coordinator, which moves in these tests: a failed read
    // (NotCoordinator while it moves) says nothing of the commits, so it is asked again. Only
    // an answer is compared; after 30 s of failed reads, none (as no commit).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match c.committed(&tps, Duration::from_secs(10)) {
            Ok(got) => {
                return got
                    .into_iter()
                    .map(|c| (c.tp.partition, c.offset.map(|o| o.0)))
                    .collect();
            }
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("committed offsets of {group}: {e}; asking again");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => {
                eprintln!("committed offsets of {group}: {e}");
                return (0..PARTITIONS).map(|p| (p, None)).collect();
            }
        }
    }
}

async fn committed_async(group: &str, topic: &str) -> BTreeMap<i32, Option<i64>> {
    let (g, t) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || committed(&g, &t))
        .await
        .unwrap()
}

/// True when every partition's committed offset is above the one in `before`.
fn all_advanced(now: &BTreeMap<i32, Option<i64>>, before: &BTreeMap<i32, Option<i64>>) -> bool {
    (0..PARTITIONS).all(|p| now[&p].is_some() && now[&p] > before[&p])
}

/// Kills `victim`, waits until the group's coordinator and the partitions `victim` led have
/// moved and the consumer keeps processing and committing, then restarts it and waits until
/// it is back in every ISR.
async fn kill_and_restart(
    faults: &Faults,
    victim: i32,
    topic: &str,
    group: &str,
    produced: &Produced,
    processed: &Processed,
    running: &Running,
) {
    let cluster = cluster();
    let led: Vec<i32> = cluster
        .describe(topic)
        .await
        .unwrap()
        .partitions
        .iter()
        .filter(|p| p.leader == victim)
        .map(|p| p.id)
        .collect();
    let coordinated = cluster.coordinator(group).await == victim;
    let committed_before = committed_async(group, topic).await;
    let sent_before = produced.sent();
    eprintln!(
        "killing node {victim}: coordinator of the group: {coordinated}, leads partitions {led:?}"
    );
    faults.kill(victim).await;

    if coordinated {
        wait_until(
            LIMIT,
            format!("a new coordinator for the group after node {victim} was killed"),
            || async { cluster.coordinator(group).await != victim },
        )
        .await;
    }
    for p in &led {
        wait_until(
            LIMIT,
            format!("a new leader for partition {p} after node {victim} was killed"),
            || async {
                let l = cluster.leader(topic, *p).await;
                l > 0 && l != victim
            },
        )
        .await;
    }
    wait_until(
        LIMIT,
        format!("records produced after node {victim} was killed processed on every partition"),
        || async {
            assert!(!running.is_finished(), "the consumer stopped");
            let since = produced.acked_since(sent_before);
            since.len() == PARTITIONS as usize && processed.has_all(&since)
        },
    )
    .await;
    wait_until(
        LIMIT,
        format!("commits advancing on every partition while node {victim} is down"),
        || async { all_advanced(&committed_async(group, topic).await, &committed_before) },
    )
    .await;

    faults.restart(victim).await;
    cluster
        .wait_fully_replicated(&[topic, "__consumer_offsets"], LIMIT)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_and_leader_moves_lose_nothing_and_commits_resume() {
    let cluster = cluster();
    let faults = cluster.faults().await;
    let topic = unique_name("pc-failover");
    let group = unique_name("pc-failover-g");
    cluster.create_topic(&topic, PARTITIONS).await;

    let producer =
        Producer::new(ProducerConfig::default().with_kafka(cluster.producer_config())).unwrap();
    let produced = Arc::new(Produced::default());
    let stop = Arc::new(AtomicBool::new(false));
    let producing = tokio::spawn(produce_until_stopped(
        producer.clone(),
        topic.clone(),
        Arc::clone(&stop),
        Arc::clone(&produced),
    ));

    let processed = Processed::default();
    let config = ParallelConfig::new(group_config(&group), [topic.as_str()])
        .with_ordering(ProcessingOrder::Key);
    let running = ParallelConsumer::builder(config)
        .handler({
            let processed = processed.clone();
            move |r| {
                let processed = processed.clone();
                async move {
                    // A little work, so records are in flight when a node dies.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let v = std::str::from_utf8(r.value.as_deref().unwrap()).unwrap();
                    let seq: u64 = v.strip_prefix("v:").unwrap().parse().unwrap();
                    processed.0.lock().unwrap().insert(seq);
                    Ok(())
                }
            }
        })
        .build()
        .unwrap()
        .start()
        .unwrap();

    let nothing = (0..PARTITIONS).map(|p| (p, None)).collect();
    wait_until(LIMIT, "first commits on every partition", || async {
        all_advanced(&committed_async(&group, &topic).await, &nothing)
    })
    .await;

    // The group coordinator first; a partition leader as well if the coordinator led none.
    let coordinator = cluster.coordinator(&group).await;
    let leads_some = cluster
        .describe(&topic)
        .await
        .unwrap()
        .partitions
        .iter()
        .any(|p| p.leader == coordinator);
    kill_and_restart(
        &faults,
        coordinator,
        &topic,
        &group,
        &produced,
        &processed,
        &running,
    )
    .await;
    if !leads_some {
        let leader = cluster.leader(&topic, 0).await;
        kill_and_restart(
            &faults, leader, &topic, &group, &produced, &processed, &running,
        )
        .await;
    }

    // After the restarts: records keep being processed and commits keep advancing.
    let committed_after_restart = committed_async(&group, &topic).await;
    let sent_after_restart = produced.sent();
    wait_until(
        LIMIT,
        "records produced after the restart processed on every partition",
        || async {
            assert!(!running.is_finished(), "the consumer stopped");
            let since = produced.acked_since(sent_after_restart);
            since.len() == PARTITIONS as usize && processed.has_all(&since)
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    producing.await.unwrap();
    producer.close().await;

    let ends: BTreeMap<i32, Option<i64>> = cluster
        .watermarks(&topic)
        .await
        .into_iter()
        .map(|(p, (_, hi))| (p, Some(hi)))
        .collect();
    wait_until(
        LIMIT,
        format!("committed offsets at the end of every partition, {ends:?}"),
        || async { committed_async(&group, &topic).await == ends },
    )
    .await;
    assert!(
        all_advanced(&ends, &committed_after_restart),
        "commits advanced after the restart: {committed_after_restart:?} -> {ends:?}"
    );

    let stats = running.stats();
    let report = running.shutdown(ShutdownMode::Drain).await.unwrap();
    drop(faults);
    let acked = produced.acked.lock().unwrap().clone();
    let done = processed.0.lock().unwrap().clone();
    let lost: Vec<_> = acked
        .keys()
        .filter(|s| !done.contains(s))
        .take(10)
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged records never processed, first 10 of {}: {lost:?}",
        acked.keys().filter(|s| !done.contains(s)).count()
    );
    assert_eq!(
        committed_async(&group, &topic).await,
        ends,
        "the final commit at shutdown stays at the end"
    );
    eprintln!(
        "{} records acknowledged, {} processed; {stats:?}; {report:?}",
        acked.len(),
        done.len()
    );
}
