//! The server: binds, starts the producers, serves the routes, shuts down gracefully, closes
//! every producer.

use std::net::SocketAddr;
use std::sync::Arc;

use kbatch_adaptive::AdaptiveConfig;
use kbatch_producer::{CloseReport, Producer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Authorizer;
use crate::config::GatewayConfig;
use crate::error::{Error, Result};
use crate::sink::Sink;
use crate::topics::TopicCache;

/// What every request handler shares.
pub(crate) struct AppState {
    pub(crate) config: GatewayConfig,
    pub(crate) producer: Producer,
    pub(crate) auth: Authorizer,
    pub(crate) topics: TopicCache,
    pub(crate) idempotency: crate::idempotency::Store,
    /// What records are sent through (`producer` is kept for metadata and readiness).
    pub(crate) sink: Sink,
    pub(crate) metrics: crate::metrics::GatewayMetrics,
    pub(crate) v3: crate::routes::rest_proxy_v3::V3State,
}

/// The HTTP ingest gateway: bound to its address, not yet serving. See the [crate docs](crate).
#[derive(Debug)]
pub struct Gateway {
    listener: TcpListener,
    addr: SocketAddr,
    config: GatewayConfig,
    producer: Producer,
    sink: Sink,
    tls: Option<crate::listener::Tls>,
}

impl Gateway {
    /// Validates `config`, starts the producers it asks for and binds its address (port 0
    /// picks a free one; see [`local_addr`](Gateway::local_addr)). Logs a WARN when running
    /// without authentication.
    ///
    /// `producer` answers the topic lookups (and `/readyz`) in every mode, and sends the
    /// records with `producer = "plain"`. The adaptive producers (the default, and packed
    /// topics) start from `AdaptiveConfig::new` around `producer`'s config; see
    /// [`bind_with_adaptive`](Gateway::bind_with_adaptive) to tune them.
    pub async fn bind(config: GatewayConfig, producer: Producer) -> Result<Self> {
        let adaptive = AdaptiveConfig::new(producer.config().clone());
        Self::bind_with_adaptive(config, producer, adaptive).await
    }

    /// As [`bind`](Gateway::bind), with `adaptive` as the adaptive producers' settings (levels,
    /// initial level, intake capacity…). The gateway sets their shape (per-event, or packed
    /// for `packed_topics`), their calibration profile (`gateway`, `gateway-packed`) and,
    /// when `calibration_path` is set, their calibration file.
    pub async fn bind_with_adaptive(
        config: GatewayConfig,
        producer: Producer,
        adaptive: AdaptiveConfig,
    ) -> Result<Self> {
        config.validate()?;
        if config.insecure_no_auth {
            tracing::warn!(
                bind = %config.bind,
                "INSECURE: the gateway accepts requests WITHOUT credentials (insecure_no_auth); anyone who reaches {} can write to any non-internal topic",
                config.bind
            );
        }
        // Before binding: a bad certificate is a start-up error naming its file.
        let tls = crate::listener::Tls::load(&config)?;
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| Error::Bind {
                addr: config.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.bind,
            source,
        })?;
        let sink = Sink::start(&config, producer.clone(), adaptive).map_err(Error::Adaptive)?;
        tracing::info!(
            producer = ?config.producer,
            packed_topics = ?config.packed_topics,
            "kbatch gateway producers started"
        );
        Ok(Self {
            listener,
            addr,
            config,
            producer,
            sink,
            tls,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://` or `http://` with the address bound, for logs.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Serves until `shutdown` is cancelled, then stops accepting connections, lets in-flight
    /// requests finish (each within its request timeout), and closes every producer: the
    /// adaptive ones first (they send what they hold; their reports are logged), then the
    /// plain one, whose report is returned.
    pub async fn run(self, shutdown: CancellationToken) -> Result<CloseReport> {
        let state = Arc::new(AppState {
            auth: Authorizer::new(&self.config),
            topics: TopicCache::new(self.config.topic_cache_ttl),
            idempotency: crate::idempotency::Store::new(
                self.config.idempotency_window,
                self.config.idempotency_max_entries,
                self.config.idempotency_max_bytes,
            ),
            producer: self.producer.clone(),
            sink: self.sink.clone(),
            metrics: {
                let mut m = crate::metrics::GatewayMetrics::new(self.config.metrics);
                let sink = self.sink.clone();
                m.pressure_level = Some(Arc::new(move || sink.pressure_level()));
                m
            },
            v3: crate::routes::rest_proxy_v3::V3State::new(shutdown.clone()),
            config: self.config,
        });
        let limits = crate::listener::ConnectionLimits::of(&state.config);
        let upkeep = state.metrics.handle().map(|h| {
            tokio::spawn(crate::metrics::GatewayMetrics::upkeep(
                h,
                shutdown.child_token(),
            ))
        });
        tracing::info!(addr = %self.addr, tls = self.tls.is_some(), "kbatch gateway serving");
        crate::listener::serve(
            self.listener,
            self.tls,
            crate::routes::router(state),
            limits,
            shutdown,
        )
        .await;
        if let Some(task) = upkeep {
            let _ = task.await;
        }
        tracing::info!(
            "kbatch gateway stopped accepting; in-flight requests answered; closing the producers"
        );
        Ok(self.sink.close().await)
    }

    /// [`bind`](Gateway::bind) then [`run`](Gateway::run).
    pub async fn serve(
        config: GatewayConfig,
        producer: Producer,
        shutdown: CancellationToken,
    ) -> Result<CloseReport> {
        Self::bind(config, producer).await?.run(shutdown).await
    }
}
