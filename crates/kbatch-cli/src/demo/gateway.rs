//! `kbatch demo --via-gateway`: the demo's load through the HTTP ingest gateway.
//!
//! ```text
//!  generator ─► C connections, NDJSON (?format=binary) ─► Gateway (this process, 127.0.0.1:0,
//!     seq + send time in          one request at a time    an API key, its default adaptive
//!     every value                 per connection           producer) ─► topic ─► the demo's consumer
//! ```
//!
//! Connection `c` carries the keys `k` with `k % C == c`, one request at a time, so a key's
//! records travel one connection in order and keep it end to end: the demo's ledger checks
//! per-key order as it does for the direct producer. A record counts as delivered when the
//! gateway's 200 or 207 answer gives its offset; records a 207 or 429 refused (the producer
//! was full) are sent again, in order, after `Retry-After`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use kbatch_gateway::{ApiKey, Gateway, GatewayConfig};
use kbatch_producer::Producer;
use rand::Rng as _;
use tokio_util::sync::CancellationToken;

use super::Args;
use super::ledger;
use super::run::Produced;
use crate::stats::latency_histogram;

/// Connections posting at once.
const CONNECTIONS: u64 = 8;
/// Records per request.
const BATCH: usize = 500;

/// Sends every record through a gateway started here on `p` (which answers its metadata
/// lookups; the records go through the gateway's default adaptive producer) and stops it.
pub(super) async fn produce_all(
    p: Producer,
    topic: String,
    a: Args,
    base: Instant,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<Produced> {
    let token: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let config = GatewayConfig::default()
        .with_bind("127.0.0.1:0".parse()?)
        .with_api_key(ApiKey::from_token("demo", &token, [topic.as_str()]));
    let gateway = Gateway::bind(config, p)
        .await
        .context("cannot start the demo's gateway")?;
    let url = format!("{}/topics/{topic}/records?format=binary", gateway.url());
    eprintln!(
        "demo: records go through the HTTP gateway at {}",
        gateway.url()
    );
    let stop = CancellationToken::new();
    let server = tokio::spawn(gateway.run(stop.clone()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let started = Instant::now();
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (http, url, token, a, progress) = (
                http.clone(),
                url.clone(),
                token.clone(),
                a.clone(),
                Arc::clone(&progress),
            );
            tokio::spawn(async move {
                let seqs = (0..a.records).filter(move |s| (s % a.keys) % CONNECTIONS == c);
                send_connection(&http, &url, &token, &a, base, seqs, &progress).await
            })
        })
        .collect();
    let mut out = Produced::empty();
    let mut first_failure = None;
    for s in senders {
        match s.await? {
            Ok(part) => out.absorb(part),
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    server
        .await?
        .context("the demo's gateway stopped with an error")?;
    if let Some(e) = first_failure {
        return Err(e);
    }
    Ok(out)
}

/// One connection's share: batches of its records, each answered before the next is sent.
async fn send_connection(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    a: &Args,
    base: Instant,
    seqs: impl Iterator<Item = u64>,
    progress: &AtomicU64,
) -> anyhow::Result<Produced> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Produced::empty();
    let mut value = vec![b'.'; a.size as usize];
    let mut seqs = seqs.peekable();
    while seqs.peek().is_some() {
        // (seq, send time µs, NDJSON line) of this request.
        let mut batch: Vec<(u64, u64, String)> = Vec::with_capacity(BATCH);
        for seq in seqs.by_ref().take(BATCH) {
            let sent = base.elapsed().as_micros() as u64;
            ledger::encode(&mut value, seq, sent);
            let key = format!("key-{}", seq % a.keys);
            let line = format!(
                r#"{{"key":"{}","value":"{}"}}"#,
                b64.encode(key),
                b64.encode(&value)
            );
            batch.push((seq, sent, line));
        }
        // Until every record of the batch is in Kafka: refused ones (a full producer) go
        // again, in order; anything else fails the demo.
        while !batch.is_empty() {
            let body: String = batch.iter().map(|(_, _, l)| format!("{l}\n")).collect();
            let r = http
                .post(url)
                .bearer_auth(token)
                .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                .body(body)
                .send()
                .await
                .context("the demo's gateway did not answer")?;
            let status = r.status();
            let retry_after = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let text = r.text().await.context("the gateway's answer")?;
            let answer: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("the gateway's answer is not JSON: {text}"))?;
            let results = answer["results"].as_array().cloned().unwrap_or_default();
            if !(status.is_success() || status.as_u16() == 429) || results.len() != batch.len() {
                anyhow::bail!("the demo's gateway answered {status}: {answer}");
            }
            let now = base.elapsed().as_micros() as u64;
            let mut refused = Vec::new();
            for ((seq, sent, line), result) in batch.drain(..).zip(results) {
                if result.get("offset").is_some() {
                    let lat = now.saturating_sub(sent).max(1);
                    out.latency.saturating_record(lat);
                    out.delivered += 1;
                    progress.fetch_add(1, Ordering::Relaxed);
                } else if result["error"]["code"] == "producer_full" {
                    refused.push((seq, sent, line));
                } else {
                    anyhow::bail!("the demo's gateway failed record {seq}: {result}");
                }
            }
            if !refused.is_empty() {
                tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
            }
            batch = refused;
        }
    }
    Ok(out)
}

impl Produced {
    fn empty() -> Self {
        Self {
            seconds: 0.0,
            delivered: 0,
            failed: 0,
            first_error: None,
            latency: latency_histogram(),
        }
    }

    fn absorb(&mut self, other: Produced) {
        self.delivered += other.delivered;
        self.failed += other.failed;
        let _ = self.latency.add(&other.latency);
    }
}
