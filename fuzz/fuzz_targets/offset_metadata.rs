//! Fuzzes the commit-metadata decoder (kbatch and Parallel Consumer formats): metadata crosses a
//! process boundary and may be anything. The decoder must never panic or allocate beyond its
//! input, every map it returns must be well formed, and kbatch's encoder must round-trip it.
//!
//! `cargo +nightly fuzz run offset_metadata` (from `fuzz/`).
#![no_main]

use kbatch_consumer::codec::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let committed = i64::from_le_bytes(data[..8].try_into().unwrap_or_default()) & ((1 << 50) - 1);
    let text = String::from_utf8_lossy(&data[8..]);
    for candidate in [text.to_string(), format!("kb:{text}")] {
        let Ok(m) = decode(committed, &candidate) else { continue };
        assert!(m.base <= m.end);
        for r in &m.incomplete {
            assert!(r.start < r.end && r.start >= m.base && r.end <= m.end, "{m:?}");
        }
        assert!(m.incomplete.windows(2).all(|w| w[0].end < w[1].start), "ranges disjoint and merged: {m:?}");
        if !m.incomplete.is_empty() {
            let again = encode(&m);
            assert_eq!(decode(m.base, &again).as_ref(), Ok(&m), "round trip");
        }
    }
});
