//! The serve loop: accepts connections (at most `max_connections`), optionally terminates
//! TLS, serves HTTP/1 on each with hyper's header-read timeout and header-count bound, and
//! shuts down gracefully.
//!
//! ```text
//!  TcpListener ─► permit (max_connections; none free: stop calling accept) ─► accept
//!    ─► [TLS handshake within header_read_timeout] ─► hyper http1 (header_read_timeout,
//!       max_headers → 431, keep-alive) ─► axum router
//!  shutdown ─► stop accepting ─► each connection: finish its request, close ─► return
//! ```
//!
//! Why not `axum::serve`: it offers neither a header-read timeout nor a header bound nor a
//! connection bound, so one slow-loris client per file descriptor could hold the server.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GatewayConfig;
use crate::error::Error;
use crate::metrics::{GaugeGuard, OPEN_CONNECTIONS};

/// A loaded TLS certificate and key, ready to accept with.
#[derive(Clone)]
pub(crate) struct Tls(TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

impl Tls {
    /// Reads the PEM files of `config`, if it has them. A missing or unusable file is an
    /// error naming it, at start-up rather than at the first handshake.
    pub(crate) fn load(config: &GatewayConfig) -> Result<Option<Self>, Error> {
        let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
            return Ok(None);
        };
        let tls_err = |what: &'static str, path: &Path, why: String| Error::Tls {
            what,
            path: path.to_owned(),
            why,
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| tls_err("tls_cert", cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(tls_err(
                "tls_cert",
                cert,
                "no CERTIFICATE in the file: expected a PEM certificate chain".into(),
            ));
        }
        let private_key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| tls_err("tls_key", key, format!("{e} (expected a PEM private key)")))?;
        // The provider is named rather than taken from the process default: aws-lc-rs is
        // the one the workspace already builds (reqwest's rustls), and naming it cannot
        // panic when another crate enables a second provider.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("tls_cert", cert, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, private_key)
            .map_err(|e| {
                tls_err(
                    "tls_key",
                    key,
                    format!("does not fit the certificate chain {cert:?}: {e}"),
                )
            })?;
        let mut server = server;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Self(TlsAcceptor::from(Arc::new(server)))))
    }
}

/// The connection settings of the serve loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_headers: usize,
    pub(crate) max_connections: usize,
}

impl ConnectionLimits {
    pub(crate) fn of(config: &GatewayConfig) -> Self {
        Self {
            header_read_timeout: config.header_read_timeout,
            max_headers: config.max_headers,
            max_connections: config.max_connections,
        }
    }
}

/// Serves `router` on `listener` until `shutdown`; then stops accepting and waits for every
/// connection to finish its request in flight (each bounded by the request timeout, idle
/// ones close at once).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Tls>,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        // Past max_connections the loop stops calling accept: new connections wait in the
        // kernel's listen backlog (and past that the kernel drops their SYNs, so clients
        // retry) until one closes. Accepting and closing at once would cost a handshake and
        // tell the client nothing it could act on; waiting serves it as soon as there is room.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: the listener itself is fine, so
                    // wait a little (as axum::serve does) instead of spinning or stopping.
                    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Small answers are written whole; Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        let http = http.clone();
        let router = router.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _open = GaugeGuard::up(OPEN_CONNECTIONS);
            match tls {
                None => serve_connection(stream, http, router, shutdown).await,
                Some(Tls(acceptor)) => {
                    // The handshake gets the header timeout too: a client stalling it would
                    // otherwise hold a connection slot for ever.
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => serve_connection(stream, http, router, shutdown).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    tracing::info!(
        connections = connections.len(),
        "stopped accepting; waiting for the requests in flight"
    );
    connections.wait().await;
}

async fn serve_connection<I>(
    io: I,
    http: http1::Builder,
    router: Router,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.cancelled() => {
            // Finishes the request in flight (if any), then closes.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Header timeouts, malformed requests, clients going away: theirs, not ours.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
