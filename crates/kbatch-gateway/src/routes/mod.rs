//! The HTTP routes and the layers around them.
//!
//! ```text
//!  connection (listener.rs: max_connections, [TLS], header_read_timeout, max_headers → 431)
//!  request ─► metrics::track (requests by route/status, latency, in flight)
//!          ─► TimeoutLayer (backstop: request_timeout + 5 s, 503) ─► DefaultBodyLimit
//!          ─► Idempotency-Key (idempotency.rs)
//!          ─► produce routes: load shedding (limits.rs: max_concurrent_requests, else 429)
//!               ─► /topics/{topic}/records (records.rs) | /topics/{topic} (rest_proxy.rs, REST Proxy v2)
//!                | /v3/clusters/{id}/topics/{topic}/records (rest_proxy_v3/, REST Proxy v3 and its streaming mode)
//!           | GET /v3/clusters[/{id}] | /healthz, /readyz (health.rs) | /metrics (metrics.rs) | 404
//! ```

pub(crate) mod body;
pub(crate) mod budget;
mod health;
mod records;
pub(crate) mod rest_proxy;
pub(crate) mod rest_proxy_v3;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tower_http::timeout::TimeoutLayer;

use crate::error::RequestError;
use crate::server::AppState;

/// Past the request timeout, the handler answers itself (503 per unacknowledged record); the
/// layer only catches a request stuck elsewhere (a client trickling its body).
const BACKSTOP_MARGIN: Duration = Duration::from_secs(5);

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let timeout = state.config.request_timeout + BACKSTOP_MARGIN;
    let body_limit = state.config.max_body_bytes;
    // Only the produce routes are shed: health checks and scrapes must answer while the
    // gateway is saturated, which is when they matter.
    let produce = crate::limits::shed_produce_routes(
        Router::new()
            .route("/topics/{topic}/records", post(records::produce))
            .route("/topics/{topic}", post(rest_proxy::produce_v2))
            .route(
                "/v3/clusters/{cluster_id}/topics/{topic}/records",
                post(rest_proxy_v3::produce_v3),
            ),
        state.config.max_concurrent_requests,
    );
    let mut router = Router::new()
        .merge(produce)
        .route("/v3/clusters", get(rest_proxy_v3::list_clusters))
        .route("/v3/clusters/{cluster_id}", get(rest_proxy_v3::get_cluster))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if state.config.metrics {
        router = router.route("/metrics", get(crate::metrics::render));
    }
    router
        .fallback(|| async {
            RequestError::NotFound(
                "no such route: POST /topics/{topic}/records, POST /topics/{topic} (REST Proxy v2), POST /v3/clusters/{cluster_id}/topics/{topic}/records (REST Proxy v3), GET /v3/clusters, GET /healthz, GET /readyz, GET /metrics".into(),
            )
        })
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::idempotency::layer,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        // Outermost, so every answer is counted, the timeout's and the shedder's included.
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(state)
}
