//! Confluent Parallel Consumer's offset-metadata format (read only), for migrating a group
//! from PC to kbatch without reprocessing what PC completed.
//!
//! Standard base64 of `[magic][payload]`; the span starts at the committed offset:
//! ```text
//!  'l' BitSet v1   i16 BE size, java.util.BitSet bytes (bit i LSB-first; set = completed)
//!  'o' BitSet v2   i32 BE size, the same
//!  'n' RunLength v1  i16 BE runs / 'e' RunLength v2  i32 BE runs,
//!                  alternating, the first run incomplete
//!  'a' 's' 'J' 'p' the above (v1/v2 bitset, v1/v2 run-length) with a zstd-framed payload
//! ```
//! (PC: `OffsetEncoding`, `OffsetBitSet`, `OffsetRunLength`, `EncodedOffsetPair`.)

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::{DecodeError, MAX_SPAN, OffsetMap};

const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const MAX_DECOMPRESSED: usize = 256 << 10;

#[derive(Clone, Copy)]
enum Kind {
    BitSet,
    RunLength,
}

#[derive(Clone, Copy)]
enum Width {
    V1,
    V2,
}

/// Decodes PC metadata stored with committed offset `committed`.
pub(crate) fn decode(committed: i64, metadata: &str) -> Result<OffsetMap, DecodeError> {
    let bytes = B64.decode(metadata.trim()).map_err(|e| {
        DecodeError::Unknown(format!(
            "neither kbatch nor Parallel Consumer metadata (not base64: {e})"
        ))
    })?;
    if bytes.is_empty() {
        return Ok(OffsetMap::empty(committed));
    }
    let (kind, width, zstd) = match bytes[0] {
        b'l' => (Kind::BitSet, Width::V1, false),
        b'a' => (Kind::BitSet, Width::V1, true),
        b'o' => (Kind::BitSet, Width::V2, false),
        b's' => (Kind::BitSet, Width::V2, true),
        b'n' => (Kind::RunLength, Width::V1, false),
        b'J' => (Kind::RunLength, Width::V1, true),
        b'e' => (Kind::RunLength, Width::V2, false),
        b'p' => (Kind::RunLength, Width::V2, true),
        m => {
            return Err(DecodeError::Unknown(format!(
                "Parallel Consumer encoding with magic byte {m:#04x} is not supported (PC cannot decode it either)"
            )));
        }
    };
    let corrupt = |why: String| DecodeError::Corrupt {
        format: "parallel-consumer",
        why,
    };
    let payload = if zstd {
        zstd::bulk::decompress(&bytes[1..], MAX_DECOMPRESSED)
            .map_err(|e| corrupt(format!("zstd payload: {e}")))?
    } else {
        bytes[1..].to_vec()
    };
    let width_bytes = match width {
        Width::V1 => 2,
        Width::V2 => 4,
    };
    let read = |chunk: &[u8]| -> i64 {
        match width {
            Width::V1 => i64::from(i16::from_be_bytes([chunk[0], chunk[1]])),
            Width::V2 => i64::from(i32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])),
        }
    };
    let mut map = OffsetMap::empty(committed);
    match kind {
        Kind::BitSet => {
            if payload.len() < width_bytes {
                return Err(corrupt("bitset without its size".into()));
            }
            let size = read(&payload[..width_bytes]);
            if !(0..=MAX_SPAN).contains(&size) {
                return Err(corrupt(format!("bitset size {size}")));
            }
            // java.util.BitSet.toByteArray drops trailing zero bytes: missing bits are clear
            // (incomplete). Work is bounded by the bytes present, not by the size claimed.
            let bits = &payload[width_bytes..];
            let present = size.min(bits.len() as i64 * 8);
            let bit = |i: i64| bits[(i / 8) as usize] & (1 << (i % 8)) != 0;
            let mut run_start = 0;
            for i in 1..=present {
                if i == present || bit(i) != bit(run_start) {
                    map.push_run(i - run_start, !bit(run_start));
                    run_start = i;
                }
            }
            map.push_run(size - present, true);
        }
        Kind::RunLength => {
            // Like Java's ShortBuffer/IntBuffer view, a trailing partial value is ignored.
            let mut incomplete = true;
            for chunk in payload.chunks_exact(width_bytes) {
                let len = read(chunk);
                if len < 0 || map.end - map.base + len > MAX_SPAN {
                    return Err(corrupt(format!("run length {len}")));
                }
                map.push_run(len, incomplete);
                incomplete = !incomplete;
            }
        }
    }
    Ok(map)
}
