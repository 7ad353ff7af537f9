//! The relay's metrics, rendered by the Prometheus exporter (its own process: the recorder is
//! global).
#![allow(clippy::unwrap_used, reason = "tests: a panic is a failure")]

use kbatch_outbox::{
    Destination, KafkaDeliverer, OutboxEntry, OutboxStore, Relay, RelayConfig, TableName, enqueue,
};
use kbatch_producer::{Producer, ProducerConfig};
use kbatch_testkit::{create_topic, producer_config, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_counts_outcomes_sizes_lag_and_status() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = OutboxStore::connect(dir.path().join("m.db").to_str().unwrap())
        .await
        .unwrap();
    let table = TableName::new("kbatch_outbox_metrics").unwrap();
    store.migrate(&table).await.unwrap();
    let topic = unique_name("outbox-metrics");
    create_topic(&topic, 1).await;
    let OutboxStore::Sqlite(pool) = &store else {
        unreachable!()
    };
    let mut tx = pool.begin().await.unwrap();
    for i in 0..5 {
        enqueue(
            &mut tx,
            &table,
            &OutboxEntry::new(Destination::kafka(&topic), format!("{i}")),
        )
        .await
        .unwrap();
    }
    let too_big = OutboxEntry::new(Destination::kafka(&topic), vec![0u8; 2 << 20]);
    enqueue(&mut tx, &table, &too_big).await.unwrap();
    tx.commit().await.unwrap();

    let producer = Producer::new(ProducerConfig::default().with_kafka(producer_config())).unwrap();
    let relay = Relay::new(
        store,
        KafkaDeliverer::new(producer),
        RelayConfig::default().with_table(table),
    )
    .unwrap();
    relay.run_once().await.unwrap();
    relay.publish_status().await;
    let text = handle.render();
    for line in [
        r#"kbatch_outbox_entries_total{table="kbatch_outbox_metrics",outcome="delivered"} 5"#,
        r#"kbatch_outbox_entries_total{table="kbatch_outbox_metrics",outcome="dead"} 1"#,
        r#"kbatch_outbox_batch_entries_count{table="kbatch_outbox_metrics"} 1"#,
        r#"kbatch_outbox_batch_entries_sum{table="kbatch_outbox_metrics"} 6"#,
        r#"kbatch_outbox_lag_seconds_count{table="kbatch_outbox_metrics"} 5"#,
        r#"kbatch_outbox_pending{table="kbatch_outbox_metrics"} 0"#,
        r#"kbatch_outbox_dead{table="kbatch_outbox_metrics"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }
}
