//! The loads of `kbatch bench gateway`: the same records straight through kbatch's `Producer`,
//! as NDJSON batches over HTTP, and as single-record requests (closed loop at a concurrency,
//! open loop at a rate). Each returns what it measured; none knows about rounds or reports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use kbatch_core::{Record, Topic};
use kbatch_producer::Producer;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// What every contender sends: the same keys and JSON values in the same order.
pub(super) struct Data {
    keys: Vec<String>,
    /// JSON string values (quotes included): the bytes the gateway writes for them.
    values: Vec<String>,
    /// Single-record bodies, made before anything is timed (the load generator shares the
    /// CPU with the gateway: formatting JSON while measuring would be counted against it).
    singles: Vec<Bytes>,
    /// NDJSON bodies of `per` records each, likewise made up front; request `n` posts body
    /// `n % len`.
    batches: Vec<Bytes>,
}

/// Distinct values cycled through.
const VALUE_POOL: usize = 1_024;
/// Distinct NDJSON bodies cycled through (together at least every key once at the default
/// 10,000 keys and 1,000 records per body).
const BATCH_POOL: u64 = 16;

impl Data {
    /// `keys` keys, values of `value_bytes`, NDJSON bodies of `per` records.
    pub(super) fn new(keys: u64, value_bytes: usize, per: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6761_7465);
        let mut data = Self {
            keys: (0..keys).map(|k| format!("key-{k}")).collect(),
            values: (0..VALUE_POOL)
                .map(|_| {
                    let s: String = (0..value_bytes.saturating_sub(2))
                        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
                        .collect();
                    format!("\"{s}\"")
                })
                .collect(),
            singles: Vec::new(),
            batches: Vec::new(),
        };
        let singles = (keys.max(1)).max(VALUE_POOL as u64);
        data.singles = (0..singles).map(|i| Bytes::from(data.json(i))).collect();
        data.batches = (0..BATCH_POOL).map(|n| data.ndjson(n * per, per)).collect();
        data
    }

    /// The single-record body of request `i`.
    pub(super) fn single(&self, i: u64) -> Bytes {
        self.singles[(i % self.singles.len() as u64) as usize].clone()
    }

    /// The NDJSON body of request `n`.
    fn batch(&self, n: u64) -> Bytes {
        self.batches[(n % self.batches.len() as u64) as usize].clone()
    }

    fn key(&self, i: u64) -> &str {
        &self.keys[(i % self.keys.len() as u64) as usize]
    }

    fn value(&self, i: u64) -> &str {
        &self.values[(i % VALUE_POOL as u64) as usize]
    }

    /// Record `i` as the direct contender sends it: what the gateway writes for line `i`.
    fn record(&self, topic: &Topic, i: u64) -> Record {
        Record::new(Arc::clone(topic), Bytes::from(self.value(i).to_owned()))
            .with_key(self.key(i).to_owned())
    }

    /// Record `i` as one JSON line.
    fn json(&self, i: u64) -> String {
        format!(r#"{{"key":"{}","value":{}}}"#, self.key(i), self.value(i))
    }

    /// Records `first..first + n` as an NDJSON body.
    fn ndjson(&self, first: u64, n: u64) -> Bytes {
        let mut body = String::with_capacity(n as usize * 140);
        for i in first..first + n {
            body.push_str(&self.json(i));
            body.push('\n');
        }
        Bytes::from(body)
    }
}

/// Records (or requests) per second, and request latency.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(super) struct Measured {
    /// Records acknowledged (direct: by the broker; HTTP: in 200 answers).
    pub(super) records: u64,
    /// HTTP requests answered 200 (0 for `direct`; one per record for `direct_open`).
    pub(super) requests: u64,
    /// Answers other than 200, and failed sends.
    pub(super) failed: u64,
    pub(super) first_failure: Option<String>,
    /// First send to last acknowledgement, seconds.
    pub(super) seconds: f64,
    pub(super) records_per_s: f64,
    pub(super) requests_per_s: f64,
    /// Request latency, ms (not for `direct`; open loops: from each request's scheduled
    /// time).
    pub(super) p50_ms: Option<f64>,
    pub(super) p99_ms: Option<f64>,
    pub(super) max_ms: Option<f64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

