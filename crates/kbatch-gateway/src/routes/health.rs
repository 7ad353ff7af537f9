//! `GET /healthz` (the process serves) and `GET /readyz` (the broker answers).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::RequestError;
use crate::server::AppState;

/// How long `/readyz` waits for the broker's metadata answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// A topic name no one creates (the `__` prefix is never writable through the gateway). Asking
/// the broker to describe it is a metadata round trip that needs no topic to exist: an
/// "unknown topic" answer proves the broker is reachable as much as a description does.
const READY_PROBE_TOPIC: &str = "__kbatch_gateway_readiness_probe";

pub(crate) async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state
        .producer
        .partition_count(READY_PROBE_TOPIC, READY_TIMEOUT)
        .await
    {
        Ok(_) | Err(kbatch_client::Error::UnknownTopic(_)) => {
            (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response()
        }
        Err(e) => RequestError::Unavailable(format!(
            "the broker did not answer a metadata request within {READY_TIMEOUT:?}: {e}"
        ))
        .into_response(),
    }
}
