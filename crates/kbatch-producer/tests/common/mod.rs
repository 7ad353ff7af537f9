//! Helpers shared by the producer's integration tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeMap;

use kbatch_core::ConsumedRecord;
use kbatch_producer::{Producer, ProducerConfig};

/// A producer on the test broker with kbatch defaults.
pub(crate) fn producer() -> Producer {
    Producer::new(ProducerConfig::default().with_kafka(kbatch_testkit::producer_config())).unwrap()
}

/// The sequence number a test wrote into a value as `…:<seq>`.
pub(crate) fn seq(r: &ConsumedRecord) -> u64 {
    let v = std::str::from_utf8(r.value.as_deref().unwrap()).unwrap();
    v.rsplit(':').next().unwrap().parse().unwrap()
}

/// Asserts each partition holds strictly increasing sequence numbers and the union is exactly
/// `0..n`: per-partition order kept, nothing lost, nothing duplicated.
pub(crate) fn assert_exactly_once_in_order(got: &BTreeMap<i32, Vec<ConsumedRecord>>, n: u64) {
    let mut seen = vec![false; n as usize];
    for (p, recs) in got {
        let seqs: Vec<u64> = recs.iter().map(seq).collect();
        for w in seqs.windows(2) {
            assert!(w[0] < w[1], "partition {p}: {} then {}", w[0], w[1]);
        }
        for s in seqs {
            assert!(s < n, "unexpected seq {s}");
            assert!(
                !std::mem::replace(&mut seen[s as usize], true),
                "seq {s} duplicated"
            );
        }
    }
    let missing: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| !**s)
        .map(|(i, _)| i)
        .take(10)
        .collect();
    assert!(missing.is_empty(), "lost records, first: {missing:?}");
}
