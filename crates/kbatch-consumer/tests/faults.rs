//! Failures of what the consumer depends on: commits the broker refuses, a broker that goes
//! away while commits are due, a dead-letter topic that is missing or refuses writes.
//!
//! Refused and lost commits are injected with the development broker (librdkafka's mock
//! cluster), as librdkafka's own tests do; the dead-letter cases run on the real broker.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::time::Duration;

use common::{Ledger, eventually, filled_topic};
use kbatch_client::{ConsumerConfig, DevBroker, InjectedError, KafkaConsumer};
use kbatch_consumer::{
    HandlerError, ParallelConfig, ParallelConsumer, ProcessingOrder, ShutdownMode,
};
use kbatch_core::{Record, TopicPartition};
use kbatch_producer::{Producer, ProducerConfig};
use kbatch_testkit::unique_name;

const N: u64 = 200;

/// Produces `records` to the dev broker.
fn produce_to(dev: &DevBroker, records: &[Record]) {
    let mut cfg = kbatch_testkit::producer_config();
    cfg.client.brokers = dev.bootstrap_servers();
    let results = kbatch_testkit::produce(&cfg, records);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

async fn dev_topic(dev: &DevBroker, topic: &str) {
    dev.create_topic(topic, 2).unwrap();
    let p = Producer::new(ProducerConfig::for_brokers(&dev.bootstrap_servers())).unwrap();
    let sent = p
        .send_batch(
            (0..N).map(|i| Record::new(topic, format!("v:{i}")).with_key(format!("k{}", i % 10))),
        )
        .await;
    assert!(sent.iter().all(Result::is_ok));
    p.close().await;
}

fn dev_config(dev: &DevBroker, group: &str, topic: &str) -> ParallelConfig {
    let mut c = ParallelConfig::for_brokers(&dev.bootstrap_servers(), group, [topic])
        .with_ordering(ProcessingOrder::Key);
    c.commit_interval = Duration::from_millis(50);
    c.shutdown_timeout = Duration::from_secs(5);
    c
}

/// The group's committed offsets on the dev broker, summed over both partitions.
fn committed_sum(dev: &DevBroker, group: &str, topic: &str) -> i64 {
    let c = KafkaConsumer::new(
        &ConsumerConfig::new(kbatch_client::ClientConfig::new(dev.bootstrap_servers()))
            .with_group(group),
    )
    .unwrap();
    let tps = [TopicPartition::new(topic, 0), TopicPartition::new(topic, 1)];
    c.committed(&tps, Duration::from_secs(10))
        .map(|v| v.iter().filter_map(|c| c.offset).map(|o| o.0).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_commits_are_counted_made_again_and_a_refused_final_commit_is_not_reported_as_made()
{
    let dev = DevBroker::start(1).unwrap();
    let topic = unique_name("faults-commit");
    dev_topic(&dev, &topic).await;
    let group = unique_name("faults-commit-g");
    dev.fail_next_commit_requests(&[InjectedError::TopicAuthorizationFailed; 4]);
    let ledger = Ledger::default();
    let running =
        common::start_recording(dev_config(&dev, &group, &topic), &ledger, Duration::ZERO);
    eventually(60, "every record processed", || ledger.len() >= N as usize).await;
    eventually(60, "the commits made again reach the end", || {
        committed_sum(&dev, &group, &topic) == N as i64
    })
    .await;
    let st = running.stats();
    assert!(
        st.commit_failures >= 1,
        "refused commits are counted: {st:?}"
    );
    // The final commit is refused too: the report must not call it made.
    dev.fail_next_commit_requests(&[InjectedError::TopicAuthorizationFailed; 50]);
    let p = TopicPartition::new(topic.as_str(), 0);
    tokio::task::block_in_place(|| {
        produce_to(
            &dev,
            &[Record::new(topic.as_str(), "late").with_partition(0)],
        )
    });
    eventually(60, "the late record processed", || {
        ledger.len() > N as usize
    })
    .await;
    let report = running.shutdown(ShutdownMode::Drain).await.unwrap();
    assert!(
        report.committed.iter().all(|(tp, _)| *tp != p),
        "a refused final commit is not reported as committed: {report:?}"
    );
    assert!(
        report
            .not_committed
            .iter()
            .any(|(tp, _, why)| *tp == p && !why.is_empty()),
        "it is reported as not committed, with why: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_gone_while_commits_are_due_is_survived_and_a_final_commit_it_misses_is_not_reported_as_made()
 {
    let dev = DevBroker::start(1).unwrap();
    let topic = unique_name("faults-down");
    dev_topic(&dev, &topic).await;
    let group = unique_name("faults-down-g");
    let ledger = Ledger::default();
    // Slow enough that records are still being processed — and commits due — while the
    // broker is away.
    let mut cfg = dev_config(&dev, &group, &topic).with_concurrency(2);
    cfg.max_records = 1000;
    cfg.shutdown_timeout = Duration::from_secs(2);
    let running = common::start_recording(cfg, &ledger, Duration::from_millis(20));
    eventually(60, "processing under way", || ledger.len() >= 20).await;
    dev.broker_down(1).unwrap();
    // librdkafka holds a commit until the coordinator is back: the wait shows in the stats.
    eventually(60, "a commit waits for the missing broker", || {
        running.stats().commit_pending_ms >= 1000
    })
    .await;
    dev.broker_up(1).unwrap();
    eventually(120, "every record processed", || ledger.len() >= N as usize).await;
    eventually(120, "commits resume to the end", || {
        committed_sum(&dev, &group, &topic) == N as i64
    })
    .await;
    eventually(60, "no commit waits any more", || {
        running.stats().commit_pending_ms == 0
    })
    .await;
    assert!(!running.is_finished(), "the consumer kept running");
    // Gone again at shutdown: the final commit cannot be made, and is not reported as made.
    dev.broker_down(1).unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        running.shutdown(ShutdownMode::Quick),
    )
    .await
    .expect("the shutdown is bounded")
    .unwrap();
    assert!(report.committed.is_empty(), "{report:?}");
    assert!(
        !report.not_committed.is_empty()
            && report
                .not_committed
                .iter()
                .all(|(_, _, why)| why.contains("not confirmed")),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_dead_letter_topic_is_a_clear_error_at_start() {
    let topic = filled_topic("faults-nodlq", 1, 10, 2).await;
    let group = unique_name("faults-nodlq-g");
    let missing = unique_name("faults-no-such-dlq");
    let cfg = common::config(&group, &[&topic], ProcessingOrder::Key).with_dead_letter(&missing, 1);
    let running = ParallelConsumer::builder(cfg)
        .handler(|_r| async { Err(HandlerError::permanent("fails")) })
        .start()
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(60), running.join())
        .await
        .expect("the consumer stops")
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&missing) && text.contains("does not exist"),
        "the error names the missing topic: {text}"
    );
    assert_eq!(
        common::committed(&group, &topic, 0).0,
        None,
        "nothing committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unwritable_dead_letter_topic_holds_the_commit_below_the_record() {
    const BAD: u64 = 5;
    let topic = filled_topic("faults-dlqfull", 1, 20, 20).await;
    let group = unique_name("faults-dlqfull-g");
    // The dead-letter topic refuses anything bigger than 50 bytes: our record, with its
    // origin headers, is far bigger.
    let dlq = unique_name("faults-dlq-small");
    kbatch_testkit::admin()
        .create_topics(&[
            kbatch_client::NewTopic::new(&dlq, 1).with_config("max.message.bytes", "50")
        ])
        .await
        .unwrap();
    let cfg =
        common::config(&group, &[&topic], ProcessingOrder::Unordered).with_dead_letter(&dlq, 1);
    let ledger = Ledger::default();
    let running = ParallelConsumer::builder(cfg)
        .handler({
            let ledger = ledger.clone();
            move |r: kbatch_core::ConsumedRecord| {
                let ledger = ledger.clone();
                async move {
                    if common::seq(&r) == BAD {
                        return Err(HandlerError::permanent("bad record"));
                    }
                    ledger.push(&r);
                    Ok(())
                }
            }
        })
        .start()
        .unwrap();
    eventually(60, "the other records processed", || ledger.len() >= 19).await;
    // Let several commit intervals and dead-letter attempts pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = running.stats();
    assert_eq!(st.dead_lettered, 0, "the write never succeeded: {st:?}");
    assert!(
        st.dead_letter_failures >= 1,
        "the failed writes are counted: {st:?}"
    );
    assert!(!running.is_finished(), "the consumer keeps running");
    let (offset, metadata) = common::committed(&group, &topic, 0);
    assert_eq!(
        offset,
        Some(BAD as i64),
        "the commit stops at the record not yet dead-lettered"
    );
    assert!(
        !metadata.is_empty(),
        "the records after it are marked done in the metadata"
    );
    running.shutdown(ShutdownMode::Quick).await.unwrap();
}
