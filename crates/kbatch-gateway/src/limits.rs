//! Load shedding of produce requests: at most `max_concurrent_requests` at once, the next
//! answered 429 `overloaded` at once.
//!
//! ```text
//!  request ─► HandleErrorLayer (Overloaded → 429 + Retry-After: 1)
//!          ─► LoadShedLayer (not ready → error, never a queue)
//!          ─► GlobalConcurrencyLimitLayer (one semaphore for every produce route)
//!          ─► handler
//! ```
//!
//! A queue in front of the producer would only add waiting to requests whose budget is the
//! request timeout; a prompt 429 lets the client (or its load balancer) go elsewhere or back
//! off. One semaphore is shared by all produce routes so the bound is the gateway's, not
//! each route's.

use std::sync::Arc;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;

use crate::error::RequestError;

/// Wraps every route of `routes` (the produce routes) in the shared concurrency limit.
pub(crate) fn shed_produce_routes<S>(routes: Router<S>, limit: usize) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let semaphore = Arc::new(Semaphore::new(limit));
    routes.route_layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(
                move |e: tower::BoxError| async move { overloaded(&e, limit) },
            ))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(semaphore)),
    )
}

fn overloaded(e: &tower::BoxError, limit: usize) -> Response {
    if e.is::<tower::load_shed::error::Overloaded>() {
        RequestError::Overloaded { limit }.into_response()
    } else {
        // The handlers are infallible; only the shedder errs. Kept total all the same.
        RequestError::Internal(format!("request failed in the concurrency limit: {e}"))
            .into_response()
    }
}