impl Measured {
    fn finish(mut self, span: Duration, h: Option<&Histogram<u64>>) -> Self {
        self.seconds = span.as_secs_f64();
        if self.seconds > 0.0 {
            self.records_per_s = self.records as f64 / self.seconds;
            self.requests_per_s = self.requests as f64 / self.seconds;
        }
        if let Some(h) = h.filter(|h| !h.is_empty()) {
            self.p50_ms = Some(h.value_at_quantile(0.5) as f64 / 1e3);
            self.p99_ms = Some(h.value_at_quantile(0.99) as f64 / 1e3);
            self.max_ms = Some(h.max() as f64 / 1e3);
        }
        self
    }
}

/// Futures the direct contender keeps before awaiting the oldest: twice the producer's
/// default bound of pending records, so the producer's bound, not this window, holds the
/// sender back. Keeping every future of the run instead grew one vector to millions of
/// entries, reallocated and copied while timed (the first round's direct load ran at under
/// half the speed of the others).
pub(super) const DIRECT_WINDOW: usize = 200_000;

/// The direct contender: records sent with `Producer::send` for `seconds`, every future
/// awaited, the oldest once `window` are outstanding: [`DIRECT_WINDOW`] lets the producer's
/// own bound hold the sender back; the NDJSON load's records in flight (connections ×
/// records per request) match what the gateway is given.
pub(super) async fn direct(
    p: &Producer,
    topic: &Topic,
    data: &Data,
    seconds: f64,
    window: usize,
) -> Measured {
    let window = window.max(1);
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);
    let mut futures = std::collections::VecDeque::with_capacity(window);
    let mut m = Measured::default();
    let settle = |m: &mut Measured, r: Result<_, kbatch_producer::ProduceError>| match r {
        Ok(_) => m.records += 1,
        Err(e) => {
            m.failed += 1;
            m.first_failure.get_or_insert(e.to_string());
        }
    };
    let mut i = 0u64;
    while Instant::now() < until {
        if futures.len() >= window
            && let Some(f) = futures.pop_front()
        {
            settle(&mut m, f.await);
        }
        match p.send(data.record(topic, i)).await {
            Ok(f) => futures.push_back(f),
            Err(e) => {
                m.failed += 1;
                m.first_failure.get_or_insert(e.to_string());
            }
        }
        i += 1;
    }
    for f in futures {
        settle(&mut m, f.await);
    }
    m.finish(start.elapsed(), None)
}

