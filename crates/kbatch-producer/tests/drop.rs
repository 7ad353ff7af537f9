//! Dropping the last handle closes the producer — flush within `close_timeout`, then fail and
//! report what is left — without ever blocking an async worker: inside a runtime the close
//! runs on a blocking thread, outside one it runs before `drop` returns. Faults come from
//! librdkafka's mock cluster (`DevBroker`): a broker taken down keeps records in flight.
//!
//! Its own test binary: it installs a global log subscriber to read the close report.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kbatch_client::DevBroker;
use kbatch_core::Record;
use kbatch_producer::{ClientConfig, DeliveryFuture, ProduceError, Producer, ProducerConfig};

/// Log output of every thread of this process (the close logs from a blocking thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn installed() -> &'static Logs {
        static LOGS: OnceLock<Logs> = OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let writer = logs.clone();
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .init();
            logs
        })
    }

    /// The first line containing every one of `parts`, waiting up to `within` for it.
    fn wait_for_line(&self, parts: &[&str], within: Duration) -> Option<String> {
        let until = Instant::now() + within;
        loop {
            let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return Some(line.to_owned());
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn rec(i: u64) -> Record {
    Record::new("drop", format!("v:{i}")).with_key(format!("key-{}", i % 7))
}

fn dev_producer(dev: &DevBroker, client_id: &str, close_timeout: Duration) -> Producer {
    let client = ClientConfig::new(dev.bootstrap_servers()).with_client_id(client_id);
    Producer::new(ProducerConfig::new(client).with_close_timeout(close_timeout)).unwrap()
}

/// On a current-thread runtime, blocking in `drop` would stall the only worker for the whole
/// close (≥ the 2 s close timeout, the broker being down). The runtime must keep running
/// timers and tasks meanwhile, and every future must still resolve, with the failures
/// reported in a log line with counts.
#[tokio::test(flavor = "current_thread")]
async fn dropping_a_producer_inside_a_runtime_never_blocks_its_worker() {
    const STUCK: u64 = 100;
    let logs = Logs::installed();
    let dev = DevBroker::start(1).unwrap();
    dev.create_topic("drop", 2).unwrap();
    let close_timeout = Duration::from_secs(2);
    let p = dev_producer(&dev, "drop-in-runtime", close_timeout);
    // Connected and delivering first, so what follows is in flight, not waiting for metadata.
    p.send(rec(0)).await.unwrap().await.unwrap();
    dev.broker_down(1).unwrap();
    let mut stuck: Vec<DeliveryFuture> = Vec::new();
    for i in 1..=STUCK {
        stuck.push(p.send(rec(i)).await.unwrap());
    }

    let dropped = Instant::now();
    drop(p);
    // The only worker runs another task to its end while the close is still under way: the
    // flush waits `close_timeout` for the downed broker, so no future is resolved yet. Had
    // `drop` closed on this thread, it would have returned only after failing them all.
    let other_task_ran = tokio::spawn(async { tokio::task::yield_now().await })
        .await
        .is_ok();
    let resolved_meanwhile = stuck
        .iter_mut()
        .filter_map(DeliveryFuture::try_result)
        .count();
    assert!(other_task_ran);
    assert_eq!(
        resolved_meanwhile, 0,
        "the close had already finished when the worker ran its next task: drop blocked it"
    );

    for (i, f) in stuck.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .unwrap_or_else(|_| panic!("future {i} never resolved"));
        let e = r.expect_err("nothing can be delivered while the broker is down");
        assert!(
            matches!(e, ProduceError::Delivery(_) | ProduceError::Closed { .. }),
            "{e}"
        );
    }
    // A lower bound only, which a slow machine cannot break.
    assert!(
        dropped.elapsed() >= close_timeout,
        "the close waited close_timeout for the broker before failing the records"
    );
    let line = logs
        .wait_for_line(&["ERROR", "drop-in-runtime"], Duration::from_secs(10))
        .expect("the dropped producer reports what it could not deliver");
    assert!(
        line.contains(&format!("pending_at_close={STUCK}"))
            && line.contains(&format!("failed={STUCK}"))
            && line.contains("delivered=1"),
        "{line}"
    );
}

/// Outside a runtime there is no worker to protect: `drop` closes before it returns, so
/// every future is resolved — here delivered — by then.
#[test]
fn dropping_a_producer_outside_a_runtime_flushes_before_returning() {
    let dev = DevBroker::start(1).unwrap();
    dev.create_topic("drop", 2).unwrap();
    let p = dev_producer(&dev, "drop-outside-runtime", Duration::from_secs(30));
    let futures: Vec<DeliveryFuture> = (0..500).map(|i| p.try_send(rec(i)).unwrap()).collect();
    drop(p);
    for (i, mut f) in futures.into_iter().enumerate() {
        match f.try_result() {
            Some(Ok(d)) => assert!(d.offset.0 >= 0),
            other => panic!("record {i} not delivered when drop returned: {other:?}"),
        }
    }
}
