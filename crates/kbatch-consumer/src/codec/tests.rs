use base64::Engine as _;
use proptest::prelude::*;

use super::*;

fn map(base: i64, end: i64, incomplete: &[i64]) -> OffsetMap {
    OffsetMap::from_incomplete(base, end, incomplete.iter().copied())
}

#[test]
fn empty_metadata_means_nothing_beyond_the_commit() {
    assert_eq!(decode(42, "").unwrap(), OffsetMap::empty(42));
    assert_eq!(encode(&map(42, 42, &[])), "");
}

#[test]
fn kbatch_round_trip_and_queries() {
    let m = map(1000, 1010, &[1000, 1003, 1004, 1009]);
    let text = encode(&m);
    assert!(text.starts_with("kb:"), "{text}");
    let back = decode(1000, &text).unwrap();
    assert_eq!(back, m);
    assert!(!back.is_completed(1000));
    assert!(back.is_completed(1001) && back.is_completed(1002));
    assert!(!back.is_completed(1003) && !back.is_completed(1004));
    assert!(back.is_completed(1008));
    assert!(!back.is_completed(1009));
    assert!(
        !back.is_completed(1010),
        "beyond the span is unknown, not completed"
    );
    assert!(!back.is_completed(999));
    assert_eq!(back.incomplete_count(), 4);
}

#[test]
fn smallest_encoding_wins_and_stays_small() {
    // One incomplete offset and a million completed after it: run-length, a few bytes.
    let m = map(5, 1_000_005, &[5]);
    let text = encode(&m);
    assert!(text.len() < 20, "{} chars: {text}", text.len());
    assert_eq!(decode(5, &text).unwrap(), m);
    // Alternating offsets: bitset beats run-length.
    let alt: Vec<i64> = (0..4000).step_by(2).collect();
    let m = map(0, 4000, &alt);
    let text = encode(&m);
    assert!(text.len() < 4000 / 8 * 2, "{} chars", text.len());
    assert_eq!(decode(0, &text).unwrap(), m);
}

#[test]
fn a_huge_offset_gap_encodes_small_without_a_huge_bitset() {
    // Offsets 7 and 7 + 10^12 (compaction can leave such gaps): run-length, a few bytes.
    let m = map(7, 7 + 1_000_000_000_001, &[7, 7 + 1_000_000_000_000]);
    let text = encode(&m);
    assert!(text.len() < 40, "{text}");
    assert_eq!(decode(7, &text).unwrap(), m);
}

#[test]
fn metadata_for_another_offset_is_detected() {
    let text = encode(&map(100, 110, &[100, 105]));
    assert_eq!(
        decode(90, &text),
        Err(DecodeError::BaseMismatch {
            described: 100,
            committed: 90
        })
    );
}

#[test]
fn garbage_is_refused_with_a_reason_never_a_panic() {
    for bad in [
        "kb:",
        "kb:!!!",
        "kb:AQ",
        "kb:AgA",
        "not base64 at all",
        "kb:AQAFBQ",
        "Zm9v",
    ] {
        let e = decode(0, bad).expect_err(bad);
        assert!(!e.to_string().is_empty());
    }
    // A well-formed header whose runs overrun the span.
    let mut raw = vec![1u8, 1, 0, 3, 5];
    raw.extend([1]);
    let text = format!(
        "kb:{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw)
    );
    assert!(
        matches!(decode(0, &text), Err(DecodeError::Corrupt { .. })),
        "{:?}",
        decode(0, &text)
    );
}

