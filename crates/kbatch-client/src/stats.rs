//! The slice of librdkafka's statistics that kbatch reports as metrics.

/// Producer statistics from one librdkafka statistics report (all topics, all brokers).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ProducerStats {
    /// Records in the client's queues (waiting or in flight).
    pub queued_records: u64,
    /// Bytes in the client's queues.
    pub queued_bytes: u64,
    /// Records per produced batch, median over the last window (largest topic).
    pub batch_records_p50: i64,
    /// Records per produced batch, 99th percentile.
    pub batch_records_p99: i64,
    /// Bytes per produced batch, median.
    pub batch_bytes_p50: i64,
    /// Bytes per produced batch, 99th percentile.
    pub batch_bytes_p99: i64,
    /// Time records waited in the client before being sent (linger + queueing), median, µs.
    pub queue_latency_us_p50: i64,
    /// The same, 99th percentile, µs.
    pub queue_latency_us_p99: i64,
    /// Broker round-trip time, 99th percentile, µs.
    pub rtt_us_p99: i64,
}

impl ProducerStats {
    pub(crate) fn from_rdkafka(s: &rdkafka::Statistics) -> Self {
        let busiest = s.topics.values().max_by_key(|t| t.batchcnt.cnt);
        let brokers = s.brokers.values().filter(|b| b.nodeid >= 0);
        let worst =
            |f: fn(&rdkafka::statistics::Broker) -> Option<&rdkafka::statistics::Window>,
             p: fn(&rdkafka::statistics::Window) -> i64| {
                brokers
                    .clone()
                    .filter_map(|b| f(b).map(p))
                    .max()
                    .unwrap_or(0)
            };
        Self {
            queued_records: s.msg_cnt,
            queued_bytes: s.msg_size,
            batch_records_p50: busiest.map_or(0, |t| t.batchcnt.p50),
            batch_records_p99: busiest.map_or(0, |t| t.batchcnt.p99),
            batch_bytes_p50: busiest.map_or(0, |t| t.batchsize.p50),
            batch_bytes_p99: busiest.map_or(0, |t| t.batchsize.p99),
            queue_latency_us_p50: worst(|b| b.int_latency.as_ref(), |w| w.p50),
            queue_latency_us_p99: worst(|b| b.int_latency.as_ref(), |w| w.p99),
            rtt_us_p99: worst(|b| b.rtt.as_ref(), |w| w.p99),
        }
    }
}
