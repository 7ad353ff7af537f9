//! Fuzzes the packed-microbatch envelope decoder: an envelope is a record value any producer
//! may have written. The decoder must never panic or allocate beyond what its input backs;
//! whatever decodes must encode back to exactly the same bytes (v1 is canonical) and decode
//! again to the same events.
//!
//! `cargo +nightly fuzz run envelope` (from `fuzz/`).
#![no_main]

use bytes::Bytes;
use kbatch_core::envelope::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Most inputs fail the magic; give the fuzzer the fixed header for free half the time so
    // it spends its effort on the events.
    let value = if data.first().is_some_and(|b| b & 1 == 1) {
        let mut v = b"KBEV\x01\x00".to_vec();
        v.extend_from_slice(&data[1..]);
        Bytes::from(v)
    } else {
        Bytes::copy_from_slice(data)
    };
    let Ok(events) = decode(&value) else { return };
    let again = encode(&events);
    assert_eq!(again, value, "re-encoding {events:?}");
    assert_eq!(decode(&again).as_ref(), Ok(&events), "round trip");
});