/// The open loop's schedule through `p` with no HTTP: record `i` due at `start + i / rate`,
/// latency from the due time to its acknowledgement (at most `outstanding` unacknowledged).
/// What the broker and client alone give at that rate, under the gateway's open loop.
#[allow(
    clippy::async_yields_async,
    reason = "the handing in is awaited in schedule order, the future it yields on its own task"
)]
pub(super) async fn direct_open(
    p: &Producer,
    topic: &Topic,
    data: &Data,
    rate: f64,
    seconds: f64,
    outstanding: usize,
) -> Measured {
    on_schedule(rate, seconds, outstanding, async |i| {
        let sent = p.send(data.record(topic, i)).await;
        async move {
            match sent {
                Ok(delivery) => delivery.await.map(|_| 1).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

/// Request `i` due at `start + i / rate` for `seconds`: `begin(i)` hands it in (in schedule
/// order) and returns what completes it, which runs on its own task; latency from the due
/// time, so a late sender pays for it (at most `outstanding` in flight: beyond that the
/// schedule waits, and that counts too).
async fn on_schedule<F>(
    rate: f64,
    seconds: f64,
    outstanding: usize,
    mut begin: impl AsyncFnMut(u64) -> F,
) -> Measured
where
    F: Future<Output = Result<u64, String>> + Send + 'static,
{
    let shared: Shared = Arc::new(Mutex::new((Measured::default(), histogram())));
    let permits = Arc::new(Semaphore::new(outstanding));
    let start = Instant::now();
    let total = (rate * seconds).ceil() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let done = begin(i).await;
        let shared = Arc::clone(&shared);
        tasks.spawn(async move {
            let r = done.await;
            tally(&shared, r, due.elapsed());
            drop(permit);
        });
        // Reap finished tasks as we go, so the set stays as small as what is in flight.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    summed(&shared, start.elapsed())
}

/// One record through the gateway and one through `p`, each awaited and not counted: a new
/// topic's leaders and metadata, and the gateway's lookup of it, are start-up, not load.
pub(super) async fn probe(
    p: &Producer,
    e: &Endpoint,
    topic: &Topic,
    data: &Data,
) -> anyhow::Result<()> {
    p.send(data.record(topic, 0))
        .await?
        .await
        .map_err(|err| anyhow::anyhow!("the new topic {topic} is not writable: {err}"))?;
    e.post(data.single(0), false, 1)
        .await
        .map_err(|err| anyhow::anyhow!("the gateway does not take {topic}: {err}"))?;
    Ok(())
}

/// Where requests go and how they authenticate.
#[derive(Clone)]
pub(super) struct Endpoint {
    pub(super) client: reqwest::Client,
    /// `http://addr/topics/{topic}/records`.
    pub(super) url: String,
    pub(super) token: Arc<str>,
}

impl Endpoint {
    /// Posts `body`; the records the 200 answer acknowledged, or why not.
    async fn post(&self, body: Bytes, ndjson: bool, records: u64) -> Result<u64, String> {
        let r = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .header(
                reqwest::header::CONTENT_TYPE,
                if ndjson {
                    "application/x-ndjson"
                } else {
                    "application/json"
                },
            )
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        // Read whole (the answer is part of the exchange), decoded only to report a failure.
        let body = r.bytes().await.map_err(|e| e.to_string())?;
        if status != reqwest::StatusCode::OK {
            return Err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ));
        }
        Ok(records)
    }
}

type Shared = Arc<Mutex<(Measured, Histogram<u64>)>>;

/// What the requests of a load tallied, over `span`.
fn summed(shared: &Shared, span: Duration) -> Measured {
    let g = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    g.0.clone().finish(span, Some(&g.1))
}

fn tally(shared: &Shared, r: Result<u64, String>, latency: Duration) {
    let mut g = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match r {
        Ok(n) => {
            g.0.records += n;
            g.0.requests += 1;
            let us = u64::try_from(latency.as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            g.1.saturating_record(us);
        }
        Err(e) => {
            g.0.failed += 1;
            g.0.first_failure.get_or_insert(e);
        }
    }
}

/// `workers` connections each posting bodies of `per` records (1: a single JSON record,
/// else NDJSON) back to back for `seconds`.
pub(super) async fn closed_loop(
    e: &Endpoint,
    data: &Arc<Data>,
    workers: usize,
    per: u64,
    seconds: f64,
) -> Measured {
    let shared: Shared = Arc::new(Mutex::new((Measured::default(), histogram())));
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..workers as u64)
        .map(|w| {
            let (e, data, shared) = (e.clone(), Arc::clone(data), Arc::clone(&shared));
            tokio::spawn(async move {
                let mut n = w;
                while Instant::now() < until {
                    let body = if per == 1 {
                        data.single(n)
                    } else {
                        data.batch(n)
                    };
                    let sent = Instant::now();
                    let r = e.post(body, per > 1, per).await;
                    tally(&shared, r, sent.elapsed());
                    n += workers as u64;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    summed(&shared, start.elapsed())
}

/// Single-record requests at `rate` per second for `seconds` (see [`on_schedule`]).
#[allow(
    clippy::async_yields_async,
    reason = "the handing in is awaited in schedule order, the future it yields on its own task"
)]
pub(super) async fn open_loop(
    e: &Endpoint,
    data: &Arc<Data>,
    rate: f64,
    seconds: f64,
    outstanding: usize,
) -> Measured {
    on_schedule(rate, seconds, outstanding, async |i| {
        let (e, body) = (e.clone(), data.single(i));
        async move { e.post(body, false, 1).await }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ndjson_line_carries_what_the_direct_record_carries() {
        let d = Data::new(10, 100, 5);
        let t: Topic = "t".into();
        let line: serde_json::Value = serde_json::from_str(&d.json(3)).unwrap();
        let r = d.record(&t, 3);
        assert_eq!(
            line["key"].as_str().unwrap().as_bytes(),
            &r.key.unwrap()[..]
        );
        let value = r.value.unwrap();
        // The gateway writes a JSON value as its compact text: the quoted string.
        assert_eq!(line["value"].to_string().as_bytes(), &value[..]);
        assert_eq!(value.len(), 100);
        let body = d.ndjson(0, 5);
        assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 5);
    }
}
