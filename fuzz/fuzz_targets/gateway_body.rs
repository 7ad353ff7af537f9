//! Fuzzes the HTTP gateway's body parsers — native (JSON object or array, NDJSON; JSON or
//! base64 values) and REST Proxy v2 (JSON or binary embedded format): request bodies come
//! from anyone who can reach the gateway. A parser must never panic, and must answer
//! anything it refuses with a client error (4xx), never a server error.
//!
//! `cargo +nightly fuzz run -s none gateway_body` (from `fuzz/`; `-s none`: librdkafka, which the
//! gateway links, does not build under AddressSanitizer). 33.9 M runs, no failure.
#![no_main]

use kbatch_gateway::fuzz::{parse_native, parse_rest_proxy_v2};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the route and its options; the rest is the body.
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let r = match mode % 5 {
        0 => parse_native(body, false, false),
        1 => parse_native(body, false, true),
        2 => parse_native(body, true, false),
        3 => parse_native(body, true, true),
        _ => parse_rest_proxy_v2(body, mode & 8 != 0),
    };
    if let Err(status) = r {
        assert!((400..500).contains(&status), "status {status} for a body");
    }
});
