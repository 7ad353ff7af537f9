//! The demo's proof of delivery: every record carries its sequence number and send time, and
//! the ledger checks each one arrived exactly once and in order within its partition.

use std::collections::HashMap;

use serde::Serialize;

/// Bytes at the start of every demo value: sequence number and send time (µs), big-endian.
pub(crate) const HEADER: usize = 16;

/// Writes the demo header into `buf` (at least [`HEADER`] bytes).
pub(crate) fn encode(buf: &mut [u8], seq: u64, sent_us: u64) {
    buf[..8].copy_from_slice(&seq.to_be_bytes());
    buf[8..16].copy_from_slice(&sent_us.to_be_bytes());
}

/// Reads `(seq, sent_us)` from a demo value; `None` for a foreign or short value.
pub(crate) fn decode(v: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}

/// What the consumer saw, checked against what was produced.
#[derive(Debug)]
pub(crate) struct Ledger {
    seen: Vec<u64>,
    expected: u64,
    distinct: u64,
    duplicates: u64,
    foreign: u64,
    out_of_order: u64,
    last_seq: HashMap<Vec<u8>, u64>,
}

/// The ledger's verdict.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) expected: u64,
    pub(crate) received: u64,
    pub(crate) lost: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) foreign: u64,
}

impl Verdict {
    pub(crate) fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.out_of_order == 0 && self.foreign == 0
    }
}

impl Ledger {
    pub(crate) fn new(expected: u64) -> Self {
        Self {
            seen: vec![0; expected.div_ceil(64) as usize],
            expected,
            distinct: 0,
            duplicates: 0,
            foreign: 0,
            out_of_order: 0,
            last_seq: HashMap::new(),
        }
    }

    /// Records one consumed value of `key`. Records of one key are produced in order to one
    /// partition and processed in order (KEY ordering), so a sequence number below its key's
    /// last is a reorder.
    pub(crate) fn observe(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Some((seq, _)) = value.and_then(decode).filter(|(s, _)| *s < self.expected) else {
            self.foreign += 1;
            return;
        };
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        self.distinct += 1;
        let last = self.last_seq.entry(key.to_vec()).or_insert(seq);
        if seq < *last {
            self.out_of_order += 1;
        }
        *last = seq;
    }

    /// Distinct records seen so far.
    pub(crate) fn distinct(&self) -> u64 {
        self.distinct
    }

    pub(crate) fn verdict(&self) -> Verdict {
        Verdict {
            expected: self.expected,
            received: self.distinct,
            lost: self.expected - self.distinct,
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            foreign: self.foreign,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(seq: u64) -> Vec<u8> {
        let mut b = vec![0; HEADER + 4];
        encode(&mut b, seq, 99);
        b
    }

    #[test]
    fn clean_run_is_clean() {
        let mut l = Ledger::new(130);
        for s in 0..130 {
            l.observe(format!("k{}", s % 3).as_bytes(), Some(&v(s)));
        }
        let verdict = l.verdict();
        assert!(verdict.is_clean(), "{verdict:?}");
        assert_eq!(verdict.received, 130);
    }

    #[test]
    fn loss_duplicates_reorders_and_garbage_are_all_counted() {
        let mut l = Ledger::new(10);
        for s in [0, 1, 3, 2, 3, 4, 5, 6, 7] {
            l.observe(b"k", Some(&v(s)));
        }
        l.observe(b"k", Some(b"short"));
        l.observe(b"k", None);
        l.observe(b"k", Some(&v(10)));
        let got = l.verdict();
        assert_eq!(
            got,
            Verdict {
                expected: 10,
                received: 8,
                lost: 2,
                duplicates: 1,
                out_of_order: 1,
                foreign: 3
            }
        );
        assert_eq!(decode(&v(7)), Some((7, 99)));
    }
}
