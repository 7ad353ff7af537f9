//! The HTTP ingest gateway: records posted over HTTP are answered only once Kafka has them.
//!
//! ```sh
//! KBATCH_BROKERS=127.0.0.1:9092 cargo run -p kbatch-examples --example gateway
//! cargo run -p kbatch-examples --example gateway   # in-memory dev broker
//! ```
//!
//! Starts a gateway on a free local port with one API key allowed `orders-*`, posts an NDJSON
//! batch with it (capping its records' batch wait with `X-Latency-Budget-Ms`), shows the
//! answer (a partition and offset per record), shows that a request without the key is
//! refused, and shuts the gateway down gracefully.

#![allow(clippy::print_stdout, reason = "an example shows its results")]

use kbatch::client::{Admin, DevBroker, NewTopic};
use kbatch::gateway::{ApiKey, Gateway, GatewayConfig};
use kbatch::prelude::*;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let topic = format!("orders-example-{}", std::process::id());
    let dev;
    let brokers = match std::env::var("KBATCH_BROKERS") {
        Ok(b) => {
            Admin::new(&ClientConfig::new(b.as_str()))?
                .create_topics(&[NewTopic::new(&topic, 4)])
                .await?;
            b
        }
        Err(_) => {
            dev = DevBroker::start(1)?;
            dev.create_topic(&topic, 4)?;
            dev.bootstrap_servers()
        }
    };

    // The config stores the token's SHA-256; the client presents the token.
    let token = format!("example-token-{}", std::process::id());
    let config = GatewayConfig::default()
        .with_bind("127.0.0.1:0".parse()?)
        .with_api_key(ApiKey::from_token("orders-service", &token, ["orders-*"]));
    let producer = Producer::new(ProducerConfig::for_brokers(&brokers))?;
    let gateway = Gateway::bind(config, producer).await?;
    let url = format!("http://{}/topics/{topic}/records", gateway.local_addr());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(gateway.run(shutdown.clone()));

    let http = reqwest::Client::new();
    let body = "{\"key\":\"order-1\",\"value\":{\"total\":42}}\n\
                {\"key\":\"order-2\",\"value\":{\"total\":7}}\n";
    let answer = http
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        // No record of this request waits more than 20 ms in a batch, whatever the load.
        .header("x-latency-budget-ms", "20")
        .body(body)
        .send()
        .await?;
    let status = answer.status();
    let text = answer.text().await?;
    println!("{status}: {text}");
    assert!(status.is_success(), "{text}");

    let refused = http.post(&url).body("{\"value\":1}").send().await?;
    println!("without the key: {}", refused.status());
    assert_eq!(refused.status().as_u16(), 401);

    shutdown.cancel();
    let report = server.await??;
    println!("gateway stopped; producer closed: {report:?}");
    Ok(())
}
