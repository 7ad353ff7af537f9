//! `kbatch gateway`: the HTTP ingest gateway (`kbatch_gateway`) in front of a Kafka cluster,
//! until Ctrl-C or SIGTERM.
//!
//! ```text
//!  --config FILE.toml ─► GatewayConfig ◄─ --bind, --api-key-sha256 (added), --insecure-no-auth,
//!                            │            --producer, --packed-topic (added), --calibration-path,
//!                            │            --tls-cert/--tls-key, --max-concurrent-requests,
//!                            │            --max-connections
//!                            │
//!  --brokers ─► Producer ─► Gateway::run ── Ctrl-C / SIGTERM ─► stop accepting, answer the
//!                                             requests in flight, close the producer
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args as ClapArgs;
use kbatch_client::ClientConfig;
use kbatch_gateway::{ApiKey, Gateway, GatewayConfig, ProducerKind};
use kbatch_producer::{Producer, ProducerConfig};
use tokio_util::sync::CancellationToken;

/// Options of `kbatch gateway`.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// Bootstrap servers of the Kafka cluster.
    #[arg(long, env = "KBATCH_BROKERS")]
    brokers: String,
    /// Address to listen on (default 127.0.0.1:8082, or the config file's `bind`).
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// TOML config file (fields of `GatewayConfig`: bind, max_body_bytes,
    /// max_records_per_request, request_timeout_ms, topic_cache_ttl_ms, producer,
    /// packed_topics, calibration_path, `[[api_keys]]`).
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Accept requests without credentials (internal `__` topics stay closed). Logged loudly.
    #[arg(long)]
    insecure_no_auth: bool,
    /// An API key: its name, the SHA-256 hex of its token (`printf %s "$TOKEN" | sha256sum`)
    /// and the topic patterns it may write to (`*` wildcard). Repeatable; added to the file's.
    #[arg(long = "api-key-sha256", value_name = "NAME:HEX:PATTERN[,PATTERN]", value_parser = parse_key)]
    api_keys: Vec<ApiKey>,
    /// What sends the records: `adaptive` (default: batches sized by the pressure level, a
    /// lone record sent at once, `X-Latency-Budget-Ms` honoured) or `plain` (the batching
    /// producer, 5 ms linger, budgets ignored). Overrides the file's `producer`.
    #[arg(long, value_name = "adaptive|plain")]
    producer: Option<ProducerKind>,
    /// Topics matching this pattern (`*` wildcard) are packed: many records become one Kafka
    /// record holding an envelope, which consumers must unpack (kbatch's consumers do).
    /// Repeatable; added to the file's `packed_topics`.
    #[arg(long = "packed-topic", value_name = "PATTERN")]
    packed_topics: Vec<String>,
    /// SQLite file where the adaptive producers remember learned batch settings (profiles
    /// `gateway`, `gateway-packed`). Default: the file's `calibration_path`, else the
    /// adaptive producer's default file.
    #[arg(long, value_name = "FILE.sqlite")]
    calibration_path: Option<PathBuf>,
    /// Serve HTTPS: PEM certificate chain (with --tls-key; or the config file's `tls_cert`).
    #[arg(long, value_name = "CERT.pem", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Serve HTTPS: PEM private key of --tls-cert.
    #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Most produce requests handled at once; past it 429 `overloaded` (default 1024).
    #[arg(long)]
    max_concurrent_requests: Option<usize>,
    /// Most open client connections; past it new ones wait in the listen backlog (default 10000).
    #[arg(long)]
    max_connections: Option<usize>,
}

fn parse_key(s: &str) -> Result<ApiKey, String> {
    ApiKey::parse_cli(s).map_err(|e| e.to_string())
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let mut config = match &a.config {
        // Validated below, once the flags' keys are added.
        Some(path) => GatewayConfig::from_toml_file(path)?,
        None => GatewayConfig::default(),
    };
    if let Some(bind) = a.bind {
        config = config.with_bind(bind);
    }
    for key in a.api_keys {
        config = config.with_api_key(key);
    }
    if a.insecure_no_auth {
        config = config.with_insecure_no_auth(true);
    }
    if let Some(producer) = a.producer {
        config = config.with_producer(producer);
    }
    for pattern in a.packed_topics {
        config = config.with_packed_topic(pattern);
    }
    if let Some(path) = a.calibration_path {
        config = config.with_calibration_path(path);
    }
    if let (Some(cert), Some(key)) = (a.tls_cert, a.tls_key) {
        config = config.with_tls(cert, key);
    }
    if let Some(n) = a.max_concurrent_requests {
        config = config.with_max_concurrent_requests(n);
    }
    if let Some(n) = a.max_connections {
        config.max_connections = n;
    }
    config.validate()?;
    let producer = Producer::new(ProducerConfig::new(
        ClientConfig::new(a.brokers.as_str()).with_client_id("kbatch-gateway"),
    ))?;
    let gateway = Gateway::bind(config, producer).await?;
    eprintln!("kbatch gateway: {} (metrics: GET /metrics)", gateway.url());
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let report = gateway.run(shutdown).await?;
    eprintln!(
        "kbatch gateway stopped: producers closed (plain: {} pending at close, {} failed, flushed: {}; the adaptive producers' reports are in the log)",
        report.pending_at_close, report.failed, report.flushed
    );
    anyhow::ensure!(
        report.failed == 0,
        "{} records failed while closing",
        report.failed
    );
    Ok(())
}

/// Cancels `token` on Ctrl-C or (on Unix) SIGTERM, the signal service managers stop with.
async fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the gateway");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    eprintln!("kbatch gateway: stopping (answering requests in flight)");
    token.cancel();
}