fn pc(magic: u8, payload: &[u8]) -> String {
    let mut b = vec![magic];
    b.extend_from_slice(payload);
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn pc_bitsets_v1_v2_and_compressed() {
    // size 10; completed = {1,2,5,6,7,8} → bits 0b1110_0110, 0b0000_0001
    let bits = [0b1110_0110u8, 0b0000_0001];
    let want = map(50, 60, &[50, 53, 54, 59]);
    let mut v1 = 10i16.to_be_bytes().to_vec();
    v1.extend(bits);
    assert_eq!(decode(50, &pc(b'l', &v1)).unwrap(), want);
    let mut v2 = 10i32.to_be_bytes().to_vec();
    v2.extend(bits);
    assert_eq!(decode(50, &pc(b'o', &v2)).unwrap(), want);
    assert_eq!(
        decode(50, &pc(b'a', &zstd::bulk::compress(&v1, 3).unwrap())).unwrap(),
        want
    );
    assert_eq!(
        decode(50, &pc(b's', &zstd::bulk::compress(&v2, 3).unwrap())).unwrap(),
        want
    );
    // Trailing zero bytes trimmed by java.util.BitSet: the missing bits are incomplete.
    let mut trimmed = 12i16.to_be_bytes().to_vec();
    trimmed.push(0b0000_0110);
    assert_eq!(
        decode(0, &pc(b'l', &trimmed)).unwrap(),
        map(0, 12, &[0, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    );
}

#[test]
fn pc_run_lengths_v1_v2_and_compressed() {
    // o x x o o x x x x o  = runs 1,2,2,4,1
    let want = map(7, 17, &[7, 10, 11, 16]);
    let v1: Vec<u8> = [1i16, 2, 2, 4, 1]
        .iter()
        .flat_map(|r| r.to_be_bytes())
        .collect();
    let v2: Vec<u8> = [1i32, 2, 2, 4, 1]
        .iter()
        .flat_map(|r| r.to_be_bytes())
        .collect();
    assert_eq!(decode(7, &pc(b'n', &v1)).unwrap(), want);
    assert_eq!(decode(7, &pc(b'e', &v2)).unwrap(), want);
    assert_eq!(
        decode(7, &pc(b'J', &zstd::bulk::compress(&v1, 3).unwrap())).unwrap(),
        want
    );
    assert_eq!(
        decode(7, &pc(b'p', &zstd::bulk::compress(&v2, 3).unwrap())).unwrap(),
        want
    );
    // A leading completed run is written as a zero-length incomplete run first.
    let lead: Vec<u8> = [0i16, 3, 1].iter().flat_map(|r| r.to_be_bytes()).collect();
    assert_eq!(decode(0, &pc(b'n', &lead)).unwrap(), map(0, 4, &[3]));
}

#[test]
fn pc_hostile_sizes_are_cheap_and_bounded() {
    // Claims 2^31-1 offsets with no bytes behind them: one range, no huge loop.
    let m = decode(0, &pc(b'o', &i32::MAX.to_be_bytes())).unwrap();
    assert_eq!(m.incomplete.len(), 1);
    assert_eq!(m.incomplete_count(), i32::MAX as u64);
    assert!(decode(0, &pc(b'o', &(-5i32).to_be_bytes())).is_err());
    assert!(decode(0, &pc(b'e', &(-1i32).to_be_bytes())).is_err());
    assert!(matches!(
        decode(0, &pc(b'L', &[1, 0, 1])),
        Err(DecodeError::Unknown(_))
    ));
    assert!(matches!(
        decode(0, &pc(b'a', &[1, 2, 3])),
        Err(DecodeError::Corrupt { .. })
    ));
}

fn arb_map() -> impl Strategy<Value = OffsetMap> {
    (
        0i64..1 << 40,
        1i64..3000,
        proptest::collection::vec(any::<bool>(), 0..3000),
    )
        .prop_map(|(base, span, flags)| {
            let mut inc: Vec<i64> = flags
                .iter()
                .take(span as usize)
                .enumerate()
                .filter(|(_, f)| **f)
                .map(|(i, _)| base + i as i64)
                .collect();
            // The committed offset itself is always incomplete in real use; keep both shapes.
            if flags.len() % 2 == 0 && inc.first() != Some(&base) {
                inc.insert(0, base);
            }
            OffsetMap::from_incomplete(base, base + span, inc)
        })
}

proptest! {
    #[test]
    fn kbatch_encode_decode_round_trips(m in arb_map()) {
        prop_assume!(!m.incomplete.is_empty());
        let text = encode(&m);
        prop_assert_eq!(decode(m.base, &text).unwrap(), m);
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_text(s in ".{0,200}", committed in 0i64..1_000_000) {
        let _ = decode(committed, &s);
        let _ = decode(committed, &format!("kb:{s}"));
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(0, &base64::engine::general_purpose::STANDARD.encode(&b));
        let _ = decode(0, &format!("kb:{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b)));
    }

    #[test]
    fn pc_run_length_and_bitset_agree(flags in proptest::collection::vec(any::<bool>(), 1..500)) {
        // Encode the same completion pattern in both PC encodings; both must decode alike.
        let size = flags.len();
        let mut bits = vec![0u8; size.div_ceil(8)];
        for (i, done) in flags.iter().enumerate() { if *done { bits[i / 8] |= 1 << (i % 8); } }
        while bits.last() == Some(&0) { bits.pop(); }
        let mut bs = (size as i32).to_be_bytes().to_vec();
        bs.extend(bits);
        let mut runs = Vec::new();
        let mut cur = false; let mut len = 0i32;
        for f in &flags { if *f == cur { len += 1 } else { runs.push(len); cur = *f; len = 1; } }
        runs.push(len);
        let rl: Vec<u8> = runs.iter().flat_map(|r| r.to_be_bytes()).collect();
        let a = decode(3, &pc(b'o', &bs)).unwrap();
        let b = decode(3, &pc(b'e', &rl)).unwrap();
        prop_assert_eq!(a.clone(), b);
        for (i, done) in flags.iter().enumerate() { prop_assert_eq!(a.is_completed(3 + i as i64), *done); }
    }
}
