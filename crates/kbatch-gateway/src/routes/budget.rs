//! A request's latency budget: `X-Latency-Budget-Ms: <ms>` or `?latency_budget_ms=<ms>`.
//!
//! ```text
//!  header (or, without it, the query parameter) ─► whole ms, 1..=MAX_BUDGET_MS, else 400
//!    ─► min(budget, request_timeout) ─► Sink::try_send: no record waits in a batch longer
//! ```
//!
//! Without either, the adaptive producer's pressure level decides how long a record may wait.

use std::time::Duration;

use axum::http::HeaderMap;

use crate::error::RequestError;

/// The header naming a request's latency budget in milliseconds.
pub(crate) const HEADER: &str = "x-latency-budget-ms";
/// The query parameter naming it, for clients that cannot set headers.
pub(crate) const QUERY: &str = "latency_budget_ms";
/// Past an hour a budget is a typo, not a wish (the request timeout is at most an hour).
pub(crate) const MAX_BUDGET_MS: u64 = 3_600_000;

/// The budget a request asks for, clamped to `request_timeout`: the header if present, else
/// `query_value` (the parameter's raw value, if the route saw one). `None` when neither.
pub(crate) fn from_request(
    headers: &HeaderMap,
    query_value: Option<&str>,
    request_timeout: Duration,
) -> Result<Option<Duration>, RequestError> {
    let (source, raw) = match headers.get(HEADER) {
        Some(v) => (
            "X-Latency-Budget-Ms",
            v.to_str()
                .map_err(|_| invalid("X-Latency-Budget-Ms", &format!("{:?}", v.as_bytes())))?,
        ),
        None => match query_value {
            Some(v) => (QUERY, v),
            None => return Ok(None),
        },
    };
    match raw.trim().parse::<u64>() {
        Ok(ms) if (1..=MAX_BUDGET_MS).contains(&ms) => {
            Ok(Some(Duration::from_millis(ms).min(request_timeout)))
        }
        _ => Err(invalid(source, raw)),
    }
}

/// The `latency_budget_ms` value of a raw query string, if present (values are digits, so
/// no percent-decoding: an encoded one is refused as not a number).
pub(crate) fn query_value(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == QUERY)
        .map(|(_, v)| v)
}

fn invalid(source: &str, value: &str) -> RequestError {
    RequestError::InvalidLatencyBudget(format!(
        "{source} {value:?} is not a latency budget: use whole milliseconds from 1 to {MAX_BUDGET_MS} (larger ones are clamped to the request timeout)"
    ))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn header(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn header_then_query_clamped_to_the_timeout() {
        let none = HeaderMap::new();
        assert_eq!(from_request(&none, None, TIMEOUT).unwrap(), None);
        assert_eq!(
            from_request(&header("50"), Some("7"), TIMEOUT).unwrap(),
            Some(Duration::from_millis(50)),
            "the header wins"
        );
        assert_eq!(
            from_request(&none, Some("7"), TIMEOUT).unwrap(),
            Some(Duration::from_millis(7))
        );
        assert_eq!(
            from_request(&header("600000"), None, TIMEOUT).unwrap(),
            Some(TIMEOUT)
        );
    }

    #[test]
    fn zero_non_numeric_and_absurd_budgets_are_named() {
        for bad in [
            "0",
            "-5",
            "fast",
            "1.5",
            "",
            "3600001",
            "99999999999999999999",
        ] {
            let e = from_request(&header(bad), None, TIMEOUT).unwrap_err();
            assert_eq!(e.code(), "invalid_latency_budget");
            assert!(
                e.to_string()
                    .contains(&format!("X-Latency-Budget-Ms {bad:?}")),
                "{e}"
            );
        }
        let e = from_request(&HeaderMap::new(), Some("soon"), TIMEOUT).unwrap_err();
        assert!(e.to_string().contains("latency_budget_ms \"soon\""), "{e}");
    }

    #[test]
    fn query_value_is_found_among_others() {
        assert_eq!(
            query_value(Some("format=binary&latency_budget_ms=20")),
            Some("20")
        );
        assert_eq!(query_value(Some("latency_budget_ms")), Some(""));
        assert_eq!(query_value(Some("format=json")), None);
        assert_eq!(query_value(None), None);
    }
}
