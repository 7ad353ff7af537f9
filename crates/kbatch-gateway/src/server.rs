//! The server: binds, serves the routes, shuts down gracefully, closes the producer.

use std::net::SocketAddr;
use std::sync::Arc;

use kbatch_producer::{CloseReport, Producer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Authorizer;
use crate::config::GatewayConfig;
use crate::error::{Error, Result};
use crate::topics::TopicCache;

/// What every request handler shares.
pub(crate) struct AppState {
    pub(crate) config: GatewayConfig,
    pub(crate) producer: Producer,
    pub(crate) auth: Authorizer,
    pub(crate) topics: TopicCache,
    pub(crate) idempotency: crate::idempotency::Store,
    pub(crate) v3: crate::routes::rest_proxy_v3::V3State,
}

/// The HTTP ingest gateway: bound to its address, not yet serving. See the [crate docs](crate).
#[derive(Debug)]
pub struct Gateway {
    listener: TcpListener,
    addr: SocketAddr,
    config: GatewayConfig,
    producer: Producer,
}

impl Gateway {
    /// Validates `config` and binds its address (port 0 picks a free one; see
    /// [`local_addr`](Gateway::local_addr)). Logs a WARN when running without authentication.
    pub async fn bind(config: GatewayConfig, producer: Producer) -> Result<Self> {
        config.validate()?;
        if config.insecure_no_auth {
            tracing::warn!(
                bind = %config.bind,
                "INSECURE: the gateway accepts requests WITHOUT credentials (insecure_no_auth); anyone who reaches {} can write to any non-internal topic",
                config.bind
            );
        }
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
        Ok(Self {
            listener,
            addr,
            config,
            producer,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled, then stops accepting connections, lets in-flight
    /// requests finish (each within its request timeout), and closes the producer, returning
    /// what the close reports.
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
            v3: crate::routes::rest_proxy_v3::V3State::new(shutdown.clone()),
            config: self.config,
        });
        tracing::info!(addr = %self.addr, "kbatch gateway serving");
        axum::serve(self.listener, crate::routes::router(state))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(Error::Serve)?;
        tracing::info!(
            "kbatch gateway stopped accepting; in-flight requests answered; closing the producer"
        );
        Ok(self.producer.close().await)
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
