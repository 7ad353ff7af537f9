//! A gateway over a real socket, a real producer and the real test broker.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the fixture"
)]

use std::net::SocketAddr;
use std::time::Duration;

use kbatch_adaptive::AdaptiveConfig;
use kbatch_client::Isolation;
use kbatch_core::ConsumedRecord;
use kbatch_gateway::{ApiKey, Gateway, GatewayConfig};
use kbatch_producer::{CloseReport, Producer, ProducerConfig};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The token of the test key, allowed `gw-*`.
pub(crate) const TOKEN: &str = "s3cret-gateway-token";

/// A random topic name the test key may write to.
pub(crate) fn topic(prefix: &str) -> String {
    kbatch_testkit::unique_name(&format!("gw-{prefix}"))
}

/// Defaults, on port 0, with the test key.
pub(crate) fn config() -> GatewayConfig {
    GatewayConfig::default()
        .with_bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .with_api_key(ApiKey::from_token("writer", TOKEN, ["gw-*"]))
}

/// Producer defaults against the test broker.
pub(crate) fn producer_config() -> ProducerConfig {
    ProducerConfig::new(kbatch_testkit::client_config())
}

/// A running gateway.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) shutdown: CancellationToken,
    pub(crate) task: JoinHandle<kbatch_gateway::Result<CloseReport>>,
    pub(crate) producer: Producer,
    pub(crate) http: reqwest::Client,
}

/// The adaptive producers' settings tests start from: no calibration file (a test must not
/// write the user's), otherwise the defaults around `producer`.
pub(crate) fn adaptive_config(producer: ProducerConfig) -> AdaptiveConfig {
    AdaptiveConfig::new(producer).without_calibration()
}

pub(crate) async fn start(config: GatewayConfig, producer: ProducerConfig) -> Running {
    let adaptive = adaptive_config(producer.clone());
    start_adaptive(config, producer, adaptive).await
}

/// A running gateway whose adaptive producers start from `adaptive`.
pub(crate) async fn start_adaptive(
    config: GatewayConfig,
    producer: ProducerConfig,
    adaptive: AdaptiveConfig,
) -> Running {
    let producer = Producer::new(producer).unwrap();
    let gateway = Gateway::bind_with_adaptive(config, producer.clone(), adaptive)
        .await
        .unwrap();
    let addr = gateway.local_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway.run(shutdown.clone()));
    Running {
        addr,
        shutdown,
        task,
        producer,
        http: reqwest::Client::new(),
    }
}

/// A response: status, headers, JSON body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: Value,
}

impl Answer {
    pub(crate) fn results(&self) -> &Vec<Value> {
        self.body["results"]
            .as_array()
            .unwrap_or_else(|| panic!("no results in {}", self.body))
    }

    pub(crate) fn error_code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", self.body))
    }
}

impl Running {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` to `path` with the test token and `content_type`.
    pub(crate) async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        self.post_as(path, Some(TOKEN), content_type, body).await
    }

    pub(crate) async fn post_as(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let mut req = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        answer(req.send().await.unwrap()).await
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        answer(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    /// Cancels the shutdown token and waits for the gateway to return.
    pub(crate) async fn stop(self) -> CloseReport {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap()
    }
}

pub(crate) async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "status {status}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    Answer {
        status,
        headers,
        body,
    }
}

/// Every record of `topic`, read from the broker (waits until `expected` arrived, then a
/// further second so that extra records would be seen too).
pub(crate) async fn read_back(topic: &str, expected: usize) -> Vec<ConsumedRecord> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut all: Vec<_> = kbatch_testkit::consume_all(
            &topic,
            Isolation::ReadUncommitted,
            Some(expected),
            Duration::from_secs(15),
        )
        .into_values()
        .flatten()
        .collect();
        // Anything beyond `expected` (a duplicate, say) must show up too.
        let more = kbatch_testkit::consume_all(
            &topic,
            Isolation::ReadUncommitted,
            None,
            Duration::from_secs(1),
        );
        let total: usize = more.values().map(Vec::len).sum();
        if total > all.len() {
            all = more.into_values().flatten().collect();
        }
        all
    })
    .await
    .unwrap()
}

/// Checks that result `i` (`{"partition","offset"}`) points at a consumed record with key
/// `keys[i]` and value `values[i]`, and that nothing else was written.
pub(crate) fn assert_results_match(
    results: &[Value],
    keys: &[Option<Vec<u8>>],
    values: &[Option<Vec<u8>>],
    consumed: &[ConsumedRecord],
) {
    let ok: Vec<_> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.get("error").is_none())
        .collect();
    assert_eq!(
        consumed.len(),
        ok.len(),
        "the broker holds exactly the acknowledged records"
    );
    for (i, r) in ok {
        let p = r["partition"].as_i64().unwrap() as i32;
        let o = r["offset"].as_i64().unwrap();
        let c = consumed
            .iter()
            .find(|c| c.partition == p && c.offset.0 == o)
            .unwrap_or_else(|| panic!("result {i} ({r}) is not in the topic"));
        assert_eq!(c.key.as_deref(), keys[i].as_deref(), "key of record {i}");
        assert_eq!(
            c.value.as_deref(),
            values[i].as_deref(),
            "value of record {i}"
        );
    }
}
