//! `GET /metrics`: the gateway's Prometheus metrics, and the recording of them.
//!
//! ```text
//!  listener (open connections) ─► track (requests, latency, in flight) ─► routes
//!                                                     produce_all ─► count_records
//!  GET /metrics ─► pressure hook ─► PrometheusHandle::render (the process's recorder)
//! ```
//!
//! The gateway records through the `metrics` facade into a process-wide Prometheus recorder
//! that it installs once ([`install_recorder`]), rather than into a registry of its own: the
//! producer (plain and adaptive) already emits `metrics` counters, and with one global
//! recorder those appear on `/metrics` beside the gateway's, which is what an operator
//! scrapes for. The price is that several gateways in one process (tests) share the
//! counters, so tests assert on deltas.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::RequestError;
use crate::server::AppState;

/// Requests answered, by `route` (the matched pattern, `unmatched` for 404s) and `status`.
pub(crate) const REQUESTS: &str = "kbatch_gateway_requests_total";
/// Seconds from a request's start to its answer, by `route`.
pub(crate) const REQUEST_DURATION: &str = "kbatch_gateway_request_duration_seconds";
/// Records the broker acknowledged.
pub(crate) const RECORDS_PRODUCED: &str = "kbatch_gateway_records_produced_total";
/// Records answered with an error, by `code`.
pub(crate) const RECORDS_FAILED: &str = "kbatch_gateway_records_failed_total";
/// Records per produce request that reached the producer.
pub(crate) const RECORDS_PER_REQUEST: &str = "kbatch_gateway_records_per_request";
/// Requests being handled now.
pub(crate) const IN_FLIGHT: &str = "kbatch_gateway_requests_in_flight";
/// Connections open now.
pub(crate) const OPEN_CONNECTIONS: &str = "kbatch_gateway_open_connections";
/// The producer's pressure level (0 = calm); 0 for a producer without levels.
pub(crate) const PRESSURE_LEVEL: &str = "kbatch_gateway_pressure_level";

/// Latency buckets: from a fast single record (1 ms) to the largest request timeout.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Records-per-request buckets, up to the largest `max_records_per_request`.
const COUNT_BUCKETS: [f64; 10] = [
    1.0,
    2.0,
    5.0,
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
];

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder the gateway's `/metrics` renders (once;
/// later calls return the same handle). `None` when another recorder was installed first
/// (e.g. by `kbatch --metrics-addr`): the metrics then go to that one, and the gateway's
/// `/metrics` answers 404 saying so.
pub fn install_recorder() -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), &LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(RECORDS_PER_REQUEST.into()),
                        &COUNT_BUCKETS,
                    )
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(_) => {
                    tracing::warn!(
                        "another metrics recorder is installed in this process: the gateway's metrics go there, GET /metrics answers 404"
                    );
                    None
                }
            }
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, "HTTP requests answered, by route and status");
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "time from a request's start to its answer, by route"
    );
    describe_counter!(
        RECORDS_PRODUCED,
        "records acknowledged by the broker and answered as written"
    );
    describe_counter!(RECORDS_FAILED, "records answered with an error, by code");
    describe_histogram!(
        RECORDS_PER_REQUEST,
        "records per produce request handed to the producer"
    );
    describe_gauge!(IN_FLIGHT, "HTTP requests being handled");
    describe_gauge!(OPEN_CONNECTIONS, "client connections open");
    describe_gauge!(
        PRESSURE_LEVEL,
        "the producer's pressure level (0 = calm); 0 for a producer without levels"
    );
}

/// Where the pressure gauge's value comes from.
pub(crate) type PressureSource = Arc<dyn Fn() -> Option<u8> + Send + Sync>;

/// The gateway's metrics state, shared by the handlers.
pub(crate) struct GatewayMetrics {
    /// The recorder's handle; `None` when `/metrics` is off or another recorder is installed.
    handle: Option<PrometheusHandle>,
    /// The producer's pressure level, read at each scrape. The server sets it when its
    /// producer has levels; without one the gauge reads 0.
    pub(crate) pressure_level: Option<PressureSource>,
}

impl GatewayMetrics {
    /// Installs (or reuses) the recorder when `enabled`.
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            handle: if enabled { install_recorder() } else { None },
            pressure_level: None,
        }
    }

    /// Drains histograms now and then: without a scrape their samples would pile up.
    pub(crate) async fn upkeep(
        handle: PrometheusHandle,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = every.tick() => handle.run_upkeep(),
                () = stop.cancelled() => return,
            }
        }
    }

    pub(crate) fn handle(&self) -> Option<PrometheusHandle> {
        self.handle.clone()
    }
}

/// `GET /metrics`.
pub(crate) async fn render(State(state): State<Arc<AppState>>) -> Response {
    let Some(handle) = &state.metrics.handle else {
        return RequestError::NotFound(
            "another metrics recorder is installed in this process (e.g. kbatch --metrics-addr): scrape that one".into(),
        )
        .into_response();
    };
    let level = state
        .metrics
        .pressure_level
        .as_ref()
        .and_then(|f| f())
        .unwrap_or(0);
    metrics::gauge!(PRESSURE_LEVEL).set(f64::from(level));
    let mut response = handle.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Middleware around every route: requests by route and status, latency, in-flight gauge.
pub(crate) async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let in_flight = GaugeGuard::up(IN_FLIGHT);
    let response = next.run(request).await;
    drop(in_flight);
    metrics::histogram!(REQUEST_DURATION, "route" => route.clone())
        .record(start.elapsed().as_secs_f64());
    let status: StatusCode = response.status();
    metrics::counter!(REQUESTS, "route" => route, "status" => status.as_str().to_owned())
        .increment(1);
    response
}

/// Counts the records of one produce request by outcome.
pub(crate) fn count_records<T>(outcomes: &[Result<T, RequestError>]) {
    metrics::histogram!(RECORDS_PER_REQUEST).record(outcomes.len() as f64);
    let produced = outcomes.iter().filter(|o| o.is_ok()).count();
    metrics::counter!(RECORDS_PRODUCED).increment(produced as u64);
    for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        metrics::counter!(RECORDS_FAILED, "code" => e.code()).increment(1);
    }
}

/// Counts one record of a stream (REST Proxy v3) by outcome, as it is answered; a stream's
/// records are not in the records-per-request histogram.
pub(crate) fn count_record<T>(outcome: &Result<T, RequestError>) {
    match outcome {
        Ok(_) => metrics::counter!(RECORDS_PRODUCED).increment(1),
        Err(e) => metrics::counter!(RECORDS_FAILED, "code" => e.code()).increment(1),
    }
}

/// Raises a gauge while alive; lowers it when dropped, also when the future holding it is
/// cancelled (a client that went away).
pub(crate) struct GaugeGuard(&'static str);

impl GaugeGuard {
    pub(crate) fn up(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        Self(name)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}
