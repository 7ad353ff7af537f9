use proptest::prelude::*;

use super::*;

fn header(name: &str, value: Option<&'static [u8]>) -> Header {
    Header {
        key: name.to_owned(),
        value: value.map(Bytes::from_static),
    }
}

/// Two events written by hand from the format description: pins the wire format, so a change
/// to the encoder that still round-trips with its own decoder is caught.
const GOLDEN: &[u8] = &[
    b'K', b'B', b'E', b'V', 1, 0, 0, 0, 0, 3, // magic, version 1, flags 0, count 3
    // event 0: body of 13 bytes, attrs key|value|timestamp
    13, 0x07, //
    0x03, // timestamp -2 zigzagged = 3
    1, b'k', // key "k"
    1, b'v', // value "v"
    2,    // two headers
    1, b'h', 0, // "h" = null
    1, b'e', 1, // "e" = empty
    // event 1: body of 2 bytes: nothing present, no headers
    2, 0x00, 0, //
    // event 2: empty key and value, timestamp 300 zigzagged = 600 = 0xd8 0x04
    6, 0x07, 0xd8, 0x04, 0, 0, 0,
];

fn golden_events() -> Vec<Event> {
    vec![
        Event {
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: vec![header("h", None), header("e", Some(b""))],
            timestamp: Some(Timestamp(-2)),
        },
        Event::default(),
        Event {
            key: Some(Bytes::new()),
            value: Some(Bytes::new()),
            headers: vec![],
            timestamp: Some(Timestamp(300)),
        },
    ]
}

#[test]
fn golden_bytes_encode_and_decode() {
    assert_eq!(&encode(&golden_events())[..], GOLDEN);
    assert_eq!(
        decode(&Bytes::from_static(GOLDEN)).unwrap(),
        golden_events()
    );
}

#[test]
fn empty_envelope_is_ten_bytes() {
    let w = EnvelopeWriter::new();
    assert!(w.is_empty());
    assert_eq!(w.encoded_len(), 10);
    let b = w.finish();
    assert_eq!(&b[..], b"KBEV\x01\x00\x00\x00\x00\x00");
    assert_eq!(decode(&b).unwrap(), Vec::<Event>::new());
}

#[test]
fn decoded_keys_and_values_are_slices_of_the_input() {
    let value = encode(&golden_events());
    let range = value.as_ptr() as usize..value.as_ptr() as usize + value.len();
    let events = decode(&value).unwrap();
    for b in [&events[0].key, &events[0].value].into_iter().flatten() {
        assert!(range.contains(&(b.as_ptr() as usize)), "{b:?} was copied");
    }
}

#[test]
fn header_marks_envelopes() {
    assert_eq!(envelope_header().key, ENVELOPE_HEADER);
    assert_eq!(envelope_header().value.as_deref(), Some(&b"1"[..]));
    assert!(is_envelope(&[header("a", None), envelope_header()]));
    // A version this decoder cannot read is still an envelope.
    assert!(is_envelope(&[header(ENVELOPE_HEADER, Some(b"9"))]));
    assert!(is_envelope(&[header(ENVELOPE_HEADER, None)]));
    assert!(!is_envelope(&[header("kbatch-envelope-x", Some(b"1"))]));
    assert!(!is_envelope(&[]));
}

#[test]
fn varints_are_minimal_and_sized_right() {
    for v in [
        0,
        1,
        127,
        128,
        16_383,
        16_384,
        u64::from(u32::MAX),
        u64::MAX,
    ] {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        assert_eq!(b.len(), varint_len(v), "{v}");
        assert_ne!(b.last(), Some(&0).filter(|_| b.len() > 1), "{v}: {b:?}");
    }
    for v in [0, 1, -1, 63, -64, i64::MAX, i64::MIN] {
        assert_eq!(unzigzag(zigzag(v)), v);
    }
    assert_eq!(zigzag(-1), 1);
    assert_eq!(zigzag(1), 2);
}

/// Decodes `bytes` and returns the error, failing the test if it decoded.
fn err(bytes: &[u8]) -> EnvelopeError {
    match decode(&Bytes::copy_from_slice(bytes)) {
        Ok(events) => panic!("{bytes:02x?} decoded to {events:?}"),
        Err(e) => e,
    }
}

fn with_count(count: u32, events: &[u8]) -> Vec<u8> {
    let mut b = b"KBEV\x01\x00".to_vec();
    b.extend_from_slice(&count.to_be_bytes());
    b.extend_from_slice(events);
    b
}

fn assert_err(bytes: &[u8], index: Option<u32>, offset: usize, says: &str) {
    let e = err(bytes);
    assert_eq!(
        (e.event_index, e.byte_offset),
        (index, offset),
        "position of {e}"
    );
    assert!(e.reason.contains(says), "{e:?} does not say {says:?}");
    let shown = e.to_string();
    assert!(shown.contains(&format!("at byte {offset}")), "{shown}");
    if let Some(i) = index {
        assert!(shown.contains(&format!("in event {i}")), "{shown}");
    }
}

