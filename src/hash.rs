//! FNV-1a 64: a stable hash for values that must agree across builds,
//! platforms and replicas (sticky buckets, config versions, digests).
//! std's `DefaultHasher` may change between Rust releases; this does not.
//! Not for security.

/// The FNV-1a 64 offset basis: the seed of a fresh hash.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Continues the hash `seed` over `bytes`; chained calls hash the
/// concatenation.
pub fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
    })
}
