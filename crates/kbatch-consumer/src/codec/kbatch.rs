//! kbatch's offset-metadata format.
//!
//! Text: `kb:` + unpadded URL-safe base64 of
//! ```text
//!  [version = 1][encoding][payload]          encoding: 0 bitset, 1 run-length; | 0x80 = zstd
//!  payload = varint base, varint span, body
//!    bitset:     ceil(span / 8) bytes, bit i (LSB first) set = offset base + i completed
//!    run-length: varints, alternating runs starting with an incomplete one, summing to span
//! ```
//! The encoder tries all four encodings and keeps the smallest. The base offset is embedded,
//! so metadata that no longer matches its committed offset is detected, not misapplied.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{DecodeError, MAX_SPAN, OffsetMap};

/// Marks kbatch metadata; `:` is outside every base64 alphabet, so no PC string starts so.
pub(crate) const PREFIX: &str = "kb:";
const VERSION: u8 = 1;
const BITSET: u8 = 0;
const RUN_LENGTH: u8 = 1;
const ZSTD: u8 = 0x80;
/// Bound on decompressed payloads: far beyond what 4 KiB of metadata encodes legitimately.
const MAX_DECOMPRESSED: usize = 256 << 10;

/// Spans longer than this are not tried as a bitset: a gap of a billion offsets (a compacted
/// topic) must not allocate a billion bits, and run-length is small for such spans anyway.
const MAX_BITSET_SPAN: i64 = 1 << 20;

/// Encodes `map` (non-empty, base ≥ 0) in the smallest of the four encodings.
pub(crate) fn encode(map: &OffsetMap) -> String {
    let mut candidates = vec![(RUN_LENGTH, run_length_payload(map))];
    if map.end - map.base <= MAX_BITSET_SPAN {
        candidates.push((BITSET, bitset_payload(map)));
    }
    let mut best: Option<Vec<u8>> = None;
    for (encoding, payload) in candidates {
        let mut options = vec![frame(encoding, &payload)];
        if let Ok(z) = zstd::bulk::compress(&payload, 3) {
            options.push(frame(encoding | ZSTD, &z));
        }
        for o in options {
            if best.as_ref().is_none_or(|b| o.len() < b.len()) {
                best = Some(o);
            }
        }
    }
    let bytes = best.unwrap_or_default();
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn frame(encoding: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 2);
    out.push(VERSION);
    out.push(encoding);
    out.extend_from_slice(payload);
    out
}

fn header(map: &OffsetMap) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, map.base as u64);
    put_varint(&mut out, (map.end - map.base) as u64);
    out
}

fn bitset_payload(map: &OffsetMap) -> Vec<u8> {
    let span = (map.end - map.base) as usize;
    let mut bits = vec![0xffu8; span.div_ceil(8)];
    if !span.is_multiple_of(8) {
        // Bits past the span stay clear.
        let last = bits.len() - 1;
        bits[last] = (1u8 << (span % 8)) - 1;
    }
    for r in &map.incomplete {
        for o in r.clone() {
            let i = (o - map.base) as usize;
            bits[i / 8] &= !(1 << (i % 8));
        }
    }
    let mut out = header(map);
    out.extend_from_slice(&bits);
    out
}

fn run_length_payload(map: &OffsetMap) -> Vec<u8> {
    let mut out = header(map);
    let mut at = map.base;
    for r in &map.incomplete {
        // completed run before this incomplete range (0 only before a leading incomplete run)
        if at == map.base {
            if r.start > at {
                put_varint(&mut out, 0);
                put_varint(&mut out, (r.start - at) as u64);
            }
        } else {
            put_varint(&mut out, (r.start - at) as u64);
        }
        put_varint(&mut out, (r.end - r.start) as u64);
        at = r.end;
    }
    if at < map.end {
        if at == map.base {
            put_varint(&mut out, 0);
        }
        put_varint(&mut out, (map.end - at) as u64);
    }
    out
}

/// Decodes the text after [`PREFIX`].
pub(crate) fn decode(body: &str) -> Result<OffsetMap, DecodeError> {
    let corrupt = |why: String| DecodeError::Corrupt {
        format: "kbatch",
        why,
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|e| corrupt(format!("not base64: {e}")))?;
    let [version, encoding, rest @ ..] = bytes.as_slice() else {
        return Err(corrupt(format!(
            "{} bytes, too short for a header",
            bytes.len()
        )));
    };
    if *version != VERSION {
        return Err(DecodeError::Unknown(format!(
            "kbatch metadata version {version}; this build reads version {VERSION}"
        )));
    }
    let payload: std::borrow::Cow<'_, [u8]> = if encoding & ZSTD != 0 {
        zstd::bulk::decompress(rest, MAX_DECOMPRESSED)
            .map_err(|e| corrupt(format!("zstd payload: {e}")))?
            .into()
    } else {
        rest.into()
    };
    let mut r = Reader {
        buf: &payload,
        at: 0,
    };
    let base = r
        .varint()
        .ok_or_else(|| corrupt("missing base offset".into()))?;
    let span = r.varint().ok_or_else(|| corrupt("missing span".into()))?;
    let base =
        i64::try_from(base).map_err(|_| corrupt(format!("base offset {base} out of range")))?;
    if span == 0 || span > MAX_SPAN as u64 || base.checked_add(span as i64).is_none() {
        return Err(corrupt(format!("span {span} out of range 1..={MAX_SPAN}")));
    }
    let span = span as i64;
    let mut map = OffsetMap::empty(base);
    match encoding & !ZSTD {
        BITSET => {
            let bits = &payload[r.at..];
            if bits.len() as i64 != (span + 7) / 8 {
                return Err(corrupt(format!(
                    "bitset of {} bytes for a span of {span}",
                    bits.len()
                )));
            }
            let mut run_start = 0i64;
            let mut run_incomplete = bits[0] & 1 == 0;
            for i in 1..=span {
                let incomplete = i < span && bits[(i / 8) as usize] & (1 << (i % 8)) == 0;
                if i == span || incomplete != run_incomplete {
                    map.push_run(i - run_start, run_incomplete);
                    run_start = i;
                    run_incomplete = incomplete;
                }
            }
        }
        RUN_LENGTH => {
            let mut incomplete = true;
            while r.at < payload.len() {
                let len = r
                    .varint()
                    .ok_or_else(|| corrupt("truncated run length".into()))?;
                if len as i64 > span - (map.end - map.base) || len > MAX_SPAN as u64 {
                    return Err(corrupt(format!("runs exceed the span of {span}")));
                }
                map.push_run(len as i64, incomplete);
                incomplete = !incomplete;
            }
            if map.end - map.base != span {
                return Err(corrupt(format!(
                    "runs cover {} of a span of {span}",
                    map.end - map.base
                )));
            }
        }
        other => {
            return Err(DecodeError::Unknown(format!(
                "kbatch metadata encoding {other}"
            )));
        }
    }
    Ok(map)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.at)?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}