#[test]
fn short_header() {
    assert_err(
        b"KBEV\x01",
        None,
        5,
        "the value is 5 bytes, shorter than the 10-byte",
    );
    assert_err(b"", None, 0, "the value is 0 bytes");
}

#[test]
fn bad_magic() {
    assert_err(
        b"KBEX\x01\x00\x00\x00\x00\x00",
        None,
        0,
        "magic is 4b 42 45 58, expected \"KBEV\"",
    );
}

#[test]
fn unknown_version() {
    assert_err(
        b"KBEV\x02\x00\x00\x00\x00\x00",
        None,
        4,
        "version is 2, this decoder reads version 1",
    );
}

#[test]
fn nonzero_flags() {
    assert_err(
        b"KBEV\x01\x04\x00\x00\x00\x00",
        None,
        5,
        "flags are 0x04, version 1 defines none: they must be 0",
    );
}

#[test]
fn fewer_events_than_the_count() {
    assert_err(
        &with_count(2, &[2, 0, 0]),
        Some(1),
        13,
        "ends after 1 events but its header declares 2",
    );
}

#[test]
fn hostile_count_fails_without_reserving_it() {
    // 4 billion events declared, none present: must fail, not reserve 4 billion slots.
    assert_err(
        &with_count(u32::MAX, &[]),
        Some(0),
        10,
        "declares 4294967295",
    );
}

#[test]
fn trailing_bytes() {
    assert_err(
        &with_count(1, &[2, 0, 0, 0xaa, 0xbb]),
        None,
        13,
        "2 trailing bytes after the 1 events",
    );
}

#[test]
fn body_length_past_the_end() {
    assert_err(
        &with_count(1, &[9, 0, 0]),
        Some(0),
        10,
        "event body length is 9 but only 2 bytes of the envelope remain",
    );
}

#[test]
fn varint_cut_off() {
    assert_err(
        &with_count(1, &[0x80]),
        Some(0),
        10,
        "event body length varint is cut off after 1 bytes",
    );
    // The key length runs into the end of its event's body.
    assert_err(
        &with_count(1, &[2, ATTR_KEY, 0x81, 0]),
        Some(0),
        12,
        "key length varint is cut off after 1 bytes: the last one has its continuation bit \
         (0x80) set and the event ends there",
    );
}

#[test]
fn varint_overflow_and_overlong() {
    let mut ts = vec![11, ATTR_TIMESTAMP];
    ts.extend_from_slice(&[0xff; 9]);
    ts.push(0x02); // the 10th byte may carry only bit 63
    assert_err(
        &with_count(1, &ts),
        Some(0),
        12,
        "timestamp varint overflows 64 bits (10th byte is 0x02, at most 0x01)",
    );
    let mut long = vec![0x80; 11];
    long.push(0);
    assert_err(
        &with_count(1, &long),
        Some(0),
        10,
        "event body length varint overflows 64 bits",
    );
}

#[test]
fn non_minimal_varint() {
    // Body length 2 written as 0x82 0x00.
    assert_err(
        &with_count(1, &[0x82, 0x00, 0, 0]),
        Some(0),
        10,
        "event body length varint is not minimal (2 bytes ending in 0x00)",
    );
}

#[test]
fn reserved_attribute_bits() {
    assert_err(
        &with_count(1, &[2, 0x08, 0]),
        Some(0),
        11,
        "attributes are 0x08; version 1 defines only bits 0-2",
    );
}

#[test]
fn key_and_value_lengths_past_the_body() {
    // Key length 5 inside a 4-byte body; the bytes exist after it, in the envelope.
    assert_err(
        &with_count(1, &[4, ATTR_KEY, 5, b'a', 0, b'b', b'c', b'd']),
        Some(0),
        12,
        "key length is 5 but only 2 bytes of the event remain",
    );
    assert_err(
        &with_count(1, &[3, ATTR_VALUE, 7, 0]),
        Some(0),
        12,
        "value length is 7 but only 1 bytes of the event remain",
    );
    // A header value: length+1 = 4, so 3 bytes, with 1 left.
    assert_err(
        &with_count(1, &[6, 0, 1, 1, b'h', 4, b'x']),
        Some(0),
        15,
        "header value length is 3 but only 1 bytes of the event remain",
    );
}

#[test]
fn missing_fields() {
    // Body of 0 bytes: no attributes.
    assert_err(
        &with_count(1, &[0]),
        Some(0),
        11,
        "the event ends where its attributes byte should be",
    );
    // Attributes but no header count.
    assert_err(
        &with_count(1, &[1, 0]),
        Some(0),
        12,
        "the event ends where its header count should be",
    );
}

