//! Where a packed event goes: the partition librdkafka would pick for it as a record of its
//! own, so a key lands on the same partition packed or not, and its order holds.

/// The key hash, as librdkafka's `partitioner` setting names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyHash {
    /// `consistent_random` (librdkafka's default): CRC-32 of the key.
    #[default]
    Crc32,
    /// `murmur2_random` (the Java client's default): murmur2 of the key.
    Murmur2,
}

impl KeyHash {
    /// The hash a producer with these librdkafka properties uses; unknown or random-only
    /// partitioners fall back to the default.
    pub fn from_properties<'a>(mut props: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        let p = props.find(|(k, _)| *k == "partitioner" || *k == "topic.partitioner");
        match p.map(|(_, v)| v) {
            Some("murmur2" | "murmur2_random") => KeyHash::Murmur2,
            _ => KeyHash::Crc32,
        }
    }

    /// The partition of `key` among `partitions` (> 0).
    pub fn partition(self, key: &[u8], partitions: i32) -> i32 {
        self.partition_with_crc(key, crc32fast::hash(key), partitions)
    }

    /// As [`partition`](Self::partition), given the key's CRC-32 already taken.
    pub(crate) fn partition_with_crc(self, key: &[u8], crc: u32, partitions: i32) -> i32 {
        let n = partitions.max(1) as u32;
        let h = match self {
            KeyHash::Crc32 => crc,
            KeyHash::Murmur2 => murmur2(key) & 0x7fff_ffff,
        };
        (h % n) as i32
    }
}

/// Kafka's murmur2 (seed 0x9747b28c), as librdkafka and the Java client compute it.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len() as u32;
    let mut h: u32 = 0x9747_b28c ^ len;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_clients_reference_values() {
        // From Kafka's UtilsTest.testMurmur2 (as signed ints there).
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (k, want) in cases {
            assert_eq!(murmur2(k) as i32, want, "{}", String::from_utf8_lossy(k));
        }
    }

    #[test]
    fn the_partitioner_setting_picks_the_hash() {
        assert_eq!(KeyHash::from_properties([].into_iter()), KeyHash::Crc32);
        assert_eq!(
            KeyHash::from_properties([("topic.partitioner", "murmur2_random")].into_iter()),
            KeyHash::Murmur2
        );
        for k in [&b"a"[..], b"user-17", b""] {
            let p = KeyHash::Crc32.partition(k, 8);
            assert!((0..8).contains(&p));
            assert_eq!(p, (crc32fast::hash(k) % 8) as i32);
        }
    }
}
