//! The producer's metrics reach a Prometheus recorder with the right values: sent, delivered,
//! failed by class, queue depth, and librdkafka's batch-size and linger statistics.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::time::{Duration, Instant};

use kbatch_core::Classify;
use kbatch_core::{ErrorClass, Record};
use kbatch_producer::{Producer, ProducerConfig};
use kbatch_testkit::{create_topic, producer_config, unique_name};
use metrics_exporter_prometheus::PrometheusBuilder;

fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_gauges_and_batch_statistics_are_exported() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    let topic = unique_name("prod-metrics");
    let client = unique_name("metrics-client");
    create_topic(&topic, 2).await;
    let mut kafka = producer_config();
    kafka.client.client_id = client.clone();
    kafka.statistics_interval = Some(Duration::from_millis(100));
    let p = Producer::new(ProducerConfig::default().with_kafka(kafka)).unwrap();
    let ok = p
        .send_batch(
            (0..2000)
                .map(|i| Record::new(topic.as_str(), format!("m:{i}")).with_key(format!("{i}"))),
        )
        .await;
    assert!(ok.iter().all(Result::is_ok));
    let bad = p
        .send_batch([Record::new(topic.as_str(), "x").with_partition(7)])
        .await;
    assert_eq!(bad[0].as_ref().unwrap_err().class(), ErrorClass::Permanent);

    let series = |name: &str, extra: &str| format!("{name}{{client=\"{client}\"{extra}}}");
    // A hang guard naming what never showed up, not a speed target (it takes about 1 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = handle.render();
        let delivered = value_of(
            &text,
            &series("kbatch_producer_records_delivered_total", ""),
        );
        let failed = value_of(
            &text,
            &series(
                "kbatch_producer_records_failed_total",
                ",class=\"permanent\"",
            ),
        );
        let batch_p99 = value_of(
            &text,
            &series("kbatch_producer_batch_records", ",quantile=\"0.99\""),
        );
        if delivered == Some(2000.0) && failed == Some(1.0) && batch_p99.is_some_and(|b| b > 0.0) {
            assert_eq!(
                value_of(&text, &series("kbatch_producer_records_sent_total", "")),
                Some(2000.0)
            );
            assert_eq!(
                value_of(&text, &series("kbatch_producer_pending_records", "")),
                Some(0.0)
            );
            assert_eq!(
                value_of(&text, &series("kbatch_producer_pending_bytes", "")),
                Some(0.0)
            );
            assert!(
                value_of(
                    &text,
                    &series("kbatch_producer_queue_latency_seconds", ",quantile=\"0.5\"")
                )
                .is_some()
            );
            assert_eq!(
                value_of(
                    &text,
                    &series(
                        "kbatch_producer_records_failed_total",
                        ",class=\"retriable\""
                    )
                ),
                Some(0.0)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never reached the expected values:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