#[test]
fn header_count_past_the_body() {
    assert_err(
        &with_count(1, &[4, 0, 0x80, 0x80, 0x04]),
        Some(0),
        12,
        "header count is 65536 but only 0 bytes of the event remain",
    );
}

#[test]
fn header_name_not_utf8() {
    assert_err(
        &with_count(1, &[6, 0, 1, 2, 0xc3, 0x28, 0]),
        Some(0),
        13,
        "header name c3 28 is not valid UTF-8",
    );
}

#[test]
fn body_not_consumed() {
    assert_err(
        &with_count(1, &[4, 0, 0, 0xaa, 0xbb]),
        Some(0),
        13,
        "2 unread bytes after the event's last field",
    );
}

#[test]
fn error_in_a_later_event_names_it() {
    let mut b = encode(&golden_events()).to_vec();
    let count = u32::try_from(golden_events().len()).unwrap();
    b[6..10].copy_from_slice(&(count + 1).to_be_bytes());
    b.extend_from_slice(&[2, 0x10, 0]);
    let at = b.len() - 2;
    assert_err(&b, Some(count), at, "attributes are 0x10");
}

#[test]
fn envelope_errors_are_permanent() {
    assert_eq!(err(b"").class(), ErrorClass::Permanent);
}

fn bytes_strategy() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from),
    ]
}

fn event_strategy() -> impl Strategy<Value = Event> {
    let header = (
        "[a-z\u{e9}\u{1f600}-]{0,12}",
        proptest::option::of(bytes_strategy()),
    )
        .prop_map(|(key, value)| Header { key, value });
    (
        proptest::option::of(bytes_strategy()),
        proptest::option::of(bytes_strategy()),
        proptest::collection::vec(header, 0..4),
        proptest::option::of(prop_oneof![
            any::<i64>(),
            -1_000i64..1_000,
            Just(i64::MIN),
            Just(i64::MAX)
        ]),
    )
        .prop_map(|(key, value, headers, ts)| Event {
            key,
            value,
            headers,
            timestamp: ts.map(Timestamp),
        })
}

proptest! {
    #[test]
    fn round_trip(events in proptest::collection::vec(event_strategy(), 0..40)) {
        let encoded = encode(&events);
        prop_assert_eq!(&decode(&encoded).unwrap(), &events);

        let mut w = EnvelopeWriter::with_capacity(16);
        for e in &events {
            w.push(e.key.as_deref(), e.value.as_deref(), &e.headers, e.timestamp);
            // encoded_len is exact at every step.
            prop_assert_eq!(w.encoded_len(), encode(&events[..w.len()]).len());
        }
        prop_assert_eq!(w.len(), events.len());
        prop_assert_eq!(w.is_empty(), events.is_empty());
        prop_assert_eq!(w.finish(), encoded);
    }

    /// Writers joined with `append` make the envelope of all their events in order.
    #[test]
    fn appended_writers_encode_as_one(
        events in proptest::collection::vec(event_strategy(), 0..40),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(events.len() + 1)).collect();
        at.push(0);
        at.push(events.len());
        at.sort_unstable();
        let mut joined = EnvelopeWriter::new();
        for piece in at.windows(2) {
            let mut w = EnvelopeWriter::with_capacity(0);
            for e in &events[piece[0]..piece[1]] {
                w.push(e.key.as_deref(), e.value.as_deref(), &e.headers, e.timestamp);
            }
            joined.append(&w);
        }
        prop_assert_eq!(joined.len(), events.len());
        prop_assert_eq!(joined.encoded_len(), encode(&events).len());
        prop_assert_eq!(joined.finish(), encode(&events));
    }

    /// Every proper prefix of a valid envelope is an error (nothing is silently dropped), and
    /// every error's offset lies within the input.
    #[test]
    fn truncation_is_detected(
        events in proptest::collection::vec(event_strategy(), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let encoded = encode(&events);
        let at = cut.index(encoded.len());
        let e = decode(&encoded.slice(..at)).unwrap_err();
        prop_assert!(e.byte_offset <= at, "{} for a cut at {}", e, at);
    }

    /// Corrupting one byte either fails with an offset inside the input or decodes to events
    /// that encode back to exactly the corrupted bytes (the encoding is canonical).
    #[test]
    fn corruption_fails_or_stays_canonical(
        events in proptest::collection::vec(event_strategy(), 1..6),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut b = encode(&events).to_vec();
        let i = at.index(b.len());
        b[i] = byte;
        let b = Bytes::from(b);
        match decode(&b) {
            Ok(decoded) => prop_assert_eq!(encode(&decoded), b),
            Err(e) => prop_assert!(e.byte_offset <= b.len(), "{}", e),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200), count in 0u32..8) {
        let b = Bytes::from(with_count(count, &body));
        if let Ok(decoded) = decode(&b) {
            prop_assert_eq!(encode(&decoded), b);
        }
    }
}
