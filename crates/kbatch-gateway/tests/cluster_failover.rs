//! The gateway in front of the real three-node cluster (replication 3, `min.insync.replicas`
//! 2, `acks=all`) while nodes are SIGKILLed and restarted: a 2xx is only ever given for a
//! record that is in the log, at the partition and offset the answer named.
//!
//! ```text
//!  4 clients ──POST {"value":"id-N"}──► gateway ──► cluster: kill 2 of 3 · 10 s · restart
//!     │  (id, status, partition, offset, start, end)
//!     └──► afterwards: an independent consumer reads the topic; every 2xx is there;
//!          nothing started during the outage got a 2xx; every answer within the timeout
//! ```

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kbatch_client::Isolation;
use kbatch_producer::ProducerConfig;
use kbatch_testkit::{CLUSTER_NODES, cluster, consume_all_from, wait_until};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The answer may come a little after the request timeout: scheduling on a busy machine.
const ANSWER_SLACK: Duration = Duration::from_secs(2);
const LIMIT: Duration = Duration::from_secs(120);

/// One request's fate.
#[derive(Debug, Clone)]
struct Sent {
    id: u64,
    status: u16,
    /// Partition and offset of a 2xx.
    at: Option<(i32, i64)>,
    start: Instant,
    end: Instant,
}

#[derive(Default)]
struct Log {
    next_id: AtomicU64,
    sent: Mutex<Vec<Sent>>,
}

impl Log {
    fn acked_after(&self, t: Instant) -> bool {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.start >= t && (200..300).contains(&s.status))
    }
}

async fn client(url: String, log: Arc<Log>, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    while !stop.load(Ordering::SeqCst) {
        let id = log.next_id.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        let r = http
            .post(&url)
            .bearer_auth(common::TOKEN)
            .header("content-type", "application/json")
            .body(format!(r#"{{"key":"k{}","value":"id-{id}"}}"#, id % 16))
            .timeout(REQUEST_TIMEOUT * 4)
            .send()
            .await;
        let (status, at) = match r {
            Ok(r) => {
                let status = r.status().as_u16();
                let bytes = r.bytes().await.unwrap_or_default();
                let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                let at = (status == 200).then(|| {
                    let x = &body["results"][0];
                    (
                        x["partition"].as_i64().unwrap() as i32,
                        x["offset"].as_i64().unwrap(),
                    )
                });
                (status, at)
            }
            Err(e) => panic!("request {id}: no answer from the gateway: {e}"),
        };
        log.sent.lock().unwrap().push(Sent {
            id,
            status,
            at,
            start,
            end: Instant::now(),
        });
        if status != 200 {
            // As a client would: back off a little on an error.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_2xx_for_a_record_the_cluster_did_not_persist() {
    let cluster = cluster();
    let faults = cluster.faults().await;
    let t = common::topic("outage");
    cluster.create_topic(&t, 3).await;
    let producer = ProducerConfig::default().with_kafka(cluster.producer_config());
    let gw = common::start(
        common::config().with_request_timeout(REQUEST_TIMEOUT),
        producer,
    )
    .await;
    let url = gw.url(&format!("/topics/{t}/records"));
    let log = Arc::new(Log::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| tokio::spawn(client(url.clone(), Arc::clone(&log), Arc::clone(&stop))))
        .collect();
    let t0 = Instant::now();
    wait_until(LIMIT, "records acknowledged before the fault", || async {
        log.acked_after(t0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Two of three down: no partition has two replicas in sync (and the controllers have
    // no quorum), so nothing can be acknowledged with acks=all.
    faults.kill(CLUSTER_NODES[0]).await;
    faults.kill(CLUSTER_NODES[1]).await;
    let outage_start = Instant::now();
    // Not all three: every node is also a controller voter, and `restart` waits for the
    // node to register with a controller quorum, which one node alone cannot form.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let outage_end = Instant::now();
    for node in &CLUSTER_NODES[..2] {
        faults.restart(*node).await;
    }
    let restarted = Instant::now();
    wait_until(LIMIT, "records acknowledged after the restart", || async {
        log.acked_after(restarted)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    cluster.wait_fully_replicated(&[&t], LIMIT).await;
    drop(faults);
    let report = gw.stop().await;
    eprintln!("gateway closed: {report:?}");

    let sent = std::mem::take(&mut *log.sent.lock().unwrap());
    let during: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.start >= outage_start && s.end <= outage_end)
        .collect();
    let mut statuses = BTreeMap::<u16, usize>::new();
    for s in &during {
        *statuses.entry(s.status).or_default() += 1;
    }
    eprintln!(
        "{} requests: {} answered 200; {} during the outage, by status: {statuses:?}",
        sent.len(),
        sent.iter().filter(|s| s.status == 200).count(),
        during.len()
    );
    assert!(
        during.len() >= 4,
        "requests were made during the outage: {}",
        during.len()
    );
    for s in &during {
        assert!(
            !(200..300).contains(&s.status),
            "request {} got {} while two or more of three nodes were down",
            s.id,
            s.status
        );
    }
    for s in &sent {
        assert!(
            s.end - s.start <= REQUEST_TIMEOUT + ANSWER_SLACK,
            "request {} answered {} after {:?}, past the request timeout",
            s.id,
            s.status,
            s.end - s.start
        );
        assert!(
            (200..300).contains(&s.status) || [429, 503].contains(&s.status),
            "request {}: unexpected status {}",
            s.id,
            s.status
        );
    }

    // An independent consumer reads everything the log holds.
    let in_log = cluster.watermarks(&t).await;
    let total: i64 = in_log.values().map(|(lo, hi)| hi - lo).sum();
    let brokers = cluster.brokers().to_owned();
    let topic = t.clone();
    let got = tokio::task::spawn_blocking(move || {
        consume_all_from(
            &brokers,
            &topic,
            Isolation::ReadUncommitted,
            Some(total as usize),
            Duration::from_secs(10),
        )
    })
    .await
    .unwrap();
    let mut at = BTreeMap::<(i32, i64), String>::new();
    for (p, records) in got {
        for r in records {
            let v = String::from_utf8(r.value.unwrap_or_default().to_vec()).unwrap();
            at.insert((p, r.offset.0), v);
        }
    }
    let mut checked = 0;
    for s in sent.iter().filter(|s| s.status == 200) {
        let (p, o) = s.at.unwrap();
        let expected = format!("\"id-{}\"", s.id);
        assert_eq!(
            at.get(&(p, o)),
            Some(&expected),
            "request {} was answered 200 at partition {p} offset {o}, which does not hold it",
            s.id
        );
        checked += 1;
    }
    assert!(checked > 0);
    eprintln!("{checked} acknowledged records all found at their offsets");
}
